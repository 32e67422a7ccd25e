//! What a run of the pipeline is given besides the agent's config: where
//! the machine's files, the target and the state directory are, and the
//! retry and wait policies. Below both the pipeline and the step registry.

use std::path::PathBuf;
use std::time::Duration;

use crate::retry::Retry;

/// How long the terminal event may wait for the server's ack.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Root of the machine to inventory ("/" in the installer image).
    pub sysroot: PathBuf,
    /// Retry policy for `hello` while the server is unreachable.
    pub hello_retry: Retry,
    pub final_ack_timeout: Duration,
    /// The image's agent.conf and then the kernel command line
    /// ([`crate::cmdline::layered_text`]): `landfall.vault_role_id=`, ...
    pub cmdline: String,
    /// Where the image carries its own files: `vault-role-id`, `vault-ca.pem`.
    pub etc_dir: PathBuf,
    /// Where the target is mounted.
    pub target_root: PathBuf,
    /// Seconds one `wait` long-poll may be held by the server.
    pub wait_secs: u64,
    /// The installer's runtime directory for this boot (tmpfs: kept across
    /// agent restarts, not reboots): the disk journal of each attempt.
    /// `LANDFALL_STATE_DIR`, else `landfall.state_dir=`, else /run/landfall.
    pub state_dir: PathBuf,
}

/// The state directory from the environment value and the command line text.
pub fn state_dir_from(env: Option<std::ffi::OsString>, cmdline: &str) -> PathBuf {
    env.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            crate::cmdline::landfall_params(cmdline)
                .get("state_dir")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/run/landfall"))
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            sysroot: PathBuf::from("/"),
            hello_retry: Retry {
                initial: Duration::from_millis(500),
                cap: Duration::from_secs(10),
                max_tries: Some(40),
            },
            final_ack_timeout: FINAL_ACK_TIMEOUT,
            cmdline: String::new(),
            etc_dir: PathBuf::from(crate::secrets::ETC_DIR),
            target_root: crate::disk::ApplyOptions::default().root,
            wait_secs: 25,
            state_dir: PathBuf::from("/run/landfall"),
        }
    }
}

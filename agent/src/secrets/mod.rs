//! Secrets for the target: fetched from Vault/OpenBao with the server as
//! trusted orchestrator ([`vault`]) or opened from an age bundle ([`bundle`],
//! the offline path), then written into the mounted target ([`place`]). See
//! docs/security.md for the model.
//!
//! For the pipeline (the `secrets` step, after `register`, before `disks`
//! touch anything, so a LUKS key is at hand and an alarm stops early):
//!
//! ```text
//! let role_id = secrets::role_id_from(&etc_dir.join(secrets::ROLE_ID_FILE), &cmdline)?;
//! let fetched = secrets::fetch(vault, &role_id, &assignment.secret_files, &opts).await?;
//! // ... disks (fetched.get("hosts/HOST", "luks_key")), mount under /mnt ...
//! let placed = secrets::place(Path::new("/mnt"), &fetched)?;
//! ```
//!
//! The bundle path (a role whose `secret_files` say `from = "bundle:PATH"`):
//!
//! ```text
//! let source = secrets::IdentitySource::from_cmdline(&cmdline);
//! let bundle = secrets::open_bundle(&etc_dir.join(secrets::BUNDLE_FILE), &source)?;
//! let fetched = bundle.into_fetched(&assignment.secret_files)?;
//! // ... disks (fetched.bundle_file("luks.key")), mount, then place as above
//! ```
//!
//! A [`SecretsError::SecurityAlarm`] must be reported as a failed event with
//! `data = err.failure_data()` (`{"security": true}`) on the `secrets` step and
//! on the terminal `done` event: the server then marks the machine compromised.

pub mod bundle;
pub mod place;
pub mod prompt;
pub mod secret;
pub mod vault;

use std::path::Path;

use anyhow::{bail, Context, Result};

pub use bundle::{open_bundle, Bundle, IdentitySource, BUNDLE_FILE};
pub use place::{place, place_except, PlacedFile};
pub use secret::SecretBytes;
pub use vault::{fetch, parse_from, FetchOptions, Fetched, SecretsError};

/// Where the installer image carries its own files (`RunOptions::etc_dir`
/// in tests): the file names below are inside it, and nowhere else spelled.
pub const ETC_DIR: &str = "/etc/landfall";
/// The AppRole `role_id` the image carries (the recommended channel), in [`ETC_DIR`].
pub const ROLE_ID_FILE: &str = "vault-role-id";
/// The CA of Vault's certificate the image may pin, in [`ETC_DIR`].
pub const CA_FILE: &str = "vault-ca.pem";
/// The CA of the landfall server's certificate the image pins, in [`ETC_DIR`]
/// (iso module: `landfall.installer.serverCa`).
pub const SERVER_CA_FILE: &str = "server-ca.pem";
/// [`SERVER_CA_FILE`] with its directory, for messages.
pub const SERVER_CA_FILE_PATH: &str = "/etc/landfall/server-ca.pem";

/// The AppRole `role_id`: from `file` (baked into the image, mode 0400), else
/// from `landfall.vault_role_id=` on the kernel command line `cmdline`.
///
/// Trade-off of the command line: it is readable by every process in
/// `/proc/cmdline`, it travels in the iPXE script (in clear over http) and
/// may end up in boot logs. A `role_id` alone cannot log in (the `secret_id`
/// only comes wrapped, per attempt), but the image file keeps the two
/// channels apart; prefer it.
pub fn role_id_from(file: &Path, cmdline: &str) -> Result<SecretBytes> {
    match std::fs::read(file) {
        Ok(bytes) => {
            let id = SecretBytes::new(bytes);
            let trimmed = id
                .expose_str()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .with_context(|| {
                    format!(
                        "{} is empty or not UTF-8; write the AppRole role_id into it",
                        file.display()
                    )
                })?;
            return Ok(SecretBytes::new(trimmed.as_bytes().to_vec()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let mut params = crate::cmdline::landfall_params(cmdline);
    match params.remove("vault_role_id").filter(|s| !s.is_empty()) {
        Some(v) => Ok(SecretBytes::from_string(v)),
        None => bail!(
            "no Vault role_id: bake it into the image as {} or boot with \
             landfall.vault_role_id=ROLE_ID",
            file.display()
        ),
    }
}

/// [`FetchOptions`] for a real install: the CA pinned in the image (if
/// `ca_file` exists) and `landfall.vault_insecure_http=1` from the command line.
pub fn options_from(ca_file: &Path, cmdline: &str) -> Result<FetchOptions> {
    let pinned_ca = match std::fs::read_to_string(ca_file) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", ca_file.display())),
    };
    let params = crate::cmdline::landfall_params(cmdline);
    let allow_http = matches!(
        params.get("vault_insecure_http").map(String::as_str),
        Some("1" | "true" | "yes")
    );
    Ok(FetchOptions {
        pinned_ca,
        allow_http,
        ..FetchOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_id_prefers_the_image_file_then_the_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vault-role-id");
        let cmd = "quiet landfall.vault_role_id=from-cmdline";
        assert_eq!(role_id_from(&f, cmd).unwrap().expose(), b"from-cmdline");
        std::fs::write(&f, "from-file\n").unwrap();
        assert_eq!(role_id_from(&f, cmd).unwrap().expose(), b"from-file");
        std::fs::write(&f, "\n").unwrap();
        assert!(format!("{:#}", role_id_from(&f, cmd).unwrap_err()).contains("empty"));
        let e = format!(
            "{:#}",
            role_id_from(&dir.path().join("nope"), "quiet").unwrap_err()
        );
        assert!(e.contains("landfall.vault_role_id="), "{e}");
        let o = options_from(&dir.path().join("nope"), "landfall.vault_insecure_http=1").unwrap();
        assert!(o.allow_http && o.pinned_ca.is_none());
        assert!(!options_from(&f, "").unwrap().allow_http);
    }
}

//! The hello nonce: a random secret of this boot that proves a repeated
//! hello (the agent restarted, or lost the answer) comes from the client that
//! exchanged the boot token first (docs/security.md, "Install identity").
//!
//! Kept in the state directory (tmpfs: it survives agent restarts, not
//! reboots), bound to the boot token it was made for, mode 0600.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name inside the state directory.
pub const FILE: &str = "hello-nonce.json";

#[derive(Serialize, Deserialize)]
struct Saved {
    /// SHA-256 of the boot token this nonce belongs to (not the token).
    token_sha256: String,
    nonce: String,
}

/// The nonce of `boot_token` in `state_dir`: the one saved there for this
/// token, else a new random one, saved before it is first sent.
pub fn for_token(state_dir: &Path, boot_token: &str) -> Result<String> {
    let path = state_dir.join(FILE);
    let token_sha256 = hex(&Sha256::digest(boot_token.trim().as_bytes()));
    if let Ok(text) = std::fs::read(&path) {
        match serde_json::from_slice::<Saved>(&text) {
            Ok(s) if s.token_sha256 == token_sha256 && !s.nonce.is_empty() => return Ok(s.nonce),
            Ok(_) => tracing::info!("{} is for another boot token: a new nonce", path.display()),
            Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
        }
    }
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    let nonce = hex(&buf);
    let saved = serde_json::to_vec(&Saved {
        token_sha256,
        nonce: nonce.clone(),
    })?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&saved)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(nonce)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_same_token_keeps_its_nonce_and_another_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = for_token(dir.path(), "token-a").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            for_token(dir.path(), "token-a").unwrap(),
            a,
            "an agent restart"
        );
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("token-a"), "the token itself is not kept");
        let b = for_token(dir.path(), "token-b").unwrap();
        assert_ne!(a, b);
        // A broken file is replaced, not fatal.
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        assert_ne!(for_token(dir.path(), "token-b").unwrap(), b);
    }
}

//! The one Nix renderer: `nix-instantiate --eval --strict --json FILE`, for
//! the server's layouts, the agent's `disk` commands, xtask's benchmark and
//! (with its own flags on top) `./x nixcheck`.
//!
//! Every call gets a Nix state directory of its own: nix-instantiate
//! initialises it (gcroots, its SQLite db) on first use, so two renders at
//! once (the server loading layouts, tests in threads) must not share one,
//! and one call's clean-up must not pull it from under another (commit
//! abf5d98). Nothing needs root, a daemon or /nix.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

use crate::Cmd;

/// A private Nix state directory under the system temp dir; removed on drop.
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new() -> Result<Self> {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("landfall-nix-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `nix-instantiate` using this state directory; the caller adds the arguments.
    pub fn instantiate(&self) -> Cmd {
        Cmd::new("nix-instantiate")
            .env("NIX_STATE_DIR", self.0.join("state"))
            .env("NIX_LOG_DIR", self.0.join("log"))
            .env("HOME", &self.0)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn render_cmd(state: &StateDir, path: &Path) -> Cmd {
    state
        .instantiate()
        .args(["--eval", "--strict", "--json"])
        .arg(path)
}

/// What a failed render says: the file, and Debian's package when there is
/// no nix-instantiate at all.
fn context(path: &Path, e: &crate::CmdError) -> String {
    if e.status.is_none() {
        format!(
            "rendering {} needs nix-instantiate (Debian: nix-bin); or render it to .json yourself",
            path.display()
        )
    } else {
        format!("rendering {}", path.display())
    }
}

fn with_context(path: &Path, e: crate::CmdError) -> anyhow::Error {
    let c = context(path, &e);
    anyhow::Error::new(e).context(c)
}

/// Render the Nix file `path` to JSON (async, for the agent).
pub async fn render_json(path: &Path) -> Result<String> {
    let state = StateDir::new()?;
    let out = render_cmd(&state, path).run().await;
    Ok(out.map_err(|e| with_context(path, e))?.stdout)
}

/// Render the Nix file `path` to JSON (blocking, for the server's loader and tools).
pub fn render_json_blocking(path: &Path) -> Result<String> {
    let state = StateDir::new()?;
    let out = render_cmd(&state, path).run_blocking();
    Ok(out.map_err(|e| with_context(path, e))?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_names_the_file_on_failure() {
        let dir = std::env::temp_dir().join(format!("landfall-nix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.nix");
        std::fs::write(&good, "{ a = [ 1 2 ]; }").unwrap();
        let bad = dir.join("bad.nix");
        std::fs::write(&bad, "{ a = ; }").unwrap();
        let json = render_json_blocking(&good).unwrap();
        assert_eq!(json.trim(), r#"{"a":[1,2]}"#);
        let e = format!("{:#}", render_json_blocking(&bad).unwrap_err());
        assert!(
            e.starts_with(&format!("rendering {}: `nix-instantiate", bad.display())),
            "{e}"
        );
        assert!(e.contains("bad.nix"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

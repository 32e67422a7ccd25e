//! The other files a config names (`[vault]`'s `ca_file` and `token_file`,
//! the `artifacts` directory): validation looks at the disk only through
//! these and the layout loader (`layouts`).

use std::path::Path;

use anyhow::{Context, Result};

/// The text of `path`, named by the config key `key`; `what` follows the
/// path in the error.
pub(super) fn read(key: &str, path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("{key}: reading {}{what}", path.display()))
}

pub(super) fn is_dir(path: &Path) -> bool {
    path.is_dir()
}

pub(super) fn is_file(path: &Path) -> bool {
    path.is_file()
}

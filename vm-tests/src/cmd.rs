//! The one place this crate runs host programs: the command line and stderr tail in errors.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// The command line of `cmd`, shell-like, for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; fails on a non-zero exit with the command line and stderr tail.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = display(cmd);
    let out = cmd.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 1024)
        );
    }
    Ok(out)
}

/// The last `max` bytes of `s` (on a char boundary), trimmed.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim()
}

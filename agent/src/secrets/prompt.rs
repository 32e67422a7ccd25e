//! Ask for a passphrase on one or more terminals (`/dev/tty1`, `/dev/ttyS0`,
//! `/dev/console`, a pty): the prompt goes to every terminal, echo off, and
//! the first terminal that delivers a line wins. Each terminal's settings are
//! restored when the [`Prompt`] is dropped (also on error or panic; not when
//! the process is killed by a signal).
//!
//! The passphrase is read into a fixed-size zeroized buffer (no reallocation
//! leaves a copy behind) and handed over as [`SecretBytes`]; it never goes
//! through `tracing`, an error message or `Debug`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, Termios};
use zeroize::{Zeroize, Zeroizing};

use super::secret::SecretBytes;

/// The longest passphrase accepted (bytes).
pub const MAX_PASSPHRASE: usize = 1024;

/// Terminals with echo turned off while a passphrase is asked.
pub struct Prompt {
    ttys: Vec<Tty>,
}

struct Tty {
    path: PathBuf,
    file: File,
    saved: Termios,
    line: Zeroizing<Vec<u8>>,
}

impl Drop for Tty {
    fn drop(&mut self) {
        // Best effort: put echo back as it was.
        let _ = termios::tcsetattr(self.file.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompt")
            .field(
                "ttys",
                &self.ttys.iter().map(|t| &t.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Prompt {
    /// Open the terminals and turn their echo off (canonical line input,
    /// CR read as NL, the newline itself still echoed). A terminal that
    /// cannot be opened is skipped with a warning; none at all is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut ttys = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            match open_tty(p) {
                Ok(t) => ttys.push(t),
                Err(e) => {
                    tracing::warn!(tty = %p.display(), error = format!("{e:#}"), "cannot prompt on this terminal");
                    errors.push(format!("{}: {e:#}", p.display()));
                }
            }
        }
        if ttys.is_empty() {
            bail!(
                "no terminal to ask the passphrase on ({})",
                if errors.is_empty() {
                    "none given".to_owned()
                } else {
                    errors.join("; ")
                }
            );
        }
        Ok(Self { ttys })
    }

    /// Write `msg` to every terminal (errors ignored: a dead serial line
    /// must not stop the others).
    pub fn say(&mut self, msg: &str) {
        for t in &mut self.ttys {
            let _ = t.file.write_all(msg.as_bytes());
            let _ = t.file.flush();
        }
    }

    /// Show `prompt` on every terminal and return the first line typed on
    /// any of them, without its line end. End of input (Ctrl-D on an empty
    /// line) is an error.
    pub fn read_secret(&mut self, prompt: &str) -> Result<SecretBytes> {
        for t in &mut self.ttys {
            t.line.zeroize();
        }
        self.say(prompt);
        loop {
            let mut fds: Vec<PollFd<'_>> = self
                .ttys
                .iter()
                .map(|t| PollFd::new(t.file.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for the passphrase"),
            }
            let ready: Vec<usize> = fds
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    f.revents().is_some_and(|r| {
                        r.intersects(
                            PollFlags::POLLIN
                                | PollFlags::POLLHUP
                                | PollFlags::POLLERR
                                | PollFlags::POLLNVAL,
                        )
                    })
                })
                .map(|(i, _)| i)
                .collect();
            drop(fds);
            // Highest index first, so removing a dead terminal keeps the others' indices.
            for i in ready.into_iter().rev() {
                let got = match self.ttys[i].read_some() {
                    Ok(got) => got,
                    // One of several terminals gone (hangup, end of input): go
                    // on with the others; the last one's error stops the prompt.
                    Err(e) if self.ttys.len() > 1 => {
                        tracing::warn!(tty = %self.ttys[i].path.display(), error = format!("{e:#}"), "no longer asking on this terminal");
                        self.ttys.remove(i);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(secret) = got {
                    for t in &mut self.ttys {
                        t.line.zeroize();
                    }
                    // The line end was not echoed on the other terminals.
                    for (j, t) in self.ttys.iter_mut().enumerate() {
                        if j != i {
                            let _ = t.file.write_all(b"\n");
                        }
                    }
                    return Ok(secret);
                }
            }
        }
    }

    /// Ask up to `tries` times; `check` says whether a passphrase is right
    /// (`Ok(Some(v))`), wrong (`Ok(None)`: a message, then again) or failed
    /// otherwise (`Err`: stop). `what` names the thing being unlocked.
    pub fn ask<T>(
        &mut self,
        what: &str,
        tries: u32,
        mut check: impl FnMut(&SecretBytes) -> Result<Option<T>>,
    ) -> Result<T> {
        for n in 1..=tries {
            let pass = self.read_secret(&format!("landfall: passphrase for {what}: "))?;
            let verdict = if pass.is_empty() {
                None
            } else {
                self.say("landfall: checking the passphrase...\n");
                check(&pass)?
            };
            drop(pass);
            if let Some(v) = verdict {
                self.say(&format!("landfall: {what} unlocked\n"));
                return Ok(v);
            }
            let left = tries - n;
            tracing::warn!(what, tries_left = left, "wrong passphrase");
            if left > 0 {
                self.say(&format!(
                    "landfall: wrong passphrase for {what} ({left} {} left)\n",
                    if left == 1 { "try" } else { "tries" }
                ));
            } else {
                self.say(&format!(
                    "landfall: wrong passphrase for {what}; {tries} tries failed, nothing was decrypted\n"
                ));
            }
        }
        bail!("wrong passphrase for {what}: {tries} tries failed, nothing was decrypted")
    }
}

fn open_tty(path: &Path) -> Result<Tty> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let saved = termios::tcgetattr(file.as_fd())
        .with_context(|| format!("{} is not a terminal", path.display()))?;
    let mut quiet = saved.clone();
    quiet
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ECHOE | LocalFlags::ECHOK);
    quiet
        .local_flags
        .insert(LocalFlags::ICANON | LocalFlags::ECHONL);
    quiet.input_flags.insert(InputFlags::ICRNL);
    // TCSAFLUSH: drop anything typed before echo went off.
    termios::tcsetattr(file.as_fd(), SetArg::TCSAFLUSH, &quiet)
        .with_context(|| format!("turning echo off on {}", path.display()))?;
    Ok(Tty {
        path: path.to_owned(),
        file,
        saved,
        line: Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE)),
    })
}

impl Tty {
    /// Read what is there; `Some` once a whole line arrived.
    fn read_some(&mut self) -> Result<Option<SecretBytes>> {
        let mut buf = Zeroizing::new([0u8; 256]);
        let n = match self.file.read(&mut buf[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        if n == 0 {
            bail!(
                "end of input on {} while asking for the passphrase",
                self.path.display()
            );
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                // Exact capacity: no reallocation leaves a copy behind.
                let mut out = Vec::with_capacity(self.line.len());
                out.extend_from_slice(&self.line);
                self.line.zeroize();
                buf.zeroize();
                return Ok(Some(SecretBytes::new(out)));
            }
            if self.line.len() == MAX_PASSPHRASE {
                self.line.zeroize();
                bail!("passphrase longer than {MAX_PASSPHRASE} bytes");
            }
            // Capacity is MAX_PASSPHRASE: never reallocates.
            self.line.push(b);
        }
        Ok(None)
    }
}

//! RAII guards for what the disk step sets up: mounts, LUKS mappings, md
//! arrays, LVM volume groups, ZFS pools and (for tests and benchmarks) loop
//! devices. One set of verbs for all of them
//! (and [`super::Applied`], which holds the disk step's guards): `close(self)
//! -> Result` ends it and reports failure, `try_close(&mut self)` keeps the
//! guard when it fails (to try again later), `leak(self)` leaves it in place
//! and forgets it; a best-effort `Drop` covers error paths and panics.
//!
//! Unmounting uses umount2(2) directly (no process), retried while busy by
//! the one retry helper ([`crate::retry`]). LUKS and loop devices need
//! `cryptsetup`/`losetup`, run through [`Cmd`]. In `Drop`, which cannot
//! await, both happen on a helper thread with its own small runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::mount::{umount2, MntFlags};

use crate::cmd::{Cmd, CmdError, Output};
use crate::retry::{Attempt, Retry, RetryError};

/// Run a future to completion from synchronous code (including `Drop`
/// inside an async runtime, where blocking the runtime's thread or nesting a
/// `block_on` is wrong): on a separate thread with its own runtime.
fn block_on_own_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
    failed: impl FnOnce(String) -> T,
) -> T {
    let joined = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(work))
            .map_err(|e| format!("could not start a runtime: {e}"))
    })
    .join();
    match joined {
        Ok(Ok(v)) => v,
        Ok(Err(what)) => failed(what),
        Err(_) => failed("panicked".to_owned()),
    }
}

/// Run a command to completion from synchronous code (including `Drop`
/// inside an async runtime): on a separate thread with its own runtime.
pub fn run_blocking(cmd: Cmd) -> Result<Output, CmdError> {
    let shown = cmd.display();
    block_on_own_thread(cmd.run(), |what| {
        Err(CmdError {
            cmdline: shown,
            what,
            status: None,
            stderr_tail: String::new(),
        })
    })
}

/// A mounted filesystem; unmounted by `close()` or on drop.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    device: String,
    active: bool,
}

impl MountGuard {
    /// Mount `device` on `target` (created if missing) with `mount -t FSTYPE -o OPTIONS`.
    pub async fn mount(device: &str, target: &Path, fs_type: &str, options: &str) -> Result<Self> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating mountpoint {}", target.display()))?;
        Cmd::new("mount")
            .args(["-t", fs_type, "-o", options, device])
            .arg(target)
            .run()
            .await
            .with_context(|| format!("mounting {device} on {}", target.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            device: device.to_owned(),
            active: true,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Unmount, retrying while busy (up to 20 times, 100 ms apart, as coreos-installer does).
    pub async fn close(mut self) -> Result<()> {
        self.active = false;
        unmount(&self.target).await
    }

    /// Unmount like [`MountGuard::close`], but keep the guard when it fails
    /// (the caller may try again later).
    pub async fn try_close(&mut self) -> Result<()> {
        unmount(&self.target).await?;
        self.active = false;
        Ok(())
    }

    /// Leave it mounted and forget it.
    pub fn leak(mut self) {
        self.active = false;
    }
}

/// How an unmount is retried while the filesystem is busy: 20 tries, 100 ms
/// apart (as coreos-installer does).
const UNMOUNT_RETRY: Retry = Retry {
    initial: Duration::from_millis(100),
    cap: Duration::from_millis(100),
    max_tries: Some(20),
};

async fn unmount(target: &Path) -> Result<()> {
    UNMOUNT_RETRY
        .run(
            |_| async {
                match umount2(target, MntFlags::empty()) {
                    Ok(()) => Attempt::Done(()),
                    Err(e @ nix::errno::Errno::EBUSY) => Attempt::Retry(e),
                    Err(e) => Attempt::Fatal(e),
                }
            },
            |_, _, _| {},
        )
        .await
        .map_err(|e| match e {
            RetryError::Fatal(e) => {
                anyhow::Error::new(e).context(format!("unmounting {}", target.display()))
            }
            RetryError::Exhausted { tries, last } => anyhow::Error::new(last).context(format!(
                "unmounting {} (still busy after {tries} tries)",
                target.display()
            )),
        })
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.active {
            let target = self.target.clone();
            let r = block_on_own_thread(async move { unmount(&target).await }, |what| {
                Err(anyhow::anyhow!(
                    "unmounting {}: {what}",
                    self.target.display()
                ))
            });
            if let Err(e) = r {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// What holds a device open below the mounts, in the order it was set up:
/// a LUKS mapping, an md array, an active volume group, an imported pool.
/// Closed in reverse order (a volume group on a LUKS volume on an md array
/// is deactivated, then closed, then stopped).
#[derive(Debug)]
pub struct Holder {
    kind: HolderKind,
    name: String,
    active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderKind {
    /// `cryptsetup close NAME`.
    Luks,
    /// `mdadm --stop /dev/md/NAME`.
    Md,
    /// `vgchange -an NAME`.
    Vg,
    /// `zpool export NAME`.
    Zpool,
}

impl Holder {
    /// Take charge of what the caller just set up.
    pub fn new(kind: HolderKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            active: true,
        }
    }

    pub fn kind(&self) -> HolderKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn cmd(&self) -> Cmd {
        match self.kind {
            HolderKind::Luks => Cmd::new("cryptsetup").args(["close", &self.name]),
            HolderKind::Md => Cmd::new("mdadm").args(["--stop", &format!("/dev/md/{}", self.name)]),
            HolderKind::Vg => Cmd::new("vgchange")
                .args(["-an", &self.name])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1"),
            HolderKind::Zpool => Cmd::new("zpool").args(["export", &self.name]),
        }
    }

    fn what(&self) -> String {
        match self.kind {
            HolderKind::Luks => format!("closing LUKS mapping {}", self.name),
            HolderKind::Md => format!("stopping md array {}", self.name),
            HolderKind::Vg => format!("deactivating volume group {}", self.name),
            HolderKind::Zpool => format!("exporting ZFS pool {}", self.name),
        }
    }

    /// Leave it set up and forget it.
    pub fn leak(mut self) {
        self.active = false;
    }

    /// Close like [`Holder::close`], but keep the guard when it fails.
    pub async fn try_close(&mut self) -> Result<()> {
        let what = self.what();
        self.cmd().run().await.with_context(|| what)?;
        self.active = false;
        Ok(())
    }

    /// Close it; the guard is spent whatever the result.
    pub async fn close(mut self) -> Result<()> {
        let r = self.try_close().await;
        self.active = false;
        r
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = run_blocking(self.cmd()) {
                tracing::warn!("{}: {e}", self.what());
            }
        }
    }
}

/// A loop device over a file (tests, benchmarks); partitions dropped and
/// the device detached by `close()` or on drop.
#[derive(Debug)]
pub struct LoopGuard {
    device: String,
    active: bool,
}

impl LoopGuard {
    /// `losetup --find --show FILE`.
    pub fn attach(file: &Path) -> Result<Self> {
        Self::attach_with_sector_size(file, None)
    }

    /// The same with a logical sector size (`--sector-size 4096`: a 4Kn disk).
    pub fn attach_with_sector_size(file: &Path, sector_size: Option<u32>) -> Result<Self> {
        let mut cmd = Cmd::new("losetup").args(["--find", "--show"]);
        if let Some(ss) = sector_size {
            cmd = cmd.args(["--sector-size".to_string(), ss.to_string()]);
        }
        let out = run_blocking(cmd.arg(file))
            .with_context(|| format!("attaching {} to a loop device", file.display()))?;
        let device = out.stdout.trim().to_owned();
        anyhow::ensure!(
            device.starts_with("/dev/loop"),
            "losetup printed {device:?}"
        );
        Ok(Self {
            device,
            active: true,
        })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn close(mut self) -> Result<()> {
        self.active = false;
        detach(&self.device)
    }
}

fn detach(device: &str) -> Result<()> {
    // Partitions added with BLKPG stay until deleted; losetup -d alone leaves them.
    let _ = run_blocking(Cmd::new("partx").args(["-d", device]));
    run_blocking(Cmd::new("losetup").args(["-d", device]))
        .with_context(|| format!("detaching {device}"))?;
    Ok(())
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if self.active {
            if let Err(e) = detach(&self.device) {
                tracing::warn!("{e:#}");
            }
        }
    }
}

//! Shared helpers of the disk tests: rendering layouts, loop devices over
//! sparse files (detached on drop, even on panic), hashing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use landfall_agent::disk::guards::LoopGuard;
use landfall_agent::disk::{Layout, Target};

pub const LAYOUTS: &[&str] = &[
    "simple-efi",
    "hybrid",
    "btrfs-subvolumes",
    "luks-btrfs",
    "two-disk",
    "xfs-swap",
];

/// Every fixture layout in disko-layouts/ (not broken/), by name.
pub fn all_layouts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("disko-layouts"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension().is_some_and(|x| x == "nix"))
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn layout_path(name: &str) -> PathBuf {
    repo().join("disko-layouts").join(format!("{name}.nix"))
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Render a layout file with nix-instantiate, as the server does.
pub fn render(path: &Path) -> serde_json::Value {
    let text = rt()
        .block_on(landfall_agent::disk::render_nix(path))
        .unwrap_or_else(|e| panic!("rendering {}: {e:#}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn layout(name: &str) -> Layout {
    Layout::from_json(&render(&layout_path(name))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Hypothetical targets of `size` for every disk of the layout.
pub fn sized(layout: &Layout, size: u64) -> BTreeMap<String, Target> {
    layout
        .disks
        .keys()
        .map(|n| {
            (
                n.clone(),
                Target {
                    device: format!("/dev/<{n}>"),
                    size_bytes: size,
                    sector_size: 512,
                    by_id: None,
                },
            )
        })
        .collect()
}

/// Loop tests need root; CI runs as root. Not root is a failure, not a skip.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test writes to loop devices and must run as root (CI does); run `sudo cargo test -p landfall-agent --test ...`"
    );
}

/// Loop-device tests run one at a time: they share /dev/loop* and mounts.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sparse file attached to a loop device. Field order: the loop device
/// is detached before the file is removed.
pub struct LoopDisk {
    pub guard: LoopGuard,
    pub file: tempfile::NamedTempFile,
}

impl LoopDisk {
    pub fn new(size: u64) -> Self {
        Self::with_sector_size(size, None)
    }

    pub fn with_sector_size(size: u64, sector_size: Option<u32>) -> Self {
        let file = tempfile::Builder::new()
            .prefix("landfall-disk-")
            .suffix(".img")
            .tempfile_in(
                std::env::var_os("LANDFALL_TEST_IMG_DIR").unwrap_or_else(|| "/var/tmp".into()),
            )
            .unwrap();
        file.as_file().set_len(size).unwrap();
        let guard = LoopGuard::attach_with_sector_size(file.path(), sector_size).unwrap();
        LoopDisk { guard, file }
    }

    pub fn dev(&self) -> &str {
        self.guard.device()
    }

    /// sha256 of the backing file's bytes.
    pub fn hash(&self) -> String {
        hash_file(self.file.path())
    }
}

/// sha256 of a file's bytes (`sha256sum`: fast also in debug builds).
pub fn hash_file(p: &Path) -> String {
    sh(&["sha256sum", p.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Run a program, return stdout; panics with stderr on failure.
pub fn sh(argv: &[&str]) -> String {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `blkid -p -o export DEV` as a map.
pub fn blkid(dev: &str) -> BTreeMap<String, String> {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "export", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

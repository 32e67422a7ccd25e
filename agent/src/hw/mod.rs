//! Hardware inventory from sysfs, procfs, sysinfo and blkid. No udev needed.
//!
//! Everything is read below a `sysroot` ("/" for this machine, or a tree
//! captured by `agent/tests/fixtures/capture.sh`), so the same code runs on
//! the live system and on fixtures. Unreadable things become `None`/empty;
//! only a missing sysroot is an error. No subprocess is ever spawned here.

mod byid;
mod cpu;
mod disks;
mod dmi;
mod firmware;
mod gpus;
pub mod mountinfo;
mod nics;
mod pci;
mod probe;
#[cfg(test)]
mod proptests;
mod virt;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use landfall_proto::Inventory;

pub use byid::{by_id_name, udev_symlink_escape};

/// Read the inventory of the machine whose root is `sysroot` ("/" for this one).
pub fn detect(sysroot: &Path) -> anyhow::Result<Inventory> {
    let meta =
        fs::metadata(sysroot).with_context(|| format!("reading sysroot {}", sysroot.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "sysroot {} is not a directory",
        sysroot.display()
    );
    let root = Root::new(sysroot);

    let cpuinfo = root.read_string("proc/cpuinfo");
    let cpu = cpu::detect(&root, cpuinfo.as_deref());
    let dmi = dmi::detect(&root);
    let virtualization = virt::detect(&root, cpuinfo.as_deref(), &dmi);

    let pci = pci::detect(&root);
    Ok(Inventory {
        hostname: root.read_attr("proc/sys/kernel/hostname"),
        kernel: root.read_attr("proc/sys/kernel/osrelease"),
        cpu,
        memory: cpu::memory(&root),
        firmware: firmware::detect(&root),
        dmi,
        disks: disks::detect(&root),
        nics: nics::detect(&root),
        gpus: gpus::detect(&pci),
        usb: pci::usb(&root),
        pci,
        // The agent runs on the machine it inventories, so its own target is the machine's.
        system: Some(format!("{}-linux", std::env::consts::ARCH)),
        virtualization,
    })
}

/// [`detect`] as pretty-printed JSON, what `landfall-agent detect --json` prints.
pub fn detect_json(sysroot: &Path) -> anyhow::Result<String> {
    let inv = detect(sysroot)?;
    serde_json::to_string_pretty(&inv).context("serialising the inventory")
}

/// The root the inventory is read from, with tolerant readers.
pub(crate) struct Root {
    base: PathBuf,
    /// True when `base` is this machine's "/": live-only sources (sysinfo,
    /// getifaddrs) may be used.
    live: bool,
}

impl Root {
    fn new(base: &Path) -> Self {
        let live = fs::canonicalize(base)
            .map(|p| p == Path::new("/"))
            .unwrap_or(false);
        Root {
            base: base.to_path_buf(),
            live,
        }
    }

    /// `rel` below the sysroot. `rel` never starts with '/'.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel.trim_start_matches('/'))
    }

    pub(crate) fn read_string(&self, rel: &str) -> Option<String> {
        read_string(&self.path(rel))
    }

    /// A sysfs attribute, trimmed; `None` when unreadable or empty.
    pub(crate) fn read_attr(&self, rel: &str) -> Option<String> {
        read_attr(&self.path(rel))
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Names of the entries of a directory, sorted; empty when unreadable.
    pub(crate) fn list(&self, rel: &str) -> Vec<String> {
        list_dir(&self.path(rel))
    }
}

pub(crate) fn read_string(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A sysfs attribute, trimmed; `None` when unreadable or empty.
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    let s = read_string(path)?;
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_attr(path)?.parse().ok()
}

/// "1" -> true; anything else (or unreadable) -> false.
pub(crate) fn read_flag(path: &Path) -> bool {
    read_attr(path).as_deref() == Some("1")
}

/// The last component of a symlink's target (e.g. the driver name of `device/driver`).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

pub(crate) fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The inventory as a technician reads it (`landfall-agent detect` without
/// `--json`): one line for the machine, one per disk and NIC.
pub fn describe(inv: &Inventory) -> String {
    let mib = |b: u64| b >> 20;
    let opt = |v: &Option<String>| v.as_deref().unwrap_or("-").to_owned();
    let mut s = format!(
        "{} {} (serial {}), {} firmware{}, virtualization {}\n\
         cpu: {} ({} cores, {} threads), memory {} MiB\n",
        opt(&inv.dmi.vendor),
        opt(&inv.dmi.product),
        opt(&inv.dmi.serial),
        serde_json::to_value(inv.firmware.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        match inv.firmware.secure_boot {
            Some(true) => " (Secure Boot on)",
            _ => "",
        },
        if inv.virtualization.is_empty() {
            "none"
        } else {
            &inv.virtualization
        },
        opt(&inv.cpu.model),
        inv.cpu.cores,
        inv.cpu.threads,
        mib(inv.memory.total_bytes),
    );
    for d in &inv.disks {
        let used: Vec<String> = d
            .signatures
            .iter()
            .map(|g| g.kind.clone())
            .chain(d.partition_table.iter().map(|t| format!("{t} table")))
            .collect();
        s.push_str(&format!(
            "disk {}: {} MiB, {}, {}{} [{}]\n",
            d.path,
            mib(d.size_bytes),
            opt(&d.model),
            d.by_id.as_deref().unwrap_or("no by-id name"),
            if d.removable { ", removable" } else { "" },
            if used.is_empty() {
                "empty".to_owned()
            } else {
                used.join(", ")
            },
        ));
    }
    for n in &inv.nics {
        s.push_str(&format!(
            "nic {}: {} link {}{} {}\n",
            n.name,
            n.mac,
            if n.link_up { "up" } else { "down" },
            n.speed_mbps
                .map(|m| format!(" {m} Mb/s"))
                .unwrap_or_default(),
            n.addresses.join(" "),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sysroot_is_an_error_naming_the_path() {
        let err = detect(Path::new("/nonexistent/landfall-sysroot")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/landfall-sysroot"));
    }

    #[test]
    fn empty_sysroot_gives_an_empty_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let inv = detect(dir.path()).unwrap();
        assert!(inv.disks.is_empty() && inv.nics.is_empty() && inv.gpus.is_empty());
        assert_eq!(inv.hostname, None);
        assert_eq!(inv.virtualization, "none");
        assert_eq!(
            inv.firmware.mode,
            landfall_proto::inventory::FirmwareMode::Bios
        );
    }

    #[test]
    fn attributes_are_trimmed_and_empty_is_none() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "  value \n").unwrap();
        fs::write(dir.path().join("b"), " \n").unwrap();
        assert_eq!(read_attr(&dir.path().join("a")).as_deref(), Some("value"));
        assert_eq!(read_attr(&dir.path().join("b")), None);
        assert_eq!(read_attr(&dir.path().join("c")), None);
    }
}

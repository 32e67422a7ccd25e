//! Safety before any write: what is on each target disk, and whether it may
//! be overwritten. Mounted, busy (held by device-mapper/RAID, active swap),
//! read-only disks and the boot medium are refused whatever the policy;
//! a disk holding a partition table or any signature is refused unless the
//! wipe policy allows it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the installer's own root/boot medium may be mounted.
const BOOT_MOUNTS: &[&str] = &[
    "/",
    "/iso",
    "/run/initramfs/live",
    "/nix/.ro-store",
    "/run/rootfsbase",
    "/boot",
];

/// What a probe found on one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// Canonical node, e.g. "/dev/loop3".
    pub device: String,
    /// Human descriptions: "gpt partition table", "ext4 on /dev/loop3p2", ...
    pub found: Vec<String>,
    /// "DEV on MOUNTPOINT"
    pub mounted: Vec<String>,
    pub boot_medium: bool,
    /// "DEV held by dm-0", "DEV is active swap"
    pub busy: Vec<String>,
    pub read_only: bool,
}

/// Why a disk was refused. The message names the disk, what was found and
/// what would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("disk {disk} ({device}) holds data: {found}; refusing to overwrite it: the wipe policy is `never` (allow it with `apply --wipe`, or `wipe = \"always\"` in the machine's role on the server)")]
    HasData {
        disk: String,
        device: String,
        found: String,
    },
    #[error("disk {disk} ({device}) is the installer's boot medium ({what}); refusing whatever the wipe policy")]
    BootMedium {
        disk: String,
        device: String,
        what: String,
    },
    #[error("disk {disk} ({device}) is mounted ({what}); refusing whatever the wipe policy: unmount it first")]
    Mounted {
        disk: String,
        device: String,
        what: String,
    },
    #[error("disk {disk} ({device}) is in use ({what}); refusing whatever the wipe policy")]
    Busy {
        disk: String,
        device: String,
        what: String,
    },
    #[error("disk {disk} ({device}) is read-only; refusing")]
    ReadOnly { disk: String, device: String },
}

/// The kernel's name for a device path (following symlinks): "loop3", "nvme0n1".
pub fn kernel_name(device: &str) -> Result<(PathBuf, String)> {
    let canon = fs::canonicalize(device).with_context(|| format!("resolving {device}"))?;
    let name = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{device} has no file name"))?;
    Ok((canon, name))
}

/// Partitions the kernel knows of `name` (sysfs), e.g. ["loop3p1", "loop3p2"].
pub fn kernel_partitions(name: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/block").join(name);
    crate::hw::list_dir(&dir)
        .into_iter()
        .filter(|e| dir.join(e).join("partition").exists())
        .collect()
}

fn dev_number(name: &str) -> Option<String> {
    fs::read_to_string(Path::new("/sys/class/block").join(name).join("dev"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Probe one disk: signatures (blkid), mounts, holders, swap, read-only.
pub async fn probe(device: &str) -> Result<Probe> {
    let (canon, name) = kernel_name(device)?;
    let canon_s = canon.to_string_lossy().into_owned();
    let sys = Path::new("/sys/class/block").join(&name);
    anyhow::ensure!(
        sys.exists(),
        "{device} ({canon_s}) is not a block device the kernel knows"
    );
    let mut p = Probe {
        device: canon_s.clone(),
        read_only: fs::read_to_string(sys.join("ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false),
        ..Default::default()
    };
    let parts = kernel_partitions(&name);
    let mut nodes = vec![(name.clone(), canon_s.clone())];
    nodes.extend(parts.iter().map(|p| (p.clone(), format!("/dev/{p}"))));

    for (i, (_, node)) in nodes.iter().enumerate() {
        if !Path::new(node).exists() {
            continue;
        }
        for sig in signatures(node).await? {
            if i == 0 {
                p.found.push(sig);
            } else {
                p.found.push(format!("{sig} on {node}"));
            }
        }
    }
    // Partitions the kernel still lists without a table or signature behind
    // them (e.g. left on a reused loop device) are not data: `wipe` drops them.

    // Mounts: by major:minor in mountinfo.
    let mounts = crate::hw::mountinfo::read().unwrap_or_default();
    for (kname, node) in &nodes {
        let Some(num) = dev_number(kname) else {
            continue;
        };
        for m in mounts.iter().filter(|m| m.dev == num) {
            if BOOT_MOUNTS.contains(&m.mountpoint.as_str()) {
                p.boot_medium = true;
            }
            p.mounted.push(format!("{node} on {}", m.mountpoint));
        }
        for h in crate::hw::list_dir(&Path::new("/sys/class/block").join(kname).join("holders")) {
            p.busy.push(format!("{node} held by {h}"));
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(dev) = line.split_whitespace().next() {
            if let Ok((_, n)) = kernel_name(dev) {
                if nodes.iter().any(|(k, _)| *k == n) {
                    p.busy.push(format!("{dev} is active swap"));
                }
            }
        }
    }
    Ok(p)
}

/// Decide: `Ok` when the disk may be written (wiping what was found when `wipe`).
pub fn check(disk: &str, p: &Probe, wipe: bool) -> Result<(), Refusal> {
    let (disk, device) = (disk.to_owned(), p.device.clone());
    if p.boot_medium {
        return Err(Refusal::BootMedium {
            disk,
            device,
            what: p.mounted.join(", "),
        });
    }
    if !p.mounted.is_empty() {
        return Err(Refusal::Mounted {
            disk,
            device,
            what: p.mounted.join(", "),
        });
    }
    if !p.busy.is_empty() {
        return Err(Refusal::Busy {
            disk,
            device,
            what: p.busy.join(", "),
        });
    }
    if p.read_only {
        return Err(Refusal::ReadOnly { disk, device });
    }
    if !p.found.is_empty() && !wipe {
        return Err(Refusal::HasData {
            disk,
            device,
            found: p.found.join(", "),
        });
    }
    Ok(())
}

/// Signatures libblkid finds on one node, low-level probing (no cache).
async fn signatures(node: &str) -> Result<Vec<String>> {
    let f = super::probe::probe(node)?;
    if f.ambivalent {
        return Ok(vec!["several conflicting signatures".into()]);
    }
    let mut found = Vec::new();
    if let Some(t) = f.get("PTTYPE") {
        found.push(format!("{t} partition table"));
    }
    if let Some(t) = f.get("TYPE") {
        let what = match t {
            "crypto_LUKS" => "LUKS volume".to_owned(),
            "LVM2_member" => "LVM physical volume".to_owned(),
            "linux_raid_member" => "RAID member".to_owned(),
            "zfs_member" => "ZFS pool member".to_owned(),
            "swap" => "swap".to_owned(),
            other => format!("{other} filesystem"),
        };
        found.push(what);
    }
    Ok(found)
}

/// `KEY=value` lines of `blkid -o export`.
pub fn parse_export(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("\\ ", " ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_disk_found_and_policy() {
        let p = Probe {
            device: "/dev/loop3".into(),
            found: vec![
                "gpt partition table".into(),
                "ext4 filesystem on /dev/loop3p1".into(),
            ],
            ..Default::default()
        };
        let e = check("main", &p, false).unwrap_err().to_string();
        assert!(e.contains("disk main (/dev/loop3)"), "{e}");
        assert!(
            e.contains("gpt partition table, ext4 filesystem on /dev/loop3p1"),
            "{e}"
        );
        assert!(
            e.contains("wipe policy is `never`") && e.contains("--wipe"),
            "{e}"
        );
        assert!(check("main", &p, true).is_ok());
        let m = Probe {
            mounted: vec!["/dev/loop3p1 on /".into()],
            boot_medium: true,
            ..p.clone()
        };
        assert!(matches!(
            check("main", &m, true),
            Err(Refusal::BootMedium { .. })
        ));
        let ro = Probe {
            read_only: true,
            found: vec![],
            ..p
        };
        assert!(matches!(
            check("main", &ro, true),
            Err(Refusal::ReadOnly { .. })
        ));
    }
}

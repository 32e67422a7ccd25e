//! Safety before any write: what is on each target disk, and whether it may
//! be overwritten. Mounted, busy (held by device-mapper other than LVM,
//! active swap, anything mounted on what is stacked above it), read-only
//! disks and the boot medium are refused whatever the policy; a disk holding
//! a partition table or any signature, or that is a member of an active md
//! array or volume group, is refused unless the wipe policy allows it (the
//! wipe then stops the array and deactivates the volume group first).

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

/// What is stacked on a device (its `holders` in sysfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stacked {
    /// An md array ("md127").
    Md(String),
    /// An LVM volume group, by name (its logical volumes are device-mapper devices).
    Vg(String),
    /// Anything else: a LUKS mapping, a multipath or other device-mapper table.
    Other(String),
}

/// The volume group of an LVM device-mapper name ("vg--a-lv" is VG "vg-a",
/// LV "lv": a '-' inside a name is doubled).
pub fn dm_vg_name(dm_name: &str) -> Option<String> {
    let b = dm_name.as_bytes();
    let mut vg = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                vg.push('-');
                i += 2;
                continue;
            }
            return Some(vg);
        }
        vg.push(b[i] as char);
        i += 1;
    }
    None
}

fn classify(holder: &str) -> Stacked {
    if holder.starts_with("md") {
        return Stacked::Md(holder.to_owned());
    }
    let dm = |f: &str| {
        fs::read_to_string(
            Path::new("/sys/class/block")
                .join(holder)
                .join("dm")
                .join(f),
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
    };
    if dm("uuid").starts_with("LVM-") {
        if let Some(vg) = dm_vg_name(&dm("name")) {
            return Stacked::Vg(vg);
        }
    }
    Stacked::Other(holder.to_owned())
}

/// Everything stacked on `name` and its partitions, recursively: the
/// kernel names, and each classified; the topmost first (the order to take
/// them down in). A volume group appears once.
pub fn stack_above(name: &str) -> Vec<Stacked> {
    fn visit(n: &str, seen: &mut Vec<String>, out: &mut Vec<(String, Stacked)>) {
        let mut nodes = vec![n.to_owned()];
        nodes.extend(kernel_partitions(n));
        for node in nodes {
            for h in crate::hw::list_dir(&Path::new("/sys/class/block").join(&node).join("holders"))
            {
                if seen.contains(&h) {
                    continue;
                }
                seen.push(h.clone());
                visit(&h, seen, out);
                out.push((h.clone(), classify(&h)));
            }
        }
    }
    let mut seen = Vec::new();
    let mut all = Vec::new();
    visit(name, &mut seen, &mut all);
    let mut out: Vec<Stacked> = Vec::new();
    for (_, s) in all {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The kernel devices stacked on `name` (recursively), for the mount and swap checks.
fn stacked_nodes(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        let mut nodes = vec![n.clone()];
        nodes.extend(kernel_partitions(&n));
        for node in nodes {
            for h in crate::hw::list_dir(&Path::new("/sys/class/block").join(&node).join("holders"))
            {
                if !out.contains(&h) {
                    out.push(h.clone());
                    out.extend(kernel_partitions(&h));
                    todo.push(h);
                }
            }
        }
    }
    out
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
            match classify(&h) {
                Stacked::Md(md) => p
                    .found
                    .push(format!("{node} is a member of the active md array {md}")),
                Stacked::Vg(vg) => p.found.push(format!(
                    "{node} is a physical volume of the active volume group {vg}"
                )),
                Stacked::Other(_) => p.busy.push(format!("{node} held by {h}")),
            }
        }
    }
    // What is stacked higher up (a volume group on an md array, a LUKS
    // volume on a logical volume) must not be in use either.
    let stacked = stacked_nodes(&name);
    for s in &stacked {
        let Some(num) = dev_number(s) else { continue };
        for m in mounts.iter().filter(|m| m.dev == num) {
            p.mounted
                .push(format!("/dev/{s} (on {canon_s}) on {}", m.mountpoint));
        }
    }
    for s in stack_above(&name) {
        if let Stacked::Other(h) = s {
            if !p.busy.iter().any(|b| b.ends_with(&format!("held by {h}"))) {
                p.busy.push(format!("{h} is stacked on {canon_s}"));
            }
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(dev) = line.split_whitespace().next() {
            if let Ok((_, n)) = kernel_name(dev) {
                if nodes.iter().any(|(k, _)| *k == n) || stacked.contains(&n) {
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
    fn lvm_names_give_their_volume_group() {
        assert_eq!(dm_vg_name("pool-root").as_deref(), Some("pool"));
        assert_eq!(dm_vg_name("vg--a-lv--b").as_deref(), Some("vg-a"));
        assert_eq!(dm_vg_name("crypted"), None);
    }

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

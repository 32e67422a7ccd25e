//! Which device each layout disk is written to.
//!
//! A disk whose device is a path is used as given (the assignment's `disks`
//! map or `--disk NAME=DEV` override the layout). A disk whose device is
//! empty, "auto" or "auto:OPTIONS" is chosen by rule from the inventory:
//! big enough (the layout's fixed sizes, or `min=SIZE`), never removable,
//! read-only or in use (the caller filters the boot medium), optionally
//! matching `id=GLOB` against the by-id name; nvme before ssd before hdd,
//! then by kernel name. Chosen disks are reported by by-id.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use landfall_proto::inventory::{Disk as InvDisk, Transport};

use super::layout::{is_auto, parse_size, Layout, Size};
use super::plan::Target;

/// A disk of the inventory that is never a candidate, and why ("mounted at
/// /", "held by dm-0", "active swap"): named when a pick finds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub path: String,
    pub why: String,
}

/// The rule of an "auto" disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub min_bytes: u64,
    /// Glob (`*`, `?`) matched against the by-id basename, e.g. "nvme-Samsung*".
    pub id_glob: Option<String>,
}

/// Parse "auto", "" or "auto:min=100G,id=nvme-*".
pub fn parse_rule(spec: &str) -> Result<Rule> {
    let mut r = Rule::default();
    let rest = spec.trim().strip_prefix("auto").unwrap_or("");
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    for kv in rest.split(',').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("min", v)) => match parse_size(v) {
                Ok(Size::Bytes(b)) => r.min_bytes = b,
                _ => bail!("{spec:?}: min={v} is not a size (e.g. min=100G)"),
            },
            Some(("id", v)) => r.id_glob = Some(v.to_owned()),
            _ => bail!("{spec:?}: unknown rule {kv:?} (known: min=SIZE, id=GLOB)"),
        }
    }
    Ok(r)
}

/// The least size a disk needs for `layout`'s disk `name`.
pub fn required_bytes(layout: &Layout, name: &str) -> u64 {
    let Some(d) = layout.disks.get(name) else {
        return 0;
    };
    let fixed: u64 = d
        .partitions()
        .iter()
        .map(|p| match p.size {
            Size::Bytes(b) => b.div_ceil(1 << 20) << 20,
            Size::Rest => 1 << 20,
        })
        .sum();
    fixed + (2 << 20)
}

/// The device spec of each layout disk: the override if any, else the layout's.
pub fn device_specs(
    layout: &Layout,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    for k in overrides.keys() {
        if !layout.disks.contains_key(k) {
            bail!(
                "disk {k:?} is not in the layout (its disks: {})",
                layout.disks.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(layout
        .disks
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                overrides
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| d.device.clone()),
            )
        })
        .collect())
}

fn class(d: &InvDisk) -> u8 {
    if d.transport == Transport::Nvme {
        0
    } else if !d.rotational {
        1
    } else {
        2
    }
}

/// Choose a disk for every "auto" spec among `candidates` (the inventory's
/// disks minus those in use, which are `left_out`, and named with why when
/// nothing matches); paths are looked up in the inventory or sysfs.
/// Pure but for the sysfs lookup of explicit paths not in the inventory.
pub fn select(
    layout: &Layout,
    specs: &BTreeMap<String, String>,
    candidates: &[InvDisk],
    left_out: &[LeftOut],
) -> Result<BTreeMap<String, Target>> {
    let mut out = BTreeMap::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    // Explicit devices first, so "auto" never takes one of them.
    for (name, spec) in specs.iter().filter(|(_, s)| !is_auto(s)) {
        let t = match candidates
            .iter()
            .find(|d| d.path == *spec || d.by_id.as_deref() == Some(spec))
        {
            Some(d) => target_of(d),
            None => {
                target_for_device(spec).with_context(|| format!("disk {name}: device {spec}"))?
            }
        };
        taken.insert(
            fs::canonicalize(&t.device)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or(t.device.clone()),
        );
        out.insert(name.clone(), t);
    }
    for (name, spec) in specs.iter().filter(|(_, s)| is_auto(s)) {
        let rule = parse_rule(spec).with_context(|| format!("disk {name}"))?;
        let need = rule.min_bytes.max(required_bytes(layout, name));
        let mut ok: Vec<&InvDisk> = candidates
            .iter()
            .filter(|d| !d.removable && !d.read_only && d.size_bytes >= need)
            .filter(|d| !taken.contains(&d.path))
            .filter(|d| match &rule.id_glob {
                None => true,
                Some(g) => d
                    .by_id
                    .as_deref()
                    .map(|b| glob(g, b.rsplit('/').next().unwrap_or(b)))
                    .unwrap_or(false),
            })
            .collect();
        ok.sort_by(|a, b| (class(a), &a.name).cmp(&(class(b), &b.name)));
        let Some(d) = ok.first() else {
            let seen: Vec<String> = candidates
                .iter()
                .map(|d| {
                    format!(
                        "{} ({} bytes{}{}{})",
                        d.path,
                        d.size_bytes,
                        if d.removable { ", removable" } else { "" },
                        if d.read_only { ", read-only" } else { "" },
                        if taken.contains(&d.path) {
                            ", taken"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let left: Vec<String> = left_out
                .iter()
                .map(|l| format!("{} ({})", l.path, l.why))
                .collect();
            bail!(
                "disk {name}: no disk matches \"{spec}\" (needs at least {need} bytes{}, not removable or read-only); candidates: {}{}",
                rule.id_glob.as_ref().map(|g| format!(", by-id matching {g}")).unwrap_or_default(),
                if seen.is_empty() { "none".into() } else { seen.join(", ") },
                if left.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left out, in use (the running system's own disks are never picked): {}",
                        left.join(", ")
                    )
                }
            );
        };
        taken.insert(d.path.clone());
        out.insert(name.clone(), target_of(d));
    }
    Ok(out)
}

fn target_of(d: &InvDisk) -> Target {
    Target {
        device: d.path.clone(),
        size_bytes: d.size_bytes,
        sector_size: if d.logical_sector_size == 0 {
            512
        } else {
            d.logical_sector_size
        },
        by_id: d.by_id.clone(),
    }
}

/// A target from sysfs for a device path (loop devices are not in the inventory).
pub fn target_for_device(device: &str) -> Result<Target> {
    let (canon, name) = super::safety::kernel_name(device)?;
    let sys = Path::new("/sys/class/block").join(&name);
    let read = |f: &str| -> Result<u64> {
        let p = sys.join(f);
        fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .parse::<u64>()
            .with_context(|| format!("parsing {}", p.display()))
    };
    let sectors = read("size")?;
    let lbs = read("queue/logical_block_size").unwrap_or(512);
    Ok(Target {
        device: canon.to_string_lossy().into_owned(),
        size_bytes: sectors * 512,
        sector_size: u32::try_from(lbs).unwrap_or(512),
        by_id: device
            .starts_with("/dev/disk/by-id/")
            .then(|| device.to_owned()),
    })
}

/// `*` and `?` glob.
pub fn glob(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disk(name: &str, t: Transport, rot: bool, gb: u64) -> InvDisk {
        InvDisk {
            name: name.into(),
            path: format!("/dev/{name}"),
            size_bytes: gb << 30,
            logical_sector_size: 512,
            rotational: rot,
            transport: t,
            by_id: Some(format!("/dev/disk/by-id/{name}-id")),
            ..Default::default()
        }
    }

    fn layout(sz: &str) -> Layout {
        Layout::from_json(&json!({"disk": {"main": {"device": "auto", "content": {"type": "gpt", "partitions": {
            "root": {"size": sz, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}}}))
        .unwrap()
    }

    #[test]
    fn prefers_nvme_then_ssd_and_skips_removable_and_small() {
        let l = layout("100%");
        let specs = device_specs(&l, &BTreeMap::new()).unwrap();
        let mut usb = disk("sdz", Transport::Usb, false, 500);
        usb.removable = true;
        let c = vec![
            disk("sda", Transport::Sata, true, 500),
            disk("sdb", Transport::Sata, false, 500),
            usb.clone(),
            disk("nvme0n1", Transport::Nvme, false, 500),
        ];
        let t = select(&l, &specs, &c, &[]).unwrap();
        assert_eq!(t["main"].device, "/dev/nvme0n1");
        assert_eq!(
            t["main"].by_id.as_deref(),
            Some("/dev/disk/by-id/nvme0n1-id")
        );
        let t = select(&l, &specs, &c[..3], &[]).unwrap();
        assert_eq!(t["main"].device, "/dev/sdb");
        let e = select(&layout("600G"), &specs, &c, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no disk matches"), "{e}");
        let e = select(&l, &specs, &[usb], &[]).unwrap_err().to_string();
        assert!(e.contains("removable"), "{e}");
    }

    #[test]
    fn rules() {
        let r = parse_rule("auto:min=100G,id=nvme-*").unwrap();
        assert_eq!(r.min_bytes, 100 << 30);
        assert!(glob(r.id_glob.as_deref().unwrap(), "nvme-Samsung_SSD_970"));
        assert!(!glob("nvme-*", "ata-foo"));
        assert!(parse_rule("auto:size=1").is_err());
        let l = layout("100%");
        let specs = BTreeMap::from([("main".to_string(), "auto:id=sda-*".to_string())]);
        let c = vec![
            disk("sda", Transport::Sata, true, 500),
            disk("nvme0n1", Transport::Nvme, false, 500),
        ];
        assert_eq!(
            select(&l, &specs, &c, &[]).unwrap()["main"].device,
            "/dev/sda"
        );
    }

    #[test]
    fn a_pick_that_finds_nothing_names_the_disks_left_out_and_why() {
        let l = layout("100%");
        let specs = device_specs(&l, &BTreeMap::new()).unwrap();
        let left = [LeftOut {
            path: "/dev/vda".into(),
            why: "mounted at /".into(),
        }];
        let e = select(&l, &specs, &[], &left).unwrap_err().to_string();
        assert!(e.contains("candidates: none"), "{e}");
        assert!(
            e.contains("left out, in use (the running system's own disks are never picked): /dev/vda (mounted at /)"),
            "{e}"
        );
        // A pick that succeeds says nothing of them.
        let c = [disk("sdb", Transport::Sata, false, 500)];
        assert_eq!(
            select(&l, &specs, &c, &left).unwrap()["main"].device,
            "/dev/sdb"
        );
    }
}

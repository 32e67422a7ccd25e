//! Partition table and signatures with libblkid, strictly read-only.
//!
//! A node that is missing or cannot be opened (fixture trees, containers
//! without device access) leaves the fields empty; it is never an error.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use blkid::prober::{ProbeState, Prober};
use blkid::{PartitionsFlags, SuperblocksFlags};
use landfall_proto::inventory::{Disk, Partition, Signature};

use super::disks::partition_name;
use super::Root;

pub(super) fn probe_disk(node: &Path, root: &Root, disk: &mut Disk) {
    // Open it ourselves, read-only, so a node we cannot read is skipped
    // before libblkid is involved.
    let Ok(file) = File::open(node) else {
        return;
    };
    let Some(whole) = probe_fd(&file, 0, None, true) else {
        return;
    };
    disk.partition_table = whole.values.get("PTTYPE").cloned();
    disk.signatures = whole.signatures;

    for bp in &whole.partitions {
        let idx = match disk.partitions.iter().position(|p| p.number == bp.number) {
            Some(i) => i,
            None => {
                // Table on disk that the kernel has not (re)read: still report it.
                let name = partition_name(&disk.name, bp.number);
                disk.partitions.push(Partition {
                    path: format!("/dev/{name}"),
                    name,
                    number: bp.number,
                    start_sector: bp.start_sector,
                    size_bytes: bp.size_bytes,
                    ..Default::default()
                });
                disk.partitions.len() - 1
            }
        };
        let part = &mut disk.partitions[idx];
        if bp.partlabel.is_some() {
            part.partlabel = bp.partlabel.clone();
        }
        part.parttype = bp.parttype.clone();
        part.partuuid = bp.partuuid.clone();
    }
    disk.partitions.sort_by_key(|p| p.number);

    for part in &mut disk.partitions {
        // The partition node when there is one, else the range inside the disk.
        let pnode = root.path(&format!("dev/{}", part.name));
        let found = match File::open(&pnode) {
            Ok(pf) => probe_fd(&pf, 0, None, false),
            Err(_) => probe_fd(
                &file,
                // A partition table on the disk can say anything: clamp.
                i64::try_from(part.start_sector.saturating_mul(512)).unwrap_or(i64::MAX),
                Some(i64::try_from(part.size_bytes).unwrap_or(i64::MAX)),
                false,
            ),
        };
        if let Some(found) = found {
            part.signatures = found.signatures;
        }
    }
}

struct Probed {
    values: HashMap<String, String>,
    signatures: Vec<Signature>,
    partitions: Vec<Partition>,
}

fn probe_fd(file: &File, offset: i64, size: Option<i64>, with_table: bool) -> Option<Probed> {
    let mut pr = Prober::new().ok()?;
    pr.set_device(file.as_raw_fd(), offset, size).ok()?;
    pr.enable_superblocks(true).ok()?;
    pr.set_superblocks_flags(
        SuperblocksFlags::LABEL
            | SuperblocksFlags::UUID
            | SuperblocksFlags::TYPE
            | SuperblocksFlags::USAGE,
    )
    .ok()?;
    pr.enable_partitions(with_table).ok()?;
    if with_table {
        pr.set_partitions_flags(PartitionsFlags::ENTRY_DETAILS)
            .ok()?;
    }

    let mut values = HashMap::new();
    let mut signatures = Vec::new();
    match pr.do_safe_probe().ok()? {
        ProbeState::Success => {
            values = pr.get_values_map().unwrap_or_default();
            signatures.extend(signature(&values));
        }
        ProbeState::Ambivalent => {
            // Several signatures at one level (e.g. a leftover filesystem
            // next to a RAID member): list every one.
            pr.reset_probe();
            pr.enable_partitions(false).ok()?;
            while pr.do_probe().ok()? == ProbeState::Success {
                let v = pr.get_values_map().unwrap_or_default();
                signatures.extend(signature(&v));
            }
        }
        _ => {}
    }

    let mut partitions = Vec::new();
    if with_table && values.contains_key("PTTYPE") {
        if let Ok(list) = pr.part_list() {
            for p in list.get_partitions().unwrap_or_default() {
                let Ok(number) = p.partno() else { continue };
                let parttype = p.typ_string().or_else(|| {
                    let t = p.typ();
                    (t != 0).then(|| format!("0x{t:x}"))
                });
                partitions.push(Partition {
                    number: number as u32,
                    start_sector: p.start().unwrap_or(0).max(0) as u64,
                    size_bytes: (p.size().unwrap_or(0).max(0) as u64).saturating_mul(512),
                    partlabel: p.name().filter(|s| !s.is_empty()),
                    parttype,
                    partuuid: p.uuid(),
                    ..Default::default()
                });
            }
        }
    }
    Some(Probed {
        values,
        signatures,
        partitions,
    })
}

fn signature(values: &HashMap<String, String>) -> Option<Signature> {
    let kind = values.get("TYPE")?.clone();
    Some(Signature {
        kind,
        usage: values.get("USAGE").cloned(),
        uuid: values.get("UUID").cloned(),
        label: values.get("LABEL").cloned(),
    })
}

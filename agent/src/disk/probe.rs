//! In-process libblkid probing (the same library `blkid -p` uses, without a
//! process per node): signatures and the partition table for the safety
//! check, stale signatures in new partitions, and the read-back. Strictly
//! read-only.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use blkid::prober::{ProbeState, Prober};
use blkid::{PartitionsFlags, SuperblocksFlags};

/// What libblkid found on one node: `blkid -p -o export` values
/// (TYPE, UUID, LABEL, USAGE, PTTYPE, PART_ENTRY_NAME, PART_ENTRY_TYPE, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub values: BTreeMap<String, String>,
    /// Several signatures at one level (blkid's exit code 8).
    pub ambivalent: bool,
}

impl Found {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.values.get(k).map(String::as_str)
    }
}

/// Probe `node` (a disk or a partition): superblocks, and the partition
/// table or, for a partition, its entry (PART_ENTRY_*).
pub fn probe(node: &str) -> Result<Found> {
    let file = File::open(node).with_context(|| format!("opening {node} to probe it"))?;
    let e = |what: &'static str| {
        move |err: blkid::BlkIdError| anyhow!("libblkid {what} on {node}: {err}")
    };
    let mut pr = Prober::new().map_err(e("prober"))?;
    pr.set_device(file.as_raw_fd(), 0, None)
        .map_err(e("set_device"))?;
    pr.enable_superblocks(true).map_err(e("superblocks"))?;
    pr.set_superblocks_flags(
        SuperblocksFlags::LABEL
            | SuperblocksFlags::UUID
            | SuperblocksFlags::TYPE
            | SuperblocksFlags::USAGE,
    )
    .map_err(e("superblocks flags"))?;
    pr.enable_partitions(true).map_err(e("partitions"))?;
    pr.set_partitions_flags(PartitionsFlags::ENTRY_DETAILS)
        .map_err(e("partitions flags"))?;
    let mut found = Found::default();
    match pr.do_safe_probe().map_err(e("probe"))? {
        ProbeState::Success => {
            found.values = pr
                .get_values_map()
                .map_err(e("values"))?
                .into_iter()
                .collect();
        }
        ProbeState::Ambivalent => found.ambivalent = true,
        _ => {}
    }
    Ok(found)
}

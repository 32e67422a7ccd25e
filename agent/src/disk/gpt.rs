//! Writing the protective MBR and the GPT with the `gpt` crate. Sector
//! numbers come from the plan; nothing is computed here.

use std::fs::OpenOptions;
use std::str::FromStr;

use anyhow::{Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types::Type;

use super::plan::DiskPlan;

/// Write a fresh protective MBR and GPT (primary and backup) with the
/// plan's partitions to `d.target.device`, then fsync. Blocking.
pub fn write(d: &DiskPlan) -> Result<()> {
    let dev = &d.target.device;
    let lb = match d.target.sector_size {
        4096 => LogicalBlockSize::Lb4096,
        _ => LogicalBlockSize::Lb512,
    };
    let ss = u64::from(d.target.sector_size.max(512));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {dev} for writing"))?;
    let sectors = d.target.size_bytes / ss;
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(0xFFFF_FFFF));
    mbr.overwrite_lba0(&mut file)
        .with_context(|| format!("writing the protective MBR to {dev}"))?;
    let parse = |g: &str| {
        uuid::Uuid::parse_str(g).map_err(|e| anyhow::anyhow!("GUID {g:?} in the plan: {e}"))
    };
    let disk_guid = d.disk_guid.as_deref().map(parse).transpose()?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(file, disk_guid)
        .with_context(|| format!("creating a GPT on {dev}"))?;
    for p in &d.partitions {
        let t = Type::from_str(&p.type_guid)
            .map_err(|e| anyhow::anyhow!("partition type {}: {e}", p.type_guid))?;
        disk.add_partition_at(
            &p.label,
            p.number,
            p.first_lba,
            p.last_lba - p.first_lba + 1,
            t,
            p.attributes,
        )
        .with_context(|| {
            format!(
                "adding partition {} ({}, sectors {}..={}) to the GPT of {dev}",
                p.number, p.label, p.first_lba, p.last_lba
            )
        })?;
    }
    if d.partitions.iter().any(|p| p.guid.is_some()) {
        let mut parts = disk.partitions().clone();
        for p in &d.partitions {
            if let (Some(g), Some(e)) = (&p.guid, parts.get_mut(&p.number)) {
                e.part_guid = parse(g)?;
            }
        }
        disk.update_partitions(parts)
            .with_context(|| format!("setting the partition GUIDs of {dev}"))?;
    }
    let file = disk
        .write()
        .with_context(|| format!("writing the GPT to {dev}"))?;
    file.sync_all().with_context(|| format!("flushing {dev}"))?;
    Ok(())
}

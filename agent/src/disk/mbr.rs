//! Writing an MBR (DOS) partition table: disko's legacy `table` with
//! `format = "msdos"`. Sector numbers, types and the active flag come from
//! the plan (computed as parted places them, [`super::parted`]); nothing is
//! computed here but the CHS fields, which nothing reads (LBA is used).

use std::io::{Seek, SeekFrom, Write};

use anyhow::{Context, Result};

use super::plan::DiskPlan;

/// CHS of an LBA with 255 heads and 63 sectors per track, or the "beyond
/// CHS" marker (1023/254/63) as every tool writes it for large disks.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, spt) = (255u64, 63u64);
    let c = lba / (heads * spt);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / spt) % heads;
    let s = lba % spt + 1;
    [
        h as u8,
        (((c >> 2) & 0xC0) as u8) | s as u8,
        (c & 0xFF) as u8,
    ]
}

/// The 512-byte MBR for the plan's partitions (at most four, primary).
pub fn mbr_sector(d: &DiskPlan, disk_id: u32) -> Result<[u8; 512]> {
    let mut b = [0u8; 512];
    b[440..444].copy_from_slice(&disk_id.to_le_bytes());
    anyhow::ensure!(
        d.partitions.len() <= 4,
        "an MBR holds four primary partitions"
    );
    let per_sector = u64::from(d.target.sector_size.max(512)) / 512;
    for p in &d.partitions {
        let i = p.number as usize;
        anyhow::ensure!((1..=4).contains(&i), "MBR partition number {i}");
        let e = 446 + 16 * (i - 1);
        let start =
            u32::try_from(p.first_lba).context("an MBR partition starts below 2^32 sectors")?;
        let count = u32::try_from(p.last_lba - p.first_lba + 1)
            .context("an MBR partition is below 2^32 sectors")?;
        b[e] = if p.bootable { 0x80 } else { 0 };
        b[e + 1..e + 4].copy_from_slice(&chs(p.first_lba * per_sector));
        b[e + 4] = p.mbr_type.unwrap_or(0x83);
        b[e + 5..e + 8].copy_from_slice(&chs(p.last_lba * per_sector));
        b[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        b[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
    }
    b[510] = 0x55;
    b[511] = 0xAA;
    Ok(b)
}

/// Write the MBR to `d.target.device` and flush. Blocking.
pub fn write(d: &DiskPlan) -> Result<()> {
    let dev = &d.target.device;
    let id = match d.disk_guid.as_deref() {
        Some(h) => u32::from_str_radix(h.trim_start_matches("0x"), 16)
            .with_context(|| format!("disk id {h:?} in the plan"))?,
        None => {
            let mut r = [0u8; 4];
            getrandom::getrandom(&mut r).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
            u32::from_le_bytes(r)
        }
    };
    let sector = mbr_sector(d, id)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {dev} for writing"))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&sector)
        .with_context(|| format!("writing the MBR to {dev}"))?;
    f.sync_all().with_context(|| format!("flushing {dev}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_of_small_and_large_lbas() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(u64::from(u32::MAX)), [0xFE, 0xFF, 0xFF]);
    }
}

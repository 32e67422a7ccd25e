//! Install-target disks from /sys/block, with by-id names and blkid contents.

use std::fs;
use std::path::{Component, Path, PathBuf};

use landfall_proto::inventory::{Disk, Partition, Transport};

use super::byid::{self, IdSource};
use super::{link_name, list_dir, probe, read_attr, read_flag, read_u64, Root};

/// Kernel name prefixes of block devices that are never install targets:
/// loop, ram disks, compressed swap, device-mapper, md RAID, network block
/// devices, optical drives and floppies.
const EXCLUDED_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd"];

pub(super) fn is_excluded(name: &str) -> bool {
    EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

pub(super) fn detect(root: &Root) -> Vec<Disk> {
    root.list("sys/block")
        .into_iter()
        .filter(|n| !is_excluded(n))
        .map(|name| disk(root, &name))
        .collect()
}

fn disk(root: &Root, name: &str) -> Disk {
    let dir = root.path(&format!("sys/block/{name}"));
    let resolved = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let dev = dir.join("device");
    let attr = |rel: &str| read_attr(&dir.join(rel));

    let transport = transport(name, &resolved, &dev);
    let logical = read_u64(&dir.join("queue/logical_block_size")).unwrap_or(512) as u32;
    let mut disk = Disk {
        name: name.to_string(),
        path: format!("/dev/{name}"),
        // `size` is in 512-byte sectors whatever the logical block size.
        size_bytes: read_u64(&dir.join("size")).unwrap_or(0).saturating_mul(512),
        logical_sector_size: logical,
        physical_sector_size: read_u64(&dir.join("queue/physical_block_size"))
            .map_or(logical, |v| v as u32),
        rotational: read_flag(&dir.join("queue/rotational")),
        removable: read_flag(&dir.join("removable")),
        read_only: read_flag(&dir.join("ro")),
        transport,
        ..Default::default()
    };
    (disk.driver, disk.module) = super::pci::driver_and_module(&dev);

    let src = match transport {
        Transport::Virtio => {
            disk.serial = attr("serial");
            IdSource::Virtio {
                serial: disk.serial.clone(),
            }
        }
        Transport::Nvme => {
            disk.model = read_attr(&dev.join("model"));
            disk.serial = read_attr(&dev.join("serial"));
            disk.wwn = attr("wwid").or_else(|| read_attr(&dev.join("wwid")));
            IdSource::Nvme {
                model: disk.model.clone(),
                serial: disk.serial.clone(),
                nsid: attr("nsid").and_then(|n| n.parse().ok()),
                wwid: disk.wwn.clone(),
            }
        }
        Transport::Sata => {
            let wwid_wwn = scsi_wwn(read_attr(&dev.join("wwid")).as_deref());
            match ata_identify(&resolved) {
                Some((model, serial, wwn)) => {
                    disk.model = Some(model).filter(|s| !s.is_empty());
                    disk.serial = Some(serial).filter(|s| !s.is_empty());
                    disk.wwn = wwn.or(wwid_wwn);
                }
                None => {
                    disk.model = read_attr(&dev.join("model"));
                    disk.wwn = wwid_wwn;
                }
            }
            IdSource::Ata {
                model: disk.model.clone(),
                serial: disk.serial.clone(),
                wwn: disk.wwn.clone(),
            }
        }
        Transport::Usb => {
            disk.model = read_attr(&dev.join("model"));
            let usb = usb_device_dir(&resolved);
            disk.serial = usb.as_ref().and_then(|u| read_attr(&u.join("serial")));
            IdSource::Usb {
                vendor: read_attr(&dev.join("vendor")),
                model: disk.model.clone(),
                serial: disk.serial.clone(),
                instance: scsi_instance(&resolved),
            }
        }
        Transport::Mmc => {
            disk.model = read_attr(&dev.join("name"));
            disk.serial = read_attr(&dev.join("serial"));
            IdSource::Mmc {
                name: disk.model.clone(),
                serial: disk.serial.clone(),
            }
        }
        Transport::Scsi | Transport::Unknown => {
            disk.model = read_attr(&dev.join("model"));
            let wwid = read_attr(&dev.join("wwid")).or_else(|| attr("wwid"));
            disk.wwn = scsi_wwn(wwid.as_deref());
            IdSource::Scsi {
                wwid,
                wwn: disk.wwn.clone(),
            }
        }
    };
    disk.by_id = byid::by_id_name(&src);
    disk.partitions = partitions(&dir, name);

    // Contents: only when the node exists and is readable (never on fixtures).
    probe::probe_disk(&root.path(&format!("dev/{name}")), root, &mut disk);
    disk
}

/// The bus a disk hangs off, from its resolved sysfs path and driver links.
pub(super) fn transport(name: &str, resolved: &Path, dev: &Path) -> Transport {
    let comps: Vec<String> = resolved
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let numbered = |prefix: &str, c: &str| {
        c.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    let subsystem = link_name(&dev.join("subsystem"));
    if name.starts_with("nvme") || comps.iter().any(|c| c.starts_with("nvme")) {
        return Transport::Nvme;
    }
    if comps.iter().any(|c| numbered("usb", c)) {
        return Transport::Usb;
    }
    if name.starts_with("mmcblk") || comps.iter().any(|c| c.starts_with("mmc_host")) {
        return Transport::Mmc;
    }
    if comps.iter().any(|c| numbered("ata", c)) {
        return Transport::Sata;
    }
    if name.starts_with("vd") || subsystem.as_deref() == Some("virtio") {
        return Transport::Virtio;
    }
    if subsystem.as_deref() == Some("scsi") || comps.iter().any(|c| numbered("host", c)) {
        return Transport::Scsi;
    }
    Transport::Unknown
}

/// "naa.5000c500a1b2c3d4" -> "0x5000c500a1b2c3d4" (the by-id wwn- form).
fn scsi_wwn(wwid: Option<&str>) -> Option<String> {
    let id = wwid?.trim().strip_prefix("naa.")?;
    Some(format!("0x{}", id.to_ascii_lowercase()))
}

/// IDENTIFY data of the ATA device behind a SCSI disk: the ancestor `ataN`
/// directory holds `link*/dev*/ata_device/dev*/id`.
fn ata_identify(resolved: &Path) -> Option<(String, String, Option<String>)> {
    let ata_dir = resolved.ancestors().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("ata"))
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    })?;
    // SCSI id "H:C:T:L": libata maps the device number to the target.
    let target = scsi_hctl(resolved).map(|h| h[2]);
    let mut candidates = Vec::new();
    for link in list_dir(ata_dir)
        .into_iter()
        .filter(|n| n.starts_with("link"))
    {
        for devname in list_dir(&ata_dir.join(&link))
            .into_iter()
            .filter(|n| n.starts_with("dev"))
        {
            let id = ata_dir
                .join(&link)
                .join(&devname)
                .join("ata_device")
                .join(&devname)
                .join("id");
            let devno = devname
                .rsplit('.')
                .next()
                .and_then(|n| n.parse::<u32>().ok());
            candidates.push((devno, id));
        }
    }
    let chosen = candidates
        .iter()
        .find(|(n, _)| target.is_some() && *n == target)
        .or_else(|| candidates.first())?;
    byid::parse_ata_identify(&super::read_string(&chosen.1)?)
}

/// The "H:C:T:L" SCSI address component of a resolved disk path.
fn scsi_hctl(resolved: &Path) -> Option<[u32; 4]> {
    resolved.ancestors().find_map(|p| {
        let n = p.file_name()?.to_str()?;
        let parts: Vec<u32> = n
            .split(':')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        <[u32; 4]>::try_from(parts).ok()
    })
}

/// usb_id's instance: "target:lun".
fn scsi_instance(resolved: &Path) -> Option<String> {
    scsi_hctl(resolved).map(|h| format!("{}:{}", h[2], h[3]))
}

/// The USB device (not interface) a USB disk belongs to: the nearest
/// ancestor with an `idVendor` attribute.
fn usb_device_dir(resolved: &Path) -> Option<PathBuf> {
    resolved
        .ancestors()
        .find(|p| p.join("idVendor").exists())
        .map(Path::to_path_buf)
}

/// Partitions the kernel knows: `sys/block/X/X*/partition`.
fn partitions(dir: &Path, disk: &str) -> Vec<Partition> {
    let mut parts: Vec<Partition> = list_dir(dir)
        .into_iter()
        .filter(|n| n.starts_with(disk) && n.len() > disk.len())
        .filter_map(|n| {
            let p = dir.join(&n);
            let number = read_u64(&p.join("partition"))? as u32;
            let uevent = super::read_string(&p.join("uevent")).unwrap_or_default();
            Some(Partition {
                path: format!("/dev/{n}"),
                number,
                start_sector: read_u64(&p.join("start")).unwrap_or(0),
                size_bytes: read_u64(&p.join("size")).unwrap_or(0).saturating_mul(512),
                partlabel: uevent_value(&uevent, "PARTNAME"),
                name: n,
                ..Default::default()
            })
        })
        .collect();
    parts.sort_by_key(|p| p.number);
    parts
}

pub(super) fn uevent_value(uevent: &str, key: &str) -> Option<String> {
    uevent.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

/// The kernel's name for partition `n` of `disk` ("sda1", "nvme0n1p1").
pub(super) fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_devices() {
        for n in ["loop0", "ram15", "zram0", "dm-3", "md127", "nbd0", "sr0"] {
            assert!(is_excluded(n), "{n}");
        }
        for n in ["sda", "vda", "nvme0n1", "mmcblk0", "xvda"] {
            assert!(!is_excluded(n), "{n}");
        }
    }

    #[test]
    fn transport_from_resolved_path() {
        let none = Path::new("/nonexistent");
        let t = |name: &str, p: &str| transport(name, Path::new(p), none);
        assert_eq!(
            t(
                "vda",
                "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"
            ),
            Transport::Virtio
        );
        assert_eq!(
            t(
                "sda",
                "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
            ),
            Transport::Sata
        );
        assert_eq!(
            t(
                "sdb",
                "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
            ),
            Transport::Usb
        );
        assert_eq!(
            t(
                "nvme0n1",
                "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1"
            ),
            Transport::Nvme
        );
        assert_eq!(
            t(
                "sdc",
                "/sys/devices/pci0000:00/0000:00:05.0/virtio3/host2/target2:0:0/2:0:0:0/block/sdc"
            ),
            Transport::Scsi
        );
        assert_eq!(
            t(
                "mmcblk0",
                "/sys/devices/platform/fe320000.mmc/mmc_host/mmc1/mmc1:0001/block/mmcblk0"
            ),
            Transport::Mmc
        );
    }

    #[test]
    fn uevent_and_partition_names() {
        let u = "MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ESP\n";
        assert_eq!(uevent_value(u, "PARTNAME").as_deref(), Some("ESP"));
        assert_eq!(uevent_value("PARTNAME=\n", "PARTNAME"), None);
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("sda", 2), "sda2");
        assert_eq!(
            scsi_wwn(Some("naa.5000C500A1B2C3D4")).as_deref(),
            Some("0x5000c500a1b2c3d4")
        );
        assert_eq!(
            scsi_hctl(Path::new(
                "/sys/devices/x/host0/target0:0:1/0:0:1:0/block/sda"
            )),
            Some([0, 0, 1, 0])
        );
    }
}

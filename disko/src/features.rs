//! The features a layout uses, by name: what disko's examples use is listed
//! per example (disko-layouts/disko-examples.json), and a test checks that
//! the project's own fixtures cover every one (docs/disks.md "disko examples").

use std::collections::BTreeSet;

use crate::{Content, DatasetKind, Layout, LvSize, Size, TableKind, ZpoolMode, EF00, EF02};

pub type Feature = &'static str;

/// Every feature name [`Layout::features`] reports, with what it means.
pub const FEATURES: &[(Feature, &str)] = &[
    ("disks.multiple", "more than one disk"),
    (
        "disk.name",
        "a disk `name` differing from its attribute name",
    ),
    (
        "disk.whole",
        "a disk whose content is not a partition table",
    ),
    ("gpt", "a gpt table"),
    ("gpt.esp", "an EF00 partition"),
    ("gpt.bios_boot", "an EF02 partition"),
    ("gpt.type", "an explicit partition `type`"),
    ("gpt.priority", "an explicit `priority`"),
    ("gpt.name", "an explicit partition `name`"),
    ("gpt.label", "an explicit `label`"),
    (
        "gpt.long_label",
        "a default label over 36 characters (hashed)",
    ),
    (
        "gpt.special_names",
        "partition names with spaces or special characters",
    ),
    ("gpt.start", "an explicit `start`"),
    ("gpt.end", "an explicit `end`"),
    (
        "gpt.end_negative",
        "an `end` counted from the end of the disk",
    ),
    ("gpt.rest", "a partition of size \"100%\""),
    ("gpt.unformatted", "a partition without content"),
    ("gpt.uuid", "a fixed partition GUID"),
    ("gpt.attributes", "GPT attribute bits"),
    ("gpt.hybrid", "hybrid MBR entries"),
    ("gpt.efiGptPartitionFirst", "efiGptPartitionFirst = false"),
    ("table.gpt", "a legacy `table` with format gpt (parted)"),
    ("table.msdos", "a legacy `table` with format msdos (an MBR)"),
    ("table.bootable", "legacy table entries with `bootable`"),
    ("table.special_names", "legacy gpt entry names with spaces"),
    ("fs.vfat", "a vfat filesystem"),
    ("fs.ext4", "an ext4 filesystem"),
    ("fs.xfs", "an xfs filesystem"),
    ("fs.f2fs", "an f2fs filesystem"),
    ("fs.btrfs", "a btrfs filesystem"),
    ("fs.extraArgs", "mkfs `extraArgs`"),
    ("fs.mountOptions", "`mountOptions` other than the default"),
    ("fs.unmounted", "a filesystem without mountpoint"),
    ("btrfs.subvolumes", "btrfs subvolumes"),
    ("btrfs.swap", "btrfs swap files"),
    ("btrfs.mountpoint", "a mounted btrfs top level"),
    ("swap", "a swap partition"),
    ("swap.randomEncryption", "randomly encrypted swap"),
    ("swap.priority", "swap `priority`"),
    ("swap.discardPolicy", "swap `discardPolicy`"),
    (
        "swap.resumeDevice",
        "a swap used to resume from hibernation",
    ),
    ("luks", "a LUKS volume"),
    ("luks.passwordFile", "a LUKS passphrase (`passwordFile`)"),
    ("luks.keyFile", "a LUKS key file (`settings.keyFile`)"),
    (
        "luks.keyFileSize",
        "`settings.keyFileSize` / `keyFileOffset`",
    ),
    ("luks.additionalKeyFiles", "`additionalKeyFiles`"),
    ("luks.extraFormatArgs", "`extraFormatArgs`"),
    ("luks.allowDiscards", "`settings.allowDiscards`"),
    ("luks.empty", "a LUKS volume without content"),
    ("luks.lvm", "LVM inside LUKS"),
    ("mdadm", "an md array"),
    ("mdadm.level0", "RAID 0"),
    ("mdadm.level1", "RAID 1"),
    ("mdadm.level5", "RAID 5"),
    ("mdadm.metadata", "an explicit md `metadata`"),
    ("mdadm.extraArgs", "`mdadm --create` extraArgs"),
    ("mdadm.gpt", "a gpt table on an md array"),
    ("mdadm.luks", "LUKS on an md array"),
    ("mdadm.filesystem", "a filesystem directly on an md array"),
    ("mdadm.on_lvm", "md members on logical volumes"),
    ("lvm", "an LVM volume group"),
    (
        "lvm.multiple_pv",
        "a volume group over several physical volumes",
    ),
    ("lvm.percent", "a logical volume sized in percent"),
    ("lvm.empty", "a logical volume without content"),
    ("lvm.mirror", "lvm_type mirror"),
    ("lvm.raid0", "lvm_type raid0"),
    ("lvm.thin", "a thin pool with thin volumes"),
    ("zfs", "a ZFS pool"),
    ("zfs.mirror", "a mirror pool"),
    ("zfs.multiple_pools", "more than one pool"),
    ("zfs.topology", "a pool `mode.topology`"),
    ("zfs.topology.spare", "topology spares"),
    ("zfs.topology.log", "topology log vdevs"),
    ("zfs.topology.dedup", "topology dedup vdevs"),
    ("zfs.topology.special", "topology special vdevs"),
    ("zfs.topology.cache", "topology cache devices"),
    ("zfs.options", "pool `options`"),
    ("zfs.rootFsOptions", "pool `rootFsOptions`"),
    ("zfs.mountpoint", "a mounted pool root dataset"),
    ("zfs.canmount_off", "a root dataset with canmount=off"),
    ("zfs.whole_disk", "a whole disk as pool member"),
    ("zfs.on_lvm", "pool members on logical volumes"),
    ("zfs.fs", "zfs_fs datasets"),
    ("zfs.fs.nested", "nested datasets"),
    ("zfs.fs.unmounted", "datasets with mountpoint=none"),
    ("zfs.fs.legacy", "datasets with mountpoint=legacy"),
    ("zfs.encryption", "encrypted datasets"),
    ("zfs.volume", "zvols"),
    ("zfs.volume.filesystem", "a filesystem on a zvol"),
    ("zfs.volume.swap", "swap on a zvol"),
    ("zfs.volume.empty", "a zvol without content"),
    ("bcachefs", "a bcachefs filesystem"),
    ("bcachefs.multi_device", "bcachefs over several devices"),
    ("bcachefs.multiple", "more than one bcachefs filesystem"),
    ("bcachefs.subvolumes", "bcachefs subvolumes"),
    ("bcachefs.passwordFile", "an encrypted bcachefs"),
    ("bcachefs.uuid", "an explicit bcachefs uuid"),
    ("bcachefs.extraFormatArgs", "bcachefs format arguments"),
    ("bcachefs.label", "member `label`s"),
    ("nodev", "a nodev (tmpfs) mount"),
    ("nodev.root", "a tmpfs root"),
];

fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn of(l: &Layout) -> BTreeSet<Feature> {
    let mut f: BTreeSet<Feature> = BTreeSet::new();
    let mut add = |x: Feature| {
        debug_assert!(FEATURES.iter().any(|(n, _)| *n == x), "{x}");
        f.insert(x);
    };
    if l.disks.len() > 1 {
        add("disks.multiple");
    }
    for d in l.disks.values() {
        if d.disko_name != d.name.replace('/', "_") {
            add("disk.name");
        }
        if d.table().is_none() {
            add("disk.whole");
            if matches!(d.content, Content::Zfs(_)) {
                add("zfs.whole_disk");
            }
        }
    }
    for (owner, c) in l.all_contents() {
        let on_lv = matches!(&owner, crate::Owner::Volume(v) if v.kind == crate::VolumeKind::LvmVg);
        match c {
            Content::Table(t) => {
                match t.kind {
                    TableKind::Gpt => add("gpt"),
                    TableKind::PartedGpt => add("table.gpt"),
                    TableKind::Msdos => add("table.msdos"),
                }
                if !t.efi_gpt_partition_first {
                    add("gpt.efiGptPartitionFirst");
                }
                for p in &t.partitions {
                    if p.content.is_none() {
                        add("gpt.unformatted");
                    }
                    if let Some(pp) = &p.parted {
                        if pp.bootable {
                            add("table.bootable");
                        }
                        if !plain(&p.name) {
                            add("table.special_names");
                        }
                        continue;
                    }
                    if p.type_guid == EF00 {
                        add("gpt.esp");
                    }
                    if p.type_guid == EF02 {
                        add("gpt.bios_boot");
                    }
                    if p.type_code != "8300" && p.type_code != "8200" {
                        add("gpt.type");
                    }
                    if ![100, 1000, 9001].contains(&p.priority) {
                        add("gpt.priority");
                    }
                    if p.name != p.key {
                        add("gpt.name");
                    }
                    if !plain(&p.key) {
                        add("gpt.special_names");
                    }
                    if p.label.len() == 36 && p.label.bytes().all(|b| b.is_ascii_hexdigit()) {
                        add("gpt.long_label");
                    }
                    if p.start != crate::Bound::Default {
                        add("gpt.start");
                    }
                    match (p.end, p.size) {
                        (crate::Bound::FromEnd(n), Size::Bytes(0)) => {
                            add("gpt.end");
                            if n > 0 {
                                add("gpt.end_negative");
                            }
                        }
                        (crate::Bound::At(_), _) => add("gpt.end"),
                        _ => {}
                    }
                    if p.size == Size::Rest {
                        add("gpt.rest");
                    }
                    if p.uuid.is_some() {
                        add("gpt.uuid");
                    }
                    if !p.attributes.is_empty() {
                        add("gpt.attributes");
                    }
                    if p.hybrid.is_some() {
                        add("gpt.hybrid");
                    }
                }
            }
            Content::Filesystem(fs) => {
                match fs.format.as_str() {
                    "vfat" => add("fs.vfat"),
                    "ext4" => add("fs.ext4"),
                    "xfs" => add("fs.xfs"),
                    "f2fs" => add("fs.f2fs"),
                    "btrfs" => add("fs.btrfs"),
                    _ => {}
                }
                if !fs.extra_args.is_empty() {
                    add("fs.extraArgs");
                }
                if fs.mount_options != ["defaults"] {
                    add("fs.mountOptions");
                }
                if fs.mountpoint.is_none() && fs.subvolumes.is_empty() {
                    add("fs.unmounted");
                }
                if !fs.subvolumes.is_empty() {
                    add("btrfs.subvolumes");
                    if fs.mountpoint.is_some() {
                        add("btrfs.mountpoint");
                    }
                }
                if !fs.swap.is_empty() || fs.subvolumes.iter().any(|s| !s.swap.is_empty()) {
                    add("btrfs.swap");
                }
            }
            Content::Swap(s) => {
                add("swap");
                if s.random_encryption {
                    add("swap.randomEncryption");
                }
                if s.priority.is_some() {
                    add("swap.priority");
                }
                if s.discard_policy.is_some() {
                    add("swap.discardPolicy");
                }
                if s.resume_device {
                    add("swap.resumeDevice");
                }
            }
            Content::Luks(k) => {
                add("luks");
                match &k.key {
                    crate::KeySource::PasswordFile(_) => add("luks.passwordFile"),
                    crate::KeySource::KeyFile(_) => add("luks.keyFile"),
                }
                if k.key_file_size.is_some() || k.key_file_offset.is_some() {
                    add("luks.keyFileSize");
                }
                if !k.additional_key_files.is_empty() {
                    add("luks.additionalKeyFiles");
                }
                if !k.extra_format_args.is_empty() {
                    add("luks.extraFormatArgs");
                }
                if k.allow_discards {
                    add("luks.allowDiscards");
                }
                match k.content.as_deref() {
                    None => add("luks.empty"),
                    Some(Content::LvmPv(_)) => add("luks.lvm"),
                    _ => {}
                }
            }
            Content::MdRaid(_) if on_lv => add("mdadm.on_lvm"),
            Content::Zfs(_) if on_lv => add("zfs.on_lvm"),
            Content::Bcachefs(b) if !b.label.is_empty() => add("bcachefs.label"),
            _ => {}
        }
    }
    for m in l.mdadm.values() {
        add("mdadm");
        match m.level {
            0 => add("mdadm.level0"),
            1 => add("mdadm.level1"),
            5 => add("mdadm.level5"),
            _ => {}
        }
        if m.metadata != "default" {
            add("mdadm.metadata");
        }
        if !m.extra_args.is_empty() {
            add("mdadm.extraArgs");
        }
        match &m.content {
            Some(Content::Table(_)) => add("mdadm.gpt"),
            Some(Content::Luks(_)) => add("mdadm.luks"),
            Some(Content::Filesystem(_)) => add("mdadm.filesystem"),
            _ => {}
        }
    }
    for g in l.lvm_vg.values() {
        add("lvm");
        let pvs = l
            .members(&crate::VolumeRef {
                kind: crate::VolumeKind::LvmVg,
                name: g.name.clone(),
            })
            .len();
        if pvs > 1 {
            add("lvm.multiple_pv");
        }
        for lv in &g.lvs {
            if matches!(lv.size, LvSize::Extents(_)) {
                add("lvm.percent");
            }
            if lv.content.is_none() && lv.lvm_type.as_deref() != Some("thin-pool") {
                add("lvm.empty");
            }
            match lv.lvm_type.as_deref() {
                Some("mirror") => add("lvm.mirror"),
                Some("raid0") => add("lvm.raid0"),
                Some("thinlv") => add("lvm.thin"),
                _ => {}
            }
        }
    }
    if l.zpool.len() > 1 {
        add("zfs.multiple_pools");
    }
    for z in l.zpool.values() {
        add("zfs");
        match &z.mode {
            ZpoolMode::Simple(m) if m == "mirror" => add("zfs.mirror"),
            ZpoolMode::Simple(_) => {}
            ZpoolMode::Topology(t) => {
                add("zfs.topology");
                if !t.spare.is_empty() {
                    add("zfs.topology.spare");
                }
                if !t.log.is_empty() {
                    add("zfs.topology.log");
                }
                if !t.dedup.is_empty() {
                    add("zfs.topology.dedup");
                }
                if !t.special.is_empty() {
                    add("zfs.topology.special");
                }
                if !t.cache.is_empty() {
                    add("zfs.topology.cache");
                }
            }
        }
        if !z.options.is_empty() {
            add("zfs.options");
        }
        if !z.root_fs_options.is_empty() {
            add("zfs.rootFsOptions");
        }
        if z.mountpoint.is_some() {
            add("zfs.mountpoint");
        }
        if z.root_fs_options.get("canmount").map(String::as_str) == Some("off") {
            add("zfs.canmount_off");
        }
        for d in &z.datasets {
            if d.options.contains_key("encryption") {
                add("zfs.encryption");
            }
            match &d.kind {
                DatasetKind::ZfsFs { .. } => {
                    add("zfs.fs");
                    if d.name.contains('/') {
                        add("zfs.fs.nested");
                    }
                    match d.options.get("mountpoint").map(String::as_str) {
                        Some("none") => add("zfs.fs.unmounted"),
                        Some("legacy") => add("zfs.fs.legacy"),
                        _ => {}
                    }
                }
                DatasetKind::ZfsVolume { content, .. } => {
                    add("zfs.volume");
                    match content.as_deref() {
                        None => add("zfs.volume.empty"),
                        Some(Content::Swap(_)) => add("zfs.volume.swap"),
                        Some(Content::Filesystem(_)) => add("zfs.volume.filesystem"),
                        _ => {}
                    }
                }
            }
        }
    }
    if l.bcachefs.len() > 1 {
        add("bcachefs.multiple");
    }
    for b in l.bcachefs.values() {
        add("bcachefs");
        let n = l
            .members(&crate::VolumeRef {
                kind: crate::VolumeKind::Bcachefs,
                name: b.name.clone(),
            })
            .len();
        if n > 1 {
            add("bcachefs.multi_device");
        }
        if !b.subvolumes.is_empty() {
            add("bcachefs.subvolumes");
        }
        if b.password_file.is_some() {
            add("bcachefs.passwordFile");
        }
        let h = crate::units::sha256_hex(&b.name);
        if b.uuid.replace('-', "") != h[..32] {
            add("bcachefs.uuid");
        }
        if !b.extra_format_args.is_empty() {
            add("bcachefs.extraFormatArgs");
        }
    }
    for n in l.nodev.values() {
        add("nodev");
        if n.mountpoint == "/" {
            add("nodev.root");
        }
    }
    f
}

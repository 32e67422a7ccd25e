//! `plan()`: pure. From a validated layout and the chosen target disks
//! (device, size, sector size) it computes every partition's sectors, the
//! operations that make tables, filesystems, swap, LUKS, md arrays, volume
//! groups, pools and bcachefs filesystems, and the mount order. The result
//! is a value: printed by `landfall-agent plan`, serialised with `--json`,
//! and executed by [`super::apply`].
//!
//! Order, as disko's: each disk's table and what its partitions hold
//! (disks in parallel); then the volumes in dependency waves (disko's
//! `sortDevicesByDependencies`: an md array after the disks holding its
//! members, a volume group after the md array or LUKS volume holding its
//! physical volume, ...), volumes of one wave in parallel; then every
//! mount, parents first.
//!
//! Sector arithmetic for gpt follows what disko's `sgdisk --align-end
//! --new=N:START:END` does (disko lib/types/gpt.nix `_create`): 1 MiB
//! alignment; start "0" is the first aligned sector of the largest free
//! block; `+SIZE` ends SIZE after the start; `-SIZE` ends SIZE before the last
//! usable sector; the end is rounded down so the next partition stays aligned.
//! The legacy `table` follows parted ([`super::parted`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

use super::ids::Ids;
use super::layout::{
    human, Bound, Content, DatasetKind, Filesystem, KeySource, Layout, LayoutError, Luks, Owner,
    Table, TableKind, VolumeKind, VolumeRef, ZpoolMode,
};
use super::nixos::{self, NixosConfig, Sites};
pub use super::ops::{cryptenroll_argv, Mount, Op, PINNED_FORMATS, UNLOCK_KEY_FILE};
use super::parted;
use landfall_proto::LuksUnlock;

/// A disk the layout's disk is mapped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Target {
    /// Device node used to write ("/dev/vda", "/dev/loop3").
    pub device: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    /// Stable name for reports ("/dev/disk/by-id/virtio-SERIAL"), when known.
    pub by_id: Option<String>,
}

/// The whole plan: per disk the table and the operations, then the volumes
/// built over them, then the mounts.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub disks: Vec<DiskPlan>,
    /// md arrays, volume groups, pools, bcachefs filesystems: after the
    /// disks, wave by wave ([`VolumePlan::wave`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumePlan>,
    /// In mount order (parents first).
    pub mounts: Vec<Mount>,
    /// What the installed system needs (what disko's NixOS module derives).
    pub nixos: NixosConfig,
}

impl Plan {
    /// Every operation of the plan, with the disk or volume it belongs to.
    pub fn all_ops(&self) -> impl Iterator<Item = (&str, &Op)> {
        self.disks
            .iter()
            .flat_map(|d| d.ops.iter().map(move |o| (d.name.as_str(), o)))
            .chain(
                self.volumes
                    .iter()
                    .flat_map(|v| v.ops.iter().map(move |o| (v.label.as_str(), o))),
            )
    }

    fn ops_lists_mut(&mut self) -> Vec<&mut Vec<Op>> {
        self.disks
            .iter_mut()
            .map(|d| &mut d.ops)
            .chain(self.volumes.iter_mut().map(|v| &mut v.ops))
            .collect()
    }

    /// Set how the installed system unlocks the layout's LUKS volumes: the
    /// NixOS configuration ([`NixosConfig::set_luks_unlock`]) and, for
    /// [`LuksUnlock::Tpm2`], an [`Op::Tpm2Enroll`] right after the
    /// `luksFormat` of each volume the initrd opens (before anything is made
    /// inside it). Pure: the plan stays printable.
    pub fn set_luks_unlock(
        &mut self,
        layout: &Layout,
        unlock: LuksUnlock,
        tpm2_pcrs: &[u8],
    ) -> anyhow::Result<()> {
        self.nixos.set_luks_unlock(layout, unlock)?;
        let initrd: Vec<String> = self.nixos.luks_devices.keys().cloned().collect();
        for list in self.ops_lists_mut() {
            list.retain(|op| !matches!(op, Op::Tpm2Enroll { .. }));
            if unlock != LuksUnlock::Tpm2 {
                continue;
            }
            let mut ops = Vec::with_capacity(list.len() + 1);
            for op in std::mem::take(list) {
                let enroll = match &op {
                    Op::LuksFormat {
                        device, name, key, ..
                    } if initrd.contains(name) => Some(Op::Tpm2Enroll {
                        device: device.clone(),
                        name: name.clone(),
                        key: key.clone(),
                        pcrs: tpm2_pcrs.to_vec(),
                    }),
                    _ => None,
                };
                ops.push(op);
                ops.extend(enroll);
            }
            *list = ops;
        }
        Ok(())
    }

    /// Every unit of work, in the plan's printed order: each disk (its
    /// table, then what its partitions hold, in order) and each volume
    /// (created, then what it holds), with the units it waits for. A disk
    /// waits for nothing; a volume for the disks and volumes that make its
    /// members. Apply starts a unit as soon as all it waits for have
    /// finished: units with no path between them run in parallel.
    pub fn units(&self) -> Vec<(&str, &[String])> {
        self.disks
            .iter()
            .map(|d| (d.name.as_str(), d.after.as_slice()))
            .chain(
                self.volumes
                    .iter()
                    .map(|v| (v.label.as_str(), v.after.as_slice())),
            )
            .collect()
    }

    /// Every unit `name` waits for, directly or through another one.
    pub fn waits_for(&self, name: &str) -> std::collections::BTreeSet<String> {
        let units = self.units();
        let mut out = std::collections::BTreeSet::new();
        let mut todo = vec![name.to_owned()];
        while let Some(n) = todo.pop() {
            if let Some((_, after)) = units.iter().find(|(u, _)| *u == n) {
                for a in after.iter() {
                    if out.insert(a.clone()) {
                        todo.push(a.clone());
                    }
                }
            }
        }
        out
    }

    /// The units that may run at the same time as `name`: neither waits
    /// for the other, directly or indirectly.
    pub fn parallel_with(&self, name: &str) -> Vec<String> {
        let mine = self.waits_for(name);
        self.units()
            .iter()
            .map(|(u, _)| *u)
            .filter(|u| *u != name && !mine.contains(*u) && !self.waits_for(u).contains(name))
            .map(str::to_owned)
            .collect()
    }

    /// Whether applying needs this machine's TPM2.
    pub fn needs_tpm2(&self) -> bool {
        self.all_ops()
            .any(|(_, op)| matches!(op, Op::Tpm2Enroll { .. }))
    }

    /// The installer paths the layout reads keys from (`keyFile`,
    /// `passwordFile`, `additionalKeyFiles`, a bcachefs `passwordFile`):
    /// secrets meant for formatting, not for the target.
    pub fn key_paths(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (_, op) in self.all_ops() {
            match op {
                Op::LuksFormat { key, .. }
                | Op::LuksOpen { key, .. }
                | Op::Tpm2Enroll { key, .. }
                | Op::BcachefsFormat { key: Some(key), .. }
                | Op::BcachefsSubvolumes { key: Some(key), .. } => {
                    out.insert(key.path().to_owned());
                }
                Op::LuksAddKey { key, new_key, .. } => {
                    out.insert(key.path().to_owned());
                    out.insert(new_key.path().to_owned());
                }
                _ => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskPlan {
    pub name: String,
    pub target: Target,
    /// The disk's partition table; `None` when the whole disk holds one thing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableKind>,
    pub partitions: Vec<PartPlan>,
    /// The GPT's disk GUID, or the MBR's disk id (8 hex digits), when
    /// pinned ([`plan_pinned`]); else the writer picks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
    /// Operations for this disk, in order. It runs in parallel with the
    /// other disks, unless its operations use a device another disk or
    /// volume makes (`after`).
    pub ops: Vec<Op>,
    /// The disks and volumes making a device this disk's operations use
    /// (`uses`: a btrfs over two LUKS volumes on two disks names the other
    /// disk's mapping in its mkfs arguments): it starts when they finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Devices made by other disks or volumes that this unit's operations use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
}

/// An md array, volume group, ZFS pool or bcachefs filesystem, and what is made on it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumePlan {
    pub kind: VolumeKind,
    pub name: String,
    /// "mdadm.raid1", as reports name it.
    pub label: String,
    /// 1 for volumes whose members are all on the disks; N for those with
    /// a member in wave N-1 (disko's `sortDevicesByDependencies` depth).
    pub wave: usize,
    /// The disks and volumes (by name: a disk's name, a volume's label)
    /// whose operations make this volume's members or another device its
    /// operations use: it starts when they have all finished, and waits for
    /// nothing else.
    pub after: Vec<String>,
    /// Devices made by other disks or volumes that this volume's operations use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    pub ops: Vec<Op>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartPlan {
    pub number: u32,
    /// GPT partition name (PARTLABEL); "" in an MBR.
    pub label: String,
    pub type_code: String,
    pub type_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub size_bytes: u64,
    /// Kernel node while installing ("/dev/vda2", "/dev/loop0p2").
    pub device: String,
    /// Stable name for the installed system ("/dev/disk/by-partlabel/disk-main-root").
    pub stable_device: String,
    /// The partition's own GUID (PARTUUID): the layout's `uuid`, or pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// GPT attribute bits (`attributes`), as a mask.
    #[serde(skip_serializing_if = "is_zero")]
    pub attributes: u64,
    /// MBR partition type (msdos tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<u8>,
    /// MBR active flag (msdos tables).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bootable: bool,
}

/// The first usable LBA of a GPT with 128 entries of 128 bytes.
pub fn first_usable(sector: u64) -> u64 {
    2 + (128 * 128u64).div_ceil(sector)
}

/// The last usable LBA (the backup table and header sit after it).
pub fn last_usable(sector: u64, total: u64) -> u64 {
    total - 2 - (128 * 128u64).div_ceil(sector)
}

/// Kernel node of partition `n` of `disk` (disko's `deviceNumbering`):
/// "p" before the number when the disk's name ends in a digit (nvme0n1p2,
/// loop0p2, mmcblk0p1, /dev/md/raid1p1), by-id paths get "-partN".
pub fn partition_node(disk: &str, n: u32) -> String {
    if disk.starts_with("/dev/disk/") || disk.starts_with("/dev/zvol/") {
        return format!("{disk}-part{n}");
    }
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// Compute the plan. `targets` maps every layout disk to its device. The
/// tools pick the disk, partition and filesystem ids ([`plan_pinned`] fixes them).
pub fn plan(layout: &Layout, targets: &BTreeMap<String, Target>) -> Result<Plan, LayoutError> {
    plan_with(layout, targets, None)
}

/// [`plan`] with every id pinned from `ids`: the GPT disk and partition
/// GUIDs, the MBR disk id, md array UUIDs and the UUIDs given to mkfs,
/// mkswap and `cryptsetup luksFormat` (not where the layout's own
/// `extraArgs` or `uuid` set one). The disk journal records them; a
/// restarted agent compares them with the disks.
pub fn plan_pinned(
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    ids: &Ids,
) -> Result<Plan, LayoutError> {
    plan_with(layout, targets, Some(ids))
}

/// What the walk over the layout collects besides each owner's operations.
struct Walk<'a> {
    ids: Option<&'a Ids>,
    /// Volume -> its members in creation order: (content field path, device).
    members: BTreeMap<VolumeRef, Vec<(String, String)>>,
    /// Volume -> the disks and volumes whose operations make its members.
    makers: BTreeMap<VolumeRef, std::collections::BTreeSet<String>>,
    mounts: Vec<Mount>,
    /// Content field path -> how the installed system names its device.
    sites: Sites,
}

/// The sectors of a table's partitions on a device of `target`'s size.
/// Shared by the plan (disks) and apply (tables on md arrays and LUKS
/// volumes, whose size is known once they exist).
pub fn table_parts(
    table: &Table,
    t: &Target,
    guids: &[Option<String>],
    stable: impl Fn(&super::layout::Partition) -> String,
) -> Result<Vec<PartPlan>, LayoutError> {
    let ss = u64::from(t.sector_size.max(512));
    let total = t.size_bytes / ss;
    let align = ((1u64 << 20) / ss).max(1);
    let legacy_msdos = table.kind == TableKind::Msdos;
    let (first, last) = if legacy_msdos {
        (1, total.saturating_sub(1))
    } else {
        let min_sectors = first_usable(ss) + align + 34;
        if total < min_sectors {
            return Err(LayoutError {
                path: table.path.clone(),
                message: format!(
                    "{} is too small ({} bytes) for a partition table",
                    t.device, t.size_bytes
                ),
            });
        }
        (first_usable(ss), last_usable(ss, total))
    };
    let mut used: Vec<(u64, u64)> = Vec::new();
    let mut parts = Vec::new();
    for (i, p) in table.partitions.iter().enumerate() {
        let number = p.number;
        let (start, end) = match &p.parted {
            Some(pp) => {
                let g = parted::Geometry {
                    len: total,
                    sector_size: ss,
                    first,
                    last,
                    grain: align,
                };
                parted::place(&g, &pp.start, &pp.end, &used).map_err(|m| LayoutError {
                    path: format!("{}.start", p.path),
                    message: format!("{m} (on {}, {})", t.device, human(t.size_bytes)),
                })?
            }
            None => gpt_sectors(p, t, ss, align, first, last, &used)?,
        };
        used.push((start, end));
        let attributes = p.attributes.iter().fold(0u64, |m, b| m | (1 << b));
        parts.push(PartPlan {
            number,
            label: p.label.clone(),
            type_code: p.type_code.clone(),
            type_guid: p.type_guid.clone(),
            first_lba: start,
            last_lba: end,
            size_bytes: (end - start + 1) * ss,
            device: partition_node(&t.device, number),
            stable_device: stable(p),
            guid: p.uuid.clone().or_else(|| guids.get(i).cloned().flatten()),
            attributes,
            mbr_type: p
                .parted
                .as_ref()
                .filter(|_| legacy_msdos)
                .map(|pp| pp.mbr_type),
            bootable: legacy_msdos && p.parted.as_ref().is_some_and(|pp| pp.active),
        });
    }
    Ok(parts)
}

/// Where sgdisk puts a gpt partition (see the module documentation).
fn gpt_sectors(
    p: &super::layout::Partition,
    t: &Target,
    ss: u64,
    align: u64,
    first: u64,
    last: u64,
    used: &[(u64, u64)],
) -> Result<(u64, u64), LayoutError> {
    let size_path = format!("{}.size", p.path);
    let free = free_blocks(used, first, last);
    let start = match p.start {
        Bound::Default => {
            let largest = free
                .iter()
                .max_by_key(|(s, e)| (e - s, std::cmp::Reverse(*s)));
            match largest {
                Some((s, _)) => s.div_ceil(align) * align,
                None => {
                    return Err(LayoutError {
                        path: size_path,
                        message: format!(
                            "no space left on {} ({}) for this partition",
                            t.device,
                            human(t.size_bytes)
                        ),
                    })
                }
            }
        }
        Bound::At(b) => (b / ss).max(first).div_ceil(align) * align,
        Bound::Plus(b) => (first + b / ss).div_ceil(align) * align,
        Bound::FromEnd(b) => (last.saturating_sub(b / ss)).div_ceil(align) * align,
    };
    let end = match p.end {
        Bound::Plus(b) => (start + b / ss).saturating_sub(1),
        Bound::FromEnd(b) => last.saturating_sub(b / ss),
        // An absolute end is that very sector (sgdisk: "--new=1:1M:128M"
        // ends at sector 262144, which --align-end leaves as it is).
        Bound::At(b) => b / ss,
        Bound::Default => last,
    };
    // --align-end: the sector after the end is aligned (relative ends only).
    let end = if (end + 1).is_multiple_of(align) || matches!(p.end, Bound::At(_)) {
        end
    } else {
        ((end + 1) / align * align).saturating_sub(1)
    };
    let fits = free.iter().any(|(s, e)| start >= *s && end <= *e);
    if end < start || end > last || !fits {
        let want = match p.end {
            Bound::Plus(b) => human(b),
            _ => "the rest".into(),
        };
        let left: u64 = free
            .iter()
            .map(|(s, e)| (e + 1).saturating_sub(s.div_ceil(align) * align))
            .max()
            .unwrap_or(0)
            * ss;
        return Err(LayoutError {
            path: if matches!(p.end, Bound::Plus(_)) {
                size_path
            } else {
                format!("{}.end", p.path)
            },
            message: format!(
                "{} does not fit on {} ({}): at most {} is left after the partitions before it",
                want,
                t.device,
                human(t.size_bytes),
                human(left / (1 << 20) * (1 << 20))
            ),
        });
    }
    Ok((start, end))
}

/// How the installed system names partition `p` of a table on `parent`
/// (disko gpt.nix `device`: by-partuuid with a fixed `uuid`, the md by-id
/// name on an md array, else by-partlabel; a legacy table numbers the
/// parent's own name, table.nix `deviceNumbering`).
fn stable_partition(
    table: &Table,
    p: &super::layout::Partition,
    parent_stable: &str,
    md: Option<&str>,
) -> String {
    if table.kind != TableKind::Gpt {
        return partition_node(parent_stable, p.number);
    }
    if let Some(u) = &p.uuid {
        return format!("/dev/disk/by-partuuid/{u}");
    }
    if let Some(md) = md {
        return format!("/dev/disk/by-id/md-name-any:{md}-part{}", p.number);
    }
    nixos::by_partlabel(&p.label)
}

fn plan_with(
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    ids: Option<&Ids>,
) -> Result<Plan, LayoutError> {
    let mut w = Walk {
        ids,
        members: BTreeMap::new(),
        makers: BTreeMap::new(),
        mounts: Vec::new(),
        sites: Sites::default(),
    };
    let stable_disk = |name: &str| {
        targets
            .get(name)
            .map(|t| t.by_id.clone().unwrap_or_else(|| t.device.clone()))
            .unwrap_or_default()
    };
    let mut disks = Vec::new();
    for (name, disk) in &layout.disks {
        let t = targets.get(name).ok_or_else(|| LayoutError {
            path: format!("{}.device", disk.path),
            message: format!(
                "no device for disk {name:?}: give --disk {name}=/dev/... (or \"auto\")"
            ),
        })?;
        let mut ops = vec![Op::Wipe {
            device: t.device.clone(),
        }];
        let mut parts = Vec::new();
        let stable = stable_disk(name);
        let table = disk.table();
        if let Some(table) = table {
            // An MBR entry has no GUID of its own: its PARTUUID is the disk
            // id and the entry's number (SSSSSSSS-NN), pinned by `disk_guid`.
            let guids: Vec<Option<String>> = table
                .partitions
                .iter()
                .map(|p| {
                    ids.filter(|_| table.kind != TableKind::Msdos)
                        .map(|i| i.uuid(&format!("part {name} {}", p.number)).to_string())
                })
                .collect();
            parts = table_parts(table, t, &guids, |p| {
                stable_partition(table, p, &stable, None)
            })?;
            let n = parts.len();
            ops.push(match table.kind {
                TableKind::Msdos => Op::WriteMbr {
                    device: t.device.clone(),
                    partitions: n,
                },
                _ => Op::WriteGpt {
                    device: t.device.clone(),
                    partitions: n,
                },
            });
            hybrid_ops(table, &t.device, &mut ops);
            ops.push(Op::Reread {
                device: t.device.clone(),
                partitions: parts.iter().map(|p| p.device.clone()).collect(),
            });
            for (p, pp) in table.partitions.iter().zip(&parts) {
                if let Some(c) = &p.content {
                    content_ops(
                        c,
                        &pp.device,
                        &pp.stable_device,
                        name,
                        None,
                        &mut w,
                        &mut ops,
                    )?;
                }
            }
        } else {
            content_ops(
                &disk.content,
                &t.device,
                &stable,
                name,
                None,
                &mut w,
                &mut ops,
            )?;
        }
        let disk_guid = ids.map(|i| match table.map(|t| t.kind) {
            Some(TableKind::Msdos) => i.volume_id(&format!("disk {name}")),
            _ => i.uuid(&format!("disk {name}")).to_string(),
        });
        disks.push(DiskPlan {
            name: name.clone(),
            target: t.clone(),
            table: table.map(|t| t.kind),
            partitions: parts,
            disk_guid: table.and(disk_guid),
            ops,
            after: Vec::new(),
            uses: Vec::new(),
        });
    }
    let mut volumes = Vec::new();
    for (i, wave) in layout.waves.iter().enumerate() {
        for v in wave {
            volumes.push(volume_plan(layout, v, i + 1, &mut w)?);
        }
    }
    for n in layout.nodev.values() {
        w.mounts.push(Mount {
            device: n.device.clone(),
            mountpoint: n.mountpoint.clone(),
            fs_type: n.fs_type.clone(),
            options: n.mount_options.clone(),
            disk: None,
        });
    }
    link_units(&mut disks, &mut volumes);
    // disko mounts in mountpoint order: a parent sorts before its children.
    w.mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    let nixos = nixos::derive(layout, &w.sites, |name| {
        targets
            .get(name)
            .map(|t| t.by_id.clone().unwrap_or_else(|| t.device.clone()))
    });
    Ok(Plan {
        disks,
        volumes,
        mounts: w.mounts,
        nixos,
    })
}

/// The devices an operation makes (besides a disk's own partitions).
fn makes(op: &Op) -> Vec<String> {
    match op {
        Op::LuksOpen { name, .. } => vec![format!("/dev/mapper/{name}")],
        Op::MdCreate { device, .. } => vec![device.clone()],
        Op::LvCreate { vg, name, .. } => vec![format!("/dev/{vg}/{name}")],
        Op::NestedTable { partitions, .. } => partitions.clone(),
        Op::ZfsVolume { name, .. } => vec![format!("/dev/zvol/{name}")],
        _ => Vec::new(),
    }
}

/// What each disk and volume waits for beyond its members: every device
/// its operations' command lines name that another unit makes (disko runs
/// the disks one after another, so a layout may name an earlier disk's
/// device, e.g. btrfs `extraArgs = [ "-d raid1" "/dev/mapper/p1" ]`).
fn link_units(disks: &mut [DiskPlan], volumes: &mut [VolumePlan]) {
    let mut maker: BTreeMap<String, String> = BTreeMap::new();
    for d in disks.iter() {
        for p in &d.partitions {
            maker.insert(p.device.clone(), d.name.clone());
        }
        for m in d.ops.iter().flat_map(makes) {
            maker.insert(m, d.name.clone());
        }
    }
    for v in volumes.iter() {
        for m in v.ops.iter().flat_map(makes) {
            maker.insert(m, v.label.clone());
        }
    }
    let used = |me: &str, ops: &[Op]| {
        let mut after = std::collections::BTreeSet::new();
        let mut uses = std::collections::BTreeSet::new();
        for word in ops.iter().flat_map(|o| o.argv().unwrap_or_default()) {
            if let Some(m) = maker.get(&word).filter(|m| *m != me) {
                after.insert(m.clone());
                uses.insert(word);
            }
        }
        (after, uses)
    };
    for d in disks.iter_mut() {
        let (after, uses) = used(&d.name, &d.ops);
        d.after = after.into_iter().collect();
        d.uses = uses.into_iter().collect();
    }
    for v in volumes.iter_mut() {
        let (after, uses) = used(&v.label, &v.ops);
        let mut all: std::collections::BTreeSet<String> = v.after.iter().cloned().collect();
        all.extend(after);
        v.after = all.into_iter().collect();
        v.uses = uses.into_iter().collect();
    }
}

/// gpt `hybrid` (disko gpt.nix `_create`): `sgdisk -h` over the hybrid
/// partitions (":EE" when `efiGptPartitionFirst = false`), then each one's
/// MBR type and active flag with sfdisk.
fn hybrid_ops(table: &Table, device: &str, ops: &mut Vec<Op>) {
    let hybrid: Vec<&super::layout::Partition> = table
        .partitions
        .iter()
        .filter(|p| p.hybrid.is_some())
        .collect();
    if hybrid.is_empty() {
        return;
    }
    ops.push(Op::HybridMbr {
        device: device.to_owned(),
        partitions: hybrid.iter().map(|p| p.number).collect(),
        ee_last: !table.efi_gpt_partition_first,
    });
    for p in hybrid {
        let h = p.hybrid.as_ref().expect("filtered");
        if let Some(t) = &h.mbr_type {
            ops.push(Op::MbrPartType {
                device: device.to_owned(),
                number: p.number,
                mbr_type: t.clone(),
            });
        }
        if h.bootable {
            ops.push(Op::MbrActivate {
                device: device.to_owned(),
                number: p.number,
            });
        }
    }
}

/// Arguments disko hands to the tool unquoted (`${toString args}`): split
/// at whitespace, as the shell does ("--iter-time 1", "-d raid1").
fn split_words(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split_whitespace().map(str::to_owned))
        .collect()
}

/// The operations for one content on `device` (and, inside it, what it holds).
#[allow(clippy::too_many_arguments)]
fn content_ops(
    c: &Content,
    device: &str,
    stable: &str,
    owner: &str,
    md: Option<&str>,
    w: &mut Walk<'_>,
    ops: &mut Vec<Op>,
) -> Result<(), LayoutError> {
    w.sites.insert(content_path(c), stable.to_owned());
    match c {
        Content::Table(t) => {
            if t.partitions.iter().any(|p| p.hybrid.is_some()) {
                return Err(LayoutError {
                    path: format!("{}.partitions", t.path),
                    message: "hybrid MBR entries are only made on a disk's own table".into(),
                });
            }
            let nodes: Vec<String> = t
                .partitions
                .iter()
                .map(|p| partition_node(device, p.number))
                .collect();
            let mut bare = t.clone();
            for p in &mut bare.partitions {
                p.content = None;
            }
            ops.push(Op::NestedTable {
                device: device.to_owned(),
                owner: owner.to_owned(),
                table: bare,
                disk_guid: w.ids.map(|i| match t.kind {
                    TableKind::Msdos => i.volume_id(&format!("table {device}")),
                    _ => i.uuid(&format!("table {device}")).to_string(),
                }),
                guids: match w.ids.filter(|_| t.kind != TableKind::Msdos) {
                    Some(i) => t
                        .partitions
                        .iter()
                        .map(|p| Some(i.uuid(&format!("part {device} {}", p.number)).to_string()))
                        .collect(),
                    None => Vec::new(),
                },
                partitions: nodes.clone(),
            });
            for (p, node) in t.partitions.iter().zip(&nodes) {
                if let Some(inner) = &p.content {
                    let st = stable_partition(t, p, stable, md);
                    content_ops(inner, node, &st, owner, None, w, ops)?;
                }
            }
        }
        Content::Filesystem(f) => fs_ops(f, device, owner, w, ops),
        // disko (lib/types/swap.nix) makes no signature for a randomly
        // encrypted swap: NixOS sets it up with a fresh key at every boot.
        Content::Swap(s) if s.random_encryption => {}
        Content::Swap(s) => ops.push(Op::Mkswap {
            device: device.to_owned(),
            args: s.extra_args.clone(),
            uuid: pin(w.ids, device, &s.extra_args, "-U", false),
        }),
        Content::Luks(l) => luks_ops(l, device, stable, owner, w, ops)?,
        Content::LvmPv(_) => {
            ops.push(Op::PvCreate {
                device: device.to_owned(),
            });
            register(c, device, owner, w);
        }
        Content::MdRaid(_) | Content::Zfs(_) | Content::Bcachefs(_) => {
            register(c, device, owner, w)
        }
    }
    Ok(())
}

fn content_path(c: &Content) -> String {
    match c {
        Content::Table(t) => t.path.clone(),
        Content::Filesystem(f) => f.path.clone(),
        Content::Swap(s) => s.path.clone(),
        Content::Luks(l) => l.path.clone(),
        Content::MdRaid(m) | Content::LvmPv(m) | Content::Zfs(m) => m.path.clone(),
        Content::Bcachefs(b) => b.path.clone(),
    }
}

fn register(c: &Content, device: &str, owner: &str, w: &mut Walk<'_>) {
    if let Some(v) = c.member_of() {
        w.makers
            .entry(v.clone())
            .or_default()
            .insert(owner.to_owned());
        w.members
            .entry(v)
            .or_default()
            .push((content_path(c), device.to_owned()));
    }
}

/// `--keyfile-size` / `--keyfile-offset` for a key file read with limits (`settings`).
fn key_limits(l: &Luks) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(n) = l.key_file_size {
        a.extend(["--keyfile-size".to_owned(), n.to_string()]);
    }
    if let Some(n) = l.key_file_offset {
        a.extend(["--keyfile-offset".to_owned(), n.to_string()]);
    }
    a
}

fn luks_ops(
    l: &Luks,
    device: &str,
    stable: &str,
    owner: &str,
    w: &mut Walk<'_>,
    ops: &mut Vec<Op>,
) -> Result<(), LayoutError> {
    let format_args = split_words(&l.extra_format_args);
    let mut args = format_args.clone();
    args.extend(key_limits(l));
    ops.push(Op::LuksFormat {
        device: device.to_owned(),
        name: l.name.clone(),
        key: l.key.clone(),
        args,
        uuid: pin(w.ids, device, &format_args, "--uuid", false),
    });
    let mut args = split_words(&l.extra_open_args);
    if l.allow_discards {
        args.push("--allow-discards".into());
    }
    // luks.nix: bypassWorkqueues.
    if l.settings.get("bypassWorkqueues") == Some(&serde_json::Value::Bool(true)) {
        args.extend([
            "--perf-no_read_workqueue".into(),
            "--perf-no_write_workqueue".into(),
        ]);
    }
    args.extend(key_limits(l));
    ops.push(Op::LuksOpen {
        device: device.to_owned(),
        name: l.name.clone(),
        key: l.key.clone(),
        args,
    });
    for k in &l.additional_key_files {
        ops.push(Op::LuksAddKey {
            device: device.to_owned(),
            key: l.key.clone(),
            args: key_limits(l),
            new_key: KeySource::KeyFile(k.clone()),
        });
    }
    if let Some(inner) = &l.content {
        let mapper = format!("/dev/mapper/{}", l.name);
        content_ops(inner, &mapper, &mapper, owner, None, w, ops)?;
    }
    let _ = stable;
    Ok(())
}

/// The id for what `what` makes on `device`, unless the layout's own
/// arguments already set one (`flag`).
fn pin(ids: Option<&Ids>, device: &str, args: &[String], flag: &str, vfat: bool) -> Option<String> {
    let ids = ids?;
    if args
        .iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")) || a.starts_with("uuid="))
    {
        return None;
    }
    let what = format!("fs {device}");
    Some(if vfat {
        ids.volume_id(&what)
    } else {
        ids.uuid(&what).to_string()
    })
}

fn fs_ops(f: &Filesystem, device: &str, owner: &str, w: &mut Walk<'_>, ops: &mut Vec<Op>) {
    // btrfs.nix passes extraArgs unquoted (split); filesystem.nix quotes each.
    let args = if f.format == "btrfs" {
        split_words(&f.extra_args)
    } else {
        f.extra_args.clone()
    };
    let uuid = if PINNED_FORMATS.contains(&f.format.as_str()) {
        let flag = super::ops::uuid_flag(&f.format);
        pin(w.ids, device, &args, flag, f.format == "vfat")
    } else {
        None
    };
    ops.push(Op::Mkfs {
        device: device.to_owned(),
        format: f.format.clone(),
        args,
        uuid,
    });
    let mut swap_files: Vec<(String, String)> = f
        .swap
        .iter()
        .map(|s| (s.path.clone(), s.size.clone()))
        .collect();
    for s in &f.subvolumes {
        for sf in &s.swap {
            swap_files.push((
                format!("{}/{}", s.name.trim_matches('/'), sf.path),
                sf.size.clone(),
            ));
        }
    }
    if !f.subvolumes.is_empty() || !swap_files.is_empty() {
        ops.push(Op::BtrfsSubvolumes {
            device: device.to_owned(),
            names: f.subvolumes.iter().map(|s| s.name.clone()).collect(),
            swap_files,
        });
    }
    if let Some(m) = &f.mountpoint {
        w.mounts.push(Mount {
            device: device.to_owned(),
            mountpoint: m.clone(),
            fs_type: f.format.clone(),
            options: f.mount_options.clone(),
            disk: Some(owner.to_owned()),
        });
    }
    for s in &f.subvolumes {
        if let Some(m) = &s.mountpoint {
            let mut options = s.mount_options.clone();
            options.push(format!("subvol={}", s.name));
            w.mounts.push(Mount {
                device: device.to_owned(),
                mountpoint: m.clone(),
                fs_type: "btrfs".into(),
                options,
                disk: Some(owner.to_owned()),
            });
        }
    }
}

/// The operations of one volume, its members already registered.
fn volume_plan(
    layout: &Layout,
    v: &VolumeRef,
    wave: usize,
    w: &mut Walk<'_>,
) -> Result<VolumePlan, LayoutError> {
    let label = v.to_string();
    let members: Vec<(String, String)> = w.members.get(v).cloned().unwrap_or_default();
    let devices: Vec<String> = members.iter().map(|(_, d)| d.clone()).collect();
    let mut ops = Vec::new();
    match v.kind {
        VolumeKind::Mdadm => {
            let m = &layout.mdadm[&v.name];
            let dev = m.device();
            ops.push(Op::MdCreate {
                device: dev.clone(),
                name: m.name.clone(),
                level: m.level,
                metadata: m.metadata.clone(),
                members: devices,
                args: m.extra_args.clone(),
                uuid: w.ids.map(|i| i.uuid(&format!("md {}", m.name)).to_string()),
            });
            if let Some(c) = &m.content {
                content_ops(c, &dev, &dev, &label, Some(&m.name), w, &mut ops)?;
            }
        }
        VolumeKind::LvmVg => {
            let g = &layout.lvm_vg[&v.name];
            ops.push(Op::VgCreate {
                name: g.name.clone(),
                pvs: devices,
            });
            for lv in &g.lvs {
                ops.push(Op::LvCreate {
                    vg: g.name.clone(),
                    name: lv.name.clone(),
                    size: lv.size.clone(),
                    lvm_type: lv.lvm_type.clone(),
                    pool: lv.pool.clone(),
                    args: split_words(&lv.extra_args),
                });
            }
            for lv in &g.lvs {
                if let Some(c) = &lv.content {
                    let dev = lv.device(&g.name);
                    content_ops(c, &dev, &dev, &label, None, w, &mut ops)?;
                }
            }
        }
        VolumeKind::Zpool => {
            let z = &layout.zpool[&v.name];
            let dev_of = |path: &str| {
                members
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default()
            };
            let topology = match &z.mode {
                ZpoolMode::Simple(mode) => {
                    let mut t: Vec<String> = Vec::new();
                    if !mode.is_empty() {
                        t.push(mode.clone());
                    }
                    t.extend(devices.iter().cloned());
                    t
                }
                ZpoolMode::Topology(top) => {
                    // zpool.nix: storage vdevs, spare, log, dedup, special,
                    // cache; in each list the vdevs without mode first; the
                    // class keyword once per class.
                    let mut t: Vec<String> = Vec::new();
                    let class =
                        |kind: &str, vdevs: Vec<(String, Vec<String>)>, t: &mut Vec<String>| {
                            if vdevs.is_empty() {
                                return;
                            }
                            if !kind.is_empty() {
                                t.push(kind.to_owned());
                            }
                            for (mode, ms) in vdevs {
                                if !mode.is_empty() {
                                    t.push(mode);
                                }
                                let paths = super::layout::topology_members(layout, z, &ms);
                                t.extend(paths.iter().map(|p| dev_of(p)));
                            }
                        };
                    let list = |vs: &[super::layout::Vdev]| {
                        let mut l: Vec<(String, Vec<String>)> = vs
                            .iter()
                            .filter(|v| v.mode.is_empty())
                            .chain(vs.iter().filter(|v| !v.mode.is_empty()))
                            .map(|v| (v.mode.clone(), v.members.clone()))
                            .collect();
                        l.dedup();
                        l
                    };
                    class("", list(&top.vdev), &mut t);
                    if !top.spare.is_empty() {
                        class("spare", vec![(String::new(), top.spare.clone())], &mut t);
                    }
                    class("log", list(&top.log), &mut t);
                    class("dedup", list(&top.dedup), &mut t);
                    class("special", list(&top.special), &mut t);
                    if !top.cache.is_empty() {
                        class("cache", vec![(String::new(), top.cache.clone())], &mut t);
                    }
                    t
                }
            };
            ops.push(Op::ZpoolCreate {
                name: z.name.clone(),
                no_mountpoint: z.root_fs_options.get("canmount").map(String::as_str) == Some("off"),
                options: z.options.clone().into_iter().collect(),
                root_fs_options: z.root_fs_options.clone().into_iter().collect(),
                topology,
            });
            zfs_mount(
                &z.name,
                z.mountpoint.as_deref(),
                &z.root_fs_options,
                &z.mount_options,
                &label,
                w,
            );
            for d in &z.datasets {
                let full = d.full_name(&z.name);
                match &d.kind {
                    DatasetKind::ZfsFs { mountpoint } => {
                        let mut o = BTreeMap::new();
                        if let Some(m) = mountpoint {
                            o.insert("mountpoint".to_owned(), m.clone());
                        }
                        o.extend(d.options.clone());
                        ops.push(Op::ZfsCreate {
                            name: full.clone(),
                            options: o.into_iter().collect(),
                        });
                        zfs_mount(
                            &full,
                            mountpoint.as_deref(),
                            &d.options,
                            &d.mount_options,
                            &label,
                            w,
                        );
                    }
                    DatasetKind::ZfsVolume {
                        size,
                        extra_args,
                        content,
                    } => {
                        ops.push(Op::ZfsVolume {
                            name: full.clone(),
                            options: d.options.clone().into_iter().collect(),
                            size: size.clone(),
                            args: extra_args.clone(),
                        });
                        if let Some(c) = content {
                            let dev = format!("/dev/zvol/{full}");
                            content_ops(c, &dev, &dev, &label, None, w, &mut ops)?;
                        }
                    }
                }
            }
        }
        VolumeKind::Bcachefs => {
            let b = &layout.bcachefs[&v.name];
            let mut ms = Vec::new();
            for (path, dev) in &members {
                let found = layout
                    .all_contents()
                    .into_iter()
                    .find_map(|(_, c)| match c {
                        Content::Bcachefs(m) if &m.path == path => Some(m.clone()),
                        _ => None,
                    });
                if let Some(m) = found {
                    ms.push((m.label.clone(), m.extra_format_args.clone(), dev.clone()));
                }
            }
            let key = b.password_file.clone().map(KeySource::PasswordFile);
            let source = devices.join(":");
            ops.push(Op::BcachefsFormat {
                name: b.name.clone(),
                uuid: b.uuid.clone(),
                members: ms,
                args: split_words(&b.extra_format_args),
                key: key.clone(),
            });
            if !b.subvolumes.is_empty() {
                ops.push(Op::BcachefsSubvolumes {
                    device: source.clone(),
                    names: b
                        .subvolumes
                        .iter()
                        .map(|s| s.name.trim_start_matches('/').to_owned())
                        .collect(),
                    key,
                });
            }
            for (m, options) in b.mounts() {
                w.mounts.push(Mount {
                    device: source.clone(),
                    mountpoint: m,
                    fs_type: "bcachefs".into(),
                    options,
                    disk: Some(label.clone()),
                });
            }
        }
    }
    Ok(VolumePlan {
        kind: v.kind,
        name: v.name.clone(),
        label,
        wave,
        after: w
            .makers
            .get(v)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default(),
        uses: Vec::new(),
        ops,
    })
}

/// zfs_fs.nix `_mount`: a dataset with a mountpoint, as
/// [`super::layout::zfs_mount_options`] says.
fn zfs_mount(
    name: &str,
    mountpoint: Option<&str>,
    options: &BTreeMap<String, String>,
    mount_options: &[String],
    owner: &str,
    w: &mut Walk<'_>,
) {
    let (Some(m), Some(o)) = (
        mountpoint,
        super::layout::zfs_mount_options(options, mount_options),
    ) else {
        return;
    };
    w.mounts.push(Mount {
        device: name.to_owned(),
        mountpoint: m.to_owned(),
        fs_type: "zfs".into(),
        options: o,
        disk: Some(owner.to_owned()),
    });
}

fn free_blocks(used: &[(u64, u64)], first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut u = used.to_vec();
    u.sort();
    let mut free = Vec::new();
    let mut at = first;
    for (s, e) in u {
        if s > at {
            free.push((at, s - 1));
        }
        at = at.max(e + 1);
    }
    if at <= last {
        free.push((at, last));
    }
    free
}

impl Plan {
    /// What the layout lacks to boot this machine's firmware: an ESP
    /// (EF00, mounted, directly or as an md array of EF00 partitions) for
    /// UEFI, a BIOS boot partition (EF02) for GRUB on BIOS. Warnings, not
    /// errors: the configuration may boot otherwise.
    pub fn boot_warnings(&self, firmware: landfall_proto::inventory::FirmwareMode) -> Vec<String> {
        use landfall_proto::inventory::FirmwareMode;
        let has = |code: &str| {
            self.disks
                .iter()
                .flat_map(|d| &d.partitions)
                .any(|p| p.type_guid == super::layout::type_guid(code).unwrap_or_default())
        };
        let esp: Vec<&str> = self
            .disks
            .iter()
            .flat_map(|d| &d.partitions)
            .filter(|p| p.type_guid == super::layout::EF00)
            .map(|p| p.device.as_str())
            .collect();
        let mounted = |dev: &str| self.mounts.iter().any(|m| m.device == dev);
        let esp_mounted = esp.iter().any(|d| mounted(d))
            || self.volumes.iter().flat_map(|v| &v.ops).any(|op| {
                matches!(op, Op::MdCreate { device, members, .. }
                    if mounted(device) && members.iter().any(|m| esp.contains(&m.as_str())))
            });
        let mut w = Vec::new();
        match firmware {
            FirmwareMode::Uefi if !esp_mounted => w.push(
                "this machine boots UEFI but the layout has no mounted EFI system partition (type EF00)".to_owned(),
            ),
            FirmwareMode::Bios if !has("EF02") => w.push(
                "this machine boots BIOS but the layout has no BIOS boot partition (type EF02) for GRUB".to_owned(),
            ),
            _ => {}
        }
        w
    }

    /// Number of operations, mounts included (for progress).
    pub fn op_count(&self) -> usize {
        self.all_ops().count() + self.mounts.len()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = 0;
        for d in &self.disks {
            let t = &d.target;
            writeln!(
                f,
                "disk {} -> {}{} ({}, {}-byte sectors)",
                d.name,
                t.device,
                t.by_id
                    .as_ref()
                    .map(|b| format!(" [{b}]"))
                    .unwrap_or_default(),
                human(t.size_bytes),
                t.sector_size
            )?;
            if let Some(kind) = d.table {
                writeln!(
                    f,
                    "  {}:",
                    match kind {
                        TableKind::Gpt => "gpt",
                        TableKind::PartedGpt => "gpt (legacy table, placed as parted does)",
                        TableKind::Msdos => "msdos (MBR, placed as parted does)",
                    }
                )?;
                writeln!(
                    f,
                    "    {:>2}  {:>12}  {:>12}  {:>8}  {:<36}  {:<4}  device",
                    "#", "first", "last", "size", "label", "type"
                )?;
                for p in &d.partitions {
                    let ty = match p.mbr_type {
                        Some(m) => format!("{m:02x}{}", if p.bootable { "*" } else { "" }),
                        None => p.type_code.clone(),
                    };
                    writeln!(
                        f,
                        "    {:>2}  {:>12}  {:>12}  {:>8}  {:<36}  {:<4}  {}",
                        p.number,
                        p.first_lba,
                        p.last_lba,
                        human(p.size_bytes),
                        p.label,
                        ty,
                        p.device
                    )?;
                }
            }
            writeln!(
                f,
                "  operations, in this order; {}:",
                order_note(self, &d.name, &d.after, &d.uses)
            )?;
            for op in &d.ops {
                n += 1;
                writeln!(f, "    {n:>2}. {}", op.describe())?;
            }
        }
        for v in &self.volumes {
            writeln!(
                f,
                "{} (operations in this order; {}):",
                v.label,
                order_note(self, &v.label, &v.after, &v.uses)
            )?;
            for op in &v.ops {
                n += 1;
                writeln!(f, "    {n:>2}. {}", op.describe())?;
            }
        }
        if !self.mounts.is_empty() {
            writeln!(
                f,
                "mounts (in this order, below the target root; after every disk and volume above):"
            )?;
            for m in &self.mounts {
                n += 1;
                writeln!(
                    f,
                    "    {n:>2}. mount -t {} -o {} {} ROOT{}",
                    m.fs_type,
                    m.options_arg(),
                    m.device,
                    m.mountpoint.trim_end_matches('/')
                )?;
            }
        }
        writeln!(f, "NixOS configuration for the installed system:")?;
        let mut s = String::new();
        for l in self.nixos.to_nix().lines() {
            let _ = writeln!(s, "    {l}");
        }
        f.write_str(&s)
    }
}

/// What a unit of the printed plan waits for and what runs beside it.
fn order_note(plan: &Plan, name: &str, after: &[String], uses: &[String]) -> String {
    let list = |v: &[String]| v.join(", ");
    let starts = if after.is_empty() {
        "starts at once".to_owned()
    } else {
        format!(
            "starts when {} finished (made there: {})",
            list(after),
            list(uses)
        )
    };
    let beside = plan.parallel_with(name);
    if beside.is_empty() {
        format!("{starts}; nothing runs beside it")
    } else {
        format!("{starts}; may run in parallel with {}", list(&beside))
    }
}

/// Owner label of a layout disk (reports).
pub fn owner_label(o: &Owner) -> String {
    match o {
        Owner::Disk(d) => d.clone(),
        Owner::Volume(v) => v.to_string(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(size: u64) -> BTreeMap<String, Target> {
        BTreeMap::from([(
            "main".to_string(),
            Target {
                device: "/dev/vda".into(),
                size_bytes: size,
                sector_size: 512,
                by_id: None,
            },
        )])
    }

    #[test]
    fn hybrid_sectors_match_sgdisk() {
        let l = Layout::from_json(&json!({"disk": {"main": {"device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "boot": {"size": "1M", "type": "EF02"},
            "ESP": {"size": "500M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
        }}}}}))
        .unwrap();
        let p = plan(&l, &t(2 << 30)).unwrap();
        let s: Vec<(u64, u64)> = p.disks[0]
            .partitions
            .iter()
            .map(|p| (p.first_lba, p.last_lba))
            .collect();
        // 2 GiB = 4194304 sectors; last usable 4194270; aligned end 4192255.
        assert_eq!(s, [(2048, 4095), (4096, 1028095), (1028096, 4192255)]);
        assert_eq!(
            p.mounts
                .iter()
                .map(|m| m.mountpoint.as_str())
                .collect::<Vec<_>>(),
            ["/", "/boot"]
        );
        assert_eq!(p.disks[0].partitions[2].device, "/dev/vda3");
    }

    #[test]
    fn boot_warnings_follow_the_firmware() {
        use landfall_proto::inventory::FirmwareMode;
        let l = Layout::from_json(&json!({"disk": {"main": {"device": "/dev/vda", "content": {"type": "gpt", "partitions": {
            "ESP": {"size": "500M", "type": "EF00", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
        }}}}}))
        .unwrap();
        let p = plan(&l, &t(2 << 30)).unwrap();
        assert!(p.boot_warnings(FirmwareMode::Uefi).is_empty());
        let w = p.boot_warnings(FirmwareMode::Bios);
        assert!(w[0].contains("no BIOS boot partition (type EF02)"), "{w:?}");
    }

    fn targets(names: &[&str]) -> BTreeMap<String, Target> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    Target {
                        device: format!("/dev/vd{}", (b'a' + i as u8) as char),
                        size_bytes: 2 << 30,
                        sector_size: 512,
                        by_id: None,
                    },
                )
            })
            .collect()
    }

    /// Where `pred` first matches in `ops`.
    fn at(ops: &[Op], what: &str, pred: impl Fn(&Op) -> bool) -> usize {
        ops.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in {ops:#?}"))
    }

    /// LUKS on an md array holding an LVM physical volume, beside a second
    /// array for /boot: the partitions (each disk's unit, the disks in
    /// parallel), then each array once both disks are done, the LUKS
    /// container on the array after the array and the physical volume in
    /// the mapping after the mapping (the array's unit, in that order), then
    /// the volume group after that array only: it may run beside the /boot
    /// array, which it does not need. The printed plan says so.
    #[test]
    fn luks_on_md_waits_for_the_array_and_lvm_for_the_mapping() {
        let disk = json!({"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
            "boot": {"size": "256M", "content": {"type": "mdraid", "name": "boot"}},
            "data": {"size": "100%", "content": {"type": "mdraid", "name": "raid1"}}}}});
        let l = Layout::from_json(&json!({
            "disk": {"a": disk.clone(), "b": disk},
            "mdadm": {
                "boot": {"type": "mdadm", "level": 1, "metadata": "1.0", "content": {
                    "type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
                "raid1": {"type": "mdadm", "level": 1, "content": {"type": "luks", "name": "crypted",
                    "passwordFile": "/run/landfall/secrets/luks.key",
                    "content": {"type": "lvm_pv", "vg": "pool"}}}},
            "lvm_vg": {"pool": {"type": "lvm_vg", "lvs": {"root": {"size": "100%", "content": {
                "type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}
        }))
        .unwrap();
        let p = plan(&l, &targets(&["a", "b"])).unwrap();
        let units: Vec<(&str, Vec<&str>)> = p
            .units()
            .into_iter()
            .map(|(n, a)| (n, a.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            units,
            [
                ("a", vec![]),
                ("b", vec![]),
                ("mdadm.boot", vec!["a", "b"]),
                ("mdadm.raid1", vec!["a", "b"]),
                ("lvm_vg.pool", vec!["mdadm.raid1"]),
            ]
        );
        // Each disk's unit: its table, nothing of the arrays.
        for d in &p.disks {
            assert!(
                d.ops.iter().all(|o| matches!(
                    o,
                    Op::Wipe { .. } | Op::WriteGpt { .. } | Op::Reread { .. }
                )),
                "{:#?}",
                d.ops
            );
        }
        let raid = &p
            .volumes
            .iter()
            .find(|v| v.label == "mdadm.raid1")
            .unwrap()
            .ops;
        let md = at(raid, "mdadm --create", |o| matches!(o, Op::MdCreate { .. }));
        let format = at(
            raid,
            "luksFormat",
            |o| matches!(o, Op::LuksFormat { device, .. } if device == "/dev/md/raid1"),
        );
        let open = at(
            raid,
            "luksOpen",
            |o| matches!(o, Op::LuksOpen { name, .. } if name == "crypted"),
        );
        let pv = at(
            raid,
            "pvcreate",
            |o| matches!(o, Op::PvCreate { device } if device == "/dev/mapper/crypted"),
        );
        assert!(md < format && format < open && open < pv, "{raid:#?}");
        // The volume group: its logical volumes, then their filesystems.
        let vg = &p
            .volumes
            .iter()
            .find(|v| v.label == "lvm_vg.pool")
            .unwrap()
            .ops;
        let lv = at(vg, "lvcreate", |o| matches!(o, Op::LvCreate { .. }));
        let mkfs = at(
            vg,
            "mkfs",
            |o| matches!(o, Op::Mkfs { device, .. } if device == "/dev/pool/root"),
        );
        assert!(matches!(vg[0], Op::VgCreate { .. }) && lv < mkfs, "{vg:#?}");

        assert_eq!(
            p.waits_for("lvm_vg.pool").into_iter().collect::<Vec<_>>(),
            ["a", "b", "mdadm.raid1"]
        );
        assert_eq!(p.parallel_with("a"), ["b"]);
        assert_eq!(p.parallel_with("mdadm.raid1"), ["mdadm.boot"]);
        assert_eq!(p.parallel_with("lvm_vg.pool"), ["mdadm.boot"]);
        let text = p.to_string();
        for want in [
            "  operations, in this order; starts at once; may run in parallel with b:",
            "mdadm.boot (operations in this order; starts when a, b finished (made there: /dev/vda1, /dev/vdb1); may run in parallel with mdadm.raid1, lvm_vg.pool):",
            "lvm_vg.pool (operations in this order; starts when mdadm.raid1 finished (made there: /dev/mapper/crypted); may run in parallel with mdadm.boot):",
            "mounts (in this order, below the target root; after every disk and volume above):",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        // Mounts: parents first.
        let m: Vec<&str> = p.mounts.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(m, ["/", "/boot"]);
    }

    /// LVM on LUKS across two disks: each disk opens its LUKS volume and
    /// makes the physical volume in the mapping (in that order, the disks in
    /// parallel); the volume group waits for both, and nothing runs beside it.
    #[test]
    fn lvm_on_luks_across_disks_waits_for_both_mappings() {
        let disk = |name: &str| {
            json!({"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
                "luks": {"size": "100%", "content": {"type": "luks", "name": name,
                    "passwordFile": "/run/landfall/secrets/luks.key",
                    "content": {"type": "lvm_pv", "vg": "pool"}}}}}})
        };
        let l = Layout::from_json(&json!({
            "disk": {"one": disk("crypt1"), "two": disk("crypt2")},
            "lvm_vg": {"pool": {"type": "lvm_vg", "lvs": {"root": {"size": "100%", "content": {
                "type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}}
        }))
        .unwrap();
        let p = plan(&l, &targets(&["one", "two"])).unwrap();
        for (d, name) in p.disks.iter().zip(["crypt1", "crypt2"]) {
            let table = at(&d.ops, "the GPT", |o| matches!(o, Op::WriteGpt { .. }));
            let open = at(
                &d.ops,
                "luksOpen",
                |o| matches!(o, Op::LuksOpen { name: n, .. } if n == name),
            );
            let pv = at(
                &d.ops,
                "pvcreate",
                |o| matches!(o, Op::PvCreate { device } if *device == format!("/dev/mapper/{name}")),
            );
            assert!(table < open && open < pv, "{:#?}", d.ops);
        }
        assert_eq!(p.volumes[0].after, ["one", "two"]);
        assert_eq!(p.parallel_with("one"), ["two"]);
        assert!(p.parallel_with("lvm_vg.pool").is_empty());
        let text = p.to_string();
        assert!(
            text.contains("lvm_vg.pool (operations in this order; starts when one, two finished (made there: /dev/mapper/crypt1, /dev/mapper/crypt2); nothing runs beside it):"),
            "{text}"
        );
    }

    /// disko makes the disks one after another, so a layout may name an
    /// earlier disk's device: btrfs over two LUKS volumes names the first
    /// disk's mapping in its mkfs arguments (disko's luks-btrfs-raid). That
    /// disk waits for the other; the plan says so.
    #[test]
    fn a_disk_naming_another_disks_device_waits_for_it() {
        let l = Layout::from_json(&json!({"disk": {
            "disk1": {"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
                "p1": {"size": "100%", "content": {"type": "luks", "name": "p1",
                    "passwordFile": "/run/landfall/secrets/luks.key"}}}}},
            "disk2": {"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
                "p2": {"size": "100%", "content": {"type": "luks", "name": "p2",
                    "passwordFile": "/run/landfall/secrets/luks.key",
                    "content": {"type": "btrfs", "extraArgs": ["-d raid1", "/dev/mapper/p1"],
                        "mountpoint": "/"}}}}}}}}))
        .unwrap();
        let p = plan(&l, &targets(&["disk1", "disk2"])).unwrap();
        assert!(p.disks[0].after.is_empty());
        assert_eq!(p.disks[1].after, ["disk1"]);
        assert_eq!(p.disks[1].uses, ["/dev/mapper/p1"]);
        assert!(p.parallel_with("disk1").is_empty());
        let text = p.to_string();
        assert!(
            text.contains("  operations, in this order; starts when disk1 finished (made there: /dev/mapper/p1); nothing runs beside it:"),
            "{text}"
        );
        // Two disks without such a name stay parallel.
        let l = Layout::from_json(&json!({"disk": {
            "one": {"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
                "r": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}}},
            "two": {"type": "disk", "device": "auto", "content": {"type": "gpt", "partitions": {
                "h": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/home"}}}}}}}))
        .unwrap();
        let p = plan(&l, &targets(&["one", "two"])).unwrap();
        assert_eq!(p.parallel_with("one"), ["two"]);
    }

    #[test]
    fn nodes() {
        assert_eq!(partition_node("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_node("/dev/loop7", 1), "/dev/loop7p1");
        assert_eq!(partition_node("/dev/sda", 3), "/dev/sda3");
    }
}

//! `plan()`: pure. From a validated layout and the chosen target disks
//! (device, size, sector size) it computes every partition's sectors, the
//! commands that make filesystems, swap and LUKS, and the mount order. The
//! result is a value: printed by `landfall-agent plan`, serialised with
//! `--json`, and executed by [`super::apply`].
//!
//! Sector arithmetic follows what disko's `sgdisk --align-end
//! --new=N:START:END` does (disko lib/types/gpt.nix `_create`): 1 MiB
//! alignment; start "0" is the first aligned sector of the largest free
//! block; `+SIZE` ends SIZE after the start; `-SIZE` ends SIZE before the last
//! usable sector; the end is rounded down so the next partition stays aligned.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

use super::ids::Ids;
use super::layout::{human, Bound, Content, Filesystem, KeySource, Layout, LayoutError};
use super::nixos::{self, NixosConfig};
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

/// The whole plan: per disk the table and the operations, then the mounts.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub disks: Vec<DiskPlan>,
    /// In mount order (parents first).
    pub mounts: Vec<Mount>,
    /// What the installed system needs (what disko's NixOS module derives).
    pub nixos: NixosConfig,
}

impl Plan {
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
        for d in &mut self.disks {
            d.ops.retain(|op| !matches!(op, Op::Tpm2Enroll { .. }));
            if unlock != LuksUnlock::Tpm2 {
                continue;
            }
            let mut ops = Vec::with_capacity(d.ops.len() + 1);
            for op in std::mem::take(&mut d.ops) {
                let enroll = match &op {
                    Op::LuksFormat {
                        device, name, key, ..
                    } if self.nixos.luks_devices.contains_key(name) => Some(Op::Tpm2Enroll {
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
            d.ops = ops;
        }
        Ok(())
    }

    /// Whether applying needs this machine's TPM2.
    pub fn needs_tpm2(&self) -> bool {
        self.disks
            .iter()
            .flat_map(|d| &d.ops)
            .any(|op| matches!(op, Op::Tpm2Enroll { .. }))
    }

    /// The installer paths the layout reads LUKS keys from (`keyFile`,
    /// `passwordFile`): secrets meant for formatting, not for the target.
    pub fn key_paths(&self) -> std::collections::BTreeSet<String> {
        self.disks
            .iter()
            .flat_map(|d| &d.ops)
            .filter_map(|op| match op {
                Op::LuksFormat { key, .. }
                | Op::LuksOpen { key, .. }
                | Op::Tpm2Enroll { key, .. } => Some(key.path().to_owned()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskPlan {
    pub name: String,
    pub target: Target,
    pub partitions: Vec<PartPlan>,
    /// The GPT's disk GUID, when pinned ([`plan_pinned`]); else the writer picks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
    /// Operations for this disk, in order. Disks are independent: they run in parallel.
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartPlan {
    pub number: u32,
    /// GPT partition name (PARTLABEL).
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
    /// The partition's own GUID (PARTUUID), when pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
}

/// One operation. Keys are never part of an operation: they are looked up
/// by their [`KeySource`] when the operation runs and go to stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Remove every signature (old tables, filesystems, LUKS, RAID/LVM members).
    Wipe { device: String },
    /// Protective MBR + GPT with the disk's partitions.
    WriteGpt { device: String, partitions: usize },
    /// Make the kernel see the new partitions and wait for their nodes.
    Reread {
        device: String,
        partitions: Vec<String>,
    },
    Mkfs {
        device: String,
        format: String,
        args: Vec<String>,
        /// The UUID (vfat: the 8-hex-digit volume id) given to mkfs, when pinned.
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
    },
    /// Subvolumes created on a temporarily mounted btrfs.
    BtrfsSubvolumes { device: String, names: Vec<String> },
    Mkswap {
        device: String,
        args: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
    },
    LuksFormat {
        device: String,
        name: String,
        key: KeySource,
        args: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
    },
    LuksOpen {
        device: String,
        name: String,
        key: KeySource,
        args: Vec<String>,
    },
    /// Bind the volume to this machine's TPM2 (`luks_unlock = tpm2`):
    /// `systemd-cryptenroll` adds a `systemd-tpm2` token and key slot sealed
    /// to `pcrs`, unlocking with the format-time key (which keeps its slot:
    /// the recovery key). Any TPM2 slot an earlier run of this attempt left
    /// is wiped in the same call (`--wipe-slot=tpm2` spares the new one).
    Tpm2Enroll {
        device: String,
        name: String,
        key: KeySource,
        pcrs: Vec<u8>,
    },
}

/// Stands for the unlock key file in a printed [`Op::Tpm2Enroll`] command line.
pub const UNLOCK_KEY_FILE: &str = "KEYFILE";

/// `systemd-cryptenroll` enrolling the TPM2 for `device`, unlocking with the
/// key in `key_file` (a file: this tool takes no key on stdin).
pub fn cryptenroll_argv(device: &str, pcrs: &[u8], key_file: &str) -> Vec<String> {
    let pcrs: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    vec![
        "systemd-cryptenroll".into(),
        "--tpm2-device=auto".into(),
        format!("--tpm2-pcrs={}", pcrs.join("+")),
        "--wipe-slot=tpm2".into(),
        format!("--unlock-key-file={key_file}"),
        device.into(),
    ]
}

impl Op {
    /// The command line this operation runs (or what it does, for built-in ones).
    pub fn describe(&self) -> String {
        match self {
            Op::Wipe { device } => format!("wipefs --all --force {device} (and its partitions)"),
            Op::WriteGpt { device, partitions } => {
                format!("write protective MBR + GPT ({partitions} partitions) to {device}")
            }
            Op::Reread { device, partitions } => {
                format!(
                    "re-read the partition table of {device}, wait for {} and wipe stale signatures in them",
                    partitions.join(" ")
                )
            }
            Op::BtrfsSubvolumes { device, names } => {
                format!("btrfs subvolume create {} (on {device})", names.join(" "))
            }
            Op::LuksFormat { key, .. } | Op::LuksOpen { key, .. } => {
                let argv = self.argv().unwrap_or_default().join(" ");
                format!("{argv}   # key: {} on stdin", key.path())
            }
            Op::Tpm2Enroll { key, .. } => {
                let argv = self.argv().unwrap_or_default().join(" ");
                format!(
                    "{argv}   # {UNLOCK_KEY_FILE}: {} in a 0600 file on tmpfs, removed after",
                    key.path()
                )
            }
            _ => self.argv().unwrap_or_default().join(" "),
        }
    }

    /// The argv of an operation that is a single command.
    pub fn argv(&self) -> Option<Vec<String>> {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Some(match self {
            Op::Mkfs {
                device,
                format,
                args,
                uuid,
            } => {
                let mut a = v(&[&format!("mkfs.{format}")]);
                a.extend(default_mkfs_args(format));
                if let Some(u) = uuid {
                    a.extend(uuid_args(format, u));
                }
                a.extend(args.iter().cloned());
                a.push(device.clone());
                a
            }
            Op::Mkswap { device, args, uuid } => {
                let mut a = v(&["mkswap"]);
                if let Some(u) = uuid {
                    a.extend(v(&["-U", u]));
                }
                a.extend(args.iter().cloned());
                a.push(device.clone());
                a
            }
            Op::LuksFormat {
                device,
                key,
                args,
                uuid,
                ..
            } => {
                let mut a = v(&[
                    "cryptsetup",
                    "luksFormat",
                    "--batch-mode",
                    "--type",
                    "luks2",
                ]);
                if matches!(key, KeySource::KeyFile(_)) {
                    a.extend(v(&["--key-file", "-"]));
                }
                if let Some(u) = uuid {
                    a.extend(v(&["--uuid", u]));
                }
                a.extend(args.iter().cloned());
                a.push(device.clone());
                a
            }
            Op::LuksOpen {
                device,
                name,
                key,
                args,
            } => {
                let mut a = v(&["cryptsetup", "open"]);
                if matches!(key, KeySource::KeyFile(_)) {
                    a.extend(v(&["--key-file", "-"]));
                }
                a.extend(args.iter().cloned());
                a.push(device.clone());
                a.push(name.clone());
                a
            }
            Op::Tpm2Enroll { device, pcrs, .. } => cryptenroll_argv(device, pcrs, UNLOCK_KEY_FILE),
            _ => return None,
        })
    }
}

/// The formats whose UUID the plan pins, and how each mkfs takes it.
pub const PINNED_FORMATS: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "vfat"];

fn uuid_args(format: &str, u: &str) -> Vec<String> {
    match format {
        "xfs" => vec!["-m".into(), format!("uuid={u}")],
        "vfat" => vec!["-i".into(), u.to_owned()],
        _ => vec!["-U".into(), u.to_owned()],
    }
}

impl Op {
    /// The device an operation makes a signature on, and the UUID blkid
    /// must find there afterwards (vfat's volume id as blkid shows it:
    /// "ABCD-1234").
    pub fn pinned_uuid(&self) -> Option<(&str, String)> {
        match self {
            Op::Mkfs {
                device,
                format,
                uuid: Some(u),
                ..
            } if format == "vfat" => Some((
                device,
                format!("{}-{}", &u[..4], &u[4..]).to_ascii_uppercase(),
            )),
            Op::Mkfs {
                device,
                uuid: Some(u),
                ..
            }
            | Op::Mkswap {
                device,
                uuid: Some(u),
                ..
            }
            | Op::LuksFormat {
                device,
                uuid: Some(u),
                ..
            } => Some((device, u.clone())),
            _ => None,
        }
    }
}

/// Arguments the agent always gives, before the layout's `extraArgs`: force
/// (the disk was checked and wiped) and quiet.
fn default_mkfs_args(format: &str) -> Vec<String> {
    match format {
        "ext4" => vec!["-F".into(), "-q".into()],
        "xfs" | "btrfs" => vec!["-f".into(), "-q".into()],
        _ => vec![],
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fs_type: String,
    pub options: Vec<String>,
    /// The layout disk this filesystem lives on (None for nodev).
    pub disk: Option<String>,
}

impl Mount {
    /// Options as given to `mount -o` ("defaults" dropped when others exist).
    pub fn options_arg(&self) -> String {
        let o: Vec<&str> = self
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| *o != "defaults")
            .collect();
        if o.is_empty() {
            "defaults".into()
        } else {
            o.join(",")
        }
    }
}

/// The first usable LBA of a GPT with 128 entries of 128 bytes.
pub fn first_usable(sector: u64) -> u64 {
    2 + (128 * 128u64).div_ceil(sector)
}

/// The last usable LBA (the backup table and header sit after it).
pub fn last_usable(sector: u64, total: u64) -> u64 {
    total - 2 - (128 * 128u64).div_ceil(sector)
}

/// Kernel node of partition `n` of `disk`: "p" before the number when the
/// disk's name ends in a digit (nvme0n1p2, loop0p2, mmcblk0p1), by-id paths get "-partN".
pub fn partition_node(disk: &str, n: u32) -> String {
    if disk.starts_with("/dev/disk/") {
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
/// GUIDs and the UUIDs given to mkfs, mkswap and `cryptsetup luksFormat`
/// (not where the layout's own `extraArgs` set one). The disk journal
/// records them; a restarted agent compares them with the disks.
pub fn plan_pinned(
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    ids: &Ids,
) -> Result<Plan, LayoutError> {
    plan_with(layout, targets, Some(ids))
}

fn plan_with(
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    ids: Option<&Ids>,
) -> Result<Plan, LayoutError> {
    let mut disks = Vec::new();
    let mut mounts = Vec::new();
    for (name, disk) in &layout.disks {
        let t = targets.get(name).ok_or_else(|| LayoutError {
            path: format!("{}.device", disk.path),
            message: format!(
                "no device for disk {name:?}: give --disk {name}=/dev/... (or \"auto\")"
            ),
        })?;
        let ss = u64::from(t.sector_size.max(512));
        let total = t.size_bytes / ss;
        let align = ((1u64 << 20) / ss).max(1);
        let min_sectors = first_usable(ss) + align + 34;
        if total < min_sectors {
            return Err(LayoutError {
                path: format!("{}.device", disk.path),
                message: format!(
                    "{} is too small ({} bytes) for a GPT",
                    t.device, t.size_bytes
                ),
            });
        }
        let first = first_usable(ss);
        let last = last_usable(ss, total);
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut parts = Vec::new();
        for (i, p) in disk.partitions.iter().enumerate() {
            let number = i as u32 + 1;
            let size_path = format!("{}.size", p.path);
            let free = free_blocks(&used, first, last);
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
                Bound::At(b) => (b / ss).saturating_sub(1),
                Bound::Default => last,
            };
            // --align-end: the sector after the end is aligned.
            let end = if (end + 1).is_multiple_of(align) {
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
                    path: if matches!(p.end, Bound::Plus(_)) { size_path } else { format!("{}.end", p.path) },
                    message: format!(
                        "{} does not fit on {} ({}): at most {} is left after the partitions before it",
                        want, t.device, human(t.size_bytes), human(left / (1 << 20) * (1 << 20))
                    ),
                });
            }
            used.push((start, end));
            parts.push(PartPlan {
                number,
                label: p.label.clone(),
                type_code: p.type_code.clone(),
                type_guid: p.type_guid.clone(),
                first_lba: start,
                last_lba: end,
                size_bytes: (end - start + 1) * ss,
                device: partition_node(&t.device, number),
                stable_device: nixos::by_partlabel(&p.label),
                guid: ids.map(|i| i.uuid(&format!("part {name} {number}")).to_string()),
            });
        }
        let mut ops = vec![
            Op::Wipe {
                device: t.device.clone(),
            },
            Op::WriteGpt {
                device: t.device.clone(),
                partitions: parts.len(),
            },
            Op::Reread {
                device: t.device.clone(),
                partitions: parts.iter().map(|p| p.device.clone()).collect(),
            },
        ];
        for (p, pp) in disk.partitions.iter().zip(&parts) {
            if let Some(c) = &p.content {
                content_ops(c, &pp.device, name, ids, &mut ops, &mut mounts);
            }
        }
        disks.push(DiskPlan {
            name: name.clone(),
            target: t.clone(),
            partitions: parts,
            disk_guid: ids.map(|i| i.uuid(&format!("disk {name}")).to_string()),
            ops,
        });
    }
    for n in layout.nodev.values() {
        mounts.push(Mount {
            device: n.device.clone(),
            mountpoint: n.mountpoint.clone(),
            fs_type: n.fs_type.clone(),
            options: n.mount_options.clone(),
            disk: None,
        });
    }
    // disko mounts in mountpoint order: a parent sorts before its children.
    mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(Plan {
        disks,
        mounts,
        nixos: nixos::derive(layout, |name| {
            targets
                .get(name)
                .map(|t| t.by_id.clone().unwrap_or_else(|| t.device.clone()))
        }),
    })
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

fn content_ops(
    c: &Content,
    device: &str,
    disk: &str,
    ids: Option<&Ids>,
    ops: &mut Vec<Op>,
    mounts: &mut Vec<Mount>,
) {
    match c {
        Content::Filesystem(f) => fs_ops(f, device, disk, ids, ops, mounts),
        // disko (lib/types/swap.nix) makes no signature for a randomly
        // encrypted swap: NixOS sets it up with a fresh key at every boot.
        Content::Swap(s) if s.random_encryption => {}
        Content::Swap(s) => ops.push(Op::Mkswap {
            device: device.to_owned(),
            args: s.extra_args.clone(),
            uuid: pin(ids, device, &s.extra_args, "-U", false),
        }),
        Content::Luks(l) => {
            ops.push(Op::LuksFormat {
                device: device.to_owned(),
                name: l.name.clone(),
                key: l.key.clone(),
                args: l.extra_format_args.clone(),
                uuid: pin(ids, device, &l.extra_format_args, "--uuid", false),
            });
            let mut args = l.extra_open_args.clone();
            if l.allow_discards {
                args.push("--allow-discards".into());
            }
            ops.push(Op::LuksOpen {
                device: device.to_owned(),
                name: l.name.clone(),
                key: l.key.clone(),
                args,
            });
            if let Some(inner) = &l.content {
                content_ops(
                    inner,
                    &format!("/dev/mapper/{}", l.name),
                    disk,
                    ids,
                    ops,
                    mounts,
                );
            }
        }
    }
}

fn fs_ops(
    f: &Filesystem,
    device: &str,
    disk: &str,
    ids: Option<&Ids>,
    ops: &mut Vec<Op>,
    mounts: &mut Vec<Mount>,
) {
    let uuid = if PINNED_FORMATS.contains(&f.format.as_str()) {
        let flag = match f.format.as_str() {
            "xfs" => "-m",
            "vfat" => "-i",
            _ => "-U",
        };
        pin(ids, device, &f.extra_args, flag, f.format == "vfat")
    } else {
        None
    };
    ops.push(Op::Mkfs {
        device: device.to_owned(),
        format: f.format.clone(),
        args: f.extra_args.clone(),
        uuid,
    });
    if !f.subvolumes.is_empty() {
        ops.push(Op::BtrfsSubvolumes {
            device: device.to_owned(),
            names: f.subvolumes.iter().map(|s| s.name.clone()).collect(),
        });
    }
    if let Some(m) = &f.mountpoint {
        mounts.push(Mount {
            device: device.to_owned(),
            mountpoint: m.clone(),
            fs_type: f.format.clone(),
            options: f.mount_options.clone(),
            disk: Some(disk.to_owned()),
        });
    }
    for s in &f.subvolumes {
        if let Some(m) = &s.mountpoint {
            let mut options = s.mount_options.clone();
            options.push(format!("subvol={}", s.name));
            mounts.push(Mount {
                device: device.to_owned(),
                mountpoint: m.clone(),
                fs_type: "btrfs".into(),
                options,
                disk: Some(disk.to_owned()),
            });
        }
    }
}

impl Plan {
    /// What the layout lacks to boot this machine's firmware: an ESP
    /// (EF00, mounted) for UEFI, a BIOS boot partition (EF02) for GRUB on
    /// BIOS. Warnings, not errors: the configuration may boot otherwise.
    pub fn boot_warnings(&self, firmware: landfall_proto::inventory::FirmwareMode) -> Vec<String> {
        use landfall_proto::inventory::FirmwareMode;
        let has = |code: &str| {
            self.disks
                .iter()
                .flat_map(|d| &d.partitions)
                .any(|p| p.type_guid == super::layout::type_guid(code).unwrap_or_default())
        };
        let esp_mounted = self.disks.iter().any(|d| {
            d.partitions.iter().any(|p| {
                p.type_guid == super::layout::EF00
                    && self.mounts.iter().any(|m| m.device == p.device)
            })
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
        self.disks.iter().map(|d| d.ops.len()).sum::<usize>() + self.mounts.len()
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
            writeln!(f, "  gpt:")?;
            writeln!(
                f,
                "    {:>2}  {:>12}  {:>12}  {:>8}  {:<36}  {:<4}  device",
                "#", "first", "last", "size", "label", "type"
            )?;
            for p in &d.partitions {
                writeln!(
                    f,
                    "    {:>2}  {:>12}  {:>12}  {:>8}  {:<36}  {:<4}  {}",
                    p.number,
                    p.first_lba,
                    p.last_lba,
                    human(p.size_bytes),
                    p.label,
                    p.type_code,
                    p.device
                )?;
            }
            writeln!(
                f,
                "  operations (this disk's run in parallel with the other disks'):"
            )?;
            for op in &d.ops {
                n += 1;
                writeln!(f, "    {n:>2}. {}", op.describe())?;
            }
        }
        if !self.mounts.is_empty() {
            writeln!(f, "mounts (in this order, below the target root):")?;
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

    #[test]
    fn nodes() {
        assert_eq!(partition_node("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_node("/dev/loop7", 1), "/dev/loop7p1");
        assert_eq!(partition_node("/dev/sda", 3), "/dev/sda3");
    }
}

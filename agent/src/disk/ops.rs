//! The operations of a plan: what each does, and the command line it runs
//! (every program through the one command runner, [`crate::cmd`]).

use serde::Serialize;

use super::layout::{KeySource, LvSize, Table};

/// One operation. Keys are never part of an operation: they are looked up
/// by their [`KeySource`] when the operation runs and go to stdin.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Remove every signature (old tables, filesystems, LUKS, RAID/LVM
    /// members); md arrays and volume groups still active on the disk are
    /// stopped first (only reached with the wipe policy).
    Wipe { device: String },
    /// Protective MBR + GPT with the disk's partitions (GUIDs and attribute bits from the plan).
    WriteGpt { device: String, partitions: usize },
    /// An MBR (DOS) table with the disk's partitions (disko's legacy `table`, format msdos).
    WriteMbr { device: String, partitions: usize },
    /// A hybrid MBR over GPT partitions (disko gpt `hybrid`): `sgdisk -h`.
    HybridMbr {
        device: String,
        partitions: Vec<u32>,
        /// `efiGptPartitionFirst = false`: the 0xEE entry after the hybrid ones.
        ee_last: bool,
    },
    /// The MBR type of a hybrid entry: `sfdisk --label-nested dos --part-type`.
    MbrPartType {
        device: String,
        number: u32,
        mbr_type: String,
    },
    /// The active flag of a hybrid entry: `sfdisk --label-nested dos --activate`.
    MbrActivate { device: String, number: u32 },
    /// Make the kernel see the new partitions and wait for their nodes.
    Reread {
        device: String,
        partitions: Vec<String>,
    },
    /// A partition table on a device made by an earlier operation (an md
    /// array, a LUKS volume): its sectors are computed from the device's
    /// size once it exists, with the same arithmetic as a disk's; then
    /// written and re-read.
    NestedTable {
        device: String,
        /// Who holds it ("mdadm raid1"), for reports.
        owner: String,
        /// The layout's table (contents left out: they are operations of their own).
        table: Table,
        #[serde(skip_serializing_if = "Option::is_none")]
        disk_guid: Option<String>,
        /// Pinned partition GUIDs by partition, when the plan is pinned.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        guids: Vec<Option<String>>,
        /// The partition nodes it makes.
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
    /// Subvolumes (and swap files) created on a temporarily mounted btrfs.
    BtrfsSubvolumes {
        device: String,
        names: Vec<String>,
        /// (path below the top level, size) for `btrfs filesystem mkswapfile`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        swap_files: Vec<(String, String)>,
    },
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
    /// `additionalKeyFiles`: `cryptsetup luksAddKey DEVICE NEWKEY`, the
    /// existing key on stdin, the new one in a 0600 file on tmpfs.
    LuksAddKey {
        device: String,
        key: KeySource,
        /// `--keyfile-size`/`--keyfile-offset` of the existing key.
        args: Vec<String>,
        new_key: KeySource,
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
    /// `mdadm --create` over the members (disko mdadm.nix), answering its
    /// question with "y" on stdin; then the new array's stale signatures are wiped.
    MdCreate {
        device: String,
        name: String,
        level: i64,
        metadata: String,
        members: Vec<String>,
        args: Vec<String>,
        /// The array UUID (`--uuid`), when pinned.
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
    },
    /// `pvcreate` (disko lvm_pv.nix).
    PvCreate { device: String },
    /// `vgcreate` over the physical volumes (disko lvm_vg.nix).
    VgCreate { name: String, pvs: Vec<String> },
    /// `lvcreate` (disko lvm_vg.nix).
    LvCreate {
        vg: String,
        name: String,
        size: LvSize,
        #[serde(skip_serializing_if = "Option::is_none")]
        lvm_type: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        args: Vec<String>,
    },
    /// `zpool create -f NAME -R ROOT ...` (disko zpool.nix): `args` are the
    /// options and the topology, after the pool name.
    ZpoolCreate {
        name: String,
        /// `-m none` when the root dataset has canmount=off.
        no_mountpoint: bool,
        options: Vec<(String, String)>,
        root_fs_options: Vec<(String, String)>,
        topology: Vec<String>,
    },
    /// `zfs create -up NAME -o K=V ...` (disko zfs_fs.nix).
    ZfsCreate {
        name: String,
        options: Vec<(String, String)>,
    },
    /// `zfs create NAME -o K=V ... -V SIZE EXTRA` (disko zfs_volume.nix).
    ZfsVolume {
        name: String,
        options: Vec<(String, String)>,
        size: String,
        args: Vec<String>,
    },
    /// `bcachefs format` over every member (disko bcachefs_filesystem.nix).
    BcachefsFormat {
        name: String,
        uuid: String,
        /// Per member: (label, extraFormatArgs, device).
        members: Vec<(String, Vec<String>, String)>,
        args: Vec<String>,
        /// `passwordFile`: `--encrypted`, the passphrase on stdin.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<KeySource>,
    },
    /// Subvolumes created on the temporarily mounted bcachefs.
    BcachefsSubvolumes {
        /// The mount source: the member devices joined with ':'.
        device: String,
        names: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<KeySource>,
    },
}

/// Stands for the unlock key file in a printed [`Op::Tpm2Enroll`] command line.
pub const UNLOCK_KEY_FILE: &str = "KEYFILE";
/// Stands for the new key file of [`Op::LuksAddKey`].
pub const NEW_KEY_FILE: &str = "NEWKEYFILE";
/// Stands for the target root in [`Op::ZpoolCreate`] (`-R`).
pub const ROOT: &str = "ROOT";

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

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn kv(flag: &str, o: &[(String, String)]) -> Vec<String> {
    o.iter()
        .flat_map(|(k, x)| [flag.to_owned(), format!("{k}={x}")])
        .collect()
}

impl Op {
    /// The device the operation works on ("" for volume-level ones without one).
    pub fn device(&self) -> &str {
        match self {
            Op::Wipe { device }
            | Op::WriteGpt { device, .. }
            | Op::WriteMbr { device, .. }
            | Op::HybridMbr { device, .. }
            | Op::MbrPartType { device, .. }
            | Op::MbrActivate { device, .. }
            | Op::Reread { device, .. }
            | Op::NestedTable { device, .. }
            | Op::Mkfs { device, .. }
            | Op::BtrfsSubvolumes { device, .. }
            | Op::Mkswap { device, .. }
            | Op::LuksFormat { device, .. }
            | Op::LuksOpen { device, .. }
            | Op::LuksAddKey { device, .. }
            | Op::Tpm2Enroll { device, .. }
            | Op::MdCreate { device, .. }
            | Op::PvCreate { device }
            | Op::BcachefsSubvolumes { device, .. } => device,
            _ => "",
        }
    }

    /// The command line this operation runs (or what it does, for built-in ones).
    pub fn describe(&self) -> String {
        match self {
            Op::Wipe { device } => format!("wipefs --all --force {device} (and its partitions)"),
            Op::WriteGpt { device, partitions } => {
                format!("write protective MBR + GPT ({partitions} partitions) to {device}")
            }
            Op::WriteMbr { device, partitions } => {
                format!("write an MBR (msdos, {partitions} partitions) to {device}")
            }
            Op::Reread { device, partitions } => {
                format!(
                    "re-read the partition table of {device}, wait for {} and wipe stale signatures in them",
                    partitions.join(" ")
                )
            }
            Op::NestedTable {
                device,
                table,
                partitions,
                ..
            } => format!(
                "write {} ({} partitions, sectors from its size) to {device}, re-read it, wait for {}",
                match table.kind {
                    super::layout::TableKind::Msdos => "an MBR",
                    _ => "protective MBR + GPT",
                },
                table.partitions.len(),
                partitions.join(" ")
            ),
            Op::BtrfsSubvolumes {
                device,
                names,
                swap_files,
            } => {
                let mut s = format!("btrfs subvolume create {} (on {device})", names.join(" "));
                for (p, size) in swap_files {
                    s.push_str(&format!("; btrfs filesystem mkswapfile --size {size} {p}"));
                }
                s
            }
            Op::LuksFormat { key, .. } | Op::LuksOpen { key, .. } => {
                let argv = self.argv().unwrap_or_default().join(" ");
                format!("{argv}   # key: {} on stdin", key.path())
            }
            Op::LuksAddKey { key, new_key, .. } => {
                let argv = self.argv().unwrap_or_default().join(" ");
                format!(
                    "{argv}   # key: {} on stdin, {NEW_KEY_FILE}: {} in a 0600 file on tmpfs",
                    key.path(),
                    new_key.path()
                )
            }
            Op::Tpm2Enroll { key, .. } => {
                let argv = self.argv().unwrap_or_default().join(" ");
                format!(
                    "{argv}   # {UNLOCK_KEY_FILE}: {} in a 0600 file on tmpfs, removed after",
                    key.path()
                )
            }
            Op::MdCreate { device, .. } => format!(
                "{}   # \"y\" on stdin; then wipefs --all {device}",
                self.argv().unwrap_or_default().join(" ")
            ),
            Op::BcachefsFormat { key: Some(k), .. } => format!(
                "{}   # passphrase: {} on stdin",
                self.argv().unwrap_or_default().join(" "),
                k.path()
            ),
            Op::BcachefsSubvolumes { device, names, .. } => format!(
                "bcachefs subvolume create {} (on {device}, mounted in a temporary directory)",
                names.join(" ")
            ),
            _ => self.argv().unwrap_or_default().join(" "),
        }
    }

    /// The argv of an operation that is a single command.
    pub fn argv(&self) -> Option<Vec<String>> {
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
            Op::LuksAddKey {
                device, key, args, ..
            } => luks_add_key_argv(device, key, args, NEW_KEY_FILE),
            Op::Tpm2Enroll { device, pcrs, .. } => cryptenroll_argv(device, pcrs, UNLOCK_KEY_FILE),
            Op::HybridMbr {
                device,
                partitions,
                ee_last,
            } => {
                let mut spec: Vec<String> = partitions.iter().map(u32::to_string).collect();
                if *ee_last {
                    spec.push("EE".into());
                }
                v(&["sgdisk", "-h", &spec.join(":"), device])
            }
            Op::MbrPartType {
                device,
                number,
                mbr_type,
            } => v(&[
                "sfdisk",
                "--label-nested",
                "dos",
                "--part-type",
                device,
                &number.to_string(),
                mbr_type,
            ]),
            Op::MbrActivate { device, number } => v(&[
                "sfdisk",
                "--label-nested",
                "dos",
                "--activate",
                device,
                &number.to_string(),
            ]),
            Op::MdCreate {
                device,
                level,
                metadata,
                members,
                args,
                uuid,
                ..
            } => {
                let mut a = v(&["mdadm", "--create", device]);
                a.push(format!("--level={level}"));
                a.push(format!("--raid-devices={}", members.len()));
                a.push(format!("--metadata={metadata}"));
                a.extend(v(&["--force", "--homehost=any"]));
                if let Some(u) = uuid {
                    a.push(format!("--uuid={u}"));
                }
                a.extend(args.iter().cloned());
                a.extend(members.iter().cloned());
                a
            }
            Op::PvCreate { device } => v(&["pvcreate", device]),
            Op::VgCreate { name, pvs } => {
                let mut a = v(&["vgcreate", name]);
                a.extend(pvs.iter().cloned());
                a
            }
            Op::LvCreate {
                vg,
                name,
                size,
                lvm_type,
                pool,
                args,
            } => {
                // lvm_vg.nix: -V for a thin volume, -l for a percentage, else -L.
                let flag = if lvm_type.as_deref() == Some("thinlv") {
                    "-V"
                } else if matches!(size, LvSize::Extents(_)) {
                    "-l"
                } else {
                    "-L"
                };
                let mut a = v(&["lvcreate", "--yes", flag, size.arg(), "-n", name]);
                if let Some(p) = pool {
                    a.push(format!("--thinpool={p}"));
                }
                if let Some(t) = lvm_type.as_deref().filter(|t| *t != "thinlv") {
                    a.push(format!("--type={t}"));
                }
                a.extend(args.iter().cloned());
                a.push(vg.clone());
                a
            }
            Op::ZpoolCreate {
                name,
                no_mountpoint,
                options,
                root_fs_options,
                topology,
            } => {
                let mut a = v(&["zpool", "create", "-f", name, "-R", ROOT]);
                if *no_mountpoint {
                    a.extend(v(&["-m", "none"]));
                }
                a.extend(kv("-o", options));
                a.extend(kv("-O", root_fs_options));
                a.extend(topology.iter().cloned());
                a
            }
            Op::ZfsCreate { name, options } => {
                let mut a = v(&["zfs", "create", "-up", name]);
                a.extend(kv("-o", options));
                a
            }
            Op::ZfsVolume {
                name,
                options,
                size,
                args,
            } => {
                let mut a = v(&["zfs", "create", name]);
                a.extend(kv("-o", options));
                a.extend(v(&["-V", size]));
                a.extend(args.iter().cloned());
                a
            }
            Op::BcachefsFormat {
                uuid,
                members,
                args,
                key,
                ..
            } => {
                let mut a = v(&["bcachefs", "format"]);
                for (label, margs, dev) in members {
                    a.push(format!("--label={label}"));
                    a.extend(margs.iter().cloned());
                    a.push(dev.clone());
                }
                a.push(format!("--uuid={uuid}"));
                a.extend(args.iter().cloned());
                if key.is_some() {
                    a.push("--encrypted".into());
                }
                a
            }
            _ => return None,
        })
    }

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

    /// The blkid TYPE this operation leaves on its device, when it makes one.
    pub fn makes_type(&self) -> Option<String> {
        Some(match self {
            Op::Mkfs { format, .. } => format.clone(),
            Op::Mkswap { .. } => "swap".into(),
            Op::LuksFormat { .. } => "crypto_LUKS".into(),
            Op::PvCreate { .. } => "LVM2_member".into(),
            _ => return None,
        })
    }
}

/// `cryptsetup luksAddKey DEVICE NEWKEY --key-file - [ARGS]`.
pub fn luks_add_key_argv(device: &str, key: &KeySource, args: &[String], new: &str) -> Vec<String> {
    let mut a = v(&["cryptsetup", "luksAddKey", "--batch-mode"]);
    if matches!(key, KeySource::KeyFile(_)) {
        a.extend(v(&["--key-file", "-"]));
    }
    a.extend(args.iter().cloned());
    a.push(device.to_owned());
    a.push(new.to_owned());
    a
}

/// The formats whose UUID the plan pins, and how each mkfs takes it.
pub const PINNED_FORMATS: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "f2fs"];

pub(crate) fn uuid_flag(format: &str) -> &'static str {
    match format {
        "xfs" => "-m",
        "vfat" => "-i",
        _ => "-U",
    }
}

fn uuid_args(format: &str, u: &str) -> Vec<String> {
    match format {
        "xfs" => vec!["-m".into(), format!("uuid={u}")],
        "vfat" => vec!["-i".into(), u.to_owned()],
        _ => vec!["-U".into(), u.to_owned()],
    }
}

/// Arguments the agent always gives, before the layout's `extraArgs`: force
/// (the disk was checked and wiped) and quiet.
fn default_mkfs_args(format: &str) -> Vec<String> {
    match format {
        "ext4" | "ext3" | "ext2" => vec!["-F".into(), "-q".into()],
        "xfs" | "btrfs" | "f2fs" => vec!["-f".into(), "-q".into()],
        _ => vec![],
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fs_type: String,
    pub options: Vec<String>,
    /// What the filesystem lives on: a layout disk, or a volume
    /// ("mdadm.raid1", "lvm_vg.pool", "zpool.zroot"); None for nodev.
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

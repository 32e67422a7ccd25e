//! landfall-disko: the layout model shared by the agent and the server.
//!
//! disko's schema, read from the JSON that `nix-instantiate --eval --strict
//! --json` renders from a layout file, and validated with the path of every
//! field in its errors (`disko.devices.disk.main.content.partitions.root.size`).
//! Cross references (a `mdraid` naming an array, a `lvm_pv` naming a volume
//! group, a zpool vdev naming a disk) are checked here too, so the server
//! refuses a bad layout when it loads it, before any machine boots.
//!
//! Semantics follow nix-community/disko `lib/types/*.nix` (docs/disks.md
//! names each fact and file):
//! - `gpt.nix`: partition `name` defaults to the attribute name; `label`
//!   defaults to `"${parent.type}-${parent.name}-${name}"` (`disk-main-root`,
//!   `mdadm-raid1-primary`), replaced by the first 36 hex digits of its
//!   sha256 when longer than 36 characters; `type` defaults to "8200" for
//!   swap content and "8300" otherwise; `size` is `"100%"` or
//!   `[0-9]+[KMGTP]?`; `start` defaults to "0" and `end` to `"-0"` for
//!   "100%", else `"+${size}"`; `priority` defaults to 9001 for "100%", 100
//!   for "EF02" and 1000 otherwise; partitions are numbered and created in
//!   priority order, ties in attribute-name order; `uuid`, `attributes` and
//!   `hybrid` entries.
//! - `disk.nix`: a disk's `name` (its attribute name with "/" replaced by
//!   "_") is the one labels use.
//! - `table.nix`: the legacy `table` (format "gpt" or "msdos") made with parted.
//! - `mdadm.nix`, `mdraid.nix`, `lvm_vg.nix`, `lvm_pv.nix`, `zpool.nix`,
//!   `zfs.nix`, `zfs_fs.nix`, `zfs_volume.nix`, `bcachefs.nix`,
//!   `bcachefs_filesystem.nix`: the volumes and their members.
//! - `filesystem.nix`, `btrfs.nix`, `swap.nix`, `luks.nix`, `nodev.nix`:
//!   `mountOptions` default `["defaults"]`; nodev `device` defaults to "none"
//!   and its `mountpoint` to the attribute name.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};

mod features;
mod fields;
mod parse;
mod units;
mod volumes;

pub use features::{Feature, FEATURES};
pub use units::{
    default_label, default_label_of, hex_escape_udev_symlink, human, is_guid, parse_parted_pos,
    parse_size, type_code_of, type_guid, Bound, LvSize, PartedPos, PartedUnit, Size, EF00, EF02,
};

pub use volumes::{topology_members, topology_path, zfs_member_names, zfs_mount_options};

use fields::{as_obj, attr, err};

/// A layout error: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LayoutError {
    pub path: String,
    pub message: String,
}

/// A validated layout: disks (by name, sorted), the volumes built from their
/// members (md arrays, LVM volume groups, ZFS pools, bcachefs filesystems)
/// and nodev mounts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// Prefix of field paths in errors: "disko.devices", or "devices".
    pub root: String,
    pub disks: BTreeMap<String, Disk>,
    pub mdadm: BTreeMap<String, MdArray>,
    pub lvm_vg: BTreeMap<String, VolumeGroup>,
    pub zpool: BTreeMap<String, Zpool>,
    /// `bcachefs_filesystems`.
    pub bcachefs: BTreeMap<String, BcachefsFilesystem>,
    pub nodev: BTreeMap<String, Nodev>,
    /// The volumes in creation order, in waves: every volume of a wave has
    /// all its members in the disks or in earlier waves (disko's
    /// `sortDevicesByDependencies`). Volumes of one wave are independent.
    pub waves: Vec<Vec<VolumeRef>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    /// The attribute name (the key of `disko.devices.disk`, of the
    /// assignment's `disks` map and of `--disk NAME=DEV`).
    pub name: String,
    /// disko's `name` option (default: the attribute name with "/" replaced
    /// by "_"): the name partition labels are made of (`disk-NAME-PART`).
    pub disko_name: String,
    /// From the layout; "" or "auto" means: choose at run time.
    pub device: String,
    /// A partition table, or one thing on the whole disk (a zfs or LVM member, a filesystem, ...).
    pub content: Content,
    /// Field path of this disk, for later errors.
    pub path: String,
}

impl Disk {
    /// True when the device is chosen at run time.
    pub fn is_auto(&self) -> bool {
        is_auto(&self.device)
    }

    /// The disk's partition table, when its content is one.
    pub fn table(&self) -> Option<&Table> {
        match &self.content {
            Content::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The partitions of the disk's table (none when the disk holds no table).
    pub fn partitions(&self) -> &[Partition] {
        self.table().map(|t| t.partitions.as_slice()).unwrap_or(&[])
    }
}

pub fn is_auto(device: &str) -> bool {
    let d = device.trim();
    d.is_empty() || d == "auto" || d.starts_with("auto:")
}

/// A partition table: disko's `gpt`, or its legacy `table` (parted) with
/// format "gpt" or "msdos".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub kind: TableKind,
    /// Partitions in creation order (gpt: (priority, key) as disko sorts
    /// them; legacy table: list order). `number` is the partition number.
    pub partitions: Vec<Partition>,
    /// gpt `efiGptPartitionFirst` (default true): with `hybrid` entries, the
    /// 0xEE protective entry goes first in the MBR.
    pub efi_gpt_partition_first: bool,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// disko `gpt` (sgdisk).
    Gpt,
    /// disko `table` with `format = "gpt"` (parted: positions in parted units).
    PartedGpt,
    /// disko `table` with `format = "msdos"`: an MBR (DOS) table.
    Msdos,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Partition {
    /// The attribute name in `partitions` (legacy table: the list index).
    pub key: String,
    /// disko's `name` (defaults to the key).
    pub name: String,
    /// The partition number (1-based, creation order).
    pub number: u32,
    /// The GPT partition name (PARTLABEL), disko's `label`; "" in an MBR.
    pub label: String,
    /// sgdisk type code ("EF00") or GUID, as written in the layout.
    pub type_code: String,
    pub type_guid: String,
    pub size: Size,
    pub start: Bound,
    pub end: Bound,
    pub priority: i64,
    /// A fixed partition GUID (gpt `uuid`): PARTUUID, and the installed
    /// system names the partition `/dev/disk/by-partuuid/UUID`.
    pub uuid: Option<String>,
    /// GPT attribute bits to set (gpt `attributes`, 0..=63).
    pub attributes: Vec<u8>,
    /// An entry of a hybrid MBR (gpt `hybrid`).
    pub hybrid: Option<Hybrid>,
    /// A legacy `table` entry: where and how parted makes it.
    pub parted: Option<PartedPart>,
    pub content: Option<Content>,
    pub path: String,
}

/// gpt `hybrid`: the partition also gets an entry in the MBR (`sgdisk -h`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hybrid {
    /// `mbrPartitionType` ("0x0c"): set with `sfdisk --label-nested dos --part-type`.
    pub mbr_type: Option<String>,
    /// `mbrBootableFlag`: `sfdisk --label-nested dos --activate`.
    pub bootable: bool,
}

/// One entry of disko's legacy `table` (`parted mkpart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartedPart {
    pub start: PartedPos,
    pub end: PartedPos,
    /// "primary" (the only kind landfall makes).
    pub part_type: String,
    pub fs_type: Option<String>,
    pub flags: Vec<String>,
    /// `bootable`: `parted set N boot on` (on GPT parted makes that an EFI
    /// system partition; in an MBR it is the active flag).
    pub bootable: bool,
    /// The MBR active flag (msdos: `bootable` or a `boot` flag).
    pub active: bool,
    /// The MBR type byte (msdos), from `fs-type` and `flags` as parted sets it.
    pub mbr_type: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// A partition table (on a disk, an md array or a LUKS volume).
    Table(Table),
    Filesystem(Filesystem),
    Swap(Swap),
    Luks(Luks),
    /// A member of the md array `name` (disko `mdraid`).
    #[serde(rename = "mdraid")]
    MdRaid(Member),
    /// A physical volume of the volume group `name` (disko `lvm_pv`, its `vg`).
    LvmPv(Member),
    /// A member of the ZFS pool `name` (disko `zfs`, its `pool`).
    Zfs(Member),
    /// A member device of a bcachefs filesystem.
    Bcachefs(BcachefsMember),
}

/// A member of a volume: the volume's name, as the content names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BcachefsMember {
    /// The `bcachefs_filesystems` entry it belongs to.
    pub filesystem: String,
    /// `--label=` for this device (`""` when not set, as disko passes it).
    pub label: String,
    pub extra_format_args: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filesystem {
    /// vfat | ext2 | ext3 | ext4 | xfs | btrfs | f2fs
    pub format: String,
    pub extra_args: Vec<String>,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    /// btrfs subvolumes (only for `type = "btrfs"`).
    pub subvolumes: Vec<Subvolume>,
    /// btrfs swap files at the top of the filesystem (`swap`).
    pub swap: Vec<SwapFile>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subvolume {
    /// The subvolume's name (its attribute name unless `name` is set), e.g. "/root" or "@home".
    pub name: String,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    pub extra_args: Vec<String>,
    /// Swap files in this subvolume (`swap`).
    pub swap: Vec<SwapFile>,
    pub path: String,
}

/// A btrfs swap file (disko btrfs.nix `swap`): `btrfs filesystem mkswapfile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapFile {
    /// Relative to the subvolume (or filesystem) it is in.
    pub path: String,
    /// As written ("20M"): `mkswapfile --size`.
    pub size: String,
    pub priority: Option<i64>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Swap {
    pub extra_args: Vec<String>,
    /// swapon options (`swapDevices.*.options`).
    pub mount_options: Vec<String>,
    pub random_encryption: bool,
    pub priority: Option<i64>,
    pub discard_policy: Option<String>,
    pub resume_device: bool,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Luks {
    /// The mapping name: /dev/mapper/NAME.
    pub name: String,
    /// Where the key comes from. Fed to cryptsetup on stdin.
    pub key: KeySource,
    /// `settings`, handed to `boot.initrd.luks.devices.NAME` as disko does.
    pub settings: Map<String, Value>,
    pub allow_discards: bool,
    /// `settings.keyFileSize` / `keyFileOffset`: `--keyfile-size` / `--keyfile-offset`.
    pub key_file_size: Option<u64>,
    pub key_file_offset: Option<u64>,
    /// `additionalKeyFiles`: more keys added with `cryptsetup luksAddKey`.
    pub additional_key_files: Vec<String>,
    pub extra_format_args: Vec<String>,
    pub extra_open_args: Vec<String>,
    pub initrd_unlock: bool,
    pub content: Option<Box<Content>>,
    pub path: String,
}

/// A LUKS key named by the layout. The bytes come from the secrets the
/// agent holds (or, failing that, from the file at that path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum KeySource {
    /// `settings.keyFile` (or the deprecated `keyFile`): raw bytes, `--key-file -`.
    KeyFile(String),
    /// `passwordFile`: a passphrase, trailing newline removed.
    PasswordFile(String),
}

impl KeySource {
    /// The key file's path in the installer.
    pub fn path(&self) -> &str {
        match self {
            KeySource::KeyFile(p) | KeySource::PasswordFile(p) => p,
        }
    }
}

/// disko `mdadm`: an md RAID array over its `mdraid` members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MdArray {
    pub name: String,
    /// RAID level: 0, 1, 4, 5, 6 or 10.
    pub level: i64,
    /// `--metadata=`: "default", "1", "1.0", "1.1", "1.2", "ddf", "imsm".
    pub metadata: String,
    pub extra_args: Vec<String>,
    pub content: Option<Content>,
    pub path: String,
}

impl MdArray {
    /// The array's device while installing and in the installed system.
    pub fn device(&self) -> String {
        format!("/dev/md/{}", self.name)
    }
}

/// The md RAID levels mdadm creates, and the fewest members each needs
/// (mdadm refuses fewer, even with `--force`, except RAID 0 and 1).
pub const MD_LEVELS: &[(i64, usize)] = &[(0, 1), (1, 1), (4, 2), (5, 2), (6, 4), (10, 2)];

/// disko `lvm_vg`: a volume group over its `lvm_pv` members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeGroup {
    pub name: String,
    /// In creation order: (priority, name), as disko sorts them.
    pub lvs: Vec<LogicalVolume>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogicalVolume {
    pub name: String,
    pub size: LvSize,
    /// `lvm_type`: mirror, raid0, raid1, raid4, raid5, raid6, thin-pool, thinlv.
    pub lvm_type: Option<String>,
    /// The thin pool of a `thinlv`.
    pub pool: Option<String>,
    pub extra_args: Vec<String>,
    pub priority: i64,
    pub content: Option<Content>,
    pub path: String,
}

impl LogicalVolume {
    /// `/dev/VG/LV`, as disko names it.
    pub fn device(&self, vg: &str) -> String {
        format!("/dev/{vg}/{}", self.name)
    }
}

/// The `lvm_type`s disko knows, and the fewest physical volumes each needs.
pub const LVM_TYPES: &[(&str, usize)] = &[
    ("mirror", 2),
    ("raid0", 2),
    ("raid1", 2),
    ("raid4", 3),
    ("raid5", 3),
    ("raid6", 5),
    ("thin-pool", 1),
    ("thinlv", 1),
];

/// disko `zpool`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Zpool {
    pub name: String,
    pub mode: ZpoolMode,
    /// `-o NAME=VALUE` (pool properties).
    pub options: BTreeMap<String, String>,
    /// `-O NAME=VALUE` (the root dataset's properties).
    pub root_fs_options: BTreeMap<String, String>,
    /// The root dataset's mountpoint.
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    /// Datasets in creation order (attribute-name order, as disko's `attrValues`).
    pub datasets: Vec<Dataset>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ZpoolMode {
    /// "" (stripe), "mirror", "raidz", "raidz1", "raidz2", "raidz3" over every member.
    Simple(String),
    Topology(Topology),
}

/// The vdev modes disko knows.
pub const ZPOOL_MODES: &[&str] = &["", "mirror", "raidz", "raidz1", "raidz2", "raidz3"];

/// disko's `mode.topology`: members are disk names (their partition `zfs`)
/// or device paths.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Topology {
    pub vdev: Vec<Vdev>,
    pub spare: Vec<String>,
    pub log: Vec<Vdev>,
    pub dedup: Vec<Vdev>,
    pub special: Vec<Vdev>,
    pub cache: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vdev {
    pub mode: String,
    pub members: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    /// The attribute name ("root/nix").
    pub name: String,
    pub options: BTreeMap<String, String>,
    pub mount_options: Vec<String>,
    pub kind: DatasetKind,
    pub path: String,
}

impl Dataset {
    /// POOL/NAME.
    pub fn full_name(&self, pool: &str) -> String {
        format!("{pool}/{}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DatasetKind {
    ZfsFs {
        mountpoint: Option<String>,
    },
    ZfsVolume {
        /// `-V SIZE`.
        size: String,
        extra_args: Vec<String>,
        content: Option<Box<Content>>,
    },
}

/// disko `bcachefs_filesystem`: one filesystem over its `bcachefs` members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BcachefsFilesystem {
    pub name: String,
    pub extra_format_args: Vec<String>,
    pub mount_options: Vec<String>,
    pub mountpoint: Option<String>,
    /// `uuid`, by default derived from the name as disko does (the first 32
    /// hex digits of sha256(name), 8-4-4-4-12).
    pub uuid: String,
    /// `passwordFile`: `--encrypted`, the passphrase on stdin.
    pub password_file: Option<String>,
    pub subvolumes: Vec<BcachefsSubvolume>,
    pub path: String,
}

/// `lib.unique`: the first of each, in order.
fn unique(v: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

impl BcachefsFilesystem {
    /// The options it is mounted with (bcachefs_filesystem.nix `_mount`,
    /// `_config`): `X-mount.mkdir` and the filesystem's own.
    pub fn mount_options_full(&self) -> Vec<String> {
        let mut o = vec!["X-mount.mkdir".to_owned()];
        o.extend(self.mount_options.iter().cloned());
        unique(o)
    }

    /// Every mount of the filesystem and its subvolumes: (mountpoint, options).
    pub fn mounts(&self) -> Vec<(String, Vec<String>)> {
        self.mountpoint
            .iter()
            .map(|m| (m.clone(), self.mount_options_full()))
            .chain(self.subvolumes.iter().filter_map(|s| {
                s.mountpoint
                    .as_ref()
                    .map(|m| (m.clone(), s.mount_options_full()))
            }))
            .collect()
    }
}

impl BcachefsSubvolume {
    /// The options it is mounted with: `X-mount.mkdir`,
    /// `X-mount.subdir=NAME` (leading "/" removed) and its own.
    pub fn mount_options_full(&self) -> Vec<String> {
        let mut o = vec![
            "X-mount.mkdir".to_owned(),
            format!("X-mount.subdir={}", self.name.trim_start_matches('/')),
        ];
        o.extend(self.mount_options.iter().cloned());
        unique(o)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BcachefsSubvolume {
    /// Path inside the filesystem, leading "/" removed.
    pub name: String,
    pub mountpoint: Option<String>,
    /// As given (disko adds `X-mount.mkdir` and `X-mount.subdir=NAME` when mounting).
    pub mount_options: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nodev {
    pub name: String,
    pub fs_type: String,
    pub device: String,
    pub mountpoint: String,
    pub mount_options: Vec<String>,
    pub path: String,
}

/// A volume: what is built from members on other devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    Mdadm,
    LvmVg,
    Zpool,
    Bcachefs,
}

impl VolumeKind {
    /// The key under `disko.devices`.
    pub fn key(self) -> &'static str {
        match self {
            VolumeKind::Mdadm => "mdadm",
            VolumeKind::LvmVg => "lvm_vg",
            VolumeKind::Zpool => "zpool",
            VolumeKind::Bcachefs => "bcachefs_filesystems",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct VolumeRef {
    pub kind: VolumeKind,
    pub name: String,
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.kind.key(), attr(&self.name))
    }
}

/// Who holds a content: a disk, or a volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    Disk(String),
    Volume(VolumeRef),
}

/// Paths that exist on the installer only: a LUKS `settings.keyFile` there
/// would reach the installed system's initrd config (disko copies `settings`).
pub const INSTALLER_ONLY: &[&str] = &["/run/", "/tmp/", "/etc/landfall/"];

/// The filesystem formats the agent can make.
pub const FORMATS: &[&str] = &["vfat", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"];

impl Content {
    /// The contents directly inside this one (a table's partitions', a LUKS volume's).
    pub fn children(&self) -> Vec<&Content> {
        match self {
            Content::Table(t) => t
                .partitions
                .iter()
                .filter_map(|p| p.content.as_ref())
                .collect(),
            Content::Luks(l) => l.content.as_deref().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The volume this content is a member of.
    pub fn member_of(&self) -> Option<VolumeRef> {
        let (kind, name) = match self {
            Content::MdRaid(m) => (VolumeKind::Mdadm, &m.name),
            Content::LvmPv(m) => (VolumeKind::LvmVg, &m.name),
            Content::Zfs(m) => (VolumeKind::Zpool, &m.name),
            Content::Bcachefs(b) => (VolumeKind::Bcachefs, &b.filesystem),
            _ => return None,
        };
        Some(VolumeRef {
            kind,
            name: name.clone(),
        })
    }

    /// This content and everything inside it, depth first in creation order.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Content)) {
        f(self);
        for c in self.children() {
            c.walk(f);
        }
    }
}

impl Layout {
    /// Parse a rendered layout: the whole file (`{disko: {devices}}`),
    /// `disko.devices`' parent `{devices}`, or the devices set itself.
    pub fn from_json(v: &Value) -> Result<Layout, LayoutError> {
        let obj = v.as_object().ok_or_else(|| LayoutError {
            path: "(layout)".into(),
            message: format!("expected an attribute set, found {}", fields::kind(v)),
        })?;
        let (root, devices) = if let Some(d) = obj.get("disko") {
            let d = as_obj(d, "disko")?;
            match d.get("devices") {
                Some(dev) => ("disko.devices", dev),
                None => return err("disko", "has no `devices`"),
            }
        } else if let Some(d) = obj.get("devices") {
            ("devices", d)
        } else if obj.contains_key("disk") || obj.contains_key("nodev") {
            ("disko.devices", v)
        } else {
            return err(
                "(layout)",
                "no `disko.devices`, `devices` or `disk` attribute: is this a disko layout?",
            );
        };
        let devices = as_obj(devices, root)?;
        let mut layout = Layout {
            root: root.to_owned(),
            disks: BTreeMap::new(),
            mdadm: BTreeMap::new(),
            lvm_vg: BTreeMap::new(),
            zpool: BTreeMap::new(),
            bcachefs: BTreeMap::new(),
            nodev: BTreeMap::new(),
            waves: Vec::new(),
        };
        for (k, val) in devices {
            let p = format!("{root}.{k}");
            let entries = || -> Result<Vec<(&String, &Value, String)>, LayoutError> {
                Ok(as_obj(val, &p)?
                    .iter()
                    .map(|(name, v)| (name, v, format!("{p}.{}", attr(name))))
                    .collect())
            };
            match k.as_str() {
                "disk" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .disks
                            .insert(name.clone(), parse::parse_disk(name, d, &dp)?);
                    }
                }
                "nodev" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .nodev
                            .insert(name.clone(), parse::parse_nodev(name, d, &dp)?);
                    }
                }
                "mdadm" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .mdadm
                            .insert(name.clone(), volumes::parse_mdadm(name, d, &dp)?);
                    }
                }
                "lvm_vg" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .lvm_vg
                            .insert(name.clone(), volumes::parse_lvm_vg(name, d, &dp)?);
                    }
                }
                "zpool" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .zpool
                            .insert(name.clone(), volumes::parse_zpool(name, d, &dp)?);
                    }
                }
                "bcachefs_filesystems" => {
                    for (name, d, dp) in entries()? {
                        layout
                            .bcachefs
                            .insert(name.clone(), volumes::parse_bcachefs(name, d, &dp)?);
                    }
                }
                other => {
                    return err(
                        &p,
                        format!(
                            "unknown device kind `{other}` (known: disk, mdadm, lvm_vg, zpool, bcachefs_filesystems, nodev)"
                        ),
                    )
                }
            }
        }
        if layout.disks.is_empty() {
            return err(&format!("{root}.disk"), "the layout has no disk");
        }
        volumes::check_references(&mut layout)?;
        layout.check_global()?;
        Ok(layout)
    }

    /// The top-level contents an owner holds: a disk's content, an md
    /// array's, each logical volume's, each zvol's.
    pub fn owner_contents(&self, owner: &Owner) -> Vec<&Content> {
        match owner {
            Owner::Disk(d) => self.disks.get(d).map(|d| &d.content).into_iter().collect(),
            Owner::Volume(v) => match v.kind {
                VolumeKind::Mdadm => self
                    .mdadm
                    .get(&v.name)
                    .and_then(|m| m.content.as_ref())
                    .into_iter()
                    .collect(),
                VolumeKind::LvmVg => self
                    .lvm_vg
                    .get(&v.name)
                    .map(|g| g.lvs.iter().filter_map(|l| l.content.as_ref()).collect())
                    .unwrap_or_default(),
                VolumeKind::Zpool => self
                    .zpool
                    .get(&v.name)
                    .map(|z| {
                        z.datasets
                            .iter()
                            .filter_map(|d| match &d.kind {
                                DatasetKind::ZfsVolume { content, .. } => content.as_deref(),
                                DatasetKind::ZfsFs { .. } => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                VolumeKind::Bcachefs => Vec::new(),
            },
        }
    }

    /// Every owner in creation order: the disks (by name), then the volumes wave by wave.
    pub fn owners(&self) -> Vec<Owner> {
        let mut v: Vec<Owner> = self.disks.keys().cloned().map(Owner::Disk).collect();
        v.extend(self.waves.iter().flatten().cloned().map(Owner::Volume));
        v
    }

    /// Every content of the layout, each with its owner, in creation order.
    pub fn all_contents(&self) -> Vec<(Owner, &Content)> {
        let mut out = Vec::new();
        for o in self.owners() {
            for c in self.owner_contents(&o) {
                c.walk(&mut |x| out.push((o.clone(), x)));
            }
        }
        out
    }

    /// Whether the layout has any volume of this kind.
    pub fn has(&self, kind: VolumeKind) -> bool {
        match kind {
            VolumeKind::Mdadm => !self.mdadm.is_empty(),
            VolumeKind::LvmVg => !self.lvm_vg.is_empty(),
            VolumeKind::Zpool => !self.zpool.is_empty(),
            VolumeKind::Bcachefs => !self.bcachefs.is_empty(),
        }
    }

    /// The features the layout uses (see [`FEATURES`]).
    pub fn features(&self) -> BTreeSet<Feature> {
        features::of(self)
    }

    /// Checks across the whole layout: mountpoints, LUKS names, partition labels.
    fn check_global(&self) -> Result<(), LayoutError> {
        let mut mounts: BTreeMap<String, String> = BTreeMap::new();
        let mut luks: BTreeMap<String, String> = BTreeMap::new();
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        let mut add_mount = |m: &str, path: &str| -> Result<(), LayoutError> {
            if let Some(first) = mounts.insert(m.to_owned(), path.to_owned()) {
                return err(path, format!("mountpoint {m:?} is already used by {first}"));
            }
            Ok(())
        };
        for (_, content) in self.all_contents() {
            match content {
                Content::Table(t) => {
                    for p in &t.partitions {
                        if p.label.is_empty() || t.kind != TableKind::Gpt {
                            continue;
                        }
                        if let Some(first) = labels.insert(p.label.clone(), p.path.clone()) {
                            return err(
                                &p.path,
                                format!("partition label {:?} is already used by {first}", p.label),
                            );
                        }
                    }
                }
                Content::Filesystem(f) => {
                    if let Some(m) = &f.mountpoint {
                        add_mount(m, &format!("{}.mountpoint", f.path))?;
                    }
                    for s in &f.subvolumes {
                        if let Some(m) = &s.mountpoint {
                            add_mount(m, &format!("{}.mountpoint", s.path))?;
                        }
                    }
                }
                Content::Luks(l) => {
                    if let Some(first) = luks.insert(l.name.clone(), l.path.clone()) {
                        return err(
                            &format!("{}.name", l.path),
                            format!("LUKS name {:?} is already used by {first}", l.name),
                        );
                    }
                }
                _ => {}
            }
        }
        for z in self.zpool.values() {
            if let Some(m) = &z.mountpoint {
                if zfs_mount_options(&z.root_fs_options, &[]).is_some() {
                    add_mount(m, &format!("{}.mountpoint", z.path))?;
                }
            }
            for d in &z.datasets {
                if let DatasetKind::ZfsFs {
                    mountpoint: Some(m),
                } = &d.kind
                {
                    if zfs_mount_options(&d.options, &[]).is_some() {
                        add_mount(m, &format!("{}.mountpoint", d.path))?;
                    }
                }
            }
        }
        for b in self.bcachefs.values() {
            if let Some(m) = &b.mountpoint {
                add_mount(m, &format!("{}.mountpoint", b.path))?;
            }
            for s in &b.subvolumes {
                if let Some(m) = &s.mountpoint {
                    add_mount(m, &format!("{}.mountpoint", s.path))?;
                }
            }
        }
        for n in self.nodev.values() {
            add_mount(&n.mountpoint, &format!("{}.mountpoint", n.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Disks, partition tables, partitions and what they hold.

use serde_json::{Map, Value};

use crate::fields::{as_obj, attr, err, kind, strings_of, Fields, HOOKS};
use crate::units::{
    default_label_of, hex_escape_udev_symlink, is_guid, parse_bound, parse_parted_pos, parse_size,
    type_code_of, type_guid,
};
use crate::{
    BcachefsMember, Bound, Content, Disk, Filesystem, Hybrid, KeySource, LayoutError, Luks, Member,
    Nodev, PartedPart, Partition, Size, Subvolume, Swap, SwapFile, Table, TableKind, FORMATS,
    INSTALLER_ONLY,
};

/// Where a content sits: what its tables' default labels are made of
/// (`${parent.type}-${parent.name}`), and whether a table may be there
/// (disko's `deviceType`: disks, md arrays, LUKS volumes) or not
/// (`partitionType`: partitions, logical volumes, zvols).
#[derive(Clone, Copy)]
pub(crate) struct Pos<'a> {
    pub parent_type: &'a str,
    pub parent_name: &'a str,
    pub device: bool,
}

pub(crate) fn parse_disk(name: &str, v: &Value, path: &str) -> Result<Disk, LayoutError> {
    let mut f = Fields::new(v, path)?;
    if let Some(t) = f.str("type")? {
        if t != "disk" {
            return err(
                &f.p("type"),
                format!("{t:?}: a disk's type must be \"disk\""),
            );
        }
    }
    let device = f.str("device")?.unwrap_or_default();
    // disk.nix: `name` defaults to the attribute name with "/" replaced by "_".
    let disko_name = f.str("name")?.unwrap_or_else(|| name.replace('/', "_"));
    if disko_name.is_empty() {
        return err(&f.p("name"), "is empty: partition labels are made of it");
    }
    f.ignore(&["imageName", "imageSize", "destroy"]);
    f.ignore(HOOKS);
    let content =
        match f.get("content") {
            Some(c) => c,
            None => return err(
                &f.p("content"),
                "is missing: a disk needs `content = { type = \"gpt\"; partitions = { ... }; }`",
            ),
        };
    f.done()?;
    let content = parse_content(
        content,
        &format!("{path}.content"),
        Pos {
            parent_type: "disk",
            parent_name: &disko_name,
            device: true,
        },
    )?;
    Ok(Disk {
        name: name.to_owned(),
        disko_name,
        device,
        content,
        path: path.to_owned(),
    })
}

/// disko `gpt`.
fn parse_gpt(mut c: Fields<'_>, pos: Pos<'_>) -> Result<Table, LayoutError> {
    let path = c.path.to_owned();
    let efi_first = c.bool("efiGptPartitionFirst", true)?;
    c.ignore(&["device"]);
    c.ignore(HOOKS);
    let parts = match c.get("partitions") {
        Some(p) => p,
        None => return err(&c.p("partitions"), "is missing"),
    };
    c.done()?;
    let ppath = format!("{path}.partitions");
    let mut partitions = Vec::new();
    for (key, pv) in as_obj(parts, &ppath)? {
        partitions.push(parse_partition(
            pos,
            key,
            pv,
            &format!("{ppath}.{}", attr(key)),
        )?);
    }
    if partitions.is_empty() {
        return err(&ppath, "has no partition");
    }
    partitions.sort_by(|a, b| (a.priority, &a.key).cmp(&(b.priority, &b.key)));
    for (i, p) in partitions.iter_mut().enumerate() {
        p.number = i as u32 + 1;
    }
    let rest: Vec<&Partition> = partitions.iter().filter(|p| p.size == Size::Rest).collect();
    if rest.len() > 1 {
        return err(
            &format!("{}.size", rest[1].path),
            format!(
                "\"100%\" is already used by {}: only one partition can take the rest of the disk",
                rest[0].path
            ),
        );
    }
    let hybrids: Vec<&Partition> = partitions.iter().filter(|p| p.hybrid.is_some()).collect();
    if hybrids.len() > 3 {
        return err(
            &format!("{}.hybrid", hybrids[3].path),
            format!(
                "a hybrid MBR holds at most 3 partitions besides the 0xEE entry ({} are marked): \
                 remove `hybrid` from the others",
                hybrids.len()
            ),
        );
    }
    Ok(Table {
        kind: TableKind::Gpt,
        partitions,
        efi_gpt_partition_first: efi_first,
        path,
    })
}

/// disko's legacy `table` (lib/types/table.nix): parted, format "gpt" or "msdos".
fn parse_legacy_table(mut c: Fields<'_>) -> Result<Table, LayoutError> {
    let path = c.path.to_owned();
    let table = match c.str("format")?.as_deref() {
        None | Some("gpt") => TableKind::PartedGpt,
        Some("msdos") => TableKind::Msdos,
        Some(other) => {
            return err(
                &c.p("format"),
                format!("{other:?} is not a table format disko knows: use \"gpt\" or \"msdos\""),
            )
        }
    };
    c.ignore(&["device"]);
    c.ignore(HOOKS);
    let parts = match c.get("partitions") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return err(
                &c.p("partitions"),
                format!(
                    "expected a list of partitions (a legacy `table` lists them), found {}",
                    kind(v)
                ),
            )
        }
        None => return err(&c.p("partitions"), "is missing"),
    };
    c.done()?;
    if parts.is_empty() {
        return err(&format!("{path}.partitions"), "has no partition");
    }
    if table == TableKind::Msdos && parts.len() > 4 {
        return err(
            &format!("{path}.partitions"),
            format!(
                "{} partitions: an MBR holds 4 primary partitions (landfall makes no \
                 extended/logical ones); use `type = \"gpt\"` for more",
                parts.len()
            ),
        );
    }
    let mut partitions = Vec::new();
    for (i, pv) in parts.iter().enumerate() {
        partitions.push(parse_legacy_partition(
            table,
            i as u32 + 1,
            pv,
            &format!("{path}.partitions.{i}"),
        )?);
    }
    Ok(Table {
        kind: table,
        partitions,
        efi_gpt_partition_first: true,
        path,
    })
}

/// The flags landfall sets on legacy table entries (`parted set N FLAG on`).
const PARTED_FLAGS: &[&str] = &[
    "boot",
    "esp",
    "bios_grub",
    "lvm",
    "raid",
    "swap",
    "legacy_boot",
];

fn parse_legacy_partition(
    table: TableKind,
    number: u32,
    v: &Value,
    path: &str,
) -> Result<Partition, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let msdos = table == TableKind::Msdos;
    let name = f.str("name")?;
    if !msdos && name.is_none() {
        return err(
            &f.p("name"),
            "is missing: parted names every partition of a gpt `table` (e.g. name = \"root\";)",
        );
    }
    let part_type = f.str("part-type")?.unwrap_or_else(|| "primary".into());
    match part_type.as_str() {
        "primary" => {}
        "logical" | "extended" => {
            return err(
                &f.p("part-type"),
                format!(
                    "{part_type:?} partitions are not made by landfall: use \"primary\" (at most 4 \
                     in an MBR), or `type = \"gpt\"`"
                ),
            )
        }
        other => {
            return err(
                &f.p("part-type"),
                format!("{other:?} is not a partition type: use \"primary\""),
            )
        }
    }
    let fs_type = f.str("fs-type")?;
    let pos = |f: &mut Fields<'_>, k: &'static str, default: &str| {
        let s = f.str(k)?.unwrap_or_else(|| default.to_owned());
        parse_parted_pos(&s).map_err(|m| LayoutError {
            path: f.p(k),
            message: m,
        })
    };
    let start = pos(&mut f, "start", "0%")?;
    let end = pos(&mut f, "end", "100%")?;
    let bootable = f.bool("bootable", false)?;
    let flags = f.strings("flags")?.unwrap_or_default();
    // parted's types: first from fs-type at mkpart, then each flag turned on
    // (bootable first) sets its own; the last one wins.
    let (mut guid, mut mbr) = match fs_type.as_deref() {
        None | Some("btrfs" | "ext2" | "ext3" | "ext4" | "reiserfs" | "xfs") => ("8300", 0x83),
        Some("linux-swap") => ("8200", 0x82),
        Some("fat32") => ("0700", 0x0c),
        Some("fat16") => ("0700", 0x0e),
        Some("ntfs" | "udf") => ("0700", 0x07),
        Some("hfs" | "hfs+") => ("48465300-0000-11AA-AA11-00306543ECAC", 0xaf),
        Some(other) => {
            return err(
                &f.p("fs-type"),
                format!(
                    "{other:?} is not a file system type parted sets (btrfs, ext2, ext3, ext4, \
                     fat16, fat32, hfs, hfs+, linux-swap, ntfs, reiserfs, udf, xfs; or leave it unset)"
                ),
            )
        }
    };
    let mut attributes = Vec::new();
    let mut active = false;
    let all: Vec<(String, String)> = bootable
        .then(|| ("boot".to_owned(), f.p("bootable")))
        .into_iter()
        .chain(
            flags
                .iter()
                .enumerate()
                .map(|(i, fl)| (fl.clone(), format!("{}.{i}", f.p("flags")))),
        )
        .collect();
    for (flag, fpath) in &all {
        match (flag.as_str(), msdos) {
            ("boot", true) => active = true,
            ("boot" | "esp", false) => guid = "EF00",
            ("esp", true) => mbr = 0xef,
            ("bios_grub", false) => guid = "EF02",
            ("lvm", _) => (guid, mbr) = ("8E00", 0x8e),
            ("raid", _) => (guid, mbr) = ("FD00", 0xfd),
            ("swap", _) => (guid, mbr) = ("8200", 0x82),
            ("legacy_boot", false) => attributes.push(2),
            ("bios_grub" | "legacy_boot", true) => {
                return err(
                    fpath,
                    format!("{flag:?} is a GPT flag; an msdos table has no such flag"),
                )
            }
            _ => {
                return err(
                    fpath,
                    format!(
                        "{flag:?} is not a partition flag landfall sets (known: {})",
                        PARTED_FLAGS.join(", ")
                    ),
                )
            }
        }
    }
    f.ignore(HOOKS);
    let content = content_field(
        &mut f,
        Pos {
            parent_type: "table",
            parent_name: "",
            device: false,
        },
    )?;
    f.done()?;
    let guid = type_guid(guid).expect("a known type");
    let label = match (&name, msdos) {
        // table.nix: `mkpart "${hexEscapeUdevSymlink name}"`: the escaped name is the GPT name.
        (Some(n), false) => hex_escape_udev_symlink(n),
        _ => String::new(),
    };
    if label.encode_utf16().count() > 36 {
        return err(
            &f_path(path, "name"),
            format!("the GPT name {label:?} is longer than 36 characters"),
        );
    }
    Ok(Partition {
        key: (number - 1).to_string(),
        name: name.unwrap_or_default(),
        number,
        label,
        type_code: type_code_of(guid),
        type_guid: guid.to_owned(),
        size: Size::Bytes(0),
        start: Bound::Default,
        end: Bound::Default,
        priority: i64::from(number),
        uuid: None,
        attributes,
        hybrid: None,
        parted: Some(PartedPart {
            start,
            end,
            part_type,
            fs_type,
            flags,
            bootable,
            active,
            mbr_type: mbr,
        }),
        content,
        path: path.to_owned(),
    })
}

fn f_path(path: &str, k: &str) -> String {
    format!("{path}.{k}")
}

fn parse_partition(
    pos: Pos<'_>,
    key: &str,
    v: &Value,
    path: &str,
) -> Result<Partition, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    let label = match f.str("label")? {
        Some(l) => l,
        None => default_label_of(pos.parent_type, pos.parent_name, &name),
    };
    if label.encode_utf16().count() > 36 {
        return err(
            &f.p("label"),
            format!("{label:?} is longer than 36 characters, the most a GPT partition name holds"),
        );
    }
    let is_swap = f
        .obj
        .get("content")
        .and_then(|c| c.get("type"))
        .is_some_and(|t| t == "swap");
    // gpt.nix: 8200 (Linux swap) for swap content, 8300 otherwise.
    let type_code = f
        .str("type")?
        .unwrap_or_else(|| if is_swap { "8200" } else { "8300" }.into());
    let type_guid = match type_guid(&type_code) {
        Some(g) => g,
        None => return err(&f.p("type"), format!("{type_code:?} is not a known sgdisk type code or a GUID (e.g. \"EF00\", \"EF02\", \"8300\", \"8200\", \"8309\", or \"0FC63DAF-8483-4772-8E79-3D69D8477DE4\")")),
    };
    let size = match f.get("size") {
        None => Size::Bytes(0),
        Some(Value::String(s)) => parse_size(s).map_err(|m| LayoutError {
            path: f.p("size"),
            message: m,
        })?,
        Some(v) => {
            return err(
                &f.p("size"),
                format!("expected a string such as \"512M\", found {v}"),
            )
        }
    };
    let start = match f.str("start")? {
        None => Bound::Default,
        Some(s) => parse_bound(&s, false).map_err(|m| LayoutError {
            path: f.p("start"),
            message: m,
        })?,
    };
    let end = match f.str("end")? {
        None => match size {
            Size::Rest => Bound::FromEnd(0),
            Size::Bytes(0) => {
                return err(
                    &f.p("size"),
                    "is missing: give `size` (e.g. \"512M\" or \"100%\") or `end`",
                )
            }
            Size::Bytes(n) => Bound::Plus(n),
        },
        Some(s) => {
            if f.has("size") {
                return err(&f.p("end"), "and `size` are both set: give one of them");
            }
            parse_bound(&s, true).map_err(|m| LayoutError {
                path: f.p("end"),
                message: m,
            })?
        }
    };
    // gpt.nix: `priority` default.
    let priority = match f.int("priority")? {
        Some(p) => p,
        None if size == Size::Rest => 9001,
        None if type_code == "EF02" => 100,
        None => 1000,
    };
    let uuid = match f.str("uuid")? {
        None => None,
        Some(u) if is_guid(&u) => Some(u.to_ascii_lowercase()),
        Some(u) => {
            return err(
                &f.p("uuid"),
                format!(
                    "{u:?} is not a GUID (8-4-4-4-12 hex digits, e.g. \"809b3a2b-828a-4730-95e1-75b6343e415a\"; `uuidgen -r` makes one)"
                ),
            )
        }
    };
    let mut attributes = Vec::new();
    if let Some(a) = f.get("attributes") {
        let ap = f.p("attributes");
        let Value::Array(a) = a else {
            return err(
                &ap,
                format!("expected a list of bit numbers, found {}", kind(a)),
            );
        };
        for (i, b) in a.iter().enumerate() {
            match b.as_u64() {
                Some(n) if n <= 63 => {
                    if !attributes.contains(&(n as u8)) {
                        attributes.push(n as u8);
                    }
                }
                _ => {
                    return err(
                        &format!("{ap}.{i}"),
                        format!(
                            "{b} is not a GPT attribute bit (0 to 63: 0 required, 1 no block IO, \
                             2 legacy BIOS bootable, 48-63 type-specific)"
                        ),
                    )
                }
            }
        }
    }
    let hybrid = match f.get("hybrid") {
        None => None,
        Some(h) => Some(parse_hybrid(h, &f.p("hybrid"))?),
    };
    f.ignore(&["device", "alignment"]);
    f.ignore(HOOKS);
    let content = content_field(
        &mut f,
        Pos {
            device: false,
            ..pos
        },
    )?;
    f.done()?;
    Ok(Partition {
        key: key.to_owned(),
        name,
        number: 0,
        label,
        type_code,
        type_guid: type_guid.to_owned(),
        size,
        start,
        end,
        priority,
        uuid,
        attributes,
        hybrid,
        parted: None,
        content,
        path: path.to_owned(),
    })
}

fn parse_hybrid(v: &Value, path: &str) -> Result<Hybrid, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let mbr_type = f.str("mbrPartitionType")?;
    if let Some(t) = &mbr_type {
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if hex.is_empty() || hex.len() > 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return err(
                &f.p("mbrPartitionType"),
                format!("{t:?} is not an MBR type byte: use hex such as \"0x0c\" (FAT32 LBA) or \"0x83\""),
            );
        }
    }
    let bootable = f.bool("mbrBootableFlag", false)?;
    f.done()?;
    Ok(Hybrid { mbr_type, bootable })
}

/// The optional `content` field of `f`, parsed at `pos`.
pub(crate) fn content_field(
    f: &mut Fields<'_>,
    pos: Pos<'_>,
) -> Result<Option<Content>, LayoutError> {
    match f.get("content") {
        None => Ok(None),
        Some(c) => parse_content(c, &f.p("content"), pos).map(Some),
    }
}

/// A content: a table (only where a device is), a filesystem, swap, LUKS,
/// or a member of a volume.
pub(crate) fn parse_content(v: &Value, path: &str, pos: Pos<'_>) -> Result<Content, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let t = f.req_str(
        "type",
        ": e.g. \"filesystem\", \"btrfs\", \"swap\", \"luks\", \"gpt\", \"lvm_pv\" or \"mdraid\"",
    )?;
    f.ignore(HOOKS);
    f.ignore(&["device"]);
    let c = match t.as_str() {
        "gpt" | "table" if !pos.device => {
            return err(
                &f.p("type"),
                format!(
                    "{t:?}: a partition, logical volume or zvol cannot hold a partition table \
                     (disko's partitionType); put the table on the disk, md array or LUKS volume"
                ),
            )
        }
        "gpt" => return Ok(Content::Table(parse_gpt(f, pos)?)),
        "table" => return Ok(Content::Table(parse_legacy_table(f)?)),
        "filesystem" => {
            let format = f.req_str("format", ": e.g. \"ext4\"")?;
            if !FORMATS.contains(&format.as_str()) {
                let hint = if format == "bcachefs" {
                    " (for bcachefs use `type = \"bcachefs\"` with a `bcachefs_filesystems` entry)"
                } else {
                    ""
                };
                return err(
                    &f.p("format"),
                    format!(
                        "{format:?} is not supported (supported: {}){hint}",
                        FORMATS.join(", ")
                    ),
                );
            }
            Content::Filesystem(Filesystem {
                format,
                extra_args: f.strings("extraArgs")?.unwrap_or_default(),
                mountpoint: mountpoint(&mut f)?,
                mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
                subvolumes: Vec::new(),
                swap: Vec::new(),
                path: path.to_owned(),
            })
        }
        "btrfs" => {
            let mut subvolumes = Vec::new();
            if let Some(sv) = f.get("subvolumes") {
                let sp = f.p("subvolumes");
                for (k, s) in as_obj(sv, &sp)? {
                    subvolumes.push(parse_subvolume(k, s, &format!("{sp}.{}", attr(k)))?);
                }
            }
            let swap = swap_files(&mut f)?;
            Content::Filesystem(Filesystem {
                format: "btrfs".into(),
                extra_args: f.strings("extraArgs")?.unwrap_or_default(),
                mountpoint: mountpoint(&mut f)?,
                mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
                subvolumes,
                swap,
                path: path.to_owned(),
            })
        }
        "swap" => {
            let discard_policy = f.str("discardPolicy")?;
            if let Some(d) = &discard_policy {
                if !["once", "pages", "both"].contains(&d.as_str()) {
                    return err(
                        &f.p("discardPolicy"),
                        format!("{d:?}: use \"once\", \"pages\" or \"both\""),
                    );
                }
            }
            Content::Swap(Swap {
                extra_args: f.strings("extraArgs")?.unwrap_or_default(),
                mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
                random_encryption: f.bool("randomEncryption", false)?,
                priority: f.int("priority")?,
                discard_policy,
                resume_device: f.bool("resumeDevice", false)?,
                path: path.to_owned(),
            })
        }
        "luks" => Content::Luks(parse_luks(&mut f, path)?),
        "mdraid" => Content::MdRaid(Member {
            name: f.req_str(
                "name",
                ": the md array (disko.devices.mdadm.NAME) this is a member of",
            )?,
            path: path.to_owned(),
        }),
        "lvm_pv" => Content::LvmPv(Member {
            name: f.req_str(
                "vg",
                ": the volume group (disko.devices.lvm_vg.NAME) this is a physical volume of",
            )?,
            path: path.to_owned(),
        }),
        "zfs" => Content::Zfs(Member {
            name: f.req_str(
                "pool",
                ": the ZFS pool (disko.devices.zpool.NAME) this is a member of",
            )?,
            path: path.to_owned(),
        }),
        "bcachefs" => Content::Bcachefs(BcachefsMember {
            filesystem: f.req_str(
                "filesystem",
                ": the filesystem (disko.devices.bcachefs_filesystems.NAME) this device belongs to",
            )?,
            label: f.str("label")?.unwrap_or_default(),
            extra_format_args: f.strings("extraFormatArgs")?.unwrap_or_default(),
            path: path.to_owned(),
        }),
        other => {
            return err(
                &f.p("type"),
                format!(
                    "unknown content type {other:?} (known: gpt, table, filesystem, btrfs, swap, \
                     luks, mdraid, lvm_pv, zfs, bcachefs)"
                ),
            )
        }
    };
    f.done()?;
    Ok(c)
}

fn parse_luks(f: &mut Fields<'_>, path: &str) -> Result<Luks, LayoutError> {
    let name = f.req_str("name", ": the mapping name, /dev/mapper/NAME")?;
    if !valid_name(&name) {
        return err(
            &f.p("name"),
            format!("{name:?} is not a valid mapping name ([A-Za-z0-9._-]+)"),
        );
    }
    let settings = match f.get("settings") {
        None => Map::new(),
        Some(s) => as_obj(s, &f.p("settings"))?.clone(),
    };
    let spath = f.p("settings");
    let setting_str = |k: &str| -> Result<Option<String>, LayoutError> {
        match settings.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => err(
                &format!("{spath}.{k}"),
                format!("expected a string, found {}", kind(v)),
            ),
        }
    };
    let setting_uint = |k: &str| -> Result<Option<u64>, LayoutError> {
        match settings.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| LayoutError {
                path: format!("{spath}.{k}"),
                message: format!("expected a number of bytes, found {v}"),
            }),
        }
    };
    let allow_discards = match settings.get("allowDiscards") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return err(
                &format!("{spath}.allowDiscards"),
                format!("expected true or false, found {}", kind(v)),
            )
        }
    };
    let key = if let Some(k) = setting_str("keyFile")? {
        if let Some(prefix) = INSTALLER_ONLY.iter().find(|p| k.starts_with(*p)) {
            return err(
                &format!("{spath}.keyFile"),
                format!(
                    "{k:?} exists only on the installer ({prefix}...), but disko copies \
                     `settings` into the installed system's boot.initrd.luks.devices.{name}, \
                     whose initrd would look for it at every boot: name the format-time \
                     key with `passwordFile = {k:?};` instead (the installed initrd gets \
                     its own copy, docs/disks.md \"Unlocking at boot\")"
                ),
            );
        }
        KeySource::KeyFile(k)
    } else if let Some(k) = f.str("keyFile")? {
        KeySource::KeyFile(k)
    } else if let Some(p) = f.str("passwordFile")? {
        KeySource::PasswordFile(p)
    } else {
        return err(&format!("{spath}.keyFile"), "is missing (and no `passwordFile`): the agent runs unattended and needs the LUKS key from secrets");
    };
    // Read both so neither is reported as unknown.
    f.get("keyFile");
    f.get("passwordFile");
    f.ignore(&["askPassword"]);
    let additional_key_files = f.strings("additionalKeyFiles")?.unwrap_or_default();
    for (i, k) in additional_key_files.iter().enumerate() {
        if !k.starts_with('/') {
            return err(
                &format!("{}.{i}", f.p("additionalKeyFiles")),
                format!("{k:?} is not an absolute path"),
            );
        }
    }
    let content = content_field(
        f,
        Pos {
            parent_type: "luks",
            parent_name: &name,
            device: true,
        },
    )?
    .map(Box::new);
    Ok(Luks {
        key_file_size: setting_uint("keyFileSize")?,
        key_file_offset: setting_uint("keyFileOffset")?,
        name,
        key,
        settings,
        allow_discards,
        additional_key_files,
        extra_format_args: f.strings("extraFormatArgs")?.unwrap_or_default(),
        extra_open_args: f.strings("extraOpenArgs")?.unwrap_or_default(),
        initrd_unlock: f.bool("initrdUnlock", true)?,
        content,
        path: path.to_owned(),
    })
}

/// Names that become paths and device-mapper names: `[A-Za-z0-9._-]+`, not "." or "..".
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) fn defaults() -> Vec<String> {
    vec!["defaults".into()]
}

pub(crate) fn mountpoint(f: &mut Fields<'_>) -> Result<Option<String>, LayoutError> {
    match f.str("mountpoint")? {
        None => Ok(None),
        Some(m) => check_mountpoint(&m, &f.p("mountpoint")).map(Some),
    }
}

pub(crate) fn check_mountpoint(m: &str, path: &str) -> Result<String, LayoutError> {
    if !m.starts_with('/') || m.split('/').any(|c| c == ".." || c == ".") || m.contains("//") {
        return err(
            path,
            format!("{m:?} is not an absolute path (e.g. \"/\", \"/boot\", \"/home\")"),
        );
    }
    if m.len() > 1 && m.ends_with('/') {
        return Ok(m.trim_end_matches('/').to_owned());
    }
    Ok(m.to_owned())
}

/// btrfs `swap`: swap files, by attribute name.
fn swap_files(f: &mut Fields<'_>) -> Result<Vec<SwapFile>, LayoutError> {
    let Some(v) = f.get("swap") else {
        return Ok(Vec::new());
    };
    let sp = f.p("swap");
    let mut out = Vec::new();
    for (name, s) in as_obj(v, &sp)? {
        let p = format!("{sp}.{}", attr(name));
        let mut g = Fields::new(s, &p)?;
        let size = g.req_str("size", ": e.g. \"8G\"")?;
        if !size.is_empty() {
            crate::units::parse_bytes(&size).map_err(|m| LayoutError {
                path: g.p("size"),
                message: m,
            })?;
        }
        let path = g.str("path")?.unwrap_or_else(|| name.clone());
        if path.is_empty() || path.split('/').any(|c| c == "..") {
            return err(
                &g.p("path"),
                format!("{path:?} is not a relative file path"),
            );
        }
        let sf = SwapFile {
            path,
            size,
            priority: g.int("priority")?,
            options: g.strings("options")?.unwrap_or_else(defaults),
        };
        g.done()?;
        out.push(sf);
    }
    Ok(out)
}

fn parse_subvolume(key: &str, v: &Value, path: &str) -> Result<Subvolume, LayoutError> {
    let mut f = Fields::new(v, path)?;
    if let Some(t) = f.str("type")? {
        if t != "btrfs_subvol" {
            return err(
                &f.p("type"),
                format!("{t:?}: a subvolume's type is \"btrfs_subvol\""),
            );
        }
    }
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    if name.trim_matches('/').is_empty() || name.split('/').any(|c| c == "..") {
        return err(path, format!("{name:?} is not a valid subvolume name"));
    }
    let swap = swap_files(&mut f)?;
    let s = Subvolume {
        name,
        mountpoint: mountpoint(&mut f)?,
        mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
        extra_args: f.strings("extraArgs")?.unwrap_or_default(),
        swap,
        path: path.to_owned(),
    };
    f.done()?;
    Ok(s)
}

pub(crate) fn parse_nodev(name: &str, v: &Value, path: &str) -> Result<Nodev, LayoutError> {
    let mut f = Fields::new(v, path)?;
    if let Some(t) = f.str("type")? {
        if t != "nodev" {
            return err(&f.p("type"), format!("{t:?}: a nodev's type is \"nodev\""));
        }
    }
    let fs_type = f.req_str("fsType", ": e.g. \"tmpfs\"")?;
    let mountpoint = match f.str("mountpoint")? {
        Some(m) => check_mountpoint(&m, &f.p("mountpoint"))?,
        None => check_mountpoint(name, &f.p("mountpoint"))?,
    };
    f.ignore(HOOKS);
    let n = Nodev {
        name: name.to_owned(),
        fs_type,
        device: f.str("device")?.unwrap_or_else(|| "none".into()),
        mountpoint,
        mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
        path: path.to_owned(),
    };
    f.done()?;
    Ok(n)
}

/// A list of strings (re-exported for the volume parsers).
pub(crate) fn list(v: &Value, path: &str) -> Result<Vec<String>, LayoutError> {
    strings_of(v, path)
}

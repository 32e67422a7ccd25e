//! landfall-disko: the layout model shared by the agent and the server.
//!
//! disko's schema, read from the JSON that `nix-instantiate --eval --strict
//! --json` renders from a layout file, and validated with the path of every
//! field in its errors (`disko.devices.disk.main.content.partitions.root.size`).
//!
//! Semantics follow nix-community/disko `lib/types/*.nix`:
//! - `gpt.nix`: partition `name` defaults to the attribute name; `label`
//!   defaults to `"${parent.type}-${parent.name}-${name}"`, replaced by the
//!   first 36 hex digits of its sha256 when longer than 36 characters (a GPT
//!   name holds 36 UTF-16 code units); `type` defaults to "8300"; `size` is
//!   `"100%"` or `[0-9]+[KMGTP]?`; `start` defaults to "0" (first free aligned
//!   sector) and `end` to `"-0"` for "100%", else `"+${size}"`; `priority`
//!   defaults to 9001 for "100%", 100 for "EF02" (BIOS boot first) and 1000
//!   otherwise; partitions are numbered and created in priority order, ties
//!   in attribute-name order (`lib.sort` is stable over `attrValues`).
//! - `filesystem.nix`, `btrfs.nix`, `swap.nix`, `luks.nix`, `nodev.nix`:
//!   `mountOptions` default `["defaults"]`; nodev `device` defaults to "none"
//!   and its `mountpoint` to the attribute name.
//!
//! Anything disko supports that the agent does not (zpool, lvm_vg, mdadm,
//! mbr/`table` tables, bcachefs, ...) is refused here, with its path, before
//! any disk is touched.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A layout error: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LayoutError {
    pub path: String,
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError {
        path: path.to_owned(),
        message: message.into(),
    })
}

/// A validated layout: disks (by name, sorted) and nodev mounts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// Prefix of field paths in errors: "disko.devices", or "devices".
    pub root: String,
    pub disks: BTreeMap<String, Disk>,
    pub nodev: BTreeMap<String, Nodev>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    pub name: String,
    /// From the layout; "" or "auto" means: choose at run time.
    pub device: String,
    /// Partitions in creation order ((priority, key) as disko sorts them).
    pub partitions: Vec<Partition>,
    /// Field path of this disk, for later errors.
    pub path: String,
}

impl Disk {
    /// True when the device is chosen at run time.
    pub fn is_auto(&self) -> bool {
        is_auto(&self.device)
    }
}

pub fn is_auto(device: &str) -> bool {
    let d = device.trim();
    d.is_empty() || d == "auto" || d.starts_with("auto:")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Partition {
    /// The attribute name in `partitions`.
    pub key: String,
    /// disko's `name` (defaults to the key).
    pub name: String,
    /// The GPT partition name (PARTLABEL), disko's `label`.
    pub label: String,
    /// sgdisk type code ("EF00") or GUID, as written in the layout.
    pub type_code: String,
    pub type_guid: String,
    pub size: Size,
    pub start: Bound,
    pub end: Bound,
    pub priority: i64,
    pub content: Option<Content>,
    pub path: String,
}

/// A partition size: bytes, or the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Bytes(u64),
    Rest,
}

/// sgdisk's start/end syntax: `0` (default), an absolute offset, `+size`
/// (relative to start) or `-size` (from the end of the usable area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Default,
    At(u64),
    Plus(u64),
    FromEnd(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Filesystem(Filesystem),
    Swap(Swap),
    Luks(Luks),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filesystem {
    /// vfat | ext4 | xfs | btrfs
    pub format: String,
    pub extra_args: Vec<String>,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    /// btrfs subvolumes (only for `type = "btrfs"` or format btrfs).
    pub subvolumes: Vec<Subvolume>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subvolume {
    /// The subvolume's name (its attribute name unless `name` is set), e.g. "/root" or "@home".
    pub name: String,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    pub extra_args: Vec<String>,
    pub path: String,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nodev {
    pub name: String,
    pub fs_type: String,
    pub device: String,
    pub mountpoint: String,
    pub mount_options: Vec<String>,
    pub path: String,
}

/// Paths that exist on the installer only: a LUKS `settings.keyFile` there
/// would reach the installed system's initrd config (disko copies `settings`).
pub const INSTALLER_ONLY: &[&str] = &["/run/", "/tmp/", "/etc/landfall/"];

/// The formats the agent can make.
pub const FORMATS: &[&str] = &["vfat", "ext4", "xfs", "btrfs"];

impl Layout {
    /// Parse a rendered layout: the whole file (`{disko: {devices}}`),
    /// `disko.devices`' parent `{devices}`, or the devices set itself.
    pub fn from_json(v: &Value) -> Result<Layout, LayoutError> {
        let obj = v.as_object().ok_or_else(|| LayoutError {
            path: "(layout)".into(),
            message: format!("expected an attribute set, found {}", kind(v)),
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
            nodev: BTreeMap::new(),
        };
        for (k, val) in devices {
            let p = format!("{root}.{k}");
            match k.as_str() {
                "disk" => {
                    for (name, d) in as_obj(val, &p)? {
                        let dp = format!("{p}.{}", attr(name));
                        layout.disks.insert(name.clone(), parse_disk(name, d, &dp)?);
                    }
                }
                "nodev" => {
                    for (name, d) in as_obj(val, &p)? {
                        let dp = format!("{p}.{}", attr(name));
                        layout
                            .nodev
                            .insert(name.clone(), parse_nodev(name, d, &dp)?);
                    }
                }
                "zpool" | "lvm_vg" | "mdadm" | "bcachefs_filesystems" => {
                    if as_obj(val, &p)?.is_empty() {
                        continue;
                    }
                    return err(&p, format!("`{k}` is not supported yet by landfall (supported: disk with a gpt table, nodev)"));
                }
                other => {
                    return err(
                        &p,
                        format!("unknown device kind `{other}` (supported: disk, nodev)"),
                    )
                }
            }
        }
        if layout.disks.is_empty() {
            return err(&format!("{root}.disk"), "the layout has no disk");
        }
        layout.check_global()?;
        Ok(layout)
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
        for d in self.disks.values() {
            for p in &d.partitions {
                if let Some(first) = labels.insert(p.label.clone(), p.path.clone()) {
                    return err(
                        &p.path,
                        format!("partition label {:?} is already used by {first}", p.label),
                    );
                }
                let mut c = p.content.as_ref();
                while let Some(content) = c {
                    c = None;
                    match content {
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
                        Content::Swap(_) => {}
                        Content::Luks(l) => {
                            if let Some(first) = luks.insert(l.name.clone(), l.path.clone()) {
                                return err(
                                    &format!("{}.name", l.path),
                                    format!("LUKS name {:?} is already used by {first}", l.name),
                                );
                            }
                            c = l.content.as_deref();
                        }
                    }
                }
            }
        }
        for n in self.nodev.values() {
            add_mount(&n.mountpoint, &format!("{}.mountpoint", n.path))?;
        }
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}

/// A Nix attribute name as it appears in a path (quoted when needed).
fn attr(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.as_bytes()[0].is_ascii_digit()
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

fn as_obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, LayoutError> {
    v.as_object().ok_or_else(|| LayoutError {
        path: path.to_owned(),
        message: format!("expected an attribute set, found {}", kind(v)),
    })
}

/// Typed access to one attribute set, remembering which keys were read so
/// that unknown keys are reported.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a str,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value, path: &'a str) -> Result<Self, LayoutError> {
        Ok(Self {
            obj: as_obj(v, path)?,
            path,
            known: Vec::new(),
        })
    }
    fn p(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }
    fn get(&mut self, k: &'static str) -> Option<&'a Value> {
        self.known.push(k);
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn str(&mut self, k: &'static str) -> Result<Option<String>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => err(&self.p(k), format!("expected a string, found {}", kind(v))),
        }
    }
    fn req_str(&mut self, k: &'static str, hint: &str) -> Result<String, LayoutError> {
        match self.str(k)? {
            Some(s) => Ok(s),
            None => err(&self.p(k), format!("is missing{hint}")),
        }
    }
    fn bool(&mut self, k: &'static str, default: bool) -> Result<bool, LayoutError> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(
                &self.p(k),
                format!("expected true or false, found {}", kind(v)),
            ),
        }
    }
    fn int(&mut self, k: &'static str) -> Result<Option<i64>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(v) => err(&self.p(k), format!("expected an integer, found {v}")),
        }
    }
    fn strings(&mut self, k: &'static str) -> Result<Option<Vec<String>>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => err(
                        &format!("{}.{k}.{i}", self.path),
                        format!("expected a string, found {}", kind(v)),
                    ),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => err(
                &self.p(k),
                format!("expected a list of strings, found {}", kind(v)),
            ),
        }
    }
    /// Keys disko knows but landfall ignores (hooks, image settings, internals).
    fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }
    /// Every key not read is an error (a typo would otherwise be silently ignored).
    fn done(self) -> Result<(), LayoutError> {
        for k in self.obj.keys() {
            if !self.known.contains(&k.as_str()) && !k.starts_with('_') {
                return err(
                    &format!("{}.{}", self.path, attr(k)),
                    format!(
                        "unknown or unsupported option (known here: {})",
                        self.known
                            .iter()
                            .filter(|k| !HOOKS.contains(k))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

const HOOKS: &[&str] = &[
    "preCreateHook",
    "postCreateHook",
    "preMountHook",
    "postMountHook",
];

fn parse_disk(name: &str, v: &Value, path: &str) -> Result<Disk, LayoutError> {
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
    f.ignore(&["name", "imageName", "imageSize"]);
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
    let cpath = format!("{path}.content");
    let mut c = Fields::new(content, &cpath)?;
    let t = c.req_str("type", ": use \"gpt\"")?;
    match t.as_str() {
        "gpt" => {}
        "table" | "mbr" => {
            return err(
                &c.p("type"),
                format!("{t:?} (MBR) tables are not supported yet; use \"gpt\""),
            );
        }
        _ => {
            return err(
                &c.p("type"),
                format!("{t:?} is not supported yet as a disk's content; use \"gpt\""),
            );
        }
    }
    c.ignore(&["efiGptPartitionFirst", "device"]);
    c.ignore(HOOKS);
    let parts = match c.get("partitions") {
        Some(p) => p,
        None => return err(&c.p("partitions"), "is missing"),
    };
    c.done()?;
    let ppath = format!("{cpath}.partitions");
    let mut partitions = Vec::new();
    for (key, pv) in as_obj(parts, &ppath)? {
        partitions.push(parse_partition(
            name,
            key,
            pv,
            &format!("{ppath}.{}", attr(key)),
        )?);
    }
    if partitions.is_empty() {
        return err(&ppath, "has no partition");
    }
    partitions.sort_by(|a, b| (a.priority, &a.key).cmp(&(b.priority, &b.key)));
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
    Ok(Disk {
        name: name.to_owned(),
        device,
        partitions,
        path: path.to_owned(),
    })
}

fn parse_partition(disk: &str, key: &str, v: &Value, path: &str) -> Result<Partition, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    let label = match f.str("label")? {
        Some(l) => l,
        None => default_label(disk, &name),
    };
    if label.encode_utf16().count() > 36 {
        return err(
            &f.p("label"),
            format!("{label:?} is longer than 36 characters, the most a GPT partition name holds"),
        );
    }
    let type_code = f.str("type")?.unwrap_or_else(|| "8300".into());
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
            if f.obj.get("size").is_some_and(|v| !v.is_null()) {
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
    // Newer disko options landfall does not implement yet: refused when set,
    // rather than silently ignored.
    if f.get("uuid").is_some() {
        return err(
            &f.p("uuid"),
            "fixed partition GUIDs are not supported yet; remove it (a random GUID is used)",
        );
    }
    match f.get("attributes") {
        Some(Value::Array(a)) if !a.is_empty() => {
            return err(
                &f.p("attributes"),
                "GPT attribute bits are not supported yet",
            );
        }
        _ => {}
    }
    if f.get("hybrid").is_some() {
        return err(&f.p("hybrid"), "hybrid MBR entries are not supported yet");
    }
    f.ignore(&["device", "alignment"]);
    f.ignore(HOOKS);
    let content = match f.get("content") {
        None => None,
        Some(c) => Some(parse_content(c, &f.p("content"))?),
    };
    f.done()?;
    Ok(Partition {
        key: key.to_owned(),
        name,
        label,
        type_code,
        type_guid: type_guid.to_owned(),
        size,
        start,
        end,
        priority,
        content,
        path: path.to_owned(),
    })
}

/// disko's default partition label (lib/types/gpt.nix).
pub fn default_label(disk: &str, part: &str) -> String {
    let label = format!("disk-{disk}-{part}");
    if label.chars().count() > 36 {
        let h = Sha256::digest(label.as_bytes());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        hex[..36].to_owned()
    } else {
        label
    }
}

fn parse_content(v: &Value, path: &str) -> Result<Content, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let t = f.req_str(
        "type",
        ": e.g. \"filesystem\", \"btrfs\", \"swap\" or \"luks\"",
    )?;
    f.ignore(HOOKS);
    f.ignore(&["device"]);
    let c = match t.as_str() {
        "filesystem" => {
            let format = f.req_str("format", ": e.g. \"ext4\"")?;
            if !FORMATS.contains(&format.as_str()) {
                return err(
                    &f.p("format"),
                    format!(
                        "{format:?} is not supported (supported: {})",
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
            f.ignore(&["swap"]);
            Content::Filesystem(Filesystem {
                format: "btrfs".into(),
                extra_args: f.strings("extraArgs")?.unwrap_or_default(),
                mountpoint: mountpoint(&mut f)?,
                mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
                subvolumes,
                path: path.to_owned(),
            })
        }
        "swap" => Content::Swap(Swap {
            extra_args: f.strings("extraArgs")?.unwrap_or_default(),
            mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
            random_encryption: f.bool("randomEncryption", false)?,
            priority: f.int("priority")?,
            discard_policy: f.str("discardPolicy")?,
            resume_device: f.bool("resumeDevice", false)?,
            path: path.to_owned(),
        }),
        "luks" => {
            let name = f.req_str("name", ": the mapping name, /dev/mapper/NAME")?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
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
            f.ignore(&["additionalKeyFiles", "askPassword"]);
            let content = match f.get("content") {
                None => None,
                Some(c) => Some(Box::new(parse_content(c, &f.p("content"))?)),
            };
            Content::Luks(Luks {
                name,
                key,
                settings,
                allow_discards,
                extra_format_args: f.strings("extraFormatArgs")?.unwrap_or_default(),
                extra_open_args: f.strings("extraOpenArgs")?.unwrap_or_default(),
                initrd_unlock: f.bool("initrdUnlock", true)?,
                content,
                path: path.to_owned(),
            })
        }
        "zfs" | "lvm_pv" | "mdraid" | "bcachefs" | "table" | "gpt" => {
            return err(&f.p("type"), format!("{t:?} is not supported yet as partition content (supported: filesystem, btrfs, swap, luks)"));
        }
        other => {
            return err(
                &f.p("type"),
                format!(
                    "unknown content type {other:?} (supported: filesystem, btrfs, swap, luks)"
                ),
            )
        }
    };
    f.done()?;
    Ok(c)
}

fn defaults() -> Vec<String> {
    vec!["defaults".into()]
}

fn mountpoint(f: &mut Fields<'_>) -> Result<Option<String>, LayoutError> {
    match f.str("mountpoint")? {
        None => Ok(None),
        Some(m) => check_mountpoint(&m, &f.p("mountpoint")).map(Some),
    }
}

fn check_mountpoint(m: &str, path: &str) -> Result<String, LayoutError> {
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
    f.ignore(&["swap"]);
    let s = Subvolume {
        name,
        mountpoint: mountpoint(&mut f)?,
        mount_options: f.strings("mountOptions")?.unwrap_or_else(defaults),
        extra_args: f.strings("extraArgs")?.unwrap_or_default(),
        path: path.to_owned(),
    };
    f.done()?;
    Ok(s)
}

fn parse_nodev(name: &str, v: &Value, path: &str) -> Result<Nodev, LayoutError> {
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

/// "512M", "1G", "100%", "4096" (bytes). K/M/G/T/P are binary, as sgdisk reads them.
pub fn parse_size(s: &str) -> Result<Size, String> {
    if s == "100%" {
        return Ok(Size::Rest);
    }
    if s.ends_with('%') {
        return Err(format!(
            "{s:?}: only \"100%\" (the rest of the disk) is supported as a percentage, as in disko"
        ));
    }
    parse_bytes(s).map(Size::Bytes)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size; use e.g. \"512M\", \"20G\" or \"100%\"");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        "P" | "PiB" => 50,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn parse_bound(s: &str, is_end: bool) -> Result<Bound, String> {
    let what = if is_end { "end" } else { "start" };
    let bad =
        |m: String| format!("{s:?} is not a valid {what}: {m} (e.g. \"1M\", \"+512M\", \"-1G\")");
    if s == "0" {
        return Ok(if is_end {
            Bound::FromEnd(0)
        } else {
            Bound::Default
        });
    }
    if let Some(r) = s.strip_prefix('+') {
        return parse_bytes(r).map(Bound::Plus).map_err(bad);
    }
    if let Some(r) = s.strip_prefix('-') {
        return parse_bytes(r).map(Bound::FromEnd).map_err(bad);
    }
    parse_bytes(s).map(Bound::At).map_err(bad)
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Rest => f.write_str("100%"),
            Size::Bytes(b) => f.write_str(&human(*b)),
        }
    }
}

/// Bytes as the largest exact binary unit ("512M"), else MiB with a decimal.
pub fn human(b: u64) -> String {
    for (shift, u) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{u}", b >> shift);
        }
    }
    if b >= 1 << 20 {
        return format!("{:.1}M", b as f64 / (1u64 << 20) as f64);
    }
    format!("{b}B")
}

pub const EF00: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const EF02: &str = "21686148-6449-6E6F-744E-656564454649";

/// sgdisk's type codes (gdisk `parttypes.cc`) the agent knows, and GUIDs.
const CODES: &[(&str, &str)] = &[
    ("EF00", EF00),
    ("EF01", "024DEE41-33E7-11D3-9D69-0008C781F39F"),
    ("EF02", EF02),
    ("EA00", "BC13C2FF-59E6-4262-A352-B275FD6F7172"),
    ("8300", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("8200", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ("8301", "8DA63339-0007-60C0-C436-083AC8230908"),
    ("8302", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"),
    ("8303", "44479540-F297-41B2-9AF7-D131D5F0458A"),
    ("8304", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ("8305", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
    ("8306", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8"),
    ("8307", "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3"),
    ("8308", "7FFEC5C9-2D00-49B7-8941-3EA10A5586B7"),
    ("8309", "CA7D7CCB-63ED-4C53-861C-1742536059CC"),
    ("830A", "B0E01050-EE5F-4390-949A-9101B17104E9"),
    ("8310", "4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
    ("8311", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1"),
    ("8312", "773F91EF-66D4-49B5-BD83-D683BF40AD16"),
    ("8313", "8484680C-9521-48C6-9C11-B0720656F69E"),
    ("8314", "9F7E8F2B-5D0F-4DE6-9EB6-5F24C8A46B9A"),
    ("8E00", "E6D6D379-F507-44C2-A23C-238F2A3DF928"),
    ("FD00", "A19D880F-05FC-4D3B-A006-743F0F84911E"),
    ("0700", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
    ("0C01", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"),
    ("2700", "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"),
    ("BF00", "6A898CC3-1DD2-11B2-99A6-080020736631"),
    ("BF01", "6A898CC3-1DD2-11B2-99A6-080020736631"),
    ("A504", "516E7CB6-6ECF-11D6-8FF8-00022D09712B"),
];

/// The GUID of an sgdisk type code ("ef00" too) or of a GUID string.
pub fn type_guid(code: &str) -> Option<&'static str> {
    let up = code.to_ascii_uppercase();
    if let Some((_, g)) = CODES.iter().find(|(c, _)| *c == up) {
        return Some(g);
    }
    if is_guid(&up) {
        // Leak-free: return the canonical form from the table when it is known.
        if let Some((_, g)) = CODES.iter().find(|(_, g)| *g == up) {
            return Some(g);
        }
        return Some(Box::leak(up.into_boxed_str()));
    }
    None
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn simple() -> Value {
        json!({"disko": {"devices": {"disk": {"main": {
        "type": "disk", "device": "/dev/vda",
        "content": {"type": "gpt", "partitions": {
            "ESP": {"type": "EF00", "size": "500M", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
            "boot": {"type": "EF02", "size": "1M"}
        }}}}}}})
    }

    #[test]
    fn disko_defaults_order_and_labels() {
        let l = Layout::from_json(&simple()).unwrap();
        let d = &l.disks["main"];
        let names: Vec<_> = d.partitions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["disk-main-boot", "disk-main-ESP", "disk-main-root"]);
        assert_eq!(d.partitions[2].end, Bound::FromEnd(0));
        assert_eq!(d.partitions[1].end, Bound::Plus(500 << 20));
        assert_eq!(
            d.partitions[2].type_guid,
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
    }

    #[test]
    fn the_three_accepted_roots() {
        let v = simple();
        let labels = |l: &Layout| -> Vec<String> {
            l.disks["main"]
                .partitions
                .iter()
                .map(|p| p.label.clone())
                .collect()
        };
        let a = Layout::from_json(&v).unwrap();
        let b = Layout::from_json(&json!({"devices": v["disko"]["devices"]})).unwrap();
        let c = Layout::from_json(&v["disko"]["devices"]).unwrap();
        assert_eq!(labels(&a), labels(&b));
        assert_eq!(labels(&a), labels(&c));
        assert_eq!(b.disks["main"].path, "devices.disk.main");
        assert_eq!(c.disks["main"].path, "disko.devices.disk.main");
    }

    #[test]
    fn long_labels_are_hashed_like_disko() {
        let l = default_label("a-very-long-disk-name-indeed", "and-a-long-part");
        assert_eq!(l.len(), 36);
        assert!(l.bytes().all(|b| b.is_ascii_hexdigit()));
        // sha256("disk-a-very-long-disk-name-indeed-and-a-long-part")[..36]
        let h = Sha256::digest(b"disk-a-very-long-disk-name-indeed-and-a-long-part");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(l, hex[..36]);
        assert_eq!(default_label("main", "root"), "disk-main-root");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(parse_size("1G"), Ok(Size::Bytes(1 << 30)));
        assert_eq!(parse_size("100%"), Ok(Size::Rest));
        assert!(parse_size("12X").unwrap_err().contains("is not a size"));
        assert!(parse_size("50%").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(parse_bound("-1G", true), Ok(Bound::FromEnd(1 << 30)));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = simple();
        v["disko"]["devices"]["disk"]["main"]["content"]["partitions"]["root"]["size"] =
            json!("12X");
        let e = Layout::from_json(&v).unwrap_err();
        assert_eq!(
            e.path,
            "disko.devices.disk.main.content.partitions.root.size"
        );
        assert_eq!(
            e.to_string(),
            "disko.devices.disk.main.content.partitions.root.size: \"12X\" is not a size; use e.g. \"512M\", \"20G\" or \"100%\""
        );
    }

    #[test]
    fn type_codes() {
        assert_eq!(type_guid("ef00"), Some(EF00));
        assert_eq!(
            type_guid("8309"),
            Some("CA7D7CCB-63ED-4C53-861C-1742536059CC")
        );
        assert_eq!(
            type_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            Some(EF00)
        );
        assert_eq!(type_guid("ZZZZ"), None);
    }
}

//! md arrays, LVM volume groups, ZFS pools, bcachefs filesystems, and the
//! checks across the layout: every member names a volume that exists, every
//! volume has the members it needs, zpool topologies name members, no
//! dependency cycle; and the creation order (waves).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::fields::{as_obj, attr, err, kind, Fields, HOOKS};
use crate::parse::{check_mountpoint, content_field, defaults, list, mountpoint, valid_name, Pos};
use crate::units::{is_guid, sha256_hex, LvSize};
use crate::{
    BcachefsFilesystem, BcachefsSubvolume, Content, Dataset, DatasetKind, Layout, LayoutError,
    LogicalVolume, MdArray, Owner, Topology, Vdev, VolumeGroup, VolumeKind, VolumeRef, Zpool,
    ZpoolMode, LVM_TYPES, MD_LEVELS, ZPOOL_MODES,
};

/// The volume's `name` option: disko keys members by the attribute name,
/// so a different `name` would leave the volume without members.
fn same_name(f: &mut Fields<'_>, key: &str) -> Result<(), LayoutError> {
    if let Some(n) = f.str("name")? {
        if n != key {
            return err(
                &f.p("name"),
                format!(
                    "{n:?} differs from the attribute name {key:?}: members name the volume by its \
                     attribute name; rename the attribute instead"
                ),
            );
        }
    }
    Ok(())
}

fn check_type(f: &mut Fields<'_>, want: &str) -> Result<(), LayoutError> {
    if let Some(t) = f.str("type")? {
        if t != want {
            return err(&f.p("type"), format!("{t:?}: the type here is \"{want}\""));
        }
    }
    Ok(())
}

pub(crate) fn parse_mdadm(name: &str, v: &Value, path: &str) -> Result<MdArray, LayoutError> {
    let mut f = Fields::new(v, path)?;
    check_type(&mut f, "mdadm")?;
    same_name(&mut f, name)?;
    if !valid_name(name) {
        return err(
            path,
            format!(
                "{name:?} is not a valid array name ([A-Za-z0-9._-]+): it becomes /dev/md/NAME"
            ),
        );
    }
    let level = f.int("level")?.unwrap_or(1);
    if !MD_LEVELS.iter().any(|(l, _)| *l == level) {
        return err(
            &f.p("level"),
            format!(
                "{level} is not a RAID level mdadm creates (known: {})",
                MD_LEVELS
                    .iter()
                    .map(|(l, _)| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let metadata = f.str("metadata")?.unwrap_or_else(|| "default".into());
    const METADATA: &[&str] = &["1", "1.0", "1.1", "1.2", "default", "ddf", "imsm"];
    if !METADATA.contains(&metadata.as_str()) {
        return err(
            &f.p("metadata"),
            format!(
                "{metadata:?} is not an mdadm metadata format disko knows ({})",
                METADATA.join(", ")
            ),
        );
    }
    let extra_args = f.strings("extraArgs")?.unwrap_or_default();
    f.ignore(HOOKS);
    let content = content_field(
        &mut f,
        Pos {
            parent_type: "mdadm",
            parent_name: name,
            device: true,
        },
    )?;
    f.done()?;
    Ok(MdArray {
        name: name.to_owned(),
        level,
        metadata,
        extra_args,
        content,
        path: path.to_owned(),
    })
}

/// LVM names: `[A-Za-z0-9+_.-]`, not starting with '-'.
fn lvm_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('-')
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

pub(crate) fn parse_lvm_vg(name: &str, v: &Value, path: &str) -> Result<VolumeGroup, LayoutError> {
    let mut f = Fields::new(v, path)?;
    check_type(&mut f, "lvm_vg")?;
    same_name(&mut f, name)?;
    if !lvm_name(name) {
        return err(
            path,
            format!("{name:?} is not a valid volume group name ([A-Za-z0-9+_.-], not starting with '-')"),
        );
    }
    f.ignore(HOOKS);
    let mut lvs = Vec::new();
    if let Some(l) = f.get("lvs") {
        let lp = f.p("lvs");
        for (key, lv) in as_obj(l, &lp)? {
            lvs.push(parse_lv(name, key, lv, &format!("{lp}.{}", attr(key)))?);
        }
    }
    f.done()?;
    // lvm_vg.nix: `lib.sort (a: b: a.priority < b.priority)` over attrValues (stable).
    lvs.sort_by_key(|a| a.priority);
    let mut names = BTreeMap::new();
    for lv in &lvs {
        if let Some(first) = names.insert(lv.name.clone(), lv.path.clone()) {
            return err(
                &format!("{}.name", lv.path),
                format!("logical volume {:?} is already defined by {first}", lv.name),
            );
        }
    }
    for lv in &lvs {
        match (lv.lvm_type.as_deref(), &lv.pool) {
            (Some("thinlv"), None) => {
                return err(
                    &format!("{}.pool", lv.path),
                    "is missing: a thin volume (lvm_type = \"thinlv\") names its thin pool, e.g. pool = \"thinpool\";",
                )
            }
            (Some("thinlv"), Some(pool)) => {
                let Some(p) = lvs.iter().find(|p| &p.name == pool) else {
                    return err(
                        &format!("{}.pool", lv.path),
                        format!(
                            "{pool:?} names no logical volume of volume group {name}: add one with lvm_type = \"thin-pool\""
                        ),
                    );
                };
                if p.lvm_type.as_deref() != Some("thin-pool") {
                    return err(
                        &format!("{}.pool", lv.path),
                        format!(
                            "{pool:?} is not a thin pool: set its lvm_type = \"thin-pool\" ({})",
                            p.path
                        ),
                    );
                }
                if p.priority > lv.priority {
                    return err(
                        &format!("{}.priority", lv.path),
                        format!(
                            "the thin volume would be created (priority {}) before its pool {pool:?} (priority {}): give the pool a smaller priority",
                            lv.priority, p.priority
                        ),
                    );
                }
                if matches!(lv.size, LvSize::Extents(_)) {
                    return err(
                        &format!("{}.size", lv.path),
                        "a thin volume's size is virtual (lvcreate -V): give a size such as \"10G\", not a percentage",
                    );
                }
            }
            (_, Some(_)) => {
                return err(
                    &format!("{}.pool", lv.path),
                    "is only for thin volumes: set lvm_type = \"thinlv\", or remove pool",
                )
            }
            _ => {}
        }
    }
    Ok(VolumeGroup {
        name: name.to_owned(),
        lvs,
        path: path.to_owned(),
    })
}

fn parse_lv(vg: &str, key: &str, v: &Value, path: &str) -> Result<LogicalVolume, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    if !lvm_name(&name) {
        return err(
            path,
            format!("{name:?} is not a valid logical volume name ([A-Za-z0-9+_.-], not starting with '-')"),
        );
    }
    let size_text = f.req_str("size", ": e.g. \"10G\", \"100%\" or \"100%FREE\"")?;
    let size = LvSize::parse(&size_text).map_err(|m| LayoutError {
        path: f.p("size"),
        message: m,
    })?;
    let lvm_type = f.str("lvm_type")?;
    if let Some(t) = &lvm_type {
        if !LVM_TYPES.iter().any(|(k, _)| k == t) {
            return err(
                &f.p("lvm_type"),
                format!(
                    "{t:?} is not an lvm_type disko knows ({})",
                    LVM_TYPES
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    // lvm_vg.nix: (thin-pool ? 501 : 1000) + (size has "100%" ? 251 : 0).
    let priority = match f.int("priority")? {
        Some(p) => p,
        None => {
            (if lvm_type.as_deref() == Some("thin-pool") {
                501
            } else {
                1000
            }) + if size_text.contains("100%") { 251 } else { 0 }
        }
    };
    let pool = f.str("pool")?;
    let extra_args = f.strings("extraArgs")?.unwrap_or_default();
    let content = content_field(
        &mut f,
        Pos {
            parent_type: "lvm_vg",
            parent_name: vg,
            device: false,
        },
    )?;
    f.done()?;
    Ok(LogicalVolume {
        name,
        size,
        lvm_type,
        pool,
        extra_args,
        priority,
        content,
        path: path.to_owned(),
    })
}

/// ZFS names: letters, digits, `_ - . :`; a pool name starts with a letter.
fn zfs_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

pub(crate) fn parse_zpool(name: &str, v: &Value, path: &str) -> Result<Zpool, LayoutError> {
    let mut f = Fields::new(v, path)?;
    check_type(&mut f, "zpool")?;
    same_name(&mut f, name)?;
    if !zfs_name(name)
        || !name.as_bytes()[0].is_ascii_alphabetic()
        || ["mirror", "raidz", "spare", "log", "draid"]
            .iter()
            .any(|r| name.starts_with(r))
    {
        return err(
            path,
            format!(
                "{name:?} is not a valid pool name (a letter, then letters, digits, _ - . :; not \
                 starting with mirror, raidz, draid, spare or log)"
            ),
        );
    }
    let mode = match f.get("mode") {
        None => ZpoolMode::Simple(String::new()),
        Some(Value::String(m)) => {
            if !ZPOOL_MODES.contains(&m.as_str()) {
                return err(
                    &f.p("mode"),
                    format!(
                        "{m:?} is not a pool mode disko knows (\"\", mirror, raidz, raidz1, raidz2, raidz3, or {{ topology = ...; }})"
                    ),
                );
            }
            ZpoolMode::Simple(m.clone())
        }
        Some(m) => ZpoolMode::Topology(parse_topology(m, &f.p("mode"))?),
    };
    let options = f.str_map("options")?;
    let root_fs_options = f.str_map("rootFsOptions")?;
    let mp = mountpoint(&mut f)?;
    let mount_options = f.strings("mountOptions")?.unwrap_or_else(defaults);
    f.ignore(HOOKS);
    let mut datasets = Vec::new();
    if let Some(d) = f.get("datasets") {
        let dp = f.p("datasets");
        for (key, ds) in as_obj(d, &dp)? {
            datasets.push(parse_dataset(
                name,
                key,
                ds,
                &format!("{dp}.{}", attr(key)),
            )?);
        }
    }
    f.done()?;
    Ok(Zpool {
        name: name.to_owned(),
        mode,
        options,
        root_fs_options,
        mountpoint: mp,
        mount_options,
        datasets,
        path: path.to_owned(),
    })
}

fn parse_topology(v: &Value, path: &str) -> Result<Topology, LayoutError> {
    let mut m = Fields::new(v, path)?;
    let Some(t) = m.get("topology") else {
        return err(
            &m.p("topology"),
            "is missing: a mode is a string (\"mirror\", ...) or { topology = { vdev = [ ... ]; }; }",
        );
    };
    let tp = m.p("topology");
    m.done()?;
    let mut f = Fields::new(t, &tp)?;
    check_type(&mut f, "topology")?;
    let vdevs = |f: &mut Fields<'_>, k: &'static str| -> Result<Vec<Vdev>, LayoutError> {
        let p = f.p(k);
        match f.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, x)| parse_vdev(x, &format!("{p}.{i}")))
                .collect(),
            // `special` may be one vdev.
            Some(x @ Value::Object(_)) if k == "special" => Ok(vec![parse_vdev(x, &p)?]),
            Some(x) => err(&p, format!("expected a list of vdevs, found {}", kind(x))),
        }
    };
    let t = Topology {
        vdev: vdevs(&mut f, "vdev")?,
        log: vdevs(&mut f, "log")?,
        dedup: vdevs(&mut f, "dedup")?,
        special: vdevs(&mut f, "special")?,
        spare: f.strings("spare")?.unwrap_or_default(),
        cache: f.strings("cache")?.unwrap_or_default(),
    };
    f.done()?;
    if t.vdev.is_empty() {
        return err(
            &format!("{tp}.vdev"),
            "is empty: a pool needs at least one storage vdev",
        );
    }
    Ok(t)
}

fn parse_vdev(v: &Value, path: &str) -> Result<Vdev, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let mode = f.str("mode")?.unwrap_or_default();
    if !ZPOOL_MODES.contains(&mode.as_str()) {
        return err(
            &f.p("mode"),
            format!("{mode:?} is not a vdev mode (\"\", mirror, raidz, raidz1, raidz2, raidz3)"),
        );
    }
    let members = match f.get("members") {
        Some(m) => list(m, &f.p("members"))?,
        None => {
            return err(
                &f.p("members"),
                "is missing: the disks (or device paths) of this vdev",
            )
        }
    };
    if members.is_empty() {
        return err(&f.p("members"), "is empty");
    }
    f.done()?;
    Ok(Vdev {
        mode,
        members,
        path: path.to_owned(),
    })
}

fn parse_dataset(pool: &str, key: &str, v: &Value, path: &str) -> Result<Dataset, LayoutError> {
    let mut f = Fields::new(v, path)?;
    let t = f.req_str("type", ": \"zfs_fs\" or \"zfs_volume\"")?;
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    if name.split('/').any(|s| !zfs_name(s)) {
        return err(
            path,
            format!("{name:?} is not a valid dataset name (segments of letters, digits, _ - . : separated by /)"),
        );
    }
    let options = f.str_map("options")?;
    let mount_options = f.strings("mountOptions")?.unwrap_or_else(defaults);
    let kind = match t.as_str() {
        "zfs_fs" => DatasetKind::ZfsFs {
            mountpoint: mountpoint(&mut f)?,
        },
        "zfs_volume" => {
            let size = f.req_str(
                "size",
                ": a zvol needs a size (zfs create -V), e.g. \"10G\"",
            )?;
            let extra_args = f.strings("extraArgs")?.unwrap_or_default();
            let content = content_field(
                &mut f,
                Pos {
                    parent_type: "zfs_volume",
                    parent_name: &name,
                    device: false,
                },
            )?
            .map(Box::new);
            DatasetKind::ZfsVolume {
                size,
                extra_args,
                content,
            }
        }
        other => {
            return err(
                &f.p("type"),
                format!("{other:?}: a dataset is \"zfs_fs\" or \"zfs_volume\""),
            )
        }
    };
    f.ignore(HOOKS);
    f.done()?;
    let _ = pool;
    Ok(Dataset {
        name,
        options,
        mount_options,
        kind,
        path: path.to_owned(),
    })
}

/// zfs_fs.nix `_mount` and `_config`: a dataset (or a pool's root dataset)
/// with these properties is mounted, and in `fileSystems`, unless
/// `mountpoint=none` or `canmount=off`; with its mount options and
/// `zfsutil` unless its mountpoint property is `legacy`. `None`: not mounted.
pub fn zfs_mount_options(
    options: &BTreeMap<String, String>,
    mount_options: &[String],
) -> Option<Vec<String>> {
    let prop = |k: &str| options.get(k).map(String::as_str);
    if prop("mountpoint") == Some("none") || prop("canmount") == Some("off") {
        return None;
    }
    let mut o = mount_options.to_vec();
    if prop("mountpoint") != Some("legacy") {
        o.push("zfsutil".into());
    }
    Some(o)
}

pub(crate) fn parse_bcachefs(
    name: &str,
    v: &Value,
    path: &str,
) -> Result<BcachefsFilesystem, LayoutError> {
    let mut f = Fields::new(v, path)?;
    check_type(&mut f, "bcachefs_filesystem")?;
    same_name(&mut f, name)?;
    let extra_format_args = f.strings("extraFormatArgs")?.unwrap_or_default();
    let mount_options = f
        .strings("mountOptions")?
        .unwrap_or_else(|| vec!["X-mount.mkdir".into()]);
    let mp = mountpoint(&mut f)?;
    // bcachefs_filesystem.nix: the default uuid is the first 32 hex digits of sha256(name).
    let uuid = match f.str("uuid")? {
        Some(u) if is_guid(&u) => u,
        Some(u) => {
            return err(
                &f.p("uuid"),
                format!("{u:?} is not a UUID (8-4-4-4-12 hex digits)"),
            )
        }
        None => {
            let h = sha256_hex(name);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
    };
    let password_file = f.str("passwordFile")?;
    if let Some(p) = &password_file {
        if !p.starts_with('/') {
            return err(
                &f.p("passwordFile"),
                format!("{p:?} is not an absolute path"),
            );
        }
    }
    let mut subvolumes = Vec::new();
    if let Some(s) = f.get("subvolumes") {
        let sp = f.p("subvolumes");
        for (key, sv) in as_obj(s, &sp)? {
            let p = format!("{sp}.{}", attr(key));
            let mut g = Fields::new(sv, &p)?;
            check_type(&mut g, "bcachefs_subvolume")?;
            let sname = g.str("name")?.unwrap_or_else(|| key.clone());
            let trimmed = sname.trim_start_matches('/');
            if trimmed.is_empty()
                || trimmed
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            {
                return err(&p, format!("{sname:?} is not a valid subvolume path"));
            }
            let mount_options = g.strings("mountOptions")?.unwrap_or_default();
            let mp = match g.str("mountpoint")? {
                Some(m) => Some(check_mountpoint(&m, &g.p("mountpoint"))?),
                None => None,
            };
            g.done()?;
            subvolumes.push(BcachefsSubvolume {
                name: sname,
                mountpoint: mp,
                mount_options,
                path: p,
            });
        }
    }
    f.done()?;
    Ok(BcachefsFilesystem {
        name: name.to_owned(),
        extra_format_args,
        mount_options,
        mountpoint: mp,
        uuid,
        password_file,
        subvolumes,
        path: path.to_owned(),
    })
}

impl Layout {
    fn volume_path(&self, v: &VolumeRef) -> Option<&str> {
        Some(match v.kind {
            VolumeKind::Mdadm => &self.mdadm.get(&v.name)?.path,
            VolumeKind::LvmVg => &self.lvm_vg.get(&v.name)?.path,
            VolumeKind::Zpool => &self.zpool.get(&v.name)?.path,
            VolumeKind::Bcachefs => &self.bcachefs.get(&v.name)?.path,
        })
    }

    fn volume_names(&self, kind: VolumeKind) -> Vec<String> {
        match kind {
            VolumeKind::Mdadm => self.mdadm.keys().cloned().collect(),
            VolumeKind::LvmVg => self.lvm_vg.keys().cloned().collect(),
            VolumeKind::Zpool => self.zpool.keys().cloned().collect(),
            VolumeKind::Bcachefs => self.bcachefs.keys().cloned().collect(),
        }
    }

    fn all_volumes(&self) -> Vec<VolumeRef> {
        let mut v = Vec::new();
        for kind in [
            VolumeKind::Mdadm,
            VolumeKind::LvmVg,
            VolumeKind::Zpool,
            VolumeKind::Bcachefs,
        ] {
            v.extend(
                self.volume_names(kind)
                    .into_iter()
                    .map(|name| VolumeRef { kind, name }),
            );
        }
        v
    }

    /// The members of a volume in creation order: the content (its field
    /// path identifies it) and who holds it.
    pub fn members(&self, v: &VolumeRef) -> Vec<(Owner, &Content)> {
        self.all_contents()
            .into_iter()
            .filter(|(_, c)| c.member_of().as_ref() == Some(v))
            .collect()
    }
}

/// Member references, member counts, topologies, dependency order.
pub(crate) fn check_references(layout: &mut Layout) -> Result<(), LayoutError> {
    let volumes = layout.all_volumes();
    // Which owners hold members of which volume (edges owner -> volume).
    let mut deps: BTreeMap<VolumeRef, BTreeSet<Owner>> = volumes
        .iter()
        .map(|v| (v.clone(), BTreeSet::new()))
        .collect();
    let mut owners: Vec<Owner> = layout.disks.keys().cloned().map(Owner::Disk).collect();
    owners.extend(volumes.iter().cloned().map(Owner::Volume));
    for o in &owners {
        for c in layout.owner_contents(o) {
            let mut bad = None;
            c.walk(&mut |x| {
                if let Some(v) = x.member_of() {
                    match deps.get_mut(&v) {
                        Some(d) => {
                            d.insert(o.clone());
                        }
                        None => {
                            bad.get_or_insert((v, member_field(x)));
                        }
                    }
                }
            });
            if let Some((v, field)) = bad {
                let known = layout.volume_names(v.kind);
                let what = match v.kind {
                    VolumeKind::Mdadm => "md array",
                    VolumeKind::LvmVg => "volume group",
                    VolumeKind::Zpool => "ZFS pool",
                    VolumeKind::Bcachefs => "bcachefs filesystem",
                };
                return err(
                    &field,
                    format!(
                        "{:?} names no {what} of the layout ({}): add disko.devices.{}.{} or fix the name",
                        v.name,
                        if known.is_empty() {
                            "it has none".to_owned()
                        } else {
                            format!("it has {}", known.join(", "))
                        },
                        v.kind.key(),
                        attr(&v.name)
                    ),
                );
            }
        }
    }
    // Creation order: a volume comes after every owner holding one of its members.
    let mut wave_of: BTreeMap<VolumeRef, usize> = BTreeMap::new();
    let mut left: Vec<VolumeRef> = volumes.clone();
    while !left.is_empty() {
        let mut progress = false;
        let mut next = Vec::new();
        for v in std::mem::take(&mut left) {
            let ws: Option<Vec<usize>> = deps[&v]
                .iter()
                .map(|o| match o {
                    Owner::Disk(_) => Some(0),
                    Owner::Volume(d) => wave_of.get(d).copied(),
                })
                .collect();
            match ws {
                Some(ws) => {
                    wave_of.insert(v, ws.into_iter().max().unwrap_or(0) + 1);
                    progress = true;
                }
                None => next.push(v),
            }
        }
        if !progress {
            let names: Vec<String> = next.iter().map(ToString::to_string).collect();
            return err(
                layout.volume_path(&next[0]).unwrap_or(&layout.root),
                format!(
                    "the volumes {} are members of each other (a cycle): disko cannot create them in any order",
                    names.join(", ")
                ),
            );
        }
        left = next;
    }
    let n = wave_of.values().copied().max().unwrap_or(0);
    layout.waves = (1..=n)
        .map(|w| {
            volumes
                .iter()
                .filter(|v| wave_of[*v] == w)
                .cloned()
                .collect()
        })
        .collect();
    check_member_counts(layout)?;
    for z in layout.zpool.values() {
        if let ZpoolMode::Topology(t) = &z.mode {
            check_topology(layout, z, t)?;
        }
    }
    Ok(())
}

fn member_field(c: &Content) -> String {
    match c {
        Content::MdRaid(m) => format!("{}.name", m.path),
        Content::LvmPv(m) => format!("{}.vg", m.path),
        Content::Zfs(m) => format!("{}.pool", m.path),
        Content::Bcachefs(b) => format!("{}.filesystem", b.path),
        _ => String::new(),
    }
}

fn check_member_counts(layout: &Layout) -> Result<(), LayoutError> {
    let count = |kind, name: &str| {
        layout
            .members(&VolumeRef {
                kind,
                name: name.to_owned(),
            })
            .len()
    };
    let none = |what: &str, ty: &str, field: &str, name: &str| {
        format!(
            "has no {what}: no partition or disk has content {{ type = \"{ty}\"; {field} = \"{name}\"; }}"
        )
    };
    for m in layout.mdadm.values() {
        let n = count(VolumeKind::Mdadm, &m.name);
        let min = MD_LEVELS
            .iter()
            .find(|(l, _)| *l == m.level)
            .map_or(1, |(_, n)| *n);
        if n == 0 {
            return err(&m.path, none("member", "mdraid", "name", &m.name));
        }
        if n < min {
            return err(
                &format!("{}.level", m.path),
                format!(
                    "RAID {} needs at least {min} members; {n} partition(s) name array {:?}",
                    m.level, m.name
                ),
            );
        }
    }
    for g in layout.lvm_vg.values() {
        let n = count(VolumeKind::LvmVg, &g.name);
        if n == 0 {
            return err(&g.path, none("physical volume", "lvm_pv", "vg", &g.name));
        }
        for lv in &g.lvs {
            if let Some(t) = &lv.lvm_type {
                let min = LVM_TYPES
                    .iter()
                    .find(|(k, _)| k == t)
                    .map_or(1, |(_, n)| *n);
                if n < min {
                    return err(
                        &format!("{}.lvm_type", lv.path),
                        format!(
                            "{t:?} needs at least {min} physical volumes in volume group {:?}, which has {n}",
                            g.name
                        ),
                    );
                }
            }
        }
    }
    for z in layout.zpool.values() {
        if count(VolumeKind::Zpool, &z.name) == 0 {
            return err(&z.path, none("member", "zfs", "pool", &z.name));
        }
    }
    for b in layout.bcachefs.values() {
        if count(VolumeKind::Bcachefs, &b.name) == 0 {
            return err(&b.path, none("device", "bcachefs", "filesystem", &b.name));
        }
    }
    Ok(())
}

/// The stable names a zpool member answers to in a topology: disko's
/// `/dev/disk/by-partlabel/disk-NAME-zfs` for a disk name `NAME` (so the
/// member is the partition labelled `disk-NAME-zfs`), or the member's own
/// path (`/dev/disk/by-partlabel/LABEL`, `/dev/disk/by-partuuid/UUID`, a
/// whole disk's layout `device`).
pub fn zfs_member_names(layout: &Layout, member_path: &str) -> Vec<String> {
    let mut names = Vec::new();
    for d in layout.disks.values() {
        if matches!(&d.content, Content::Zfs(m) if m.path == member_path) && !d.device.is_empty() {
            names.push(d.device.clone());
        }
    }
    for (_, c) in layout.all_contents() {
        if let Content::Table(t) = c {
            for p in &t.partitions {
                if matches!(&p.content, Some(Content::Zfs(m)) if m.path == member_path) {
                    names.push(format!("/dev/disk/by-partlabel/{}", p.label));
                    if let Some(u) = &p.uuid {
                        names.push(format!("/dev/disk/by-partuuid/{u}"));
                    }
                }
            }
        }
    }
    names
}

/// The topology entry `m` as disko expands it.
pub fn topology_path(m: &str) -> String {
    if m.starts_with('/') {
        m.to_owned()
    } else {
        format!("/dev/disk/by-partlabel/disk-{m}-zfs")
    }
}

fn check_topology(layout: &Layout, z: &Zpool, t: &Topology) -> Result<(), LayoutError> {
    let members: Vec<(String, Vec<String>)> = layout
        .members(&VolumeRef {
            kind: VolumeKind::Zpool,
            name: z.name.clone(),
        })
        .into_iter()
        .map(|(_, c)| {
            let Content::Zfs(m) = c else { unreachable!() };
            (m.path.clone(), zfs_member_names(layout, &m.path))
        })
        .collect();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    let mut entries: Vec<(String, String)> = Vec::new();
    for v in t
        .vdev
        .iter()
        .chain(&t.log)
        .chain(&t.dedup)
        .chain(&t.special)
    {
        for (i, m) in v.members.iter().enumerate() {
            entries.push((m.clone(), format!("{}.members.{i}", v.path)));
        }
    }
    let tp = format!("{}.mode.topology", z.path);
    for (k, list) in [("spare", &t.spare), ("cache", &t.cache)] {
        for (i, m) in list.iter().enumerate() {
            entries.push((m.clone(), format!("{tp}.{k}.{i}")));
        }
    }
    for (m, field) in entries {
        let want = topology_path(&m);
        let Some((member, _)) = members.iter().find(|(_, names)| names.contains(&want)) else {
            return err(
                &field,
                format!(
                    "{m:?} names no member of pool {:?}: a name means the disk's partition labelled \
                     \"disk-{m}-zfs\" (a partition `zfs` with content {{ type = \"zfs\"; pool = \"{}\"; }}); \
                     the pool's members are {}",
                    z.name,
                    z.name,
                    members
                        .iter()
                        .map(|(_, n)| n.first().cloned().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        if let Some(first) = used.insert(member.clone(), field.clone()) {
            return err(
                &field,
                format!(
                    "{m:?} is already in the topology at {first}: a device belongs to one vdev"
                ),
            );
        }
    }
    if let Some((missing, names)) = members.iter().find(|(p, _)| !used.contains_key(p)) {
        return err(
            &tp,
            format!(
                "the pool member {} ({missing}) is in no vdev: disko refuses a pool whose topology \
                 leaves out a member (add it to a vdev, spare or cache)",
                names.first().cloned().unwrap_or_default()
            ),
        );
    }
    Ok(())
}

/// The member content paths of each topology entry, in topology order, for the planner.
pub fn topology_members(layout: &Layout, z: &Zpool, names: &[String]) -> Vec<String> {
    let members: Vec<(String, Vec<String>)> = layout
        .members(&VolumeRef {
            kind: VolumeKind::Zpool,
            name: z.name.clone(),
        })
        .into_iter()
        .filter_map(|(_, c)| match c {
            Content::Zfs(m) => Some((m.path.clone(), zfs_member_names(layout, &m.path))),
            _ => None,
        })
        .collect();
    names
        .iter()
        .filter_map(|m| {
            let want = topology_path(m);
            members
                .iter()
                .find(|(_, n)| n.contains(&want))
                .map(|(p, _)| p.clone())
        })
        .collect()
}

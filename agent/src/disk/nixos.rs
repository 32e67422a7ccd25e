//! What the installed NixOS needs to find its disks: `fileSystems`,
//! `swapDevices`, `boot.initrd.luks.devices` (and `boot.loader.grub.devices`
//! when there is a BIOS boot partition, `boot.resumeDevice` for a resume
//! swap) — the same options disko's NixOS module derives from the layout
//! (disko lib/types/*.nix `_config`) — and what the volumes need to be
//! assembled at boot: `boot.swraid` (md arrays), `services.lvm.boot.thin`
//! and the device-mapper modules (LVM), `boot.supportedFilesystems` and
//! `networking.hostId` (ZFS, bcachefs, f2fs), the initrd kernel modules.
//! Emitted as a Nix expression and as JSON of the same shape.
//!
//! LUKS at boot ([`LuksUnlock`], docs/disks.md "Unlocking at boot"): the
//! layout's key (`passwordFile`, `settings.keyFile`) is what the installer
//! formats with. With `initrd_key` the installed initrd gets its own copy: the
//! configure step writes it to [`initrd_key_path`] in the target (0400) and
//! `boot.initrd.secrets` appends it to the initrd, whose
//! `boot.initrd.luks.devices.NAME.keyFile` names it. With `tpm2` the agent
//! enrols the machine's TPM2 ([`super::plan::Op::Tpm2Enroll`]) and the
//! installed initrd is systemd's (`boot.initrd.systemd.enable`), which
//! unseals it (`crypttabExtraOpts = [ "tpm2-device=auto" ]`): no key on the
//! target. Nothing emitted here names a path only the installer has.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use landfall_proto::LuksUnlock;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::layout::{Content, DatasetKind, KeySource, Layout, Luks, TableKind};

/// Layout content (by its field path) -> the device the installed system
/// names it by (disko's `device` of that content).
pub type Sites = BTreeMap<String, String>;

/// Where the installed system keeps the LUKS keys its initrd is given.
pub const INITRD_KEY_DIR: &str = "/etc/secrets/initrd";

/// The key file of LUKS mapping `name` in the target and in its initrd.
pub fn initrd_key_path(name: &str) -> String {
    format!("{INITRD_KEY_DIR}/luks-{name}.key")
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NixosConfig {
    /// mountpoint -> { device, fsType, options }
    pub file_systems: BTreeMap<String, Value>,
    pub swap_devices: Vec<Value>,
    /// name -> { device, ...settings }
    pub luks_devices: BTreeMap<String, Value>,
    pub grub_devices: Vec<String>,
    pub resume_device: Option<String>,
    /// Key files the installed initrd reads (`boot.initrd.secrets`): path in
    /// the target -> the layout's key, whose bytes the configure step writes.
    pub initrd_keys: BTreeMap<String, KeySource>,
    /// `boot.initrd.systemd.enable = true` (`luks_unlock = tpm2`: only
    /// systemd's stage 1 reads `crypttabExtraOpts` and has the TPM2 token plugin).
    pub systemd_initrd: bool,
    /// `boot.swraid.enable = true` and this `boot.swraid.mdadmConf` (md arrays).
    pub swraid: Option<String>,
    /// `services.lvm.boot.thin.enable` (a thin pool).
    pub lvm_thin: bool,
    /// `boot.initrd.services.lvm.enable` (a volume group: LVM in the systemd stage 1).
    pub lvm: bool,
    /// `boot.supportedFilesystems` the layout needs beyond what `fileSystems`
    /// implies for the initrd: zfs, bcachefs, f2fs.
    pub supported_filesystems: BTreeSet<String>,
    /// `boot.initrd.kernelModules`: md personalities, device-mapper targets, f2fs.
    pub initrd_kernel_modules: BTreeSet<String>,
    /// `networking.hostId` (ZFS asserts it is set): 8 hex digits, see [`host_id_for`].
    pub host_id: Option<String>,
    /// The layout has a ZFS pool: the configuration needs [`NixosConfig::host_id`].
    pub needs_host_id: bool,
    /// LUKS mapping name -> the device it is opened from, as the installed
    /// system names it (for `boot.initrd.luks.devices.NAME.device`).
    pub luks_sources: BTreeMap<String, String>,
}

/// `networking.hostId` for a machine: the first 8 hex digits of
/// sha256("landfall networking.hostId\n" + machine), so the same machine
/// (its hostname in the fleet) gets the same id at every reinstall and two
/// machines of the fleet do not share one.
pub fn host_id_for(machine: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("landfall networking.hostId\n{machine}").as_bytes());
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Settings that name a key file for the initrd: with `tpm2` the installed
/// system has none (the layout's key is for formatting and recovery only).
const KEY_FILE_SETTINGS: &[&str] = &["keyFile", "keyFileSize", "keyFileOffset", "keyFileTimeout"];

impl Serialize for NixosConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl NixosConfig {
    /// The NixOS option tree as JSON (`fileSystems`, `swapDevices`, `boot...`).
    pub fn to_json(&self) -> Value {
        let mut top = Map::new();
        top.insert("fileSystems".into(), json!(self.file_systems));
        top.insert("swapDevices".into(), json!(self.swap_devices));
        let mut boot = Map::new();
        let mut initrd = Map::new();
        if !self.luks_devices.is_empty() {
            initrd.insert("luks".into(), json!({"devices": self.luks_devices}));
        }
        if self.systemd_initrd {
            initrd.insert("systemd".into(), json!({"enable": true}));
        }
        if !self.initrd_kernel_modules.is_empty() {
            initrd.insert("kernelModules".into(), json!(self.initrd_kernel_modules));
        }
        if self.lvm {
            initrd.insert("services".into(), json!({"lvm": {"enable": true}}));
        }
        if !self.initrd_keys.is_empty() {
            // null: the file at the same path on the system the bootloader is
            // installed from (nixos-install's chroot: the target).
            let secrets: Map<String, Value> = self
                .initrd_keys
                .keys()
                .map(|p| (p.clone(), Value::Null))
                .collect();
            initrd.insert("secrets".into(), Value::Object(secrets));
        }
        if !initrd.is_empty() {
            boot.insert("initrd".into(), Value::Object(initrd));
        }
        if !self.grub_devices.is_empty() {
            boot.insert(
                "loader".into(),
                json!({"grub": {"devices": self.grub_devices}}),
            );
        }
        if let Some(r) = &self.resume_device {
            boot.insert("resumeDevice".into(), json!(r));
        }
        if let Some(conf) = &self.swraid {
            boot.insert("swraid".into(), json!({"enable": true, "mdadmConf": conf}));
        }
        if !self.supported_filesystems.is_empty() {
            boot.insert(
                "supportedFilesystems".into(),
                json!(self.supported_filesystems),
            );
        }
        if !boot.is_empty() {
            top.insert("boot".into(), Value::Object(boot));
        }
        if self.lvm_thin {
            top.insert(
                "services".into(),
                json!({"lvm": {"boot": {"thin": {"enable": true}}}}),
            );
        }
        if let Some(h) = &self.host_id {
            top.insert("networking".into(), json!({ "hostId": h }));
        }
        Value::Object(top)
    }

    /// The same as a Nix expression: a NixOS module body.
    pub fn to_nix(&self) -> String {
        let mut out = String::new();
        render(&self.to_json(), 0, &mut out);
        out.push('\n');
        out
    }

    /// The same as `name = value;` lines, for the inside of a module (the
    /// generated `hardware-configuration.nix`). `boot`, `services` and
    /// `networking` are written as dotted paths down to their options
    /// (`boot.initrd.luks.devices = ...;`), so the module may set other
    /// options of them beside these.
    pub fn to_nix_attrs(&self) -> String {
        fn flat(path: &str, v: &Value, out: &mut String) {
            match v {
                Value::Object(o) if !path.ends_with(".devices") => {
                    for (k, x) in o {
                        flat(&format!("{path}.{}", nix_attr(k)), x, out);
                    }
                }
                v => {
                    out.push_str(path);
                    out.push_str(" = ");
                    render(v, 0, out);
                    out.push_str(";\n");
                }
            }
        }
        let mut out = String::new();
        if let Value::Object(top) = self.to_json() {
            for (k, v) in &top {
                if ["boot", "services", "networking"].contains(&k.as_str()) {
                    flat(k, v, &mut out);
                } else {
                    out.push_str(&nix_attr(k));
                    out.push_str(" = ");
                    render(v, 0, &mut out);
                    out.push_str(";\n");
                }
            }
        }
        out
    }
}

/// Derive the configuration from the layout. `sites` names each content's
/// device as the installed system sees it (from the plan); `disk_device`
/// gives the device of a layout disk as the installed system should name
/// it (by-id when known). LUKS volumes get the default [`LuksUnlock`]; see
/// [`NixosConfig::set_luks_unlock`].
pub fn derive(
    layout: &Layout,
    sites: &Sites,
    disk_device: impl Fn(&str) -> Option<String>,
) -> NixosConfig {
    let mut c = NixosConfig::default();
    let site = |path: &str| sites.get(path).cloned().unwrap_or_default();
    for (_, content) in layout.all_contents() {
        content_config(content, &site, &mut c);
    }
    for (name, d) in &layout.disks {
        // gpt.nix: a disk with an EF02 partition is a GRUB (BIOS) install target.
        if d.table().is_some_and(|t| t.kind == TableKind::Gpt)
            && d.partitions().iter().any(|p| p.type_code == "EF02")
        {
            if let Some(dev) = disk_device(name) {
                c.grub_devices.push(dev);
            }
        }
    }
    // mdadm.nix: `boot.swraid.enable`; the arrays by name (`--homehost=any`
    // makes them "any:NAME"), and MAILADDR so mdadm's monitor runs.
    if !layout.mdadm.is_empty() {
        let mut conf = String::new();
        for m in layout.mdadm.values() {
            conf.push_str(&format!("ARRAY {}", m.device()));
            if m.metadata != "default" {
                conf.push_str(&format!(" metadata={}", m.metadata));
            }
            conf.push_str(&format!(" name=any:{}\n", m.name));
            c.initrd_kernel_modules.insert(
                match m.level {
                    0 => "raid0",
                    1 => "raid1",
                    10 => "raid10",
                    _ => "raid456",
                }
                .to_owned(),
            );
        }
        conf.push_str("MAILADDR root\n");
        c.swraid = Some(conf);
    }
    // lvm_vg.nix `_config`: dm-snapshot, and the target of each lvm_type
    // (the kernel module names: dm-thin-pool, dm-mirror, dm-raid with its md personality).
    for g in layout.lvm_vg.values() {
        c.lvm = true;
        c.initrd_kernel_modules.insert("dm-snapshot".into());
        for lv in &g.lvs {
            let mods: &[&str] = match lv.lvm_type.as_deref() {
                Some("thin-pool") | Some("thinlv") => {
                    c.lvm_thin = true;
                    &["dm-thin-pool"]
                }
                Some("mirror") => &["dm-mirror"],
                Some("raid0") => &["dm-raid", "raid0"],
                Some("raid1") => &["dm-raid", "raid1"],
                Some("raid4" | "raid5" | "raid6") => &["dm-raid", "raid456"],
                _ => &[],
            };
            c.initrd_kernel_modules
                .extend(mods.iter().map(|m| (*m).to_owned()));
        }
    }
    for z in layout.zpool.values() {
        c.supported_filesystems.insert("zfs".into());
        c.needs_host_id = true;
        zfs_config(
            &z.name,
            z.mountpoint.as_deref(),
            &z.root_fs_options,
            &z.mount_options,
            &mut c,
        );
        for d in &z.datasets {
            if let DatasetKind::ZfsFs { mountpoint } = &d.kind {
                zfs_config(
                    &d.full_name(&z.name),
                    mountpoint.as_deref(),
                    &d.options,
                    &d.mount_options,
                    &mut c,
                );
            }
        }
    }
    // bcachefs_filesystem.nix `_config`.
    for b in layout.bcachefs.values() {
        c.supported_filesystems.insert("bcachefs".into());
        let device = format!("/dev/disk/by-uuid/{}", b.uuid);
        for (m, o) in b.mounts() {
            c.file_systems.insert(
                m,
                json!({"device": device, "fsType": "bcachefs", "options": o, "neededForBoot": true}),
            );
        }
    }
    for n in layout.nodev.values() {
        c.file_systems.insert(
            n.mountpoint.clone(),
            json!({"device": n.device, "fsType": n.fs_type, "options": n.mount_options}),
        );
    }
    c.set_luks_unlock(layout, LuksUnlock::default())
        .expect("the default unlock method is known");
    c
}

/// zfs_fs.nix `_config`: `fileSystems` for a dataset with a mountpoint, as
/// [`super::layout::zfs_mount_options`] says.
fn zfs_config(
    name: &str,
    mountpoint: Option<&str>,
    options: &BTreeMap<String, String>,
    mount_options: &[String],
    c: &mut NixosConfig,
) {
    if let (Some(m), Some(o)) = (
        mountpoint,
        super::layout::zfs_mount_options(options, mount_options),
    ) {
        c.file_systems.insert(
            m.to_owned(),
            json!({"device": name, "fsType": "zfs", "options": o}),
        );
    }
}

impl NixosConfig {
    /// (Re)write `boot.initrd.luks.devices` and the initrd's key files for
    /// `unlock`. Refuses an unlock method this agent does not know before any
    /// disk is touched.
    pub fn set_luks_unlock(&mut self, layout: &Layout, unlock: LuksUnlock) -> Result<()> {
        if unlock == LuksUnlock::Unknown {
            bail!(
                "the assignment's luks_unlock is a method this agent does not know \
                 (it knows initrd_key, prompt and tpm2): boot an installer image as new as the server"
            );
        }
        self.luks_devices.clear();
        self.initrd_keys.clear();
        self.systemd_initrd = false;
        let mut luks: Vec<(&Luks, String)> = Vec::new();
        for (_, c) in layout.all_contents() {
            if let Content::Luks(l) = c {
                let device = self.luks_sources.get(&l.name).cloned().unwrap_or_default();
                luks.push((l, device));
            }
        }
        for (l, device) in luks {
            if !l.initrd_unlock {
                continue;
            }
            // disko lib/types/luks.nix `_config`: { device } // settings.
            let mut v = Map::new();
            v.insert("device".into(), json!(device));
            for (k, val) in &l.settings {
                v.insert(k.clone(), val.clone());
            }
            if unlock == LuksUnlock::Tpm2 {
                // nixpkgs luksroot.nix: with systemd stage 1 `fallbackToPassword`
                // must not be set (an assertion; the prompt is implied).
                if l.settings.contains_key("fallbackToPassword") {
                    bail!(
                        "LUKS {}: settings.fallbackToPassword cannot be used with luks_unlock = \"tpm2\" \
                         (the systemd initrd asserts against it and asks for the passphrase \
                         anyway when the TPM does not unseal): remove it from the layout",
                        l.name
                    );
                }
                for k in KEY_FILE_SETTINGS {
                    v.remove(*k);
                }
                v.insert("crypttabExtraOpts".into(), json!(["tpm2-device=auto"]));
                self.systemd_initrd = true;
            }
            if unlock == LuksUnlock::InitrdKey {
                // The layout's own settings.keyFile when it names one (the
                // parser refused installer-only paths), so disko's module and
                // this file agree; else landfall's path.
                let path = match &l.key {
                    KeySource::KeyFile(k) if l.settings.contains_key("keyFile") => k.clone(),
                    _ => initrd_key_path(&l.name),
                };
                v.insert("keyFile".into(), json!(path));
                self.initrd_keys.insert(path, l.key.clone());
            }
            self.luks_devices.insert(l.name.clone(), Value::Object(v));
        }
        Ok(())
    }
}

/// `/dev/disk/by-partlabel/LABEL` with LABEL escaped as udev names the
/// link (disko: `diskoLib.hexEscapeUdevSymlink`).
pub fn by_partlabel(label: &str) -> String {
    format!(
        "/dev/disk/by-partlabel/{}",
        crate::hw::udev_symlink_escape(label)
    )
}

/// One content's options (the walk visits nested contents itself).
fn content_config(content: &Content, site: &dyn Fn(&str) -> String, c: &mut NixosConfig) {
    match content {
        Content::Filesystem(f) => {
            let device = site(&f.path);
            if f.format == "f2fs" {
                c.supported_filesystems.insert("f2fs".into());
                c.initrd_kernel_modules.insert("f2fs".into());
            }
            if let Some(m) = &f.mountpoint {
                c.file_systems.insert(
                    m.clone(),
                    json!({"device": device, "fsType": f.format, "options": f.mount_options}),
                );
            }
            for s in &f.subvolumes {
                if let Some(m) = &s.mountpoint {
                    let mut options = s.mount_options.clone();
                    options.push(format!("subvol={}", s.name));
                    c.file_systems.insert(
                        m.clone(),
                        json!({"device": device, "fsType": "btrfs", "options": options}),
                    );
                }
            }
            // btrfs.nix `swapConfig`: swap files below their mountpoint.
            let files = f.swap.iter().map(|s| (f.mountpoint.as_deref(), s)).chain(
                f.subvolumes
                    .iter()
                    .flat_map(|v| v.swap.iter().map(move |s| (v.mountpoint.as_deref(), s))),
            );
            for (mp, s) in files {
                let Some(mp) = mp else { continue };
                let mut v = Map::new();
                v.insert(
                    "device".into(),
                    json!(format!("{}/{}", mp.trim_end_matches('/'), s.path)),
                );
                if let Some(p) = s.priority {
                    v.insert("priority".into(), json!(p));
                }
                v.insert("options".into(), json!(s.options));
                c.swap_devices.push(Value::Object(v));
            }
        }
        Content::Swap(s) => {
            let device = site(&s.path);
            // lib/types/swap.nix `_config`.
            let mut v = Map::new();
            v.insert("device".into(), json!(device));
            v.insert(
                "randomEncryption".into(),
                json!({"enable": s.random_encryption, "allowDiscards": s.discard_policy.is_some()}),
            );
            v.insert("options".into(), json!(s.mount_options));
            if let Some(p) = s.priority {
                v.insert("priority".into(), json!(p));
            }
            if let Some(d) = &s.discard_policy {
                v.insert("discardPolicy".into(), json!(d));
            }
            c.swap_devices.push(Value::Object(v));
            if s.resume_device {
                c.resume_device = Some(device);
            }
        }
        Content::Luks(l) => {
            // boot.initrd.luks.devices: NixosConfig::set_luks_unlock.
            c.luks_sources.insert(l.name.clone(), site(&l.path));
        }
        _ => {}
    }
}

fn render(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent + 1);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&nix_string(s)),
        Value::Array(a) if a.is_empty() => out.push_str("[ ]"),
        Value::Array(a) => {
            let simple = a.iter().all(|x| !x.is_object() && !x.is_array());
            if simple {
                out.push_str("[ ");
                for x in a {
                    render(x, indent, out);
                    out.push(' ');
                }
                out.push(']');
            } else {
                out.push_str("[\n");
                for x in a {
                    out.push_str(&pad);
                    render(x, indent + 1, out);
                    out.push('\n');
                }
                out.push_str(&"  ".repeat(indent));
                out.push(']');
            }
        }
        Value::Object(o) if o.is_empty() => out.push_str("{ }"),
        Value::Object(o) => {
            out.push_str("{\n");
            for (k, x) in o {
                out.push_str(&pad);
                out.push_str(&nix_attr(k));
                out.push_str(" = ");
                render(x, indent + 1, out);
                out.push_str(";\n");
            }
            out.push_str(&"  ".repeat(indent));
            out.push('}');
        }
    }
}

fn nix_attr(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'\'')
        && (k.as_bytes()[0].is_ascii_alphabetic() || k.as_bytes()[0] == b'_');
    if plain {
        k.to_owned()
    } else {
        nix_string(k)
    }
}

/// A Nix double-quoted string: `"`, `\` and `${` escaped.
pub fn nix_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => o.push_str("\\$"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(nix_string(r#"a"b\c${d}$e"#), r#""a\"b\\c\${d}$e""#);
        assert_eq!(nix_attr("/home"), "\"/home\"");
        assert_eq!(nix_attr("fileSystems"), "fileSystems");
    }
}

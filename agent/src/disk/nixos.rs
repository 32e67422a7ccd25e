//! What the installed NixOS needs to find its disks: `fileSystems`,
//! `swapDevices`, `boot.initrd.luks.devices` (and `boot.loader.grub.devices`
//! when there is a BIOS boot partition, `boot.resumeDevice` for a resume
//! swap) — the same options disko's NixOS module derives from the layout
//! (disko lib/types/{filesystem,btrfs,swap,luks,nodev,gpt}.nix `_config`).
//! Emitted as a Nix expression and as JSON of the same shape.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::layout::{Content, Layout};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NixosConfig {
    /// mountpoint -> { device, fsType, options }
    pub file_systems: BTreeMap<String, Value>,
    pub swap_devices: Vec<Value>,
    /// name -> { device, ...settings }
    pub luks_devices: BTreeMap<String, Value>,
    pub grub_devices: Vec<String>,
    pub resume_device: Option<String>,
}

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
        if !self.luks_devices.is_empty() {
            boot.insert(
                "initrd".into(),
                json!({"luks": {"devices": self.luks_devices}}),
            );
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
        if !boot.is_empty() {
            top.insert("boot".into(), Value::Object(boot));
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
    /// generated `hardware-configuration.nix`). `boot` is written as dotted
    /// paths down to its options (`boot.initrd.luks.devices = ...;`), so the
    /// module may set other `boot.*` options beside it.
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
                if k == "boot" {
                    flat("boot", v, &mut out);
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

/// Derive the configuration from the layout. `disk_device` gives the device
/// of a layout disk as the installed system should name it (by-id when known).
pub fn derive(layout: &Layout, disk_device: impl Fn(&str) -> Option<String>) -> NixosConfig {
    let mut c = NixosConfig::default();
    for (name, d) in &layout.disks {
        for p in &d.partitions {
            let device = by_partlabel(&p.label);
            if let Some(content) = &p.content {
                content_config(content, &device, &mut c);
            }
        }
        // gpt.nix: a disk with an EF02 partition is a GRUB (BIOS) install target.
        if d.partitions.iter().any(|p| p.type_code == "EF02") {
            if let Some(dev) = disk_device(name) {
                c.grub_devices.push(dev);
            }
        }
    }
    for n in layout.nodev.values() {
        c.file_systems.insert(
            n.mountpoint.clone(),
            json!({"device": n.device, "fsType": n.fs_type, "options": n.mount_options}),
        );
    }
    c
}

/// `/dev/disk/by-partlabel/LABEL` with LABEL escaped as udev names the
/// link (disko: `diskoLib.hexEscapeUdevSymlink`).
pub fn by_partlabel(label: &str) -> String {
    format!(
        "/dev/disk/by-partlabel/{}",
        crate::hw::udev_symlink_escape(label)
    )
}

fn content_config(content: &Content, device: &str, c: &mut NixosConfig) {
    match content {
        Content::Filesystem(f) => {
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
        }
        Content::Swap(s) => {
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
                c.resume_device = Some(device.to_owned());
            }
        }
        Content::Luks(l) => {
            if l.initrd_unlock {
                let mut v = Map::new();
                v.insert("device".into(), json!(device));
                for (k, val) in &l.settings {
                    v.insert(k.clone(), val.clone());
                }
                c.luks_devices.insert(l.name.clone(), Value::Object(v));
            }
            if let Some(inner) = &l.content {
                content_config(inner, &format!("/dev/mapper/{}", l.name), c);
            }
        }
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

//! The configure step's files: what the target's `/etc/nixos` and
//! `/etc/landfall` hold before `nixos-install` runs (docs/install.md).
//!
//! - `etc/nixos/hardware-configuration.nix`: [`HwConfig`] from the inventory,
//!   the bootloader for the firmware, and the disk step's `fileSystems` /
//!   `swapDevices` / `boot.initrd.luks.devices`.
//! - `etc/nixos/landfall-inventory.json`: the inventory the file came from.
//! - `etc/nixos/flake.nix`: when the install target names a flake
//!   (`REF#HOST`), a flake whose `nixosConfigurations.HOST` is the fleet's
//!   configuration extended with the hardware file; `nixos-install --flake
//!   /mnt/etc/nixos#HOST` installs it, and `nixos-rebuild` uses it later.
//! - `etc/landfall/verify.json` (0600): first-boot verify ([`super::verify`]).
//!
//! Building the text is pure ([`TargetFiles::build`]); writing it is
//! [`TargetFiles::write`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use landfall_proto::{Assignment, Inventory};

use super::hwconfig::{Bootloader, HwConfig};
use super::nixstr::quote;
use crate::disk::nixos::host_id_for;
use crate::disk::NixosConfig;

pub const HARDWARE_FILE: &str = "/etc/nixos/hardware-configuration.nix";
pub const INVENTORY_FILE: &str = "/etc/nixos/landfall-inventory.json";
pub const FLAKE_FILE: &str = "/etc/nixos/flake.nix";
/// The flake `nixos-install --flake` is given, inside the target.
pub const FLAKE_DIR: &str = "/etc/nixos";

/// A flake reference split at its `#`: `git+https://g/fleet` and `ws-01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakeRef {
    pub url: String,
    /// The `nixosConfigurations` attribute (the text after `#`).
    pub host: String,
}

impl FlakeRef {
    /// Parse `REF#HOST`. `HOST` may be written `nixosConfigurations.HOST`.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((url, attr)) = s.rsplit_once('#') else {
            bail!(
                "install flake {s:?} has no #HOST: write the flake reference and the \
                 configuration's name, e.g. \"git+https://git.lan/fleet#ws-01\""
            );
        };
        let host = attr.strip_prefix("nixosConfigurations.").unwrap_or(attr);
        if url.is_empty() || host.is_empty() || host.contains(['.', '"', '$', '\\']) {
            bail!(
                "install flake {s:?}: expected REF#HOST with a non-empty reference and a plain \
                 configuration name after #, e.g. \"git+https://git.lan/fleet#ws-01\""
            );
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
        })
    }
}

/// The generated files, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFiles {
    pub hardware: String,
    pub inventory_json: String,
    /// `None` when the assignment names no flake (a prebuilt system without one).
    pub flake: Option<String>,
}

impl TargetFiles {
    /// Pure: the files for this machine, its disk step's result and assignment.
    pub fn build(inv: &Inventory, storage: &NixosConfig, assignment: &Assignment) -> Result<Self> {
        let flake = match assignment.install.as_ref().and_then(|t| t.flake()) {
            Some(f) => Some(flake_file(&FlakeRef::parse(f)?)),
            None => None,
        };
        // networking.hostId (ZFS): from the machine's name in the fleet.
        let mut storage = storage.clone();
        if storage.needs_host_id && storage.host_id.is_none() {
            storage.host_id = Some(host_id_for(&assignment.hostname));
        }
        Ok(Self {
            hardware: hardware_file(inv, &storage),
            inventory_json: serde_json::to_string_pretty(inv)? + "\n",
            flake,
        })
    }

    /// Write them under `root` (0644, atomically); returns the paths written.
    pub fn write(&self, root: &Path) -> Result<Vec<PathBuf>> {
        use crate::secrets::place::write_target_file;
        let mut written = vec![
            write_target_file(root, HARDWARE_FILE, self.hardware.as_bytes(), 0o644)?,
            write_target_file(root, INVENTORY_FILE, self.inventory_json.as_bytes(), 0o644)?,
        ];
        if let Some(f) = &self.flake {
            written.push(write_target_file(root, FLAKE_FILE, f.as_bytes(), 0o644)?);
        }
        Ok(written)
    }
}

/// `hardware-configuration.nix`: the inventory's modules, the bootloader for
/// the firmware (GRUB on the disk the layout gave a BIOS boot partition, by
/// id), and the disk step's storage options.
pub fn hardware_file(inv: &Inventory, storage: &NixosConfig) -> String {
    let mut storage = storage.clone();
    // A pool needs networking.hostId: the machine's name when the caller
    // gave none (the CLI: this machine's hostname).
    if storage.needs_host_id && storage.host_id.is_none() {
        storage.host_id = Some(host_id_for(inv.hostname.as_deref().unwrap_or("nixos")));
    }
    // boot.initrd.kernelModules is the hardware file's own line: the
    // storage's modules go there, not in a second definition.
    let initrd_modules: Vec<String> = std::mem::take(&mut storage.initrd_kernel_modules)
        .into_iter()
        .collect();
    // The first GRUB device becomes `boot.loader.grub.device`; more (mirrored
    // BIOS boot partitions) stay in `boot.loader.grub.devices`.
    let grub_disk = (!storage.grub_devices.is_empty()).then(|| storage.grub_devices.remove(0));
    let bootloader = Bootloader::for_machine(inv, grub_disk.as_deref());
    let mut hw = HwConfig::from_inventory(inv, bootloader, storage.to_nix_attrs());
    hw.initrd_kernel_modules = initrd_modules;
    hw.render()
}

/// `flake.nix` for `/etc/nixos` of the installed machine.
pub fn flake_file(r: &FlakeRef) -> String {
    format!(
        r#"# Generated by landfall-agent at install time: the fleet's configuration for
# this machine plus the hardware file generated from its inventory.
#   nixos-rebuild switch --flake /etc/nixos#{host}
{{
  inputs.fleet.url = {url};

  outputs = {{ fleet, ... }}: {{
    nixosConfigurations.{attr} = fleet.nixosConfigurations.{attr}.extendModules {{
      modules = [ ./hardware-configuration.nix ];
    }};
  }};
}}
"#,
        host = r.host,
        url = quote(&r.url),
        attr = quote(&r.host),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::inventory::FirmwareMode;
    use landfall_proto::InstallTarget;
    use serde_json::json;

    #[test]
    fn flake_refs_need_a_host() {
        let r = FlakeRef::parse("git+https://g/fleet?ref=main#ws-01").unwrap();
        assert_eq!(
            (r.url.as_str(), r.host.as_str()),
            ("git+https://g/fleet?ref=main", "ws-01")
        );
        let r = FlakeRef::parse("path:/srv/f#nixosConfigurations.db").unwrap();
        assert_eq!(r.host, "db");
        for bad in ["git+https://g/fleet", "#ws", "g#", "g#a.b", "g#a\"b"] {
            let e = FlakeRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("REF#HOST") || e.contains("#HOST"), "{bad}: {e}");
        }
    }

    #[test]
    fn grub_goes_to_the_layouts_bios_boot_disk_once() {
        let mut inv = Inventory::default();
        inv.firmware.mode = FirmwareMode::Bios;
        let storage = NixosConfig {
            file_systems: [(
                "/".to_owned(),
                json!({"device": "/dev/disk/by-partlabel/disk-main-root", "fsType": "ext4", "options": ["defaults"]}),
            )]
            .into(),
            grub_devices: vec!["/dev/disk/by-id/virtio-A".into(), "/dev/disk/by-id/virtio-B".into()],
            ..Default::default()
        };
        let text = hardware_file(&inv, &storage);
        assert!(
            text.contains(r#"boot.loader.grub.device = "/dev/disk/by-id/virtio-A";"#),
            "{text}"
        );
        assert!(
            text.contains(r#"devices = [ "/dev/disk/by-id/virtio-B" ]"#),
            "{text}"
        );
        assert_eq!(text.matches("virtio-A").count(), 1, "{text}");
        assert!(
            text.contains(r#"fileSystems = {"#) || text.contains(r#"fileSystems."/""#),
            "{text}"
        );
    }

    #[test]
    fn files_follow_the_install_target() {
        let inv = Inventory::default();
        let mut a: Assignment =
            serde_json::from_value(json!({"hostname": "ws-01", "role": "ws"})).unwrap();
        let f = TargetFiles::build(&inv, &NixosConfig::default(), &a).unwrap();
        assert!(f.flake.is_none());
        a.install = Some(InstallTarget::Flake {
            flake: "git+https://g/fleet#ws-01".into(),
        });
        let f = TargetFiles::build(&inv, &NixosConfig::default(), &a).unwrap();
        let flake = f.flake.unwrap();
        assert!(
            flake.contains(r#"inputs.fleet.url = "git+https://g/fleet";"#),
            "{flake}"
        );
        assert!(
            flake.contains(
                r#"nixosConfigurations."ws-01" = fleet.nixosConfigurations."ws-01".extendModules"#
            ),
            "{flake}"
        );
        a.install = Some(InstallTarget::Flake {
            flake: "no-host".into(),
        });
        assert!(TargetFiles::build(&inv, &NixosConfig::default(), &a).is_err());
    }
}

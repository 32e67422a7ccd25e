//! `hardware-configuration.nix` from the inventory, following the rules of
//! nixpkgs' `nixos/modules/installer/tools/nixos-generate-config.pl`, but from
//! the inventory the agent already has (no second scan of the machine), with
//! the file systems from the disk step and the bootloader for the firmware.
//!
//! Rules taken from nixos-generate-config:
//! - `boot.initrd.availableKernelModules`: the module of every PCI function of
//!   class mass storage (0x01), FireWire (0x0c00) or USB controller (0x0c03);
//!   virtio-scsi (1af4:1004) explicitly; USB interfaces of class mass storage
//!   (08) or keyboard (03, protocol 01); and the driver module of every disk.
//! - `boot.kernelModules`: kvm-intel / kvm-amd when the CPU has vmx / svm.
//! - microcode updates by CPU vendor; guest profiles by virtualization
//!   (qemu/kvm/bochs -> `profiles/qemu-guest.nix`, oracle, microsoft); bare
//!   metal imports `installer/scan/not-detected.nix`.

use landfall_proto::inventory::FirmwareMode;
use landfall_proto::Inventory;

use super::nixstr::{list, quote};

/// How the installed machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootloader {
    /// UEFI: systemd-boot on the ESP mounted at /boot.
    SystemdBoot,
    /// BIOS: GRUB in the MBR/BIOS boot partition of this disk (a stable by-id path).
    Grub { device: String },
}

impl Bootloader {
    /// systemd-boot on UEFI; GRUB on BIOS, on `boot_disk` (by-id) or else the
    /// first disk of the inventory.
    pub fn for_machine(inv: &Inventory, boot_disk: Option<&str>) -> Self {
        match inv.firmware.mode {
            FirmwareMode::Uefi => Self::SystemdBoot,
            _ => Self::Grub {
                device: boot_disk
                    .map(str::to_owned)
                    .or_else(|| {
                        inv.disks
                            .first()
                            .map(|d| d.by_id.clone().unwrap_or_else(|| d.path.clone()))
                    })
                    .unwrap_or_else(|| "nodev".to_owned()),
            },
        }
    }
}

/// The generated file, as values (printable, testable) before it is text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwConfig {
    /// Nix expressions, e.g. `(modulesPath + "/profiles/qemu-guest.nix")`.
    pub imports: Vec<String>,
    pub initrd_available_kernel_modules: Vec<String>,
    /// `boot.initrd.kernelModules`: what the disks need loaded in stage 1
    /// (md personalities, device-mapper targets, f2fs), from the disk step.
    pub initrd_kernel_modules: Vec<String>,
    pub kernel_modules: Vec<String>,
    /// Further `option = value;` lines.
    pub attrs: Vec<String>,
    pub host_platform: String,
    pub bootloader: Bootloader,
    /// `fileSystems`, `swapDevices`, `boot.initrd.luks.devices` lines from the
    /// disk step (already valid Nix).
    pub storage: String,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

impl HwConfig {
    pub fn from_inventory(inv: &Inventory, bootloader: Bootloader, storage: String) -> Self {
        let mut initrd = Vec::new();
        for d in &inv.pci {
            let class = d.class.trim_start_matches("0x");
            if let Some(m) = &d.module {
                if class.starts_with("01") || class.starts_with("0c00") || class.starts_with("0c03")
                {
                    push_unique(&mut initrd, m);
                }
            }
            if d.vendor == "0x1af4" && d.device == "0x1004" {
                push_unique(&mut initrd, "virtio_scsi");
            }
        }
        for u in &inv.usb {
            if let Some(m) = &u.module {
                if u.class == "08" || (u.class == "03" && u.protocol == "01") {
                    push_unique(&mut initrd, m);
                }
            }
        }
        for d in &inv.disks {
            if let Some(m) = &d.module {
                push_unique(&mut initrd, m);
            }
        }

        let flags = &inv.cpu.virtualization_flags;
        let mut kernel_modules = Vec::new();
        if flags.iter().any(|f| f == "vmx") {
            kernel_modules.push("kvm-intel".to_owned());
        }
        if flags.iter().any(|f| f == "svm") {
            kernel_modules.push("kvm-amd".to_owned());
        }

        let mut attrs = Vec::new();
        match inv.cpu.vendor.as_deref() {
            Some("AuthenticAMD") => attrs.push(
                "hardware.cpu.amd.updateMicrocode = lib.mkDefault config.hardware.enableRedistributableFirmware;".to_owned(),
            ),
            Some("GenuineIntel") => attrs.push(
                "hardware.cpu.intel.updateMicrocode = lib.mkDefault config.hardware.enableRedistributableFirmware;".to_owned(),
            ),
            _ => {}
        }
        let mut imports = Vec::new();
        match inv.virtualization.as_str() {
            "qemu" | "kvm" | "bochs" => {
                imports.push(r#"(modulesPath + "/profiles/qemu-guest.nix")"#.to_owned())
            }
            "oracle" => attrs.push("virtualisation.virtualbox.guest.enable = true;".to_owned()),
            "microsoft" => attrs.push("virtualisation.hypervGuest.enable = true;".to_owned()),
            "none" | "" => {
                imports.push(r#"(modulesPath + "/installer/scan/not-detected.nix")"#.to_owned())
            }
            _ => {}
        }

        Self {
            imports,
            initrd_available_kernel_modules: initrd,
            initrd_kernel_modules: Vec::new(),
            kernel_modules,
            attrs,
            host_platform: inv
                .system
                .clone()
                .unwrap_or_else(|| "x86_64-linux".to_owned()),
            bootloader,
            storage,
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Generated by landfall-agent from this machine's hardware inventory, with the\n\
             # rules of nixos-generate-config. Do not edit: a reinstall rewrites it. Change\n\
             # the fleet's role instead.\n\
             { config, lib, modulesPath, ... }:\n\n{\n",
        );
        s.push_str(
            &format!("  imports = [ {} ];\n\n", self.imports.join(" ")).replace("[  ]", "[ ]"),
        );
        s.push_str(&format!(
            "  boot.initrd.availableKernelModules = {};\n",
            list(&self.initrd_available_kernel_modules)
        ));
        s.push_str(&format!(
            "  boot.initrd.kernelModules = {};\n",
            list(&self.initrd_kernel_modules)
        ));
        s.push_str(&format!(
            "  boot.kernelModules = {};\n",
            list(&self.kernel_modules)
        ));
        s.push_str("  boot.extraModulePackages = [ ];\n\n");
        for l in self.storage.lines() {
            if l.trim().is_empty() {
                s.push('\n');
            } else {
                s.push_str(&format!("  {l}\n"));
            }
        }
        if !self.storage.trim().is_empty() {
            s.push('\n');
        }
        match &self.bootloader {
            Bootloader::SystemdBoot => s.push_str(
                "  boot.loader.systemd-boot.enable = true;\n  boot.loader.efi.canTouchEfiVariables = true;\n",
            ),
            Bootloader::Grub { device } => s.push_str(&format!(
                "  boot.loader.grub.enable = true;\n  boot.loader.grub.device = {};\n",
                quote(device)
            )),
        }
        s.push('\n');
        s.push_str(&format!(
            "  nixpkgs.hostPlatform = lib.mkDefault {};\n",
            quote(&self.host_platform)
        ));
        for a in &self.attrs {
            s.push_str(&format!("  {a}\n"));
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::inventory::{Cpu, Disk, PciDevice, UsbInterface};

    fn pci(class: &str, vendor: &str, device: &str, module: Option<&str>) -> PciDevice {
        PciDevice {
            address: "0000:00:00.0".into(),
            class: class.into(),
            vendor: vendor.into(),
            device: device.into(),
            driver: module.map(Into::into),
            module: module.map(Into::into),
        }
    }

    fn usb(class: &str, protocol: &str, module: &str) -> UsbInterface {
        UsbInterface {
            name: "1-1:1.0".into(),
            class: class.into(),
            subclass: "01".into(),
            protocol: protocol.into(),
            driver: Some(module.into()),
            module: Some(module.into()),
        }
    }

    fn bare_metal() -> Inventory {
        Inventory {
            cpu: Cpu {
                vendor: Some("GenuineIntel".into()),
                virtualization_flags: vec!["vmx".into()],
                ..Default::default()
            },
            pci: vec![
                pci("0x010601", "0x8086", "0xa352", Some("ahci")),
                pci("0x010802", "0x144d", "0xa808", Some("nvme")),
                pci("0x0c0330", "0x8086", "0xa36d", Some("xhci_pci")),
                pci("0x020000", "0x8086", "0x15bc", Some("e1000e")),
                pci("0x030000", "0x8086", "0x3e92", Some("i915")),
                pci("0x010000", "0x1af4", "0x1004", None),
                pci("0x060400", "0x8086", "0xa340", None),
            ],
            usb: vec![
                usb("08", "50", "usb_storage"),
                usb("03", "01", "usbhid"),
                usb("03", "02", "usbhid_mouse"),
            ],
            disks: vec![Disk {
                name: "nvme0n1".into(),
                module: Some("nvme".into()),
                by_id: Some("/dev/disk/by-id/nvme-X_1".into()),
                ..Default::default()
            }],
            virtualization: "none".into(),
            system: Some("x86_64-linux".into()),
            ..Default::default()
        }
    }

    #[test]
    fn modules_follow_nixos_generate_config() {
        let c = HwConfig::from_inventory(&bare_metal(), Bootloader::SystemdBoot, String::new());
        assert_eq!(
            c.initrd_available_kernel_modules,
            [
                "ahci",
                "nvme",
                "xhci_pci",
                "virtio_scsi",
                "usb_storage",
                "usbhid"
            ]
        );
        assert_eq!(c.kernel_modules, ["kvm-intel"]);
        assert!(c.attrs[0].starts_with("hardware.cpu.intel.updateMicrocode"));
        assert_eq!(
            c.imports,
            [r#"(modulesPath + "/installer/scan/not-detected.nix")"#]
        );
    }

    #[test]
    fn bootloader_follows_the_firmware() {
        let mut inv = bare_metal();
        inv.firmware.mode = FirmwareMode::Bios;
        assert_eq!(
            Bootloader::for_machine(&inv, None),
            Bootloader::Grub {
                device: "/dev/disk/by-id/nvme-X_1".into()
            }
        );
        inv.firmware.mode = FirmwareMode::Uefi;
        assert_eq!(Bootloader::for_machine(&inv, None), Bootloader::SystemdBoot);
        let text = HwConfig::from_inventory(
            &inv,
            Bootloader::Grub {
                device: "/dev/disk/by-id/ata-\"evil\"${x}".into(),
            },
            "fileSystems.\"/\" = { device = \"/dev/disk/by-partlabel/disk-main-root\"; fsType = \"ext4\"; };".into(),
        )
        .render();
        assert!(
            text.contains(r#"boot.loader.grub.device = "/dev/disk/by-id/ata-\"evil\"\${x}";"#),
            "{text}"
        );
        assert!(text.contains("  fileSystems.\"/\" = {"), "{text}");
    }
}

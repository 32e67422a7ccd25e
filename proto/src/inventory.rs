//! Hardware inventory, as `landfall-agent detect --json` prints it and `hello` sends it.
//!
//! Everything the agent could not read is `None`/empty, never an error: a
//! machine with an unreadable DMI table still installs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub cpu: Cpu,
    pub memory: Memory,
    pub firmware: Firmware,
    pub dmi: Dmi,
    /// Install-target candidates. Loop, ram, zram, device-mapper and md devices are excluded.
    pub disks: Vec<Disk>,
    /// Physical network interfaces (those with a bus device); lo, bridges, veth, tun are excluded.
    pub nics: Vec<Nic>,
    pub gpus: Vec<Gpu>,
    /// Every PCI function, with the kernel module bound to it (what
    /// nixos-generate-config reads to fill `boot.initrd.availableKernelModules`).
    pub pci: Vec<PciDevice>,
    /// USB interfaces that have a driver bound (keyboards, mass storage, ...).
    pub usb: Vec<UsbInterface>,
    /// Nix system double of the machine, e.g. "x86_64-linux".
    pub system: Option<String>,
    /// "none", "kvm", "qemu", "vmware", "hyperv", "xen", "virtualbox", ... as systemd-detect-virt names them.
    pub virtualization: String,
}

impl Inventory {
    /// The NIC with this MAC (normalised lower-case form).
    pub fn nic_by_mac(&self, mac: &str) -> Option<&Nic> {
        self.nics.iter().find(|n| n.mac.eq_ignore_ascii_case(mac))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub model: Option<String>,
    pub vendor: Option<String>,
    /// Physical cores.
    pub cores: u32,
    /// Logical CPUs (hardware threads).
    pub threads: u32,
    /// Hardware virtualization flags present: "vmx" (Intel VT-x), "svm" (AMD-V).
    pub virtualization_flags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareMode {
    Uefi,
    Bios,
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Firmware {
    pub mode: FirmwareMode,
    /// From the SecureBoot EFI variable; `None` when not UEFI or unreadable.
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dmi {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Nvme,
    Sata,
    Scsi,
    Virtio,
    Usb,
    Mmc,
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Disk {
    /// Kernel name, e.g. "vda", "nvme0n1", "sda".
    pub name: String,
    /// Device node, e.g. "/dev/vda".
    pub path: String,
    pub size_bytes: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub transport: Transport,
    /// Kernel driver of the disk's device (e.g. "virtio_blk", "nvme", "sd").
    pub driver: Option<String>,
    /// Loadable module of that driver, when it is not built in.
    pub module: Option<String>,
    /// Stable path, computed from sysfs the way udev's 60-persistent-storage rules
    /// name it, e.g. "/dev/disk/by-id/virtio-SERIAL", even when udev is absent.
    pub by_id: Option<String>,
    /// "gpt", "dos", or None when blank.
    pub partition_table: Option<String>,
    pub partitions: Vec<Partition>,
    /// Signatures found on the whole device (filesystem, LUKS, RAID/LVM member, ...).
    pub signatures: Vec<Signature>,
}

impl Disk {
    /// True when anything was found on the disk: a table, a partition or a signature.
    pub fn has_data(&self) -> bool {
        self.partition_table.is_some() || !self.partitions.is_empty() || !self.signatures.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Partition {
    pub name: String,
    pub path: String,
    pub number: u32,
    pub start_sector: u64,
    pub size_bytes: u64,
    /// GPT partition name (PARTLABEL).
    pub partlabel: Option<String>,
    /// GPT type GUID or MBR type byte.
    pub parttype: Option<String>,
    pub partuuid: Option<String>,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Signature {
    /// blkid TYPE: "ext4", "vfat", "crypto_LUKS", "LVM2_member", "linux_raid_member", "swap", ...
    #[serde(rename = "type")]
    pub kind: String,
    /// blkid USAGE: "filesystem", "crypto", "raid", "other".
    pub usage: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Nic {
    pub name: String,
    /// Lower-case "aa:bb:cc:dd:ee:ff".
    pub mac: String,
    pub driver: Option<String>,
    pub link_up: bool,
    pub speed_mbps: Option<u32>,
    /// Addresses in CIDR form, e.g. "10.0.2.15/24", "fe80::1/64".
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpu {
    /// PCI address, e.g. "0000:00:02.0".
    pub pci_id: String,
    /// PCI vendor id, e.g. "0x1af4".
    pub vendor: String,
    /// PCI device id, e.g. "0x1050".
    pub device: String,
    pub driver: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciDevice {
    /// e.g. "0000:00:1f.2"
    pub address: String,
    /// PCI class code, e.g. "0x010601" (AHCI).
    pub class: String,
    pub vendor: String,
    pub device: String,
    pub driver: Option<String>,
    /// Loadable module of the bound driver (None when built in or unbound).
    pub module: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsbInterface {
    /// sysfs name, e.g. "1-1:1.0"
    pub name: String,
    /// bInterfaceClass/SubClass/Protocol as two hex digits, e.g. "08", "06", "50".
    pub class: String,
    pub subclass: String,
    pub protocol: String,
    pub driver: Option<String>,
    pub module: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_values_are_tolerated() {
        let inv: Inventory = serde_json::from_str(
            r#"{"firmware":{"mode":"coreboot"},"disks":[{"name":"vda","transport":"cxl","future":1}],"new_top":true}"#,
        )
        .unwrap();
        assert_eq!(inv.firmware.mode, FirmwareMode::Unknown);
        assert_eq!(inv.disks[0].transport, Transport::Unknown);
        assert_eq!(inv.disks[0].name, "vda");
    }

    #[test]
    fn signature_type_is_named_type_on_the_wire() {
        let s = Signature {
            kind: "ext4".into(),
            ..Default::default()
        };
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains(r#""type":"ext4""#));
    }
}

//! PCI functions and USB interfaces with the driver and module bound to each:
//! the raw material of `boot.initrd.availableKernelModules` (see
//! `install::hwconfig`), read as nixos-generate-config reads it
//! (`/sys/bus/pci/devices/*`, `/sys/bus/usb/devices/*` with `bInterfaceClass`).

use std::path::Path;

use landfall_proto::inventory::{PciDevice, UsbInterface};

use super::{link_name, read_attr, Root};

/// `(driver, module)` of a sysfs device directory: the names behind its
/// `driver` and `driver/module` links (no module when the driver is built in).
pub(super) fn driver_and_module(dev: &Path) -> (Option<String>, Option<String>) {
    (
        link_name(&dev.join("driver")),
        link_name(&dev.join("driver/module")),
    )
}

pub(super) fn detect(root: &Root) -> Vec<PciDevice> {
    root.list("sys/bus/pci/devices")
        .into_iter()
        .map(|address| {
            let dir = root.path(&format!("sys/bus/pci/devices/{address}"));
            let (driver, module) = driver_and_module(&dir);
            PciDevice {
                class: read_attr(&dir.join("class")).unwrap_or_default(),
                vendor: read_attr(&dir.join("vendor")).unwrap_or_default(),
                device: read_attr(&dir.join("device")).unwrap_or_default(),
                driver,
                module,
                address,
            }
        })
        .collect()
}

pub(super) fn usb(root: &Root) -> Vec<UsbInterface> {
    root.list("sys/bus/usb/devices")
        .into_iter()
        .filter_map(|name| {
            let dir = root.path(&format!("sys/bus/usb/devices/{name}"));
            let class = read_attr(&dir.join("bInterfaceClass"))?;
            let (driver, module) = driver_and_module(&dir);
            Some(UsbInterface {
                class,
                subclass: read_attr(&dir.join("bInterfaceSubClass")).unwrap_or_default(),
                protocol: read_attr(&dir.join("bInterfaceProtocol")).unwrap_or_default(),
                driver,
                module,
                name,
            })
        })
        .collect()
}

//! Display controllers (PCI class 0x03xxxx).

use landfall_proto::inventory::{Gpu, PciDevice};

pub(super) fn detect(pci: &[PciDevice]) -> Vec<Gpu> {
    pci.iter()
        .filter(|d| is_display_class(&d.class))
        .map(|d| Gpu {
            pci_id: d.address.clone(),
            vendor: d.vendor.clone(),
            device: d.device.clone(),
            driver: d.driver.clone(),
        })
        .collect()
}

/// "0x030000" (VGA), "0x030200" (3D), "0x038000" (other display).
pub(super) fn is_display_class(class: &str) -> bool {
    let hex = class.trim().trim_start_matches("0x");
    hex.len() == 6 && hex.starts_with("03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_classes() {
        assert!(is_display_class("0x030000"));
        assert!(is_display_class("0x030200\n"));
        assert!(!is_display_class("0x020000"));
        assert!(!is_display_class("0x0300"));
    }
}

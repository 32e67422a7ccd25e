//! Display controllers (PCI class 0x03xxxx).

use landfall_proto::inventory::Gpu;

use super::{link_name, read_attr, Root};

pub(super) fn detect(root: &Root) -> Vec<Gpu> {
    root.list("sys/bus/pci/devices")
        .into_iter()
        .filter_map(|addr| {
            let dir = root.path(&format!("sys/bus/pci/devices/{addr}"));
            let class = read_attr(&dir.join("class"))?;
            if !is_display_class(&class) {
                return None;
            }
            Some(Gpu {
                vendor: read_attr(&dir.join("vendor")).unwrap_or_default(),
                device: read_attr(&dir.join("device")).unwrap_or_default(),
                driver: link_name(&dir.join("driver")),
                pci_id: addr,
            })
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

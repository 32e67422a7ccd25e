//! DMI (SMBIOS) identity from /sys/class/dmi/id.

use landfall_proto::inventory::Dmi;

use super::Root;

pub(super) fn detect(root: &Root) -> Dmi {
    let get = |name: &str| clean(root.read_attr(&format!("sys/class/dmi/id/{name}")));
    Dmi {
        vendor: get("sys_vendor"),
        product: get("product_name"),
        serial: get("product_serial"),
        uuid: get("product_uuid").map(|u| u.to_ascii_lowercase()),
    }
}

/// Vendors ship boards with template strings in SMBIOS; those identify nothing.
pub(super) fn clean(value: Option<String>) -> Option<String> {
    let v = value?;
    let lower = v.to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "to be filled by o.e.m.",
        "to be filled by oem",
        "default string",
        "system product name",
        "system manufacturer",
        "system serial number",
        "not specified",
        "not applicable",
        "none",
        "n/a",
        "0",
        "00000000",
        "0123456789",
        "123456789",
        "oem",
        "o.e.m.",
        "chassis serial number",
        "type1productconfigid",
        "03000200-0400-0500-0006-000700080009",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ];
    if PLACEHOLDERS.contains(&lower.as_str()) || lower.chars().all(|c| c == ' ' || c == '.') {
        return None;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_none() {
        for p in [
            "To Be Filled By O.E.M.",
            "Default string",
            "System Product Name",
            "Not Specified",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert_eq!(clean(Some(p.into())), None, "{p}");
        }
        assert_eq!(clean(None), None);
        assert_eq!(clean(Some("QEMU".into())).as_deref(), Some("QEMU"));
        assert_eq!(
            clean(Some("PowerEdge R640".into())).as_deref(),
            Some("PowerEdge R640")
        );
    }
}

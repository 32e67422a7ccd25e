//! Firmware mode and Secure Boot state.

use landfall_proto::inventory::{Firmware, FirmwareMode};

use super::Root;

const SECURE_BOOT_VAR: &str =
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub(super) fn detect(root: &Root) -> Firmware {
    if !root.exists("sys/firmware/efi") {
        return Firmware {
            mode: FirmwareMode::Bios,
            secure_boot: None,
        };
    }
    let secure_boot = std::fs::read(root.path(SECURE_BOOT_VAR))
        .ok()
        .and_then(|b| parse_secure_boot(&b));
    Firmware {
        mode: FirmwareMode::Uefi,
        secure_boot,
    }
}

/// An efivarfs file is 4 attribute bytes followed by the value; SecureBoot's
/// value is one byte, 1 = enabled.
pub(super) fn parse_secure_boot(bytes: &[u8]) -> Option<bool> {
    match bytes.get(4..) {
        Some([v, ..]) => Some(*v == 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_value_follows_the_attributes() {
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0]), None);
        assert_eq!(parse_secure_boot(&[]), None);
    }
}

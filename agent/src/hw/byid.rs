//! /dev/disk/by-id names computed from sysfs the way systemd's
//! `rules.d/60-persistent-storage.rules` (with ata_id, scsi_id and the
//! usb_id builtin) names them, so the agent needs no udev.
//!
//! udev creates several by-id links per disk. We report one, and prefer the
//! bus-specific serial-number name because it is what operators read on the
//! drive label and what disko layouts usually reference:
//!
//! | bus    | preferred                               | fallback            |
//! |--------|-----------------------------------------|---------------------|
//! | virtio | `virtio-$serial`                        | none (no serial, no link) |
//! | nvme   | `nvme-$model_$serial` (namespace 1), `nvme-$model_$serial_$nsid` (others) | `nvme-$wwid` |
//! | ata    | `ata-$model_$serial` (IDENTIFY data)    | `wwn-$wwn`          |
//! | scsi   | `scsi-$id` (VPD 0x83 via `wwid`)        | `wwn-$wwn`          |
//! | usb    | `usb-$vendor_$model_$serial-$target:$lun` |                   |
//! | mmc    | `mmc-$name_$serial`                     |                     |
//!
//! `nvme-$model_$serial` exists in every systemd version, while the `_$nsid`
//! form is v255+; for namespace 1 the short form is both stable and unique.

/// What udev would know about a disk, per bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    Virtio {
        serial: Option<String>,
    },
    Nvme {
        model: Option<String>,
        serial: Option<String>,
        nsid: Option<u32>,
        wwid: Option<String>,
    },
    /// Model and serial as ata_id reads them from the IDENTIFY data.
    Ata {
        model: Option<String>,
        serial: Option<String>,
        wwn: Option<String>,
    },
    /// `wwid` as the kernel formats VPD page 0x83 ("naa.…", "eui.…", "t10.…").
    Scsi {
        wwid: Option<String>,
        wwn: Option<String>,
    },
    Usb {
        vendor: Option<String>,
        model: Option<String>,
        serial: Option<String>,
        /// "target:lun" of the SCSI device.
        instance: Option<String>,
    },
    Mmc {
        name: Option<String>,
        serial: Option<String>,
    },
}

/// The preferred `/dev/disk/by-id/...` path, or `None` when udev would make none.
pub fn by_id_name(src: &IdSource) -> Option<String> {
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(udev_symlink_escape)
            .filter(|s| !s.is_empty())
    };
    let name = match src {
        IdSource::Virtio { serial } => format!("virtio-{}", nonempty(serial)?),
        IdSource::Nvme {
            model,
            serial,
            nsid,
            wwid,
        } => match (nonempty(model), nonempty(serial)) {
            (Some(m), Some(s)) => match nsid {
                Some(n) if *n != 1 => format!("nvme-{m}_{s}_{n}"),
                _ => format!("nvme-{m}_{s}"),
            },
            _ => format!("nvme-{}", nonempty(wwid)?),
        },
        IdSource::Ata { model, serial, wwn } => match (nonempty(model), nonempty(serial)) {
            // ata_id: ID_SERIAL=MODEL_SERIAL, or MODEL alone without a serial.
            (Some(m), Some(s)) => format!("ata-{m}_{s}"),
            (Some(m), None) => format!("ata-{m}"),
            (None, _) => format!("wwn-{}", nonempty(wwn)?),
        },
        IdSource::Scsi { wwid, wwn } => match wwid.as_deref().and_then(scsi_id_serial) {
            Some(id) => format!("scsi-{}", udev_symlink_escape(&id)),
            None => format!("wwn-{}", nonempty(wwn)?),
        },
        IdSource::Usb {
            vendor,
            model,
            serial,
            instance,
        } => {
            // usb_id: VENDOR_MODEL[_SERIAL][-INSTANCE]
            let mut s = format!(
                "{}_{}",
                nonempty(vendor).unwrap_or_else(|| "unknown".into()),
                nonempty(model).unwrap_or_else(|| "unknown".into())
            );
            if let Some(ser) = nonempty(serial) {
                s = format!("{s}_{ser}");
            }
            if let Some(inst) = nonempty(instance) {
                s = format!("{s}-{inst}");
            }
            format!("usb-{s}")
        }
        IdSource::Mmc { name, serial } => {
            format!("mmc-{}_{}", nonempty(name)?, nonempty(serial)?)
        }
    };
    Some(format!("/dev/disk/by-id/{name}"))
}

/// scsi_id's ID_SERIAL from the kernel's `wwid` attribute: the designator
/// type digit (1 = T10 vendor id, 2 = EUI-64, 3 = NAA) then the identifier.
fn scsi_id_serial(wwid: &str) -> Option<String> {
    let wwid = wwid.trim();
    let (kind, id) = wwid.split_once('.')?;
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    match kind {
        "naa" => Some(format!("3{}", id.to_ascii_lowercase())),
        "eui" => Some(format!("2{}", id.to_ascii_lowercase())),
        "t10" => Some(format!("1{id}")),
        _ => None,
    }
}

/// The escaping udev applies to a substituted value in `SYMLINK+=`: leading
/// and trailing whitespace dropped, each run of inner whitespace becomes one
/// '_', then every character outside `[0-9A-Za-z#+-.:=@_/]` (and outside
/// valid non-ASCII UTF-8) becomes '_'.
pub fn udev_symlink_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.trim_matches(is_c_space).chars() {
        if is_c_space(c) {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push('_');
            pending_space = false;
        }
        let keep = c.is_ascii_alphanumeric() || "#+-.:=@_/".contains(c) || !c.is_ascii();
        out.push(if keep { c } else { '_' });
    }
    out
}

/// C `isspace()`.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Decode ATA IDENTIFY data as the kernel prints it in
/// `/sys/class/ata_device/devX.Y/id` (256 16-bit words in hex) into
/// (model, serial, wwn) the way ata_id reads them.
pub(super) fn parse_ata_identify(text: &str) -> Option<(String, String, Option<String>)> {
    let words: Vec<u16> = text
        .split_whitespace()
        .map(|w| u16::from_str_radix(w, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if words.len() < 256 {
        return None;
    }
    // Strings are stored with the two bytes of each word swapped.
    let string = |from: usize, to: usize| {
        let bytes: Vec<u8> = words[from..to]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        String::from_utf8_lossy(&bytes)
            .trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .to_string()
    };
    let serial = string(10, 20);
    let model = string(27, 47);
    // Word 84 bit 8 / word 87 bit 8: the WWN in words 108..=111 is valid.
    let wwn = ((words[87] & 0xc100) == 0x4100 || (words[84] & 0xc100) == 0x4100).then(|| {
        format!(
            "0x{:04x}{:04x}{:04x}{:04x}",
            words[108], words[109], words[110], words[111]
        )
    });
    Some((model, serial, wwn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn virtio_uses_the_serial() {
        let src = IdSource::Virtio {
            serial: s("LFSERIAL01"),
        };
        assert_eq!(
            by_id_name(&src).as_deref(),
            Some("/dev/disk/by-id/virtio-LFSERIAL01")
        );
    }

    #[test]
    fn empty_serial_makes_no_link() {
        assert_eq!(by_id_name(&IdSource::Virtio { serial: s("") }), None);
        assert_eq!(by_id_name(&IdSource::Virtio { serial: s("   ") }), None);
        assert_eq!(by_id_name(&IdSource::Virtio { serial: None }), None);
    }

    #[test]
    fn whitespace_is_collapsed_to_one_underscore_and_trimmed() {
        assert_eq!(
            udev_symlink_escape("  Samsung SSD   970 EVO\t1TB \n"),
            "Samsung_SSD_970_EVO_1TB"
        );
        assert_eq!(udev_symlink_escape("a,b$c%d?e"), "a_b_c_d_e");
        assert_eq!(udev_symlink_escape("x#+-.:=@_y"), "x#+-.:=@_y");
    }

    #[test]
    fn nvme_is_model_underscore_serial() {
        let src = IdSource::Nvme {
            model: s("Samsung SSD 970 EVO Plus 1TB            "),
            serial: s("S4EWNX0R123456A     "),
            nsid: Some(1),
            wwid: s("eui.0025385b91b0a1b2"),
        };
        assert_eq!(
            by_id_name(&src).as_deref(),
            Some("/dev/disk/by-id/nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456A")
        );
        let ns2 = IdSource::Nvme {
            model: s("M"),
            serial: s("S"),
            nsid: Some(2),
            wwid: None,
        };
        assert_eq!(
            by_id_name(&ns2).as_deref(),
            Some("/dev/disk/by-id/nvme-M_S_2")
        );
        let no_serial = IdSource::Nvme {
            model: s("M"),
            serial: s(" "),
            nsid: Some(1),
            wwid: s("eui.0025385b91b0a1b2"),
        };
        assert_eq!(
            by_id_name(&no_serial).as_deref(),
            Some("/dev/disk/by-id/nvme-eui.0025385b91b0a1b2")
        );
    }

    #[test]
    fn ata_is_model_underscore_serial_else_model_else_wwn() {
        let src = IdSource::Ata {
            model: s("WDC WD40EFRX-68N32N0"),
            serial: s("WD-WCC7K1234567"),
            wwn: s("0x50014ee2b1234567"),
        };
        assert_eq!(
            by_id_name(&src).as_deref(),
            Some("/dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567")
        );
        let no_serial = IdSource::Ata {
            model: s("QEMU HARDDISK"),
            serial: None,
            wwn: None,
        };
        assert_eq!(
            by_id_name(&no_serial).as_deref(),
            Some("/dev/disk/by-id/ata-QEMU_HARDDISK")
        );
        let only_wwn = IdSource::Ata {
            model: None,
            serial: None,
            wwn: s("0x50014ee2b1234567"),
        };
        assert_eq!(
            by_id_name(&only_wwn).as_deref(),
            Some("/dev/disk/by-id/wwn-0x50014ee2b1234567")
        );
    }

    #[test]
    fn scsi_and_usb_names() {
        let scsi = IdSource::Scsi {
            wwid: s("naa.5000C500A1B2C3D4"),
            wwn: None,
        };
        assert_eq!(
            by_id_name(&scsi).as_deref(),
            Some("/dev/disk/by-id/scsi-35000c500a1b2c3d4")
        );
        let usb = IdSource::Usb {
            vendor: s("SanDisk "),
            model: s("Cruzer Blade    "),
            serial: s("4C530001231107116155"),
            instance: s("0:0"),
        };
        assert_eq!(
            by_id_name(&usb).as_deref(),
            Some("/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001231107116155-0:0")
        );
    }

    #[test]
    fn ata_identify_words_are_byte_swapped() {
        let mut words = vec![0u16; 256];
        // serial "AB12" padded, model "QEMU HARDDISK" padded.
        let put = |words: &mut Vec<u16>, at: usize, len: usize, s: &str| {
            let mut b = s.as_bytes().to_vec();
            b.resize(len * 2, b' ');
            for i in 0..len {
                words[at + i] = u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
            }
        };
        put(&mut words, 10, 10, "AB12");
        put(&mut words, 27, 20, "QEMU HARDDISK");
        words[87] = 0x4100;
        words[108] = 0x5000;
        words[109] = 0xc500;
        words[110] = 0x1234;
        words[111] = 0x5678;
        let text: String = words
            .chunks(8)
            .map(|c| {
                c.iter()
                    .map(|w| format!("{w:04x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + "\n"
            })
            .collect();
        let (model, serial, wwn) = parse_ata_identify(&text).unwrap();
        assert_eq!(model, "QEMU HARDDISK");
        assert_eq!(serial, "AB12");
        assert_eq!(wwn.as_deref(), Some("0x5000c50012345678"));
        assert_eq!(parse_ata_identify("0000 zzzz"), None);
    }
}

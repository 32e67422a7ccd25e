//! Property tests of the sysfs/procfs readers (issue 12, fuzzing): whatever
//! bytes the kernel's files (or a hostile image) hold, detection and every
//! parser return a value, never panic, and the inventory serialises.

use std::path::Path;

use proptest::prelude::*;

use super::*;

/// Files the detectors read, relative to the sysroot.
const FILES: &[&str] = &[
    "proc/cpuinfo",
    "proc/meminfo",
    "proc/sys/kernel/hostname",
    "proc/sys/kernel/osrelease",
    "sys/class/dmi/id/sys_vendor",
    "sys/class/dmi/id/product_name",
    "sys/class/dmi/id/product_serial",
    "sys/class/dmi/id/product_uuid",
    "sys/class/dmi/id/board_vendor",
    "sys/class/dmi/id/bios_vendor",
    "sys/hypervisor/type",
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
    "sys/devices/system/clocksource/clocksource0/available_clocksource",
    "sys/block/sda/size",
    "sys/block/sda/removable",
    "sys/block/sda/uevent",
    "sys/block/sda/queue/rotational",
    "sys/block/sda/queue/logical_block_size",
    "sys/block/sda/device/model",
    "sys/block/sda/device/vendor",
    "sys/block/sda/device/serial",
    "sys/block/sda/device/wwid",
    "sys/block/sda/sda1/partition",
    "sys/block/sda/sda1/size",
    "sys/block/nvme0n1/size",
    "sys/block/nvme0n1/wwid",
    "sys/block/nvme0n1/nsid",
    "sys/block/nvme0n1/device/serial",
    "sys/class/net/eth0/address",
    "sys/class/net/eth0/speed",
    "sys/class/net/eth0/carrier",
    "sys/class/net/eth0/operstate",
    "sys/bus/pci/devices/0000:00:02.0/class",
    "sys/bus/pci/devices/0000:00:02.0/vendor",
    "sys/bus/pci/devices/0000:00:02.0/device",
    "sys/bus/usb/devices/1-1:1.0/bInterfaceClass",
];

/// Bytes a sysfs/procfs file might hold: anything, or text shaped like the
/// real thing with odd values.
fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[ -~\n\t:]{0,80}".prop_map(String::into_bytes),
        "(-?[0-9]{1,25}|0x[0-9a-f]{1,20})\n?".prop_map(String::into_bytes),
        "([a-z_ ]{0,12}\t?: ?[ -~]{0,20}\n){0,6}".prop_map(String::into_bytes),
    ]
}

fn write_tree(root: &Path, files: &[(usize, Vec<u8>)]) {
    for (i, bytes) in files {
        let p = root.join(FILES[*i % FILES.len()]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn detect_survives_any_sysfs_and_procfs_contents(
        files in proptest::collection::vec((0..FILES.len(), contents()), 0..24)
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &files);
        let inv = detect(dir.path()).unwrap();
        serde_json::to_string(&inv).unwrap();
        let _ = describe(&inv);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn text_parsers_never_panic(text in "\\PC{0,200}", key in "[A-Z_]{0,8}") {
        let _ = cpu::parse_cpuinfo(&text);
        let _ = cpu::has_hypervisor_flag(&text);
        let _ = cpu::parse_meminfo_total(&text);
        let _ = disks::uevent_value(&text, &key);
        let _ = disks::is_excluded(&text);
        let _ = nics::parse_speed(&text);
        let _ = virt::from_dmi_string(&text);
        let _ = gpus::is_display_class(&text);
        let _ = dmi::clean(Some(text.clone()));
        let _ = cpu::parse_meminfo_total(&format!("MemTotal: {key}{text}"));
        let _ = udev_symlink_escape(&text);
    }

    #[test]
    fn secure_boot_reads_the_fifth_byte_or_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let got = firmware::parse_secure_boot(&bytes);
        prop_assert_eq!(got, bytes.get(4).map(|b| *b == 1));
    }

    #[test]
    fn a_meminfo_total_past_u64_is_unknown(n in "[0-9]{17,25}") {
        let got = cpu::parse_meminfo_total(&format!("MemTotal: {n} kB\n"));
        let want = n.parse::<u64>().ok().and_then(|v| v.checked_mul(1024));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn meminfo_total_is_kib_times_1024(kib in 0u64..(u64::MAX / 1024), pad in " {0,8}") {
        let text = format!("MemFree: 1 kB\nMemTotal:{pad}{kib} kB\n");
        prop_assert_eq!(cpu::parse_meminfo_total(&text), Some(kib * 1024));
    }

    #[test]
    fn mountinfo_never_panics_and_reads_well_formed_lines(
        garbage in "\\PC{0,200}",
        dev in "[0-9]{1,3}:[0-9]{1,3}",
        mountpoint in "/[a-z0-9/]{0,20}",
        fstype in "[a-z0-9]{1,8}",
        source in "[a-z0-9/]{0,20}",
    ) {
        let _ = mountinfo::parse(&garbage);
        let _ = mountinfo::parse(&format!("1 2 3:4 / /{garbage}\\{dev} - x \\{dev}{garbage}"));
        let line = format!("36 35 {dev} / {mountpoint} rw,noatime shared:1 - {fstype} {source} rw");
        let got = mountinfo::parse(&format!("{garbage}\n{line}\n"));
        let last = got.last().unwrap();
        prop_assert_eq!(&last.dev, &dev);
        prop_assert_eq!(&last.mountpoint, &mountpoint);
        prop_assert_eq!(&last.fstype, &fstype);
        prop_assert_eq!(&last.source, &source);
    }
}

/// What the property test above found: sizes in sectors past u64 / 512
/// overflowed (a panic in a debug build, a wrong size in release).
#[test]
fn a_disk_size_past_u64_bytes_saturates() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(
        dir.path(),
        &[
            (13, b"18446744073709551615\n".to_vec()),
            (23, b"36893488147419103\n".to_vec()),
            (22, b"1\n".to_vec()),
        ],
    );
    let inv = detect(dir.path()).unwrap();
    assert_eq!(inv.disks[0].size_bytes, u64::MAX);
}

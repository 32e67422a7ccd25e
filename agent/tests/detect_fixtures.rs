//! `hw::detect` against captured sysfs/procfs trees (agent/tests/fixtures,
//! recaptured with capture.sh / capture-vm.sh), against images probed with
//! libblkid, and against this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use landfall_agent::hw::{detect, detect_json};
use landfall_proto::inventory::{FirmwareMode, Inventory, Transport};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn qemu(name: &str) -> Inventory {
    detect(&fixture(name)).unwrap_or_else(|e| panic!("detect {name}: {e:#}"))
}

#[test]
fn qemu_bios_disk_is_the_virtio_disk_with_its_serial_and_partitions() {
    let inv = qemu("qemu-bios");
    let names: Vec<_> = inv.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["vda", "vdb"]);
    let vda = &inv.disks[0];
    assert_eq!(vda.path, "/dev/vda");
    assert_eq!(vda.size_bytes, 64 * 1024 * 1024);
    assert_eq!(vda.logical_sector_size, 512);
    assert_eq!(vda.serial.as_deref(), Some("LFSERIAL01"));
    assert_eq!(vda.transport, Transport::Virtio);
    assert_eq!(
        vda.by_id.as_deref(),
        Some("/dev/disk/by-id/virtio-LFSERIAL01")
    );
    assert!(!vda.read_only && !vda.removable);
    // GPT written by capture-vm.sh: ESP 16 MiB at 2048, then "root".
    assert_eq!(vda.partitions.len(), 2);
    let esp = &vda.partitions[0];
    assert_eq!((esp.name.as_str(), esp.number), ("vda1", 1));
    assert_eq!(esp.start_sector, 2048);
    assert_eq!(esp.size_bytes, 16 * 1024 * 1024);
    assert_eq!(esp.partlabel.as_deref(), Some("ESP"));
    assert_eq!(vda.partitions[1].partlabel.as_deref(), Some("root"));
    assert_eq!(vda.partitions[1].path, "/dev/vda2");
    // No device nodes in a fixture: contents are unknown, not an error.
    assert_eq!(vda.partition_table, None);
    assert!(vda.signatures.is_empty());

    // The capture disk has no serial, so udev would make no by-id link.
    assert_eq!(inv.disks[1].size_bytes, 16 * 1024 * 1024);
    assert_eq!(inv.disks[1].by_id, None);
}

#[test]
fn qemu_bios_machine_facts() {
    let inv = qemu("qemu-bios");
    assert_eq!(inv.hostname.as_deref(), Some("landfall-vm"));
    assert_eq!(inv.kernel.as_deref(), Some("6.1.0-56-amd64"));
    assert_eq!(inv.firmware.mode, FirmwareMode::Bios);
    assert_eq!(inv.firmware.secure_boot, None);
    assert_eq!(inv.virtualization, "qemu");
    assert_eq!(inv.dmi.vendor.as_deref(), Some("QEMU"));
    assert_eq!(inv.cpu.threads, 2, "-smp 2");
    assert!(inv.cpu.cores >= 1 && inv.cpu.cores <= inv.cpu.threads);
    assert!(inv.cpu.model.as_deref().unwrap().contains("QEMU"));
    // -m 1024: MemTotal is a little less than the RAM given.
    assert!(
        inv.memory.total_bytes > 900 << 20 && inv.memory.total_bytes <= 1024 << 20,
        "{}",
        inv.memory.total_bytes
    );

    assert_eq!(
        inv.nics.len(),
        1,
        "lo is not a physical NIC: {:?}",
        inv.nics
    );
    let nic = inv.nic_by_mac("52:54:00:12:34:56").expect("the virtio NIC");
    assert_eq!(nic.name, "eth0");
    assert_eq!(nic.driver.as_deref(), Some("virtio_net"));
    assert!(nic.link_up);
    assert_eq!(nic.speed_mbps, None, "virtio reports speed -1");
    assert!(
        nic.addresses.is_empty(),
        "addresses only come from the live system"
    );

    // QEMU's std VGA: PCI 1234:1111, no driver bound in the initramfs.
    assert_eq!(inv.gpus.len(), 1);
    assert_eq!(inv.gpus[0].vendor, "0x1234");
    assert_eq!(inv.gpus[0].device, "0x1111");
    assert_eq!(inv.gpus[0].driver, None);
}

#[test]
fn qemu_uefi_reports_uefi_and_secure_boot_off() {
    let inv = qemu("qemu-uefi");
    assert_eq!(inv.firmware.mode, FirmwareMode::Uefi);
    // OVMF_VARS_4M.fd (no enrolled keys): the SecureBoot variable reads 0.
    assert_eq!(inv.firmware.secure_boot, Some(false));
    assert_eq!(inv.virtualization, "qemu");
    assert_eq!(
        inv.disks[0].by_id.as_deref(),
        Some("/dev/disk/by-id/virtio-LFSERIAL01")
    );
}

#[test]
fn host_fixture_excludes_loop_and_zram_and_virtual_nics() {
    let root = fixture("host-debian");
    // The capture holds loop and zram devices; detect must drop them.
    assert!(root.join("sys/block/loop0").exists());
    assert!(root.join("sys/block/zram0").exists());
    let inv = detect(&root).unwrap();
    let names: Vec<_> = inv.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["vda"]);
    let vda = &inv.disks[0];
    assert_eq!(vda.size_bytes, 274_877_906_944);
    assert_eq!(vda.physical_sector_size, 4096);
    assert_eq!(
        vda.by_id.as_deref(),
        Some("/dev/disk/by-id/virtio-overlayblk")
    );

    assert!(root.join("sys/class/net/lo").exists());
    let nics: Vec<_> = inv.nics.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nics, ["eth0"], "lo and ifb* have no bus device");
    assert_eq!(inv.nics[0].mac, "02:fc:00:00:00:01");
    assert_eq!(inv.nics[0].driver.as_deref(), Some("virtio_net"));

    assert_eq!(inv.cpu.threads, 2);
    assert_eq!(inv.cpu.vendor.as_deref(), Some("AuthenticAMD"));
    // No DMI, but the kvm-clock clocksource gives KVM away.
    assert_eq!(inv.dmi.vendor, None);
    assert_eq!(inv.virtualization, "kvm");
    assert_eq!(inv.firmware.mode, FirmwareMode::Bios);
}

#[test]
fn json_round_trips_through_the_wire_type() {
    let json = detect_json(&fixture("qemu-uefi")).unwrap();
    assert!(json.contains("\n  \"disks\""), "pretty-printed");
    let back: Inventory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, qemu("qemu-uefi"));
}

#[test]
fn live_system_agrees_with_simple_facts() {
    let inv = detect(Path::new("/")).unwrap();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    assert_eq!(inv.cpu.threads, processors);
    let parallelism = std::thread::available_parallelism().unwrap().get() as u32;
    assert!(inv.cpu.threads >= parallelism);
    assert!(inv.memory.total_bytes > 0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(inv.kernel.as_deref(), Some(kernel.trim()));
    for d in &inv.disks {
        assert!(
            !d.name.starts_with("loop") && !d.name.starts_with("zram"),
            "{}",
            d.name
        );
        assert!(Path::new("/sys/block").join(&d.name).exists());
    }
    // Every physical NIC is listed, with the kernel's MAC.
    for entry in std::fs::read_dir("/sys/class/net").unwrap() {
        let e = entry.unwrap();
        if e.path().join("device").exists() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mac = std::fs::read_to_string(e.path().join("address")).unwrap();
            let nic = inv.nics.iter().find(|n| n.name == name).expect(&name);
            assert_eq!(nic.mac, mac.trim().to_ascii_lowercase());
        }
    }
}

/// Build a sysroot whose dev/vdz is a real GPT image with an ext4 and a vfat
/// partition, so the blkid path runs on real on-disk structures.
#[test]
fn blkid_reads_table_partitions_and_filesystems_from_the_node() {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    assert!(
        have("sgdisk") && have("mkfs.ext4") && have("mkfs.vfat"),
        "this test needs gdisk, e2fsprogs and dosfstools"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = root.join("dev/vdz");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+16M", "-c", "1:ESP", "-t", "1:ef00"])
        .args(["-n", "2:0:0", "-c", "2:nixos", "-t", "2:8300"])
        .args(["-u", "2:0FC63DAF-8483-4772-8E79-3D69D8477DE4"])
        .arg(&img));
    // Filesystems inside the partitions, written through offsets into the image.
    let esp = root.join("esp.img");
    let rootfs = root.join("root.img");
    run(Command::new("truncate").args(["-s", "16M"]).arg(&esp));
    run(Command::new("mkfs.vfat")
        .args(["-n", "BOOT", "-i", "1234ABCD"])
        .arg(&esp));
    run(Command::new("truncate").args(["-s", "32M"]).arg(&rootfs));
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "nixos",
            "-U",
            "4a3c2b1e-0000-4000-8000-000000000001",
        ])
        .arg(&rootfs));
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    run(Command::new("dd")
        .arg(format!("if={}", rootfs.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=512", "seek=34816", "conv=notrunc", "status=none"]));
    // The sysfs side: just enough for detect to list the disk.
    let sys = root.join("sys/block/vdz");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("size"), "131072\n").unwrap();
    std::fs::write(sys.join("serial"), "IMG1\n").unwrap();

    let inv = detect(root).unwrap();
    let disk = &inv.disks[0];
    assert_eq!(disk.name, "vdz");
    assert_eq!(disk.partition_table.as_deref(), Some("gpt"));
    assert!(disk.has_data());
    assert_eq!(disk.partitions.len(), 2, "{:?}", disk.partitions);
    let p1 = &disk.partitions[0];
    assert_eq!(p1.partlabel.as_deref(), Some("ESP"));
    assert_eq!(
        p1.parttype.as_deref(),
        Some("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    );
    assert_eq!(p1.start_sector, 2048);
    assert_eq!(p1.signatures.len(), 1, "{:?}", p1.signatures);
    assert_eq!(p1.signatures[0].kind, "vfat");
    assert_eq!(p1.signatures[0].label.as_deref(), Some("BOOT"));
    assert_eq!(p1.signatures[0].uuid.as_deref(), Some("1234-ABCD"));
    let p2 = &disk.partitions[1];
    assert_eq!(p2.name, "vdz2");
    assert_eq!(
        p2.partuuid.as_deref(),
        Some("0fc63daf-8483-4772-8e79-3d69d8477de4")
    );
    assert_eq!(p2.signatures[0].kind, "ext4");
    assert_eq!(p2.signatures[0].usage.as_deref(), Some("filesystem"));
    assert_eq!(p2.signatures[0].label.as_deref(), Some("nixos"));
    assert_eq!(
        p2.signatures[0].uuid.as_deref(),
        Some("4a3c2b1e-0000-4000-8000-000000000001")
    );
    // Probing is read-only: the image is unchanged by detect.
    let before = std::fs::read(&img).unwrap();
    detect(root).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn blank_node_has_no_data_and_unreadable_node_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::create_dir_all(root.join("sys/block/vdy")).unwrap();
    std::fs::write(root.join("sys/block/vdy/size"), "2048\n").unwrap();
    std::fs::write(root.join("dev/vdy"), vec![0u8; 1 << 20]).unwrap();
    // A node that is a directory cannot be probed.
    std::fs::create_dir_all(root.join("sys/block/vdx")).unwrap();
    std::fs::create_dir_all(root.join("dev/vdx")).unwrap();
    let inv = detect(root).unwrap();
    assert_eq!(inv.disks.len(), 2);
    for d in &inv.disks {
        assert!(!d.has_data(), "{d:?}");
    }
}

#[test]
fn detect_prints_a_summary_and_json_only_with_the_flag() {
    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_landfall-agent"));
        c.arg("detect").arg("--sysroot").arg(fixture("qemu-bios"));
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
    let inv = qemu("qemu-bios");
    assert!(
        text.contains("disk /dev/vda: 64 MiB") && text.contains("virtio-LFSERIAL01"),
        "{text}"
    );
    assert!(text.contains("disk /dev/vdb: 16 MiB"), "{text}");
    for n in &inv.nics {
        assert!(text.contains(&n.mac), "{} missing:\n{text}", n.mac);
    }
    assert!(text.contains("bios firmware"), "{text}");
    let json: Inventory = serde_json::from_str(&run(true)).unwrap();
    assert_eq!(json.disks.len(), inv.disks.len());
}

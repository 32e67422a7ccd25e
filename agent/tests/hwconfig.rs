//! hardware-configuration.nix generated from the captured QEMU machines: the
//! modules nixos-generate-config would list there, and a file that Nix parses
//! (`nix-instantiate --parse`, Debian's nix-bin).

use std::path::Path;
use std::process::Command;

use landfall_agent::hw;
use landfall_agent::install::hwconfig::{Bootloader, HwConfig};

fn fixture(name: &str) -> landfall_proto::Inventory {
    hw::detect(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Parse `text` as Nix with the real parser; panic with its message if it is not Nix.
fn assert_parses(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hardware-configuration.nix");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&file)
        .output()
        .expect("nix-instantiate (Debian: nix-bin; ./x installs it)");
    assert!(
        out.status.success(),
        "not valid Nix: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const STORAGE: &str = r#"fileSystems."/" = {
  device = "/dev/disk/by-partlabel/disk-main-root";
  fsType = "ext4";
};"#;

#[test]
fn qemu_bios_machine_gets_its_storage_and_usb_modules_and_grub() {
    let inv = fixture("qemu-bios");
    let c = HwConfig::from_inventory(
        &inv,
        Bootloader::for_machine(&inv, None),
        STORAGE.to_owned(),
    );
    // ata_piix (IDE), virtio_pci (virtio-blk's PCI function), xhci_pci (USB
    // controller), usbhid (the keyboard), virtio_blk (the disks' driver).
    assert_eq!(
        c.initrd_available_kernel_modules,
        ["ata_piix", "virtio_pci", "xhci_pci", "usbhid", "virtio_blk"]
    );
    // QEMU's default qemu64 CPU advertises svm.
    assert_eq!(c.kernel_modules, ["kvm-amd"]);
    assert_eq!(c.imports, [r#"(modulesPath + "/profiles/qemu-guest.nix")"#]);
    assert_eq!(
        c.bootloader,
        Bootloader::Grub {
            device: "/dev/disk/by-id/virtio-LFSERIAL01".into()
        }
    );
    let text = c.render();
    assert!(
        text.contains("  fileSystems.\"/\" = {\n    device = "),
        "{text}"
    );
    assert!(text.contains("nixpkgs.hostPlatform = lib.mkDefault \"x86_64-linux\";"));
    assert_parses(&text);
}

#[test]
fn qemu_uefi_machine_gets_systemd_boot() {
    let inv = fixture("qemu-uefi");
    let c = HwConfig::from_inventory(&inv, Bootloader::for_machine(&inv, None), String::new());
    assert_eq!(c.bootloader, Bootloader::SystemdBoot);
    let text = c.render();
    assert!(
        text.contains("boot.loader.systemd-boot.enable = true;"),
        "{text}"
    );
    assert_parses(&text);
}

#[test]
fn the_parser_check_itself_rejects_broken_nix() {
    let r = std::panic::catch_unwind(|| assert_parses("{ a = ; }"));
    assert!(r.is_err(), "a broken file must fail the parse check");
}

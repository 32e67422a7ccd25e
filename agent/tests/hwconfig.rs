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

/// Evaluate a generated module with stand-ins for its arguments (`lib`
/// with `mkDefault = x: x`, a `config` with the firmware option, a
/// `modulesPath` string) and return its attribute set as JSON: catches what
/// parsing alone cannot (an attribute defined twice through a nested path).
fn eval_module(path: &Path) -> serde_json::Value {
    let expr = format!(
        "builtins.removeAttrs (import {} {{ config = {{ hardware.enableRedistributableFirmware = true; }}; \
         lib = {{ mkDefault = x: x; }}; modulesPath = \"/modules\"; }}) [ \"imports\" ]",
        path.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .output()
        .expect("nix-instantiate (Debian: nix-bin; ./x installs it)");
    assert!(
        out.status.success(),
        "{} does not evaluate: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `landfall-agent hwconfig` on the captured VMs with every shipped layout:
/// the file evaluates, has the layout's storage, and the bootloader follows
/// the firmware (GRUB on the BIOS boot disk by id, once).
#[test]
fn hwconfig_cli_for_every_layout_and_firmware_evaluates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    for layout in [
        "simple-efi",
        "hybrid",
        "btrfs-subvolumes",
        "luks-btrfs",
        "two-disk",
        "xfs-swap",
    ] {
        for fw in ["qemu-bios", "qemu-uefi"] {
            let disks: &[&str] = if layout == "two-disk" {
                &[
                    "--disk",
                    "system=/dev/vda",
                    "--size",
                    "system=8G",
                    "--disk",
                    "data=/dev/vdb",
                    "--size",
                    "data=8G",
                ]
            } else {
                &["--disk", "main=/dev/vda", "--size", "main=8G"]
            };
            let out = Command::new(env!("CARGO_BIN_EXE_landfall-agent"))
                .arg("hwconfig")
                .arg("--sysroot")
                .arg(root.join("agent/tests/fixtures").join(fw))
                .arg("--layout")
                .arg(root.join("disko-layouts").join(format!("{layout}.nix")))
                .args(disks)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{layout} {fw}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = dir.path().join(format!("{layout}-{fw}.nix"));
            std::fs::write(&file, &out.stdout).unwrap();
            let m = eval_module(&file);
            let at = format!("{layout} on {fw}");
            assert!(m["fileSystems"]["/"]["device"].is_string(), "{at}: {m}");
            assert_eq!(
                m["boot"]["initrd"]["availableKernelModules"][0], "ata_piix",
                "{at}"
            );
            let grub = &m["boot"]["loader"]["grub"];
            if fw == "qemu-bios" {
                assert_eq!(
                    grub["device"], "/dev/disk/by-id/virtio-LFSERIAL01",
                    "{at}: {m}"
                );
                assert!(
                    grub.get("devices").is_none(),
                    "{at}: the boot disk listed twice: {m}"
                );
            } else {
                assert_eq!(m["boot"]["loader"]["systemd-boot"]["enable"], true, "{at}");
                assert!(grub.is_null(), "{at}: {m}");
            }
            if layout == "luks-btrfs" {
                assert_eq!(
                    m["boot"]["initrd"]["luks"]["devices"]["crypted"]["device"],
                    "/dev/disk/by-partlabel/disk-main-luks",
                    "{at}"
                );
            }
            if layout == "xfs-swap" {
                assert!(
                    m["swapDevices"].as_array().is_some_and(|s| !s.is_empty()),
                    "{at}: {m}"
                );
            }
        }
    }
}

/// The generated `/etc/nixos/flake.nix` parses and names the fleet and the host.
#[test]
fn generated_flake_parses_and_points_at_the_fleet() {
    use landfall_agent::install::configure::{flake_file, FlakeRef};
    let text = flake_file(&FlakeRef::parse("git+https://git.lan/fleet?ref=main#ws-01").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flake.nix");
    std::fs::write(&file, &text).unwrap();
    assert_parses(&text);
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr"])
        .arg(format!(
            "let f = import {}; o = f.outputs {{ fleet.nixosConfigurations.\"ws-01\".extendModules = m: m; }}; \
             in {{ url = f.inputs.fleet.url; modules = map toString o.nixosConfigurations.\"ws-01\".modules; }}",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["url"], "git+https://git.lan/fleet?ref=main");
    assert_eq!(
        v["modules"][0],
        dir.path()
            .join("hardware-configuration.nix")
            .display()
            .to_string()
    );
}

/// `luks_unlock = "tpm2"`: the generated file evaluates, the initrd is systemd's and unseals
/// the TPM2 token (`crypttabExtraOpts`), and nothing of the key reaches the target's config.
#[test]
fn hwconfig_with_tpm2_unlock_evaluates_with_a_systemd_initrd_and_no_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_landfall-agent"))
        .arg("hwconfig")
        .arg("--sysroot")
        .arg(root.join("agent/tests/fixtures/qemu-uefi"))
        .arg("--layout")
        .arg(root.join("disko-layouts/luks-btrfs.nix"))
        .args(["--disk", "main=/dev/vda", "--size", "main=8G"])
        .args(["--luks-unlock", "tpm2"])
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hardware-configuration.nix");
    std::fs::write(&file, text.as_bytes()).unwrap();
    let m = eval_module(&file);
    let initrd = &m["boot"]["initrd"];
    assert_eq!(initrd["systemd"]["enable"], true, "{text}");
    assert_eq!(
        initrd["luks"]["devices"]["crypted"],
        serde_json::json!({
            "device": "/dev/disk/by-partlabel/disk-main-luks",
            "allowDiscards": true,
            "crypttabExtraOpts": ["tpm2-device=auto"],
        }),
        "{text}"
    );
    assert!(initrd.get("secrets").is_none(), "{text}");
    for word in ["keyFile", "secrets", "fallbackToPassword", "/run/landfall"] {
        assert!(!text.contains(word), "{word} in:\n{text}");
    }
}

//! TEST DOUBLES: stand-ins for programs that cannot run on the test machine. Only one:
//! `nixos-install`, because no NixOS closure can be built here. The VM tests put it on the
//! test image's PATH; what it checks and prints is in its header
//! (`vm-tests/doubles/nixos-install.TEST-DOUBLE.sh`).

/// The `nixos-install` TEST DOUBLE, a busybox `sh` script.
pub const NIXOS_INSTALL: &str = include_str!("../doubles/nixos-install.TEST-DOUBLE.sh");

/// Where the test image has it: first on /init's PATH, as `nixos-install`.
pub const NIXOS_INSTALL_GUEST_PATH: &str = "usr/local/sbin/nixos-install";

/// The marker it writes into the target (`/mnt/etc/...` during the install; `/etc/...` of the
/// installed root filesystem): `{double, args, flake, system, attr, toplevel, run}`.
pub const NIXOS_INSTALL_MARKER: &str = "/etc/landfall-test-double.json";

/// Kernel parameter choosing its failure mode: `ok`, `fail-KIND` or `fail-once-KIND`
/// (KIND: eval, build, download, bootloader), or `hold-once`: the first run of the boot
/// creates [`NIXOS_INSTALL_HOLDING`] mid-output and prints a line every 0.5 s until it is
/// killed (the restart test kills the agent then).
pub const NIXOS_INSTALL_MODE_PARAM: &str = "landfall_test.nixos_install";

/// Created by a `hold-once` run when it starts holding (guest path).
pub const NIXOS_INSTALL_HOLDING: &str = "/run/landfall-test-double.holding";

#[cfg(test)]
mod tests {
    //! The double run by busybox `sh` (only busybox applets on PATH, as in the image) against
    //! a fake root: `LANDFALL_TEST_DOUBLE_PREFIX` puts /proc, /mnt and /run under a tempdir.

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use crate::cmd::Cmd;

    use super::*;

    const BUSYBOX: &str = "/bin/busybox";
    const FLAKE_ARGS: &[&str] = &[
        "--root",
        "/mnt",
        "--no-root-passwd",
        "--no-channel-copy",
        "--flake",
        "/mnt/etc/nixos#ws-01",
    ];
    const SYSTEM: &str =
        "/nix/store/6x3k8mcbqxm0jqz5yn1w4lrf2c9i7hgd-nixos-system-ws-01-24.11.20241201.d2c4ab8";

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        /// A target the agent prepared correctly: /mnt mounted, the generated files there.
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            fs::create_dir_all(d.join("bin")).unwrap();
            Cmd::new(BUSYBOX)
                .args(["--install", "-s"])
                .arg(d.join("bin"))
                .run_blocking()
                .expect("busybox --install");
            fs::create_dir_all(d.join("proc")).unwrap();
            fs::create_dir_all(d.join("mnt/etc/nixos")).unwrap();
            fs::create_dir_all(d.join("mnt/etc/landfall")).unwrap();
            let f = Fake { dir };
            f.write("proc/mounts", "proc /proc proc rw 0 0\n/dev/vda3 /mnt ext4 rw,relatime 0 0\n/dev/vda2 /mnt/boot vfat rw 0 0\n", 0o444);
            f.write(
                "proc/cmdline",
                "console=ttyS0 landfall.server=http://10.0.2.2:1\n",
                0o444,
            );
            f.write(
                "mnt/etc/nixos/hardware-configuration.nix",
                "{ ... }: { }\n",
                0o644,
            );
            f.write("mnt/etc/nixos/flake.nix", "{ outputs = _: { }; }\n", 0o644);
            f.write("mnt/etc/landfall/verify.json", "{}\n", 0o600);
            f.chmod("mnt/etc/landfall", 0o700);
            f
        }

        fn path(&self, rel: &str) -> std::path::PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str, mode: u32) {
            fs::write(self.path(rel), text).unwrap();
            self.chmod(rel, mode);
        }

        fn chmod(&self, rel: &str, mode: u32) {
            fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).unwrap();
        }

        /// (exit code, stdout, stderr)
        fn run(&self, args: &[&str]) -> (i32, String, String) {
            self.run_env(args, &[])
        }

        fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
            let script = self.path("nixos-install");
            fs::write(&script, NIXOS_INSTALL).unwrap();
            let mut c = Cmd::new(self.path("bin/sh"))
                .arg(&script)
                .args(args)
                .env_clear()
                .env("PATH", self.path("bin"))
                .env("LANDFALL_TEST_DOUBLE_PREFIX", self.dir.path());
            for (k, v) in env {
                c = c.env(k, v);
            }
            let out = c.output_blocking().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }

        fn marker(&self) -> serde_json::Value {
            let p = self.path(&format!("mnt{NIXOS_INSTALL_MARKER}"));
            serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap()
        }

        fn with_args_except(&self, drop: &str) -> Vec<&'static str> {
            FLAKE_ARGS.iter().copied().filter(|a| *a != drop).collect()
        }
    }

    fn assert_contract_error(got: (i32, String, String), says: &str) {
        let (code, _, err) = &got;
        assert_eq!(*code, 2, "{got:?}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
        assert!(
            line.contains("TEST DOUBLE") && line.contains(says),
            "{says:?} in {got:?}"
        );
    }

    /// Every /nix/store path it prints has a 32-character Nix base-32 hash.
    fn assert_store_paths_well_formed(text: &str) {
        for part in text.split("/nix/store/").skip(1) {
            let hash = &part[..32.min(part.len())];
            assert!(
                hash.len() == 32
                    && hash
                        .chars()
                        .all(|c| "0123456789abcdfghijklmnpqrsvwxyz".contains(c))
                    && part[32..].starts_with('-'),
                "bad store path /nix/store/{part}"
            );
        }
    }

    #[test]
    fn a_prepared_flake_install_succeeds_and_leaves_what_activation_would() {
        let f = Fake::new();
        let (code, out, err) = f.run(FLAKE_ARGS);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            out.starts_with("building the flake in /mnt/etc/nixos...\n"),
            "{out}"
        );
        assert!(out.contains("installing the boot loader...\n"), "{out}");
        assert!(out.ends_with("installation finished!\n"), "{out}");
        assert!(
            err.contains("copying path '/nix/store/")
                && err.contains("' from 'https://cache.nixos.org'...\n"),
            "{err}"
        );
        assert!(
            err.contains("building '/nix/store/") && err.contains(".drv'...\n"),
            "{err}"
        );
        assert!(!err.contains("error"), "{err}");
        assert_store_paths_well_formed(&format!("{out}{err}"));
        // No firmware/efi in the fake /sys: the BIOS boot loader's lines.
        assert!(out.contains("Installing for i386-pc platform."), "{out}");

        assert_eq!(
            fs::read_to_string(f.path("mnt/etc/hostname")).unwrap(),
            "ws-01\n"
        );
        assert!(f.path("mnt/etc/NIXOS").is_file());
        let m = f.marker();
        assert_eq!(m["double"], "nixos-install");
        assert_eq!(m["args"], serde_json::json!(FLAKE_ARGS));
        assert_eq!(m["flake"], "/mnt/etc/nixos#ws-01");
        assert_eq!(m["system"], serde_json::Value::Null);
        assert_eq!(m["attr"], "ws-01");
        assert_eq!(m["run"], 1);
    }

    /// Issue 16: what the agent made must be assembled by the installed system: an active
    /// md array needs boot.swraid with an ARRAY line, an active thin pool
    /// services.lvm.boot.thin, an f2fs mount "f2fs" in boot.supportedFilesystems.
    #[test]
    fn the_storage_the_agent_made_is_declared_for_the_installed_system() {
        let f = Fake::new();
        f.write(
            "proc/mdstat",
            "Personalities : [raid1]\nmd127 : active raid1 vdb3[1] vda3[0]\n      1046528 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n",
            0o444,
        );
        f.write(
            "dmsetup-table",
            "mainpool-thinpool-tpool: 0 524288 thin-pool 253:1 253:2 128 0 0 \n",
            0o444,
        );
        f.write(
            "proc/mounts",
            "/dev/md127p1 /mnt ext4 rw 0 0\n/dev/mainpool/data /mnt/data f2fs rw 0 0\n",
            0o444,
        );
        let hw = "mnt/etc/nixos/hardware-configuration.nix";
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "md array md127 is active but hardware-configuration.nix lacks boot.swraid.enable = true",
        );
        let swraid = "  boot.swraid.enable = true;\n";
        f.write(hw, &format!("{{ ... }}: {{\n{swraid}}}\n"), 0o644);
        assert_contract_error(f.run(FLAKE_ARGS), "boot.swraid.mdadmConf has no ARRAY line");
        let conf = "  boot.swraid.mdadmConf = ''\n    ARRAY /dev/md/raid1 name=any:raid1\n    MAILADDR root\n  '';\n";
        f.write(hw, &format!("{{ ... }}: {{\n{swraid}{conf}}}\n"), 0o644);
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "a thin pool is active but hardware-configuration.nix lacks services.lvm.boot.thin.enable = true",
        );
        let thin = "  services.lvm.boot.thin.enable = true;\n";
        f.write(
            hw,
            &format!("{{ ... }}: {{\n{swraid}{conf}{thin}}}\n"),
            0o644,
        );
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "an f2fs filesystem is mounted under /mnt but boot.supportedFilesystems lacks \"f2fs\"",
        );
        let fs = "  boot.supportedFilesystems = [ \"f2fs\" ];\n";
        f.write(
            hw,
            &format!("{{ ... }}: {{\n{swraid}{conf}{thin}{fs}}}\n"),
            0o644,
        );
        let (code, out, err) = f.run(FLAKE_ARGS);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(
            f.marker()["storage"],
            serde_json::json!(["md:md127", "lvm-thin", "fs:f2fs"])
        );
        // Nothing of the kind: nothing asked, nothing recorded.
        let plain = Fake::new();
        assert_eq!(plain.run(FLAKE_ARGS).0, 0);
        assert_eq!(plain.marker()["storage"], serde_json::json!([]));
    }

    /// The installed initrd's view (`stage1`) of each LUKS unlock method, from a hardware
    /// file shaped as the agent writes it: the keyFile; `tpm2` only with the systemd
    /// initrd (nixpkgs reads crypttabExtraOpts there only); else a prompt (`-`).
    #[test]
    fn the_initrd_view_carries_the_luks_unlock_method() {
        let hw = |luks_extra: &str, tail: &str| {
            format!(
                "{{ config, lib, modulesPath, ... }}:\n{{\n  boot.initrd.luks.devices = {{\n    crypted = {{\n      allowDiscards = true;\n{luks_extra}      device = \"/dev/disk/by-partlabel/disk-main-luks\";\n    }};\n  }};\n{tail}  fileSystems = {{\n    \"/\" = {{\n      device = \"/dev/mapper/crypted\";\n      fsType = \"btrfs\";\n      options = [ \"compress=zstd\" \"subvol=/root\" ];\n    }};\n  }};\n}}\n"
            )
        };
        let tpm2 = "      crypttabExtraOpts = [ \"tpm2-device=auto\" ];\n";
        let systemd = "  boot.initrd.systemd.enable = true;\n";
        for (what, text, method) in [
            ("tpm2", hw(tpm2, systemd), "tpm2"),
            ("tpm2 without the systemd initrd", hw(tpm2, ""), "-"),
            ("prompt", hw("", ""), "-"),
            (
                "initrd_key",
                hw(
                    "      keyFile = \"/etc/secrets/initrd/luks-crypted.key\";\n",
                    "",
                ),
                "/etc/secrets/initrd/luks-crypted.key",
            ),
        ] {
            let f = Fake::new();
            f.write("mnt/etc/nixos/hardware-configuration.nix", &text, 0o644);
            let (code, out, err) = f.run(FLAKE_ARGS);
            assert_eq!(code, 0, "{what}: {out}\n{err}");
            let stage1 =
                fs::read_to_string(f.path("mnt/boot/landfall-test-initrd/stage1")).unwrap();
            assert_eq!(
                stage1,
                format!(
                    "root /dev/mapper/crypted btrfs compress=zstd,subvol=/root\n\
                     luks crypted /dev/disk/by-partlabel/disk-main-luks {method}\n"
                ),
                "{what}:\n{text}"
            );
        }
    }

    #[test]
    fn a_prebuilt_system_needs_no_flake_nix() {
        let f = Fake::new();
        fs::remove_file(f.path("mnt/etc/nixos/flake.nix")).unwrap();
        fs::create_dir_all(f.path("sys/firmware/efi")).unwrap();
        let args = [
            "--root",
            "/mnt",
            "--system",
            SYSTEM,
            "--no-channel-copy",
            "--no-root-passwd",
        ];
        let (code, out, err) = f.run(&args);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(!out.contains("building the flake"), "{out}");
        assert!(
            out.contains("systemd-bootx64.efi"),
            "UEFI: systemd-boot's lines: {out}"
        );
        assert_eq!(
            fs::read_to_string(f.path("mnt/etc/hostname")).unwrap(),
            "ws-01\n"
        );
        assert_eq!(f.marker()["system"], SYSTEM);
        assert_eq!(f.marker()["toplevel"], SYSTEM);
    }

    #[test]
    fn arguments_the_agent_must_pass() {
        let f = Fake::new();
        assert_contract_error(
            f.run(&f.with_args_except("--no-root-passwd")),
            "--no-root-passwd missing",
        );
        assert_contract_error(
            f.run(&f.with_args_except("--no-channel-copy")),
            "--no-channel-copy missing",
        );
        let mut other_root = FLAKE_ARGS.to_vec();
        other_root[1] = "/target";
        assert_contract_error(f.run(&other_root), "--root must be /mnt, got '/target'");
        let no_root: Vec<&str> = FLAKE_ARGS[2..].to_vec();
        assert_contract_error(f.run(&no_root), "--root must be /mnt, got '<missing>'");
        let mut no_attr = FLAKE_ARGS.to_vec();
        no_attr[5] = "/mnt/etc/nixos";
        assert_contract_error(f.run(&no_attr), "has no '#ATTR'");
        let mut both = FLAKE_ARGS.to_vec();
        both.extend(["--system", SYSTEM]);
        assert_contract_error(f.run(&both), "both --flake and --system");
        assert_contract_error(
            f.run(&FLAKE_ARGS[..4]),
            "neither --flake REF#ATTR nor --system",
        );
        let bad_system = [
            "--root",
            "/mnt",
            "--no-root-passwd",
            "--no-channel-copy",
            "--system",
            "/tmp/system",
        ];
        assert_contract_error(
            f.run(&bad_system),
            "is not /nix/store/HASH-nixos-system-HOST-VERSION",
        );
        let mut extra = FLAKE_ARGS.to_vec();
        extra.push("--impure");
        assert_contract_error(f.run(&extra), "unexpected argument '--impure'");
        let mut dangling = FLAKE_ARGS[..4].to_vec();
        dangling.push("--flake");
        assert_contract_error(f.run(&dangling), "--flake needs a value");
        // Nothing was written into the target by any of these.
        assert!(!f.path(&format!("mnt{NIXOS_INSTALL_MARKER}")).exists());
        assert!(!f.path("mnt/etc/hostname").exists());
    }

    #[test]
    fn the_target_the_agent_must_have_prepared() {
        let f = Fake::new();
        f.write(
            "proc/mounts",
            "proc /proc proc rw 0 0\n/dev/vda3 /mnt/boot ext4 rw 0 0\n",
            0o444,
        );
        assert_contract_error(f.run(FLAKE_ARGS), "/mnt is not a mount point");

        let f = Fake::new();
        fs::remove_file(f.path("mnt/etc/nixos/hardware-configuration.nix")).unwrap();
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "hardware-configuration.nix is missing or empty",
        );
        f.write("mnt/etc/nixos/hardware-configuration.nix", "", 0o644);
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "hardware-configuration.nix is missing or empty",
        );

        let f = Fake::new();
        fs::remove_file(f.path("mnt/etc/nixos/flake.nix")).unwrap();
        assert_contract_error(f.run(FLAKE_ARGS), "flake.nix is missing or empty (--flake)");

        let f = Fake::new();
        fs::remove_file(f.path("mnt/etc/landfall/verify.json")).unwrap();
        assert_contract_error(f.run(FLAKE_ARGS), "verify.json is missing");
        f.write("mnt/etc/landfall/verify.json", "{}", 0o644);
        assert_contract_error(f.run(FLAKE_ARGS), "verify.json has mode 644, want 600");
        f.chmod("mnt/etc/landfall/verify.json", 0o600);
        f.chmod("mnt/etc/landfall", 0o755);
        assert_contract_error(
            f.run(FLAKE_ARGS),
            "/mnt/etc/landfall has mode 755, want 700",
        );
        f.chmod("mnt/etc/landfall", 0o700);
        assert_eq!(f.run(FLAKE_ARGS).0, 0);
    }

    #[test]
    fn failure_modes_print_what_nix_prints_and_exit_1() {
        for (kind, says) in [
            (
                "eval",
                "error: The option `services.openssh.setings' does not exist.",
            ),
            ("build", "error: builder for '/nix/store/"),
            (
                "download",
                "error: unable to download 'https://cache.nixos.org/nar/",
            ),
            ("bootloader", "Failed to install bootloader"),
        ] {
            let f = Fake::new();
            f.write(
                "proc/cmdline",
                &format!("console=ttyS0 {NIXOS_INSTALL_MODE_PARAM}=fail-{kind} quiet\n"),
                0o444,
            );
            for _ in 0..2 {
                let (code, out, err) = f.run(FLAKE_ARGS);
                assert_eq!(code, 1, "{kind}: {out}\n{err}");
                assert!(err.contains(says), "{kind}: {says:?} in {err}");
                assert!(!out.contains("installation finished!"), "{kind}: {out}");
                assert_store_paths_well_formed(&err);
            }
            assert!(
                !f.path(&format!("mnt{NIXOS_INSTALL_MARKER}")).exists(),
                "{kind}"
            );
        }
        let (code, _, err) = {
            let f = Fake::new();
            f.write(
                "proc/cmdline",
                &format!("{NIXOS_INSTALL_MODE_PARAM}=fail-disk\n"),
                0o444,
            );
            f.run(FLAKE_ARGS)
        };
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("unknown failure kind 'disk'"), "{err}");
    }

    #[test]
    fn fail_once_fails_the_first_run_of_the_boot_only() {
        let f = Fake::new();
        f.write(
            "proc/cmdline",
            &format!("{NIXOS_INSTALL_MODE_PARAM}=fail-once-build\n"),
            0o444,
        );
        let (code, _, err) = f.run(FLAKE_ARGS);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("failed with exit code 1;"), "{err}");
        let (code, out, err) = f.run(FLAKE_ARGS);
        assert_eq!(code, 0, "the retry succeeds: {out}\n{err}");
        assert_eq!(f.marker()["run"], 2);
        // A new boot (an empty /run) fails once again.
        fs::remove_dir_all(f.path("run")).unwrap();
        assert_eq!(f.run(FLAKE_ARGS).0, 1);
    }

    #[test]
    fn hold_once_holds_the_first_run_of_the_boot_until_killed() {
        let f = Fake::new();
        f.write(
            "proc/cmdline",
            &format!("{NIXOS_INSTALL_MODE_PARAM}=hold-once\n"),
            0o444,
        );
        let holding = f.path(NIXOS_INSTALL_HOLDING.trim_start_matches('/'));
        // Not killed (the hold is 1 s here): it says so and fails the contract.
        let got = f.run_env(FLAKE_ARGS, &[("LANDFALL_TEST_DOUBLE_HOLD_SECS", "1")]);
        assert!(holding.exists(), "{got:?}");
        assert!(
            got.1
                .contains("hold-once: holding mid-install until killed (2)"),
            "{got:?}"
        );
        assert!(!got.1.contains("installation finished!"), "{got:?}");
        assert_contract_error(got, "not killed within 1 s");
        // The next run of the boot goes through.
        let (code, out, err) = f.run(FLAKE_ARGS);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(!out.contains("hold-once"), "{out}");
        assert_eq!(f.marker()["run"], 2);
    }

    #[test]
    fn the_script_says_it_is_a_test_double() {
        assert!(NIXOS_INSTALL.starts_with("#!/bin/sh\n"));
        assert!(NIXOS_INSTALL
            .lines()
            .take(4)
            .any(|l| l.contains("TEST DOUBLE")));
        assert!(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/doubles/nixos-install.TEST-DOUBLE.sh"
        ))
        .is_file());
    }
}

//! Pure plan tests for every layout (no root), and GPTs written into image
//! files checked with `sfdisk -d` and `sgdisk -v`, and against what sgdisk
//! itself computes from disko's own command line for the same layout.

mod disk_common;

use disk_common::*;
use landfall_agent::disk::layout::{Bound, Size};
use landfall_agent::disk::{plan, Plan};

const GIB: u64 = 1 << 30;

fn plan_of(name: &str, size: u64) -> Plan {
    let l = layout(name);
    plan(&l, &sized(&l, size)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn labels(p: &Plan, disk: &str) -> Vec<String> {
    p.disks
        .iter()
        .find(|d| d.name == disk)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.label.clone())
        .collect()
}

fn mountpoints(p: &Plan) -> Vec<&str> {
    p.mounts.iter().map(|m| m.mountpoint.as_str()).collect()
}

#[test]
fn every_layout_renders_and_plans() {
    for name in all_layouts() {
        let name = name.as_str();
        let p = plan_of(name, 4 * GIB);
        let text = p.to_string();
        assert!(
            text.contains("disk ") && text.contains("NixOS configuration"),
            "{name}:\n{text}"
        );
        // Serialisable, and the JSON carries the same partitions.
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(
            j["disks"].as_array().unwrap().len(),
            p.disks.len(),
            "{name}"
        );
        assert!(
            j["nixos"]["fileSystems"]["/"].is_object(),
            "{name}: no / in {}",
            j["nixos"]
        );
        // Mount order: every parent before its children.
        let m = mountpoints(&p);
        for (i, a) in m.iter().enumerate() {
            for b in &m[..i] {
                assert!(
                    !b.starts_with(&format!("{a}/")) || *a == "/",
                    "{name}: {b} mounted before its parent {a}"
                );
            }
        }
        assert_eq!(m[0], "/", "{name}");
    }
}

#[test]
fn simple_efi() {
    let p = plan_of("simple-efi", 4 * GIB);
    let d = &p.disks[0];
    assert_eq!(labels(&p, "main"), ["disk-main-ESP", "disk-main-root"]);
    assert_eq!(
        (d.partitions[0].first_lba, d.partitions[0].last_lba),
        (2048, 2048 + 1024000 - 1)
    );
    assert_eq!(d.partitions[0].type_code, "EF00");
    // root takes the rest up to the last 1 MiB boundary before the backup GPT.
    assert_eq!(d.partitions[1].first_lba, 1026048);
    assert_eq!(d.partitions[1].last_lba, 4 * GIB / 512 - 2048 - 1);
    let ops: Vec<String> = d.ops.iter().map(|o| o.describe()).collect();
    assert_eq!(ops[3], "mkfs.vfat /dev/<main>1");
    assert_eq!(ops[4], "mkfs.ext4 -F -q /dev/<main>2");
    assert_eq!(mountpoints(&p), ["/", "/boot"]);
    let nix = p.nixos.to_nix();
    assert!(
        nix.contains(r#"device = "/dev/disk/by-partlabel/disk-main-root";"#),
        "{nix}"
    );
    assert!(nix.contains(r#"options = [ "umask=0077" ];"#), "{nix}");
}

#[test]
fn hybrid_puts_bios_boot_first_and_names_grub_device() {
    let l = layout("hybrid");
    let mut t = sized(&l, 4 * GIB);
    t.get_mut("main").unwrap().by_id = Some("/dev/disk/by-id/virtio-abc".into());
    let p = plan(&l, &t).unwrap();
    assert_eq!(
        labels(&p, "main"),
        ["disk-main-boot", "disk-main-ESP", "disk-main-root"]
    );
    let d = &p.disks[0];
    assert_eq!(
        d.partitions[0].type_guid,
        "21686148-6449-6E6F-744E-656564454649"
    );
    assert_eq!(d.partitions[0].size_bytes, 1 << 20);
    assert_eq!(p.nixos.grub_devices, ["/dev/disk/by-id/virtio-abc"]);
    assert!(p.nixos.to_nix().contains("grub"));
}

#[test]
fn btrfs_subvolumes_mount_with_subvol_options() {
    let p = plan_of("btrfs-subvolumes", 4 * GIB);
    assert_eq!(mountpoints(&p), ["/", "/boot", "/home", "/nix"]);
    let nix = p.nixos.to_json();
    assert_eq!(
        nix["fileSystems"]["/nix"]["options"],
        serde_json::json!(["compress=zstd", "noatime", "subvol=/nix"])
    );
    assert_eq!(
        nix["fileSystems"]["/"]["options"],
        serde_json::json!(["defaults", "subvol=/rootfs"])
    );
    assert!(p.disks[0].ops.iter().any(|o| o
        .describe()
        .starts_with("btrfs subvolume create /home /nix /rootfs")));
}

#[test]
fn luks_passphrase_goes_to_stdin_and_the_installed_initrd_gets_its_own_key() {
    let p = plan_of("luks-btrfs", 4 * GIB);
    let text = p.to_string();
    // passwordFile: a passphrase on stdin (no --key-file: cryptsetup strips the newline).
    assert!(
        text.contains("cryptsetup luksFormat --batch-mode --type luks2 /dev/<main>2"),
        "{text}"
    );
    assert!(
        text.contains("cryptsetup open --allow-discards /dev/<main>2 crypted"),
        "{text}"
    );
    assert!(
        text.contains("# key: /run/landfall/secrets/luks.key on stdin"),
        "{text}"
    );
    let nix = p.nixos.to_json();
    let dev = &nix["boot"]["initrd"]["luks"]["devices"]["crypted"];
    assert_eq!(dev["device"], "/dev/disk/by-partlabel/disk-main-luks");
    assert_eq!(dev["allowDiscards"], true);
    // Unattended by default: the initrd opens it with its own copy of the key.
    assert_eq!(dev["keyFile"], "/etc/secrets/initrd/luks-crypted.key");
    assert_eq!(
        nix["boot"]["initrd"]["secrets"],
        serde_json::json!({"/etc/secrets/initrd/luks-crypted.key": null})
    );
    assert_eq!(
        p.nixos.initrd_keys.keys().collect::<Vec<_>>(),
        ["/etc/secrets/initrd/luks-crypted.key"]
    );
    assert_eq!(nix["fileSystems"]["/"]["device"], "/dev/mapper/crypted");
    // The key path the secrets step must feed and must not place in the target.
    assert_eq!(
        p.key_paths().into_iter().collect::<Vec<_>>(),
        ["/run/landfall/secrets/luks.key"]
    );
    assert!(plan_of("simple-efi", 4 * GIB).key_paths().is_empty());
}

#[test]
fn luks_prompt_gives_the_initrd_no_key_and_unknown_methods_are_refused() {
    use landfall_proto::LuksUnlock;
    let l = layout("luks-btrfs");
    let mut p = plan(&l, &sized(&l, 4 * GIB)).unwrap();
    p.nixos.set_luks_unlock(&l, LuksUnlock::Prompt).unwrap();
    let nix = p.nixos.to_json();
    let dev = &nix["boot"]["initrd"]["luks"]["devices"]["crypted"];
    assert_eq!(
        dev,
        &serde_json::json!({"device": "/dev/disk/by-partlabel/disk-main-luks", "allowDiscards": true})
    );
    assert!(nix["boot"]["initrd"].get("secrets").is_none(), "{nix:#}");
    assert!(p.nixos.initrd_keys.is_empty());
    let e = p
        .nixos
        .set_luks_unlock(&l, LuksUnlock::Unknown)
        .unwrap_err()
        .to_string();
    assert!(e.contains("luks_unlock") && e.contains("initrd_key"), "{e}");
}

#[test]
fn luks_tpm2_enrols_after_luks_format_and_gives_the_systemd_initrd_no_key() {
    use landfall_agent::disk::plan::Op;
    use landfall_proto::LuksUnlock;
    let l = layout("luks-btrfs");
    let mut p = plan(&l, &sized(&l, 4 * GIB)).unwrap();
    p.set_luks_unlock(&l, LuksUnlock::Tpm2, &[0, 7]).unwrap();
    assert!(p.needs_tpm2());
    let ops = &p.disks[0].ops;
    let at = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    let format = at(&|o| matches!(o, Op::LuksFormat { .. }));
    let enrol = at(&|o| matches!(o, Op::Tpm2Enroll { .. }));
    let open = at(&|o| matches!(o, Op::LuksOpen { .. }));
    let mkfs = at(&|o| matches!(o, Op::Mkfs { device, .. } if device == "/dev/mapper/crypted"));
    assert!(format < enrol && enrol < open && open < mkfs, "{ops:#?}");
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::Tpm2Enroll { .. }))
            .count(),
        1
    );
    // The command: the TPM2 sealed to the PCRs, an earlier run's TPM2 slot wiped, the key
    // read from a file (never argv): printed with a stand-in name and where the key is from.
    assert_eq!(
        ops[enrol].argv().unwrap(),
        [
            "systemd-cryptenroll",
            "--tpm2-device=auto",
            "--tpm2-pcrs=0+7",
            "--wipe-slot=tpm2",
            "--unlock-key-file=KEYFILE",
            "/dev/<main>2",
        ]
    );
    let text = p.to_string();
    assert!(
        text.contains("systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=0+7 --wipe-slot=tpm2 --unlock-key-file=KEYFILE /dev/<main>2   # KEYFILE: /run/landfall/secrets/luks.key in a 0600 file on tmpfs, removed after"),
        "{text}"
    );
    // Journalled like every operation: a resumed agent finds it done and skips it (the
    // entry names no per-run file, so replanning gives the same entry).
    use landfall_agent::disk::journal::{Done, Journal};
    assert_eq!(
        Journal::entry(&p, "main", &ops[enrol]),
        Done::Op {
            disk: "main".into(),
            what: ops[enrol].describe(),
        }
    );
    let j = serde_json::to_value(&p).unwrap();
    assert!(
        j["disks"][0]["ops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["op"] == "tpm2_enroll" && o["pcrs"] == serde_json::json!([0, 7])),
        "{j:#}"
    );
    // The installed system: systemd's initrd unseals the token; no key on the target.
    let nix = p.nixos.to_json();
    assert_eq!(nix["boot"]["initrd"]["systemd"]["enable"], true, "{nix:#}");
    assert_eq!(
        nix["boot"]["initrd"]["luks"]["devices"]["crypted"],
        serde_json::json!({
            "device": "/dev/disk/by-partlabel/disk-main-luks",
            "allowDiscards": true,
            "crypttabExtraOpts": ["tpm2-device=auto"],
        })
    );
    assert!(nix["boot"]["initrd"].get("secrets").is_none(), "{nix:#}");
    assert!(p.nixos.initrd_keys.is_empty());
    // The key still feeds luksFormat and the enrolment; it is never placed in the target.
    assert_eq!(
        p.key_paths().into_iter().collect::<Vec<_>>(),
        ["/run/landfall/secrets/luks.key"]
    );
    // An empty PCR list binds to the TPM alone.
    p.set_luks_unlock(&l, LuksUnlock::Tpm2, &[]).unwrap();
    assert!(p.disks[0].ops.iter().any(|o| o
        .argv()
        .is_some_and(|a| a.contains(&"--tpm2-pcrs=".to_owned()))));
    // Another method takes the enrolment out again.
    p.set_luks_unlock(&l, LuksUnlock::Prompt, &[7]).unwrap();
    assert!(!p.needs_tpm2());
    assert!(p.nixos.to_json()["boot"]["initrd"].get("systemd").is_none());
    // A layout without LUKS has nothing to enrol.
    let l = layout("simple-efi");
    let mut p = plan(&l, &sized(&l, 4 * GIB)).unwrap();
    p.set_luks_unlock(&l, LuksUnlock::Tpm2, &[7]).unwrap();
    assert!(!p.needs_tpm2());
}

/// No TPM: `luks_unlock = "tpm2"` is refused before anything is probed or written, with
/// the fix; a machine whose sysfs shows a TPM 2.0 passes the check.
#[test]
fn tpm2_without_a_tpm_is_refused_before_any_disk_is_touched() {
    use landfall_agent::disk::apply::check_tpm2;
    use landfall_proto::LuksUnlock;
    let l = layout("luks-btrfs");
    let mut p = plan(&l, &sized(&l, 4 * GIB)).unwrap();
    p.set_luks_unlock(&l, LuksUnlock::Tpm2, &[7]).unwrap();
    let sys = tempfile::tempdir().unwrap();
    let opts = landfall_agent::disk::ApplyOptions {
        sysfs_root: sys.path().to_owned(),
        ..Default::default()
    };
    // The plan's disk is `/dev/<main>`: any probe or write would fail differently.
    let e = format!(
        "{:#}",
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(landfall_agent::disk::apply(&p, &opts))
            .unwrap_err()
    );
    for want in [
        "luks_unlock = \"tpm2\" needs a TPM",
        "no disk was touched",
        "enable the TPM",
        "\"initrd_key\" or \"prompt\"",
    ] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
    let tpm = sys.path().join("sys/class/tpm/tpm0");
    std::fs::create_dir_all(&tpm).unwrap();
    std::fs::write(tpm.join("tpm_version_major"), "1\n").unwrap();
    let e = format!("{:#}", check_tpm2(sys.path()).unwrap_err());
    assert!(e.contains("TPM 2.0") && e.contains("version 1"), "{e}");
    std::fs::write(tpm.join("tpm_version_major"), "2\n").unwrap();
    check_tpm2(sys.path()).unwrap();
}

/// The unlock key for systemd-cryptenroll: 0600 in a fresh 0700 directory on tmpfs, gone
/// after; a state directory on a disk is refused.
#[test]
fn the_unlock_key_file_lives_on_tmpfs_only_while_it_is_used() {
    use landfall_agent::disk::apply::KeyFile;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs)");
    let f = KeyFile::new(shm.path(), b"secret").unwrap();
    let path = f.path().to_owned();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    f.close().unwrap();
    assert!(!path.parent().unwrap().exists());
    // Dropped on an error path: removed too.
    let f = KeyFile::new(shm.path(), b"secret").unwrap();
    let path = f.path().to_owned();
    drop(f);
    assert!(!path.parent().unwrap().exists());
    assert_eq!(std::fs::read_dir(shm.path()).unwrap().count(), 0);
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let e = format!("{:#}", KeyFile::new(disk.path(), b"secret").err().unwrap());
    assert!(e.contains("is not on tmpfs"), "{e}");
    assert_eq!(std::fs::read_dir(disk.path()).unwrap().count(), 0);
}

/// The issue this guards: a layout's installer-side key path reached the installed
/// initrd's config, so the installed machine could not unlock.
#[test]
fn no_emitted_config_names_a_path_only_the_installer_has() {
    use landfall_agent::disk::layout::INSTALLER_ONLY;
    use landfall_proto::LuksUnlock;
    for name in all_layouts() {
        let l = layout(&name);
        for unlock in [LuksUnlock::InitrdKey, LuksUnlock::Prompt, LuksUnlock::Tpm2] {
            let mut p = plan(&l, &sized(&l, 4 * GIB)).unwrap();
            p.set_luks_unlock(&l, unlock, &[7]).unwrap();
            let text = format!("{}\n{}", p.nixos.to_json(), p.nixos.to_nix());
            for prefix in INSTALLER_ONLY {
                assert!(
                    !text.contains(&format!("\"{prefix}")),
                    "{name} ({unlock:?}) names {prefix}...:\n{text}"
                );
            }
        }
    }
}

#[test]
fn two_disk_has_independent_op_lists() {
    let p = plan_of("two-disk", 2 * GIB);
    assert_eq!(
        p.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["data", "system"]
    );
    assert_eq!(labels(&p, "data"), ["disk-data-home"]);
    assert_eq!(mountpoints(&p), ["/", "/boot", "/home"]);
    assert_eq!(p.mounts[2].disk.as_deref(), Some("data"));
}

#[test]
fn xfs_swap_end_from_the_end_swap_and_tmpfs() {
    let p = plan_of("xfs-swap", 4 * GIB);
    let d = &p.disks[0];
    let swap = &d.partitions[2];
    assert_eq!(swap.label, "disk-main-swap");
    assert_eq!(swap.type_code, "8200");
    assert_eq!(swap.size_bytes, GIB);
    let nix = p.nixos.to_json();
    assert_eq!(nix["swapDevices"][0]["randomEncryption"]["enable"], true);
    assert_eq!(
        nix["swapDevices"][0]["options"],
        serde_json::json!(["defaults"])
    );
    // No mkswap for a randomly encrypted swap (disko lib/types/swap.nix).
    assert!(!d.ops.iter().any(|o| o.describe().starts_with("mkswap")));
    assert_eq!(nix["fileSystems"]["/tmp"]["fsType"], "tmpfs");
    assert_eq!(mountpoints(&p), ["/", "/boot", "/tmp"]);
}

/// A partition as `sfdisk -J` shows it: start, size, name, type, and the
/// attribute bits, the PARTUUID and the MBR active flag where set.
#[derive(Debug, PartialEq, Eq)]
struct Part {
    start: u64,
    size: u64,
    name: String,
    ty: String,
    attrs: String,
    uuid: Option<String>,
    bootable: bool,
}

/// `sfdisk -J` partitions of an image; the PARTUUID of those `fixed` says.
fn sfdisk_parts(img: &std::path::Path, fixed: &[bool]) -> Vec<Part> {
    let j: serde_json::Value =
        serde_json::from_str(&sh(&["sfdisk", "-J", img.to_str().unwrap()])).unwrap();
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| Part {
            start: p["start"].as_u64().unwrap(),
            size: p["size"].as_u64().unwrap(),
            name: p["name"].as_str().unwrap_or("").to_owned(),
            ty: p["type"].as_str().unwrap().to_ascii_uppercase(),
            attrs: p["attrs"].as_str().unwrap_or("").to_owned(),
            uuid: fixed
                .get(i)
                .copied()
                .unwrap_or(false)
                .then(|| p["uuid"].as_str().unwrap_or("").to_ascii_lowercase()),
            bootable: p["bootable"].as_bool().unwrap_or(false),
        })
        .collect()
}

fn kib(b: u64) -> String {
    format!("{}K", b / 1024)
}

/// Two empty image files of `size`.
fn images(size: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.img");
    let theirs = dir.path().join("theirs.img");
    for f in [&ours, &theirs] {
        std::fs::File::create(f).unwrap().set_len(size).unwrap();
    }
    (dir, ours, theirs)
}

/// Plan `layout` with its disk `disk_name` on the image `img`.
fn plan_on(
    l: &landfall_agent::disk::Layout,
    disk_name: &str,
    img: &std::path::Path,
    size: u64,
) -> Plan {
    let mut t = sized(l, size);
    t.get_mut(disk_name).unwrap().device = img.to_string_lossy().into_owned();
    plan(l, &t).unwrap()
}

/// Every fixture's GPT (attribute bits and fixed partition GUIDs
/// included), written by our writer, equals what sgdisk makes from
/// disko's own command lines (lib/types/gpt.nix `_create`: per partition
/// `sgdisk --align-end --new=N:START:END --partition-guid=N:UUID|R
/// --change-name=N:LABEL --typecode=N:TYPE --attributes=N:=:0
/// --attributes=N:set:BIT`). Disks whose tables have the same shape are
/// checked once.
#[test]
fn gpt_in_image_files_matches_sgdisk_running_diskos_commands() {
    use landfall_agent::disk::layout::TableKind;
    let mut seen = std::collections::BTreeSet::new();
    for name in all_layouts() {
        let l = layout(&name);
        for (disk_name, disk) in &l.disks {
            if disk.table().map(|t| t.kind) != Some(TableKind::Gpt) {
                continue;
            }
            let shape: Vec<String> = disk
                .partitions()
                .iter()
                .map(|p| {
                    format!(
                        "{:?} {:?} {:?} {} {:?} {:?}",
                        p.start, p.end, p.size, p.type_code, p.attributes, p.uuid
                    )
                })
                .collect();
            if !seen.insert(shape) {
                continue;
            }
            let size = 3 * GIB + 12345 * 512;
            let (_dir, ours, theirs) = images(size);
            let p = plan_on(&l, disk_name, &ours, size);
            let dp = p.disks.iter().find(|d| &d.name == disk_name).unwrap();
            landfall_agent::disk::gpt::write(dp).unwrap();

            // Valid for both tools.
            let v = sh(&["sgdisk", "-v", ours.to_str().unwrap()]);
            assert!(v.contains("No problems found"), "{name}/{disk_name}: {v}");
            let d = sh(&["sfdisk", "-d", ours.to_str().unwrap()]);
            assert!(d.contains("label: gpt"), "{d}");

            // disko runs one sgdisk per partition; one call with the same
            // options in the same order makes the same table (sgdisk applies
            // them in order) without its sleep after each write.
            let mut argv = vec!["sgdisk".to_owned(), "--align-end".to_owned()];
            for part in disk.partitions() {
                let n = part.number;
                let start = match part.start {
                    Bound::Default => "0".to_owned(),
                    Bound::At(b) => kib(b),
                    Bound::Plus(b) => format!("+{}", kib(b)),
                    Bound::FromEnd(b) => format!("-{}", kib(b)),
                };
                let end = match (part.end, part.size) {
                    (Bound::FromEnd(0), Size::Rest) => "-0".to_owned(),
                    (Bound::Plus(b), _) => format!("+{}", kib(b)),
                    (Bound::FromEnd(b), _) => format!("-{}", kib(b)),
                    (Bound::At(b), _) => kib(b),
                    (Bound::Default, _) => "0".to_owned(),
                };
                argv.extend([
                    format!("--new={n}:{start}:{end}"),
                    format!(
                        "--partition-guid={n}:{}",
                        part.uuid.clone().unwrap_or_else(|| "R".into())
                    ),
                    format!("--change-name={n}:{}", part.label),
                    format!("--typecode={n}:{}", part.type_code),
                    format!("--attributes={n}:=:0"),
                ]);
                for b in &part.attributes {
                    argv.push(format!("--attributes={n}:set:{b}"));
                }
            }
            argv.push(theirs.to_string_lossy().into_owned());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            sh(&argv);
            let fixed: Vec<bool> = disk.partitions().iter().map(|p| p.uuid.is_some()).collect();
            let a = sfdisk_parts(&ours, &fixed);
            let b = sfdisk_parts(&theirs, &fixed);
            assert_eq!(a, b, "{name}/{disk_name}: our GPT differs from sgdisk's");
            assert_plan_written(dp, &a, &format!("{name}/{disk_name}"));
        }
    }
    assert!(seen.len() >= 12, "only {} table shapes checked", seen.len());
}

/// disko's legacy `table` (lib/types/table.nix `_create`): `parted -s DEV
/// -- mklabel FORMAT`, then per partition `mkpart NAME|PART-TYPE [FS-TYPE]
/// START END`, `set N boot on`, `set N FLAG on`. Our plan places them as
/// parted does and our writers write the same table; checked on several
/// disk sizes, with the fixtures and extra positions (decimal units,
/// percentages, counted from the end).
#[test]
fn legacy_tables_in_image_files_match_parted_running_diskos_commands() {
    use landfall_agent::disk::layout::TableKind;
    require_tool("parted", "parted");
    let extra = |format: &str, parts: &[LegacyEntry]| {
        let list: Vec<serde_json::Value> = parts
            .iter()
            .enumerate()
            .map(|(i, (s, e, fs, boot, flags))| {
                serde_json::json!({"name": format!("p{i}"), "start": s, "end": e, "fs-type": fs,
                    "bootable": boot, "flags": flags})
            })
            .collect();
        landfall_agent::disk::Layout::from_json(
            &serde_json::json!({"disk": {"main": {"device": "auto",
            "content": {"type": "table", "format": format, "partitions": list}}}}),
        )
        .unwrap()
    };
    let mut layouts = vec![
        ("legacy-table".to_owned(), layout("legacy-table")),
        ("mbr-table".to_owned(), layout("mbr-table")),
    ];
    layouts.push((
        "decimal and percent (gpt)".into(),
        extra(
            "gpt",
            &[
                ("1M", "50M", None, false, &["lvm"]),
                ("50M", "40%", Some("linux-swap"), false, &[]),
                ("40%", "-1GB", Some("fat32"), false, &["legacy_boot"]),
                ("-1GB", "100%", None, true, &["bios_grub"]),
            ],
        ),
    ));
    layouts.push((
        "decimal and percent (msdos)".into(),
        extra(
            "msdos",
            &[
                ("0%", "10%", Some("fat32"), true, &[]),
                ("10%", "2.5GB", None, false, &["raid"]),
                ("2.5GB", "-512MiB", Some("ext4"), false, &["lvm"]),
                ("-512MiB", "100%", Some("linux-swap"), false, &[]),
            ],
        ),
    ));
    // The MBR type flags parted sets (0xef esp, 0x82 swap, 0x8e lvm, 0xfd raid), each
    // over an fs-type that would give another type.
    layouts.push((
        "type flags (msdos)".into(),
        extra(
            "msdos",
            &[
                ("1MiB", "20MiB", Some("fat32"), false, &["esp"]),
                ("20MiB", "40MiB", Some("ext4"), false, &["swap"]),
                ("40MiB", "60MiB", Some("linux-swap"), false, &["lvm"]),
                ("60MiB", "100%", None, true, &["raid"]),
            ],
        ),
    ));
    for (name, l) in &layouts {
        let disk = &l.disks["main"];
        let t = disk.table().unwrap();
        for size in [3 * GIB + 12345 * 512, 4 * GIB, 5 * GIB + 7 * 512] {
            let (_dir, ours, theirs) = images(size);
            let p = plan_on(l, "main", &ours, size);
            let dp = &p.disks[0];
            if t.kind == TableKind::Msdos {
                landfall_agent::disk::mbr::write(dp).unwrap();
            } else {
                landfall_agent::disk::gpt::write(dp).unwrap();
            }
            let dev = theirs.to_str().unwrap();
            let label = if t.kind == TableKind::Msdos {
                "msdos"
            } else {
                "gpt"
            };
            sh(&["parted", "-s", dev, "--", "mklabel", label]);
            for part in &t.partitions {
                let pp = part.parted.as_ref().unwrap();
                let mut argv = vec!["parted", "-s", dev, "--", "mkpart"];
                if t.kind == TableKind::Msdos {
                    argv.push(&pp.part_type);
                } else {
                    argv.push(&part.label);
                }
                if let Some(fs) = &pp.fs_type {
                    argv.push(fs);
                }
                argv.push(&pp.start.text);
                argv.push(&pp.end.text);
                sh(&argv);
                let n = part.number.to_string();
                let mut flags: Vec<&str> = Vec::new();
                if pp.bootable {
                    flags.push("boot");
                }
                flags.extend(pp.flags.iter().map(String::as_str));
                for f in flags {
                    sh(&["parted", "-s", dev, "--", "set", &n, f, "on"]);
                }
            }
            let a = sfdisk_parts(&ours, &[]);
            let b = sfdisk_parts(&theirs, &[]);
            let what = format!("{name} on {size} bytes");
            assert_eq!(a, b, "{what}: our table differs from parted's");
            if name == "type flags (msdos)" {
                let tys: Vec<(&str, bool)> =
                    a.iter().map(|p| (p.ty.as_str(), p.bootable)).collect();
                assert_eq!(
                    tys,
                    [("EF", false), ("82", false), ("8E", false), ("FD", true)],
                    "{what}"
                );
            }
            assert_plan_written(dp, &a, &what);
        }
    }
}

/// The plan says what was written: each partition's first sector and length.
fn assert_plan_written(dp: &landfall_agent::disk::plan::DiskPlan, written: &[Part], what: &str) {
    let planned: Vec<(u64, u64)> = dp
        .partitions
        .iter()
        .map(|p| (p.first_lba, p.last_lba - p.first_lba + 1))
        .collect();
    let written: Vec<(u64, u64)> = written.iter().map(|p| (p.start, p.size)).collect();
    assert_eq!(planned, written, "{what}");
}

/// A legacy table entry: start, end, fs-type, bootable, flags.
type LegacyEntry<'a> = (&'a str, &'a str, Option<&'a str>, bool, &'a [&'a str]);

/// A tool a test runs: missing fails the test with the package that has it.
fn require_tool(tool: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (./x installs it)"
    );
}

#[test]
fn cli_plan_is_pure_and_prints_json() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(64 << 20).unwrap();
    let before = hash_file(img.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_landfall-agent"))
        .args(["plan", "--layout"])
        .arg(layout_path("simple-efi"))
        .args(["--size", "main=2G", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["disks"][0]["partitions"][1]["label"], "disk-main-root");
    assert_eq!(hash_file(img.path()), before);
}

#[test]
fn the_emitted_nix_evaluates_to_the_emitted_json() {
    // The Nix expression and the JSON are the same configuration: Nix itself
    // evaluates the expression back to the JSON.
    let dir = tempfile::tempdir().unwrap();
    for name in all_layouts() {
        let name = name.as_str();
        let l = layout(name);
        let mut t = sized(&l, 4 * GIB);
        for (n, target) in t.iter_mut() {
            target.by_id = Some(format!("/dev/disk/by-id/virtio-{n}"));
        }
        let p = plan(&l, &t).unwrap();
        let f = dir.path().join(format!("{name}-disks.nix"));
        std::fs::write(&f, p.nixos.to_nix()).unwrap();
        assert_eq!(
            render(&f),
            p.nixos.to_json(),
            "{name}:\n{}",
            p.nixos.to_nix()
        );
    }
}

//! The new fixtures this host can apply (root; CI runs as root), on loop
//! devices, read back with the tools: GPT attribute bits and a fixed
//! PARTUUID, a hybrid MBR, an MBR table, a legacy GPT table, names with
//! spaces, hashed labels, a tmpfs root, resume swap, btrfs swap files, f2fs
//! (made; mounted only when the kernel has f2fs). md arrays, LVM and LUKS
//! need device-mapper and md, which this host's kernel lacks: the VM tests
//! apply those (docs/disks.md "disko examples").

mod disk_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use disk_common::*;
use landfall_agent::disk::{apply, plan, ApplyOptions, Keys, Plan};

const GIB: u64 = 1 << 30;

fn kernel_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

/// Apply fixture `name` on fresh loop disks (one per layout disk), run
/// `check` on the plan, then close everything.
fn applied(name: &str, check: impl FnOnce(&Plan, &Path)) {
    let l = layout(name);
    let disks: Vec<(String, LoopDisk)> = l
        .disks
        .keys()
        .map(|n| (n.clone(), LoopDisk::new(2 * GIB)))
        .collect();
    let overrides: BTreeMap<String, String> = disks
        .iter()
        .map(|(n, d)| (n.clone(), d.dev().to_owned()))
        .collect();
    let targets = landfall_agent::disk::cli_targets(&l, &overrides, &BTreeMap::new()).unwrap();
    let p = plan(&l, &targets).unwrap_or_else(|e| panic!("{name}: {e}"));
    let root = tempfile::tempdir().unwrap();
    let no_mount: Vec<String> = ["vfat", "ext4", "xfs", "btrfs", "f2fs"]
        .iter()
        .filter(|f| !kernel_has(f))
        .map(|f| f.to_string())
        .collect();
    let opts = ApplyOptions {
        root: root.path().to_path_buf(),
        wipe: true,
        no_mount_formats: no_mount,
        open_luks: false,
        keys: Arc::new(Keys::default()),
        ..Default::default()
    };
    let a = rt()
        .block_on(apply(&p, &opts))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    // The read-back inside apply covered every partition and signature.
    assert_eq!(
        a.read_back.partitions.len(),
        p.disks.iter().map(|d| d.partitions.len()).sum::<usize>(),
        "{name}"
    );
    check(&p, root.path());
    rt().block_on(a.close()).unwrap();
    drop(disks);
}

fn sfdisk_json(args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["sfdisk", "-J"];
    argv.extend_from_slice(args);
    serde_json::from_str(&sh(&argv)).unwrap()
}

/// The partition entries `sfdisk -J ARGS` lists.
fn entries(args: &[&str]) -> Vec<serde_json::Value> {
    sfdisk_json(args)["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn gpt_attribute_bits_a_fixed_partuuid_and_a_hybrid_mbr() {
    require_root();
    let _s = serial();
    applied("gpt-attributes", |p, _| {
        let d = &p.disks[0];
        let j = sfdisk_json(&[&d.target.device]);
        let parts = &j["partitiontable"]["partitions"];
        assert_eq!(parts[0]["attrs"], "RequiredPartition LegacyBIOSBootable");
        assert_eq!(
            blkid(&d.partitions[1].device)
                .get("PART_ENTRY_UUID")
                .map(String::as_str),
            Some("f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f0")
        );
    });
    applied("hybrid-mbr", |p, _| {
        let d = &p.disks[0];
        // The MBR: the firmware partition as a FAT32 (LBA) entry, then the 0xEE one.
        let mbr: Vec<(u64, String)> = entries(&["--label-nested", "dos", &d.target.device])
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            mbr,
            [(d.partitions[0].first_lba, "c".into()), (1, "ee".into())]
        );
        // The GPT is still the one the plan made.
        let j = sfdisk_json(&[&d.target.device]);
        assert_eq!(j["partitiontable"]["label"], "gpt");
        assert_eq!(
            j["partitiontable"]["partitions"].as_array().unwrap().len(),
            3
        );
    });
}

#[test]
fn mbr_and_legacy_gpt_tables_as_parted_would_make_them() {
    require_root();
    let _s = serial();
    applied("mbr-table", |p, root| {
        let d = &p.disks[0];
        let j = sfdisk_json(&[&d.target.device]);
        assert_eq!(j["partitiontable"]["label"], "dos");
        let parts: Vec<(u64, String, bool)> = entries(&[&d.target.device])
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["type"].as_str().unwrap().to_owned(),
                    e["bootable"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            parts,
            [
                (2048, "c".to_owned(), true),
                (524288, "83".to_owned(), false),
                (d.partitions[2].first_lba, "82".to_owned(), false),
            ]
        );
        assert_eq!(
            blkid(&d.partitions[2].device)
                .get("TYPE")
                .map(String::as_str),
            Some("swap")
        );
        if kernel_has("ext4") {
            assert!(root.join("lost+found").exists());
        }
    });
    applied("legacy-table", |p, _| {
        let d = &p.disks[0];
        let names: Vec<String> = entries(&[&d.target.device])
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["ESP", "name\\x20with\\x20spaces", "root"]);
    });
}

#[test]
fn names_labels_tmpfs_root_swap_and_btrfs_swap_files() {
    require_root();
    let _s = serial();
    applied("gpt-names", |p, _| {
        let labels: Vec<&str> = p.disks[0]
            .partitions
            .iter()
            .map(|p| p.label.as_str())
            .collect();
        assert!(labels.contains(&"disk-vdb-name with spaces"), "{labels:?}");
    });
    applied("long-disk-name", |p, _| {
        for part in &p.disks[0].partitions {
            assert_eq!(part.label.len(), 36);
            assert_eq!(
                blkid(&part.device).get("PART_ENTRY_NAME"),
                Some(&part.label)
            );
        }
    });
    applied("tmpfs-root", |_, root| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let r = std::fs::canonicalize(root).unwrap();
        assert!(
            mounts
                .lines()
                .any(|l| l.starts_with(&format!("none {} tmpfs", r.display()))),
            "{mounts}"
        );
    });
    applied("swap-resume", |p, _| {
        let d = &p.disks[0];
        // Priority order: ESP, encryptedSwap, root, plainSwap ("100%": last).
        // The randomly encrypted swap gets no signature (NixOS makes it at boot).
        assert_eq!(d.partitions[1].label, "disk-main-encryptedSwap");
        assert_eq!(blkid(&d.partitions[1].device).get("TYPE"), None);
        assert_eq!(
            blkid(&d.partitions[3].device)
                .get("TYPE")
                .map(String::as_str),
            Some("swap")
        );
        assert_eq!(
            p.nixos.resume_device.as_deref(),
            Some(d.partitions[3].stable_device.as_str())
        );
    });
    applied("btrfs-swapfiles", |_, root| {
        if !kernel_has("btrfs") {
            return;
        }
        for f in [
            "partition-root/swapfile",
            "partition-root/swapfile1",
            ".swapvol/swapfile",
            ".swapvol/rel-path",
        ] {
            let m = std::fs::metadata(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(m.len(), 20 << 20, "{f}");
        }
    });
}

#[test]
fn f2fs_is_made_with_its_features() {
    require_root();
    let _s = serial();
    applied("f2fs", |p, root| {
        let d = &p.disks[0];
        assert_eq!(
            blkid(&d.partitions[1].device)
                .get("TYPE")
                .map(String::as_str),
            Some("f2fs")
        );
        if kernel_has("f2fs") {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
            let r = std::fs::canonicalize(root).unwrap();
            assert!(
                mounts.contains(&format!(" {} f2fs ", r.display())),
                "{mounts}"
            );
        }
    });
}

#[test]
fn require_root_tools() {
    // The tools these tests and the hybrid MBR use.
    for (tool, package) in [
        ("sgdisk", "gdisk"),
        ("sfdisk", "fdisk"),
        ("mkfs.f2fs", "f2fs-tools"),
    ] {
        let ok = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is missing: install the Debian package {package} (./x installs it)"
        );
    }
}

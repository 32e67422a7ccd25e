//! Plans of the volume fixtures (no root): md arrays, LVM, ZFS pools and
//! bcachefs. The command lines are checked against the ones disko's own
//! source builds for the same layout (lib/types/mdadm.nix, lvm_vg.nix,
//! zpool.nix, zfs_fs.nix, zfs_volume.nix, bcachefs_filesystem.nix
//! `_create`, with disko's device names: `/dev/disk/by-partlabel/LABEL` for
//! a partition, rootMountPoint `/mnt`). ZFS and bcachefs cannot be applied
//! here (no module for the test kernel): these checks are their test.

mod disk_common;

use disk_common::*;
use landfall_agent::disk::layout::VolumeKind;
use landfall_agent::disk::plan::Op;
use landfall_agent::disk::{plan, Plan};

const GIB: u64 = 1 << 30;

fn plan_of(name: &str) -> Plan {
    let l = layout(name);
    plan(&l, &sized(&l, 8 * GIB)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// An argv with each partition node written as disko names it
/// (by-partlabel) and the target root as disko's `/mnt`.
fn disko_argv(p: &Plan, op: &Op) -> String {
    let mut argv = op.argv().unwrap_or_else(|| panic!("{op:?} has no argv"));
    for a in &mut argv {
        for d in &p.disks {
            for part in &d.partitions {
                if *a == part.device {
                    *a = format!("/dev/disk/by-partlabel/{}", part.label);
                }
            }
        }
        if a == "ROOT" {
            *a = "/mnt".into();
        }
    }
    argv.join(" ")
}

/// The operations of volume `label` as disko command lines.
fn volume_cmds(p: &Plan, label: &str) -> Vec<String> {
    p.volumes
        .iter()
        .find(|v| v.label == label)
        .unwrap_or_else(|| panic!("no volume {label}"))
        .ops
        .iter()
        .filter(|op| op.argv().is_some())
        .map(|op| disko_argv(p, op))
        .collect()
}

fn nix(p: &Plan) -> serde_json::Value {
    p.nixos.to_json()
}

#[test]
fn zfs_mirror_pool_datasets_and_zvols_run_diskos_commands() {
    let p = plan_of("zfs");
    assert_eq!(
        volume_cmds(&p, "zpool.zroot"),
        [
            // zpool.nix: -f NAME -R ROOT, -o per option, -O per root fs option
            // (attribute order), then "${mode} ${zfs_devices[*]}" in the order the
            // members were created (disk x, then y).
            "zpool create -f zroot -R /mnt -o cachefile=none -O com.sun:auto-snapshot=false -O compression=zstd mirror /dev/disk/by-partlabel/disk-x-zfs /dev/disk/by-partlabel/disk-y-zfs",
            // zfs_fs.nix: `zfs create -up NAME` with ({ mountpoint } // options);
            // datasets in attribute-name order.
            "zfs create -up zroot/encrypted -o encryption=aes-256-gcm -o keyformat=passphrase -o keylocation=file:///run/landfall/secrets/zfs.key -o mountpoint=none",
            "zfs create -up zroot/encrypted/test -o mountpoint=/zfs_crypted",
            // zfs_volume.nix: `zfs create NAME -o ... -V SIZE EXTRA`, then its content.
            "zfs create zroot/zfs_encryptedvolume -o encryption=aes-256-gcm -o keyformat=passphrase -o keylocation=file:///run/landfall/secrets/zfs.key -V 10M",
            "mkfs.ext4 -F -q /dev/zvol/zroot/zfs_encryptedvolume",
            "zfs create -up zroot/zfs_fs -o com.sun:auto-snapshot=true -o mountpoint=/zfs_fs",
            "zfs create -up zroot/zfs_legacy_fs -o mountpoint=legacy",
            "zfs create -up zroot/zfs_unmounted_fs -o mountpoint=none",
            "zfs create zroot/zfs_volume -V 10M",
            "mkfs.ext4 -F -q /dev/zvol/zroot/zfs_volume",
            "zfs create zroot/zfs_volume_no_content -V 10M",
        ]
    );
    // zfs_fs.nix `_mount`/`_config`: zfsutil unless legacy; none and
    // canmount=off are not mounted.
    let mounts: Vec<(String, String, String)> = p
        .mounts
        .iter()
        .filter(|m| m.fs_type == "zfs")
        .map(|m| (m.mountpoint.clone(), m.device.clone(), m.options.join(",")))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/".into(), "zroot".into(), "defaults,zfsutil".into()),
            (
                "/zfs_crypted".into(),
                "zroot/encrypted/test".into(),
                "defaults,zfsutil".into()
            ),
            (
                "/zfs_fs".into(),
                "zroot/zfs_fs".into(),
                "defaults,zfsutil".into()
            ),
            (
                "/zfs_legacy_fs".into(),
                "zroot/zfs_legacy_fs".into(),
                "defaults".into()
            ),
        ]
    );
    let n = nix(&p);
    assert_eq!(
        n["fileSystems"]["/"],
        serde_json::json!({"device": "zroot", "fsType": "zfs", "options": ["defaults", "zfsutil"]})
    );
    assert_eq!(
        n["fileSystems"]["/zfs_legacy_fs"]["options"],
        serde_json::json!(["defaults"])
    );
    assert!(n["fileSystems"].get("/zfs_unmounted_fs").is_none());
    assert_eq!(
        n["boot"]["supportedFilesystems"],
        serde_json::json!(["zfs"])
    );
    assert!(p.nixos.needs_host_id);
    // The key file the datasets' keylocation names is a secret the installer reads.
    assert_eq!(p.volumes[0].kind, VolumeKind::Zpool);
}

#[test]
fn zfs_topology_is_the_prescribed_one() {
    let p = plan_of("zfs-topology");
    let cmds = volume_cmds(&p, "zpool.zroot");
    let d = |n: &str| format!("/dev/disk/by-partlabel/disk-{n}-zfs");
    // zpool.nix: storage vdevs (those without mode first), then each class
    // keyword once: spare, log, dedup, special, cache.
    let want = format!(
        "zpool create -f zroot -R /mnt -O com.sun:auto-snapshot=false -O compression=zstd \
         {} mirror {} {} spare {} log {} mirror {} {} dedup {} mirror {} {} special {} mirror {} {} cache {}",
        d("data1"),
        d("data2"),
        d("data3"),
        d("spare"),
        d("log3"),
        d("log1"),
        d("log2"),
        d("dedup3"),
        d("dedup1"),
        d("dedup2"),
        d("special3"),
        d("special1"),
        d("special2"),
        d("cache"),
    );
    assert_eq!(cmds[0], want);
}

#[test]
fn zfs_pool_options_canmount_off_and_whole_disk_members() {
    let p = plan_of("zfs-encrypted-root");
    assert_eq!(
        volume_cmds(&p, "zpool.zroot"),
        [
            "zpool create -f zroot -R /mnt -o ashift=12 -O acltype=posixacl -O com.sun:auto-snapshot=true -O compression=zstd -O mountpoint=none -O xattr=sa /dev/disk/by-partlabel/disk-root-zfs",
            "zfs create -up zroot/root -o encryption=aes-256-gcm -o keyformat=passphrase -o keylocation=prompt -o mountpoint=/",
            "zfs create -up zroot/root/nix -o mountpoint=/nix",
            "zfs create zroot/root/swap -o com.sun:auto-snapshot=false -o compression=zle -o logbias=throughput -o primarycache=metadata -o secondarycache=none -o sync=always -o volblocksize=4096 -V 10M",
            // swap.nix: mkswap on the zvol.
            "mkswap /dev/zvol/zroot/root/swap",
        ]
    );
    // mountpoint=none on the root dataset: nothing mounted for the pool itself.
    assert!(!p.mounts.iter().any(|m| m.device == "zroot"));
    assert_eq!(
        nix(&p)["swapDevices"][0]["device"],
        "/dev/zvol/zroot/root/swap"
    );

    // canmount=off: `-m none` (zpool.nix); two pools, members by disk order.
    let p = plan_of("zfs-two-pools");
    assert_eq!(
        volume_cmds(&p, "zpool.storage")[0],
        "zpool create -f storage -R /mnt mirror /dev/disk/by-partlabel/disk-y-zfs /dev/disk/by-partlabel/disk-z-zfs"
    );
    assert_eq!(
        volume_cmds(&p, "zpool.storage2")[0],
        "zpool create -f storage2 -R /mnt -m none -O canmount=off /dev/disk/by-partlabel/disk-a-zfs"
    );
    assert!(!p.mounts.iter().any(|m| m.device == "storage2"));
    assert!(p
        .mounts
        .iter()
        .any(|m| m.device == "storage" && m.mountpoint == "/storage"));

    // A whole disk as member (zfs.nix device = the disk).
    let p = plan_of("zfs-whole-disk");
    assert_eq!(
        volume_cmds(&p, "zpool.zroot"),
        [
            "zpool create -f zroot -R /mnt /dev/<disk2>",
            "zfs create -up zroot/root -o mountpoint=none",
            "zfs create -up zroot/root/zfs_fs -o com.sun:auto-snapshot=true -o mountpoint=/zfs_fs",
        ]
    );
    let disk2 = p.disks.iter().find(|d| d.name == "disk2").unwrap();
    assert!(disk2.table.is_none() && disk2.partitions.is_empty());
    assert_eq!(
        disk2.ops.iter().map(Op::describe).collect::<Vec<_>>(),
        ["wipefs --all --force /dev/<disk2> (and its partitions)"]
    );
}

#[test]
fn bcachefs_formats_every_member_as_disko_does() {
    use sha2::{Digest, Sha256};
    let p = plan_of("bcachefs");
    let h: String = Sha256::digest(b"mounted_subvolumes_in_multi")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    // bcachefs.nix writes "--label=L", the member's args and its device per
    // member; bcachefs_filesystem.nix: `bcachefs format "$@" --uuid=U EXTRA
    // --encrypted` (the passphrase on stdin).
    let cmds = volume_cmds(&p, "bcachefs_filesystems.mounted_subvolumes_in_multi");
    assert_eq!(
        cmds[0],
        format!(
            "bcachefs format --label=group_a.vdb2 --discard /dev/disk/by-partlabel/disk-vdb-vdb2 \
             --label=group_a.vdc1 --discard /dev/disk/by-partlabel/disk-vdc-vdc1 \
             --label=group_b.vdd1 --force /dev/disk/by-partlabel/disk-vdd-vdd1 \
             --uuid={uuid} --compression=lz4 --background_compression=lz4 --encrypted"
        )
    );
    assert_eq!(
        volume_cmds(&p, "bcachefs_filesystems.relies_on_external_subvolume")[0],
        "bcachefs format --label=group_a.vde1 /dev/disk/by-partlabel/disk-vde-vde1 --uuid=64e50034-ebe2-eaf8-1f93-cf56266a8d86"
    );
    assert!(p.key_paths().contains("/run/landfall/secrets/bcachefs.key"));
    // bcachefs_filesystem.nix `_config`: by uuid, X-mount.mkdir and the subdir.
    let n = nix(&p);
    assert_eq!(
        n["fileSystems"]["/"],
        serde_json::json!({
            "device": format!("/dev/disk/by-uuid/{uuid}"), "fsType": "bcachefs",
            "options": ["X-mount.mkdir", "X-mount.subdir=subvolumes/root", "verbose"],
            "neededForBoot": true
        })
    );
    assert_eq!(
        n["fileSystems"]["/home/Documents"]["options"],
        serde_json::json!(["X-mount.mkdir"])
    );
    assert_eq!(
        n["boot"]["supportedFilesystems"],
        serde_json::json!(["bcachefs"])
    );
}

#[test]
fn md_arrays_are_created_over_their_members_as_disko_does() {
    let p = plan_of("mdadm-raid1");
    // mdadm.nix: `mdadm --create /dev/md/NAME --level=L --raid-devices=N
    // --metadata=M --force --homehost=any EXTRA members` (members in disk order).
    assert_eq!(
        volume_cmds(&p, "mdadm.boot"),
        [
            "mdadm --create /dev/md/boot --level=1 --raid-devices=2 --metadata=1.0 --force --homehost=any /dev/disk/by-partlabel/disk-one-ESP /dev/disk/by-partlabel/disk-two-ESP",
            "mkfs.vfat /dev/md/boot",
        ]
    );
    let raid1 = p.volumes.iter().find(|v| v.label == "mdadm.raid1").unwrap();
    assert_eq!(raid1.wave, 1);
    let Op::NestedTable {
        device,
        partitions,
        table,
        ..
    } = &raid1.ops[1]
    else {
        panic!("{:?}", raid1.ops)
    };
    assert_eq!(device, "/dev/md/raid1");
    assert_eq!(partitions, &["/dev/md/raid1p1"]);
    // gpt.nix: the label of a partition of an md array's table.
    assert_eq!(table.partitions[0].label, "mdadm-raid1-primary");
    let n = nix(&p);
    // gpt.nix `device` on an md array: by-id md-name-any:NAME-partN.
    assert_eq!(
        n["fileSystems"]["/"]["device"],
        "/dev/disk/by-id/md-name-any:raid1-part1"
    );
    assert_eq!(n["fileSystems"]["/boot"]["device"], "/dev/md/boot");
    assert_eq!(n["boot"]["swraid"]["enable"], true);
    assert_eq!(
        n["boot"]["swraid"]["mdadmConf"],
        "ARRAY /dev/md/boot metadata=1.0 name=any:boot\nARRAY /dev/md/raid1 name=any:raid1\nMAILADDR root\n"
    );
    assert_eq!(
        n["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["raid1"])
    );
    // Both disks have a BIOS boot partition: GRUB on both (gpt.nix).
    assert_eq!(
        n["boot"]["loader"]["grub"]["devices"],
        serde_json::json!(["/dev/<one>", "/dev/<two>"])
    );
    // The ESP is an md array of EF00 partitions: no boot warning on UEFI.
    assert!(p
        .boot_warnings(landfall_proto::inventory::FirmwareMode::Uefi)
        .is_empty());

    let p = plan_of("mdadm-raid5");
    assert_eq!(
        volume_cmds(&p, "mdadm.raid5")[0],
        "mdadm --create /dev/md/raid5 --level=5 --raid-devices=3 --metadata=default --force --homehost=any --assume-clean /dev/disk/by-partlabel/disk-disk1-mdadm /dev/disk/by-partlabel/disk-disk2-mdadm /dev/disk/by-partlabel/disk-disk3-mdadm"
    );
    assert_eq!(
        nix(&p)["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["raid456"])
    );
}

#[test]
fn luks_on_md_and_lvm_on_luks_come_in_disko_order() {
    let p = plan_of("luks-on-mdadm");
    assert_eq!(
        volume_cmds(&p, "mdadm.raid1")[1..],
        [
            "cryptsetup luksFormat --batch-mode --type luks2 /dev/md/raid1",
            "cryptsetup open /dev/md/raid1 crypted",
            "mkfs.ext4 -F -q /dev/mapper/crypted",
        ]
    );
    assert_eq!(
        nix(&p)["boot"]["initrd"]["luks"]["devices"]["crypted"]["device"],
        "/dev/md/raid1"
    );

    let p = plan_of("lvm-on-luks");
    // lvm_pv.nix inside the LUKS volume, on the disk; lvm_vg.nix: vgcreate,
    // then lvcreate by priority (the "100%" root last, as 100%FREE), then
    // each volume's content.
    let disk: Vec<String> = p.disks[0]
        .ops
        .iter()
        .filter(|o| o.argv().is_some())
        .map(|o| disko_argv(&p, o))
        .collect();
    assert_eq!(
        disk[2..],
        [
            "cryptsetup open --allow-discards /dev/disk/by-partlabel/disk-main-luks crypted",
            "cryptsetup luksAddKey --batch-mode /dev/disk/by-partlabel/disk-main-luks NEWKEYFILE",
            "pvcreate /dev/mapper/crypted",
        ]
    );
    assert_eq!(
        volume_cmds(&p, "lvm_vg.pool"),
        [
            "vgcreate pool /dev/mapper/crypted",
            "lvcreate --yes -L 64M -n home pool",
            "lvcreate --yes -L 16M -n raw pool",
            "lvcreate --yes -l 100%FREE -n root pool",
            "mkfs.ext4 -F -q /dev/pool/home",
            "mkfs.ext4 -F -q /dev/pool/root",
        ]
    );
    assert!(p
        .key_paths()
        .contains("/run/landfall/secrets/luks-extra.key"));
    let n = nix(&p);
    assert_eq!(n["fileSystems"]["/"]["device"], "/dev/pool/root");
    assert_eq!(n["boot"]["initrd"]["services"]["lvm"]["enable"], true);
    assert_eq!(
        n["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["dm-snapshot"])
    );
}

#[test]
fn thin_pools_and_raid_volumes_as_disko_creates_them() {
    let p = plan_of("lvm-thin");
    assert_eq!(
        volume_cmds(&p, "lvm_vg.mainpool")[..5],
        [
            "vgcreate mainpool /dev/disk/by-partlabel/disk-main-primary",
            // The pool first (priority 501), thin volumes with -V and --thinpool.
            "lvcreate --yes -L 256M -n thinpool --type=thin-pool mainpool",
            "lvcreate --yes -V 64M -n home --thinpool=thinpool mainpool",
            "lvcreate --yes -L 16M -n raw mainpool",
            "lvcreate --yes -V 128M -n root --thinpool=thinpool mainpool",
        ]
    );
    let n = nix(&p);
    assert_eq!(n["services"]["lvm"]["boot"]["thin"]["enable"], true);
    assert_eq!(
        n["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["dm-snapshot", "dm-thin-pool"])
    );

    let p = plan_of("lvm-raid");
    assert_eq!(
        volume_cmds(&p, "lvm_vg.pool")[..3],
        [
            "vgcreate pool /dev/disk/by-partlabel/disk-one-primary /dev/disk/by-partlabel/disk-two-primary",
            "lvcreate --yes -L 64M -n home --type=raid0 pool",
            "lvcreate --yes -L 256M -n root --type=mirror pool",
        ]
    );
    assert_eq!(
        nix(&p)["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["dm-mirror", "dm-raid", "dm-snapshot", "raid0", "raid1"])
    );

    let p = plan_of("lvm-sizes");
    let lvs: Vec<String> = volume_cmds(&p, "lvm_vg.pool")
        .into_iter()
        .filter(|c| c.starts_with("lvcreate"))
        .collect();
    assert_eq!(
        lvs,
        [
            "lvcreate --yes -L 4M -n aaa pool",
            "lvcreate --yes -L 256M -n root pool",
            "lvcreate --yes -L 4M -n zzz pool",
            "lvcreate --yes -l 100%FREE -n home pool",
        ]
    );
}

#[test]
fn complex_layouts_are_created_in_dependency_waves() {
    let p = plan_of("complex");
    let waves: Vec<(usize, &str)> = p
        .volumes
        .iter()
        .map(|v| (v.wave, v.label.as_str()))
        .collect();
    // The volume group over the two LUKS volumes, then the md array over two
    // of its logical volumes and the pool over two others (disko's
    // sortDevicesByDependencies).
    assert_eq!(
        waves,
        [(1, "lvm_vg.pool"), (2, "mdadm.raid1"), (2, "zpool.zroot")]
    );
    assert_eq!(
        volume_cmds(&p, "mdadm.raid1")[0],
        "mdadm --create /dev/md/raid1 --level=1 --raid-devices=2 --metadata=default --force --homehost=any /dev/pool/raid1 /dev/pool/raid2"
    );
    assert_eq!(
        volume_cmds(&p, "zpool.zroot")[0],
        "zpool create -f zroot -R /mnt -O com.sun:auto-snapshot=false -O compression=zstd mirror /dev/pool/zfs1 /dev/pool/zfs2"
    );
    // luks.nix: "--iter-time 1" is split as the shell splits it; keyFileSize
    // and keyFileOffset read the key file with limits.
    let d1: Vec<String> = p.disks[1].ops.iter().map(Op::describe).collect();
    assert!(
        d1.iter().any(|c| c.starts_with(
            "cryptsetup luksFormat --batch-mode --type luks2 --key-file - --iter-time 1 /dev/<disk1>1"
        )),
        "{d1:#?}"
    );
    let d2: Vec<String> = p.disks[2].ops.iter().map(Op::describe).collect();
    assert!(
        d2.iter()
            .any(|c| c.contains("--iter-time 1 --keyfile-size 8 --keyfile-offset 2 /dev/<disk2>1")),
        "{d2:#?}"
    );
    // The fixed partition GUID: PARTUUID and by-partuuid for the LUKS volume.
    assert_eq!(
        p.disks[1].partitions[0].guid.as_deref(),
        Some("f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f1")
    );
    assert_eq!(
        nix(&p)["boot"]["initrd"]["luks"]["devices"]["crypted1"]["device"],
        "/dev/disk/by-partuuid/f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f1"
    );
}

#[test]
fn tables_attributes_hybrid_and_f2fs() {
    // gpt.nix `hybrid`: sgdisk -h over the hybrid partitions, ":EE" with
    // efiGptPartitionFirst = false, then the MBR type with sfdisk.
    let p = plan_of("hybrid-mbr");
    let cmds: Vec<String> = p.disks[0]
        .ops
        .iter()
        .filter_map(|o| o.argv().map(|a| a.join(" ")))
        .collect();
    assert_eq!(
        cmds[..2],
        [
            "sgdisk -h 1:EE /dev/<main>",
            "sfdisk --label-nested dos --part-type /dev/<main> 1 0x0c",
        ]
    );
    assert!(!p.mounts.iter().any(|m| m.device == "/dev/<main>1"));

    let p = plan_of("gpt-attributes");
    let parts = &p.disks[0].partitions;
    assert_eq!(parts[0].attributes, 0b101);
    assert_eq!(
        parts[1].stable_device,
        "/dev/disk/by-partuuid/f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f0"
    );
    assert_eq!(
        nix(&p)["fileSystems"]["/"]["device"],
        "/dev/disk/by-partuuid/f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f0"
    );

    // The legacy table: partitions numbered in list order, named as disko's
    // deviceNumbering does for the installed system.
    let l = layout("mbr-table");
    let mut t = sized(&l, 8 * GIB);
    t.get_mut("main").unwrap().by_id = Some("/dev/disk/by-id/virtio-A".into());
    let p = plan(&l, &t).unwrap();
    let parts = &p.disks[0].partitions;
    assert_eq!(
        parts
            .iter()
            .map(|p| (p.mbr_type, p.bootable))
            .collect::<Vec<_>>(),
        [(Some(0x0c), true), (Some(0x83), false), (Some(0x82), false)]
    );
    let n = nix(&p);
    assert_eq!(
        n["fileSystems"]["/"]["device"],
        "/dev/disk/by-id/virtio-A-part2"
    );
    assert_eq!(
        n["swapDevices"][0]["device"],
        "/dev/disk/by-id/virtio-A-part3"
    );

    let p = plan_of("f2fs");
    assert!(p.disks[0].ops.iter().any(|o| o.argv().is_some_and(|a| {
        a.join(" ")
            == "mkfs.f2fs -f -q -O extra_attr,inode_checksum,sb_checksum,compression /dev/<main>2"
    })));
    let n = nix(&p);
    assert_eq!(
        n["boot"]["supportedFilesystems"],
        serde_json::json!(["f2fs"])
    );
    assert_eq!(
        n["boot"]["initrd"]["kernelModules"],
        serde_json::json!(["f2fs"])
    );
}

#[test]
fn btrfs_swap_files_and_split_arguments() {
    let p = plan_of("btrfs-swapfiles");
    let sub = p.disks[0]
        .ops
        .iter()
        .find(|o| matches!(o, Op::BtrfsSubvolumes { .. }))
        .unwrap();
    let Op::BtrfsSubvolumes { swap_files, .. } = sub else {
        unreachable!()
    };
    assert_eq!(
        swap_files,
        &[
            ("swapfile".to_owned(), "20M".to_owned()),
            ("swapfile1".to_owned(), "20M".to_owned()),
            // By attribute name: swapfile, then swapfile2 (at "rel-path").
            ("swap/swapfile".to_owned(), "20M".to_owned()),
            ("swap/rel-path".to_owned(), "20M".to_owned()),
        ]
    );
    // btrfs.nix `swapConfig`: each file below its mountpoint.
    let devices: Vec<String> = nix(&p)["swapDevices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        devices,
        [
            "/partition-root/swapfile",
            "/partition-root/swapfile1",
            "/.swapvol/swapfile",
            "/.swapvol/rel-path"
        ]
    );
    // btrfs.nix passes extraArgs unquoted: "-d raid1" is two words.
    let p = plan_of("luks-btrfs-raid");
    assert!(p.disks[1].ops.iter().any(|o| {
        o.argv().is_some_and(|a| {
            a.join(" ") == "mkfs.btrfs -f -q -d raid1 /dev/mapper/p1 /dev/mapper/p2"
        })
    }));
}

/// The emitted configuration of every fixture, in the hardware file the
/// configure step writes, parses and evaluates as Nix (nix-instantiate),
/// with `networking.hostId` for the pools.
#[test]
fn the_hardware_file_of_every_fixture_evaluates() {
    use landfall_agent::install::configure::hardware_file;
    let dir = tempfile::tempdir().unwrap();
    let inv = landfall_proto::Inventory {
        hostname: Some("ws-01".into()),
        ..Default::default()
    };
    for name in all_layouts() {
        let p = plan_of(&name);
        let text = hardware_file(&inv, &p.nixos);
        let f = dir.path().join(format!("{name}.nix"));
        std::fs::write(&f, &text).unwrap();
        let expr = format!(
            "builtins.removeAttrs (import {} {{ config = {{ hardware.enableRedistributableFirmware = true; }}; \
             lib = {{ mkDefault = x: x; }}; modulesPath = \"/modules\"; }}) [ \"imports\" ]",
            f.display()
        );
        let out = std::process::Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--expr", &expr])
            .env("NIX_STATE_DIR", dir.path().join("state"))
            .output()
            .expect("nix-instantiate (Debian: nix-bin; ./x installs it)");
        assert!(
            out.status.success(),
            "{name}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if p.nixos.needs_host_id {
            let id = v["networking"]["hostId"].as_str().unwrap();
            assert_eq!(
                id,
                landfall_agent::disk::nixos::host_id_for("ws-01"),
                "{name}"
            );
            assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        } else {
            assert!(v.get("networking").is_none(), "{name}: {v}");
        }
        let modules: Vec<String> = p.nixos.initrd_kernel_modules.iter().cloned().collect();
        assert_eq!(
            v["boot"]["initrd"]["kernelModules"],
            serde_json::json!(modules),
            "{name}"
        );
    }
}

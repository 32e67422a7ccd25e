use super::*;
use serde_json::json;
use sha2::{Digest, Sha256};

fn simple() -> Value {
    json!({"disko": {"devices": {"disk": {"main": {
    "type": "disk", "device": "/dev/vda",
    "content": {"type": "gpt", "partitions": {
        "ESP": {"type": "EF00", "size": "500M", "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "boot": {"type": "EF02", "size": "1M"}
    }}}}}}})
}

fn gpt(parts: Value) -> Value {
    json!({"type": "gpt", "partitions": parts})
}

/// Two disks whose partition `p` holds `member`, and `devices` beside them.
fn two(member: Value, devices: Value) -> Value {
    let mut d = json!({"disk": {
        "a": {"device": "/dev/vda", "content": gpt(json!({"p": {"size": "100%", "content": member}}))},
        "b": {"device": "/dev/vdb", "content": gpt(json!({"p": {"size": "100%", "content": member}}))}
    }});
    for (k, v) in devices.as_object().unwrap() {
        d[k] = v.clone();
    }
    d
}

fn refuse(v: &Value) -> LayoutError {
    Layout::from_json(v).unwrap_err()
}

#[test]
fn disko_defaults_order_and_labels() {
    let l = Layout::from_json(&simple()).unwrap();
    let d = &l.disks["main"];
    let names: Vec<_> = d.partitions().iter().map(|p| p.label.as_str()).collect();
    assert_eq!(names, ["disk-main-boot", "disk-main-ESP", "disk-main-root"]);
    assert_eq!(
        d.partitions().iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(d.partitions()[2].end, Bound::FromEnd(0));
    assert_eq!(d.partitions()[1].end, Bound::Plus(500 << 20));
    assert_eq!(
        d.partitions()[2].type_guid,
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    );
}

#[test]
fn swap_partitions_default_to_the_swap_type_and_disk_names_make_labels() {
    let l = Layout::from_json(&json!({"disk": {"/dev/vdb": {"device": "/dev/vdb", "content": gpt(json!({
        "s": {"size": "1G", "content": {"type": "swap"}},
        "r": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
    }))}}}))
    .unwrap();
    let d = &l.disks["/dev/vdb"];
    assert_eq!(d.disko_name, "_dev_vdb");
    assert_eq!(d.partitions()[0].label, "disk-_dev_vdb-s");
    assert_eq!(d.partitions()[0].type_code, "8200");
    assert_eq!(d.partitions()[1].type_code, "8300");
    let l = Layout::from_json(&json!({"disk": {"main": {"name": "x", "device": "/dev/vdb", "content": gpt(json!({
        "r": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
    }))}}}))
    .unwrap();
    assert_eq!(l.disks["main"].partitions()[0].label, "disk-x-r");
}

#[test]
fn the_three_accepted_roots() {
    let v = simple();
    let labels = |l: &Layout| -> Vec<String> {
        l.disks["main"]
            .partitions()
            .iter()
            .map(|p| p.label.clone())
            .collect()
    };
    let a = Layout::from_json(&v).unwrap();
    let b = Layout::from_json(&json!({"devices": v["disko"]["devices"]})).unwrap();
    let c = Layout::from_json(&v["disko"]["devices"]).unwrap();
    assert_eq!(labels(&a), labels(&b));
    assert_eq!(labels(&a), labels(&c));
    assert_eq!(b.disks["main"].path, "devices.disk.main");
    assert_eq!(c.disks["main"].path, "disko.devices.disk.main");
}

#[test]
fn long_labels_are_hashed_like_disko() {
    let l = default_label("a-very-long-disk-name-indeed", "and-a-long-part");
    assert_eq!(l.len(), 36);
    assert!(l.bytes().all(|b| b.is_ascii_hexdigit()));
    let h = Sha256::digest(b"disk-a-very-long-disk-name-indeed-and-a-long-part");
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(l, hex[..36]);
    assert_eq!(default_label("main", "root"), "disk-main-root");
    assert_eq!(
        default_label_of("mdadm", "raid1", "primary"),
        "mdadm-raid1-primary"
    );
}

#[test]
fn errors_name_the_field() {
    let mut v = simple();
    v["disko"]["devices"]["disk"]["main"]["content"]["partitions"]["root"]["size"] = json!("12X");
    let e = Layout::from_json(&v).unwrap_err();
    assert_eq!(
        e.path,
        "disko.devices.disk.main.content.partitions.root.size"
    );
    assert_eq!(
        e.to_string(),
        "disko.devices.disk.main.content.partitions.root.size: \"12X\" is not a size; use e.g. \"512M\", \"20G\" or \"100%\""
    );
}

#[test]
fn gpt_uuid_attributes_and_hybrid() {
    let l = Layout::from_json(&json!({"disk": {"main": {"device": "/dev/vda", "content": {
        "type": "gpt", "efiGptPartitionFirst": false, "partitions": {
        "fw": {"priority": 1, "type": "EF00", "size": "32M", "uuid": "F0F0F0F0-F0F0-F0F0-F0F0-F0F0F0F0F0F0",
               "attributes": [0, 2, 0], "hybrid": {"mbrPartitionType": "0x0c", "mbrBootableFlag": true},
               "content": {"type": "filesystem", "format": "vfat"}},
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
    }}}}}))
    .unwrap();
    let t = l.disks["main"].table().unwrap();
    assert!(!t.efi_gpt_partition_first);
    let p = &t.partitions[0];
    assert_eq!(
        p.uuid.as_deref(),
        Some("f0f0f0f0-f0f0-f0f0-f0f0-f0f0f0f0f0f0")
    );
    assert_eq!(p.attributes, [0, 2]);
    assert_eq!(
        p.hybrid,
        Some(Hybrid {
            mbr_type: Some("0x0c".into()),
            bootable: true
        })
    );
    let bad = |part: Value, field: &str, want: &str| {
        let v =
            json!({"disk": {"main": {"device": "/dev/vda", "content": gpt(json!({"p": part}))}}});
        let e = refuse(&v);
        assert_eq!(
            e.path,
            format!("disko.devices.disk.main.content.partitions.p.{field}"),
            "{e}"
        );
        assert!(e.message.contains(want), "{e}");
    };
    bad(
        json!({"size": "1M", "uuid": "nope"}),
        "uuid",
        "is not a GUID",
    );
    bad(
        json!({"size": "1M", "attributes": [64]}),
        "attributes.0",
        "0 to 63",
    );
    bad(
        json!({"size": "1M", "hybrid": {"mbrPartitionType": "zz"}}),
        "hybrid.mbrPartitionType",
        "hex",
    );
}

#[test]
fn legacy_tables_follow_parted() {
    let l = Layout::from_json(&json!({"disk": {"main": {"device": "/dev/sda", "content": {
        "type": "table", "format": "gpt", "partitions": [
            {"name": "ESP", "start": "1M", "end": "500M", "bootable": true,
             "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            {"name": "name with spaces", "start": "500M", "end": "100%", "part-type": "primary",
             "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}
    ]}}}}))
    .unwrap();
    let t = l.disks["main"].table().unwrap();
    assert_eq!(t.kind, TableKind::PartedGpt);
    assert_eq!(t.partitions[0].type_guid, EF00);
    assert_eq!(t.partitions[1].label, "name\\x20with\\x20spaces");
    assert_eq!(t.partitions[1].number, 2);
    let l = Layout::from_json(&json!({"disk": {"main": {"device": "/dev/sda", "content": {
        "type": "table", "format": "msdos", "partitions": [
            {"start": "1MiB", "end": "100MiB", "bootable": true, "flags": ["esp"],
             "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot"}},
            {"start": "100MiB", "end": "-1GiB", "fs-type": "ext4",
             "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
            {"start": "-1GiB", "end": "100%", "fs-type": "linux-swap", "content": {"type": "swap"}}
    ]}}}}))
    .unwrap();
    let t = l.disks["main"].table().unwrap();
    let p: Vec<_> = t
        .partitions
        .iter()
        .map(|p| {
            let pp = p.parted.as_ref().unwrap();
            (pp.mbr_type, pp.active)
        })
        .collect();
    assert_eq!(p, [(0xef, true), (0x83, false), (0x82, false)]);
    let v = json!({"disk": {"main": {"device": "/dev/sda", "content": {
        "type": "table", "format": "msdos", "partitions": [{"part-type": "logical", "start": "1MiB", "end": "2MiB"}]}}}});
    let e = refuse(&v);
    assert_eq!(
        e.path,
        "disko.devices.disk.main.content.partitions.0.part-type"
    );
    let v = json!({"disk": {"main": {"device": "/dev/sda", "content": {
        "type": "table", "partitions": [{"name": "a", "start": "1MiB", "end": "2MiB", "flags": ["bios_grub", "nope"]}]}}}});
    assert_eq!(
        e_path(&v),
        "disko.devices.disk.main.content.partitions.0.flags.1"
    );
}

fn e_path(v: &Value) -> String {
    refuse(v).path
}

#[test]
fn mdadm_arrays_and_their_members() {
    let md = json!({"mdadm": {"raid1": {"type": "mdadm", "level": 1, "metadata": "1.0",
        "content": gpt(json!({"primary": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}))}}});
    let l =
        Layout::from_json(&two(json!({"type": "mdraid", "name": "raid1"}), md.clone())).unwrap();
    let a = &l.mdadm["raid1"];
    assert_eq!((a.level, a.metadata.as_str()), (1, "1.0"));
    let Some(Content::Table(t)) = &a.content else {
        panic!()
    };
    assert_eq!(t.partitions[0].label, "mdadm-raid1-primary");
    let v = VolumeRef {
        kind: VolumeKind::Mdadm,
        name: "raid1".into(),
    };
    assert_eq!(l.waves, [vec![v.clone()]]);
    let members: Vec<_> = l.members(&v).into_iter().map(|(o, _)| o).collect();
    assert_eq!(members, [Owner::Disk("a".into()), Owner::Disk("b".into())]);
    // A level mdadm does not know.
    let mut bad = md.clone();
    bad["mdadm"]["raid1"]["level"] = json!(3);
    let e = refuse(&two(json!({"type": "mdraid", "name": "raid1"}), bad));
    assert_eq!(e.path, "disko.devices.mdadm.raid1.level");
    assert!(
        e.message
            .contains("not a RAID level mdadm creates (known: 0, 1, 4, 5, 6, 10)"),
        "{e}"
    );
    // Too few members for the level.
    let mut bad = md.clone();
    bad["mdadm"]["raid1"]["level"] = json!(6);
    let e = refuse(&two(json!({"type": "mdraid", "name": "raid1"}), bad));
    assert!(
        e.message
            .contains("RAID 6 needs at least 4 members; 2 partition(s)"),
        "{e}"
    );
    // A member naming no array.
    let e = refuse(&two(json!({"type": "mdraid", "name": "raid9"}), md.clone()));
    assert_eq!(
        e.path,
        "disko.devices.disk.a.content.partitions.p.content.name"
    );
    assert!(
        e.message
            .contains("\"raid9\" names no md array of the layout (it has raid1)"),
        "{e}"
    );
    // An array nothing is a member of.
    let e = refuse(&two(json!({"type": "filesystem", "format": "ext4"}), md));
    assert_eq!(e.path, "disko.devices.mdadm.raid1");
    assert!(e.message.contains("has no member"), "{e}");
}

#[test]
fn volume_groups_thin_pools_and_creation_order() {
    let vg = json!({"lvm_vg": {"pool": {"type": "lvm_vg", "lvs": {
        "thinpool": {"size": "100M", "lvm_type": "thin-pool"},
        "root": {"size": "10M", "lvm_type": "thinlv", "pool": "thinpool",
                 "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "home": {"size": "100%FREE", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/home"}},
        "raw": {"size": "10M"}
    }}}});
    let l = Layout::from_json(&two(json!({"type": "lvm_pv", "vg": "pool"}), vg.clone())).unwrap();
    let lvs: Vec<_> = l.lvm_vg["pool"]
        .lvs
        .iter()
        .map(|v| (v.name.as_str(), v.priority))
        .collect();
    assert_eq!(
        lvs,
        [
            ("thinpool", 501),
            ("raw", 1000),
            ("root", 1000),
            ("home", 1251)
        ]
    );
    // A vg referenced by no pv.
    let e = refuse(&two(
        json!({"type": "filesystem", "format": "ext4"}),
        vg.clone(),
    ));
    assert_eq!(e.path, "disko.devices.lvm_vg.pool");
    assert!(e.message.contains("has no physical volume: no partition or disk has content { type = \"lvm_pv\"; vg = \"pool\"; }"), "{e}");
    // A thin volume whose pool is no thin pool.
    let mut bad = vg.clone();
    bad["lvm_vg"]["pool"]["lvs"]["root"]["pool"] = json!("raw");
    let e = refuse(&two(json!({"type": "lvm_pv", "vg": "pool"}), bad));
    assert_eq!(e.path, "disko.devices.lvm_vg.pool.lvs.root.pool");
    // A raid type over too few physical volumes.
    let v = json!({"disk": {"a": {"device": "/dev/vda", "content": gpt(json!({"p": {"size": "100%", "content": {"type": "lvm_pv", "vg": "pool"}}}))}},
        "lvm_vg": {"pool": {"type": "lvm_vg", "lvs": {"m": {"size": "10M", "lvm_type": "mirror"}}}}});
    let e = refuse(&v);
    assert_eq!(e.path, "disko.devices.lvm_vg.pool.lvs.m.lvm_type");
    assert!(
        e.message.contains("needs at least 2 physical volumes"),
        "{e}"
    );
}

#[test]
fn volumes_nest_in_waves_and_cycles_are_refused() {
    // complex.nix's shape: PVs on disks, an md array on two LVs, a pool on two more.
    let v = json!({
        "disk": {"a": {"device": "/dev/vda", "content": gpt(json!({"p": {"size": "100%", "content": {"type": "lvm_pv", "vg": "pool"}}}))},
                 "b": {"device": "/dev/vdb", "content": gpt(json!({"p": {"size": "100%", "content": {"type": "lvm_pv", "vg": "pool"}}}))}},
        "lvm_vg": {"pool": {"type": "lvm_vg", "lvs": {
            "r1": {"size": "30M", "content": {"type": "mdraid", "name": "raid1"}},
            "r2": {"size": "30M", "content": {"type": "mdraid", "name": "raid1"}},
            "z1": {"size": "128M", "content": {"type": "zfs", "pool": "zroot"}},
            "z2": {"size": "128M", "content": {"type": "zfs", "pool": "zroot"}}}}},
        "mdadm": {"raid1": {"type": "mdadm", "level": 1, "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/md"}}},
        "zpool": {"zroot": {"type": "zpool", "mode": "mirror", "mountpoint": "/"}}
    });
    let l = Layout::from_json(&v).unwrap();
    let waves: Vec<Vec<String>> = l
        .waves
        .iter()
        .map(|w| w.iter().map(ToString::to_string).collect())
        .collect();
    assert_eq!(
        waves,
        [vec!["lvm_vg.pool"], vec!["mdadm.raid1", "zpool.zroot"]]
    );
    assert!(l.features().contains("mdadm.on_lvm"));
    assert!(l.features().contains("zfs.on_lvm"));
    // A cycle: an array whose filesystem is replaced by a member of itself.
    let mut c = v.clone();
    c["mdadm"]["raid1"]["content"] = json!({"type": "lvm_pv", "vg": "pool"});
    let e = refuse(&c);
    assert!(e.message.contains("members of each other (a cycle)"), "{e}");
}

#[test]
fn zpool_topologies_name_members() {
    let disk = |pool: &str| json!({"device": "/dev/vdx", "content": gpt(json!({"zfs": {"size": "100%", "content": {"type": "zfs", "pool": pool}}}))});
    let v = json!({"disk": {"d1": disk("zroot"), "d2": disk("zroot"), "d3": disk("zroot")},
        "zpool": {"zroot": {"type": "zpool", "mode": {"topology": {"type": "topology",
            "vdev": [{"members": ["d1"]}, {"mode": "mirror", "members": ["d2", "/dev/disk/by-partlabel/disk-d3-zfs"]}]}},
            "datasets": {"a": {"type": "zfs_fs", "mountpoint": "/a"}, "v": {"type": "zfs_volume", "size": "10M"}}}}});
    let l = Layout::from_json(&v).unwrap();
    let ZpoolMode::Topology(t) = &l.zpool["zroot"].mode else {
        panic!()
    };
    assert_eq!(
        topology_members(&l, &l.zpool["zroot"], &t.vdev[1].members),
        [
            "disko.devices.disk.d2.content.partitions.zfs.content",
            "disko.devices.disk.d3.content.partitions.zfs.content"
        ]
    );
    // A vdev that names no disk.
    let mut bad = v.clone();
    bad["zpool"]["zroot"]["mode"]["topology"]["vdev"][0]["members"] = json!(["d9"]);
    let e = refuse(&bad);
    assert_eq!(
        e.path,
        "disko.devices.zpool.zroot.mode.topology.vdev.0.members.0"
    );
    assert!(
        e.message
            .contains("\"d9\" names no member of pool \"zroot\""),
        "{e}"
    );
    // A member left out.
    let mut bad = v.clone();
    bad["zpool"]["zroot"]["mode"]["topology"]["vdev"] = json!([{"members": ["d1", "d2"]}]);
    let e = refuse(&bad);
    assert_eq!(e.path, "disko.devices.zpool.zroot.mode.topology");
    assert!(e.message.contains("is in no vdev"), "{e}");
    // A zvol without size.
    let mut bad = v;
    bad["zpool"]["zroot"]["datasets"]["v"] = json!({"type": "zfs_volume"});
    assert_eq!(e_path(&bad), "disko.devices.zpool.zroot.datasets.v.size");
}

#[test]
fn bcachefs_uuid_defaults_like_disko() {
    let v = two(
        json!({"type": "bcachefs", "filesystem": "main", "label": "a"}),
        json!({"bcachefs_filesystems": {"main": {"type": "bcachefs_filesystem", "mountpoint": "/",
            "subvolumes": {"subvolumes/home": {"mountpoint": "/home"}}}}}),
    );
    let l = Layout::from_json(&v).unwrap();
    let b = &l.bcachefs["main"];
    let h = Sha256::digest(b"main");
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(b.uuid.replace('-', ""), hex[..32]);
    assert_eq!(b.uuid.len(), 36);
    assert!(l.features().contains("bcachefs.multi_device"));
}

#[test]
fn tables_only_where_disko_allows_them() {
    let v = json!({"disk": {"a": {"device": "/dev/vda", "content": gpt(json!({"p": {"size": "100%", "content": gpt(json!({}))}}))}}});
    let e = refuse(&v);
    assert_eq!(
        e.path,
        "disko.devices.disk.a.content.partitions.p.content.type"
    );
    assert!(e.message.contains("cannot hold a partition table"), "{e}");
}

#[test]
fn every_reported_feature_is_listed() {
    let l = Layout::from_json(&simple()).unwrap();
    for f in l.features() {
        assert!(FEATURES.iter().any(|(n, _)| *n == f), "{f}");
    }
}

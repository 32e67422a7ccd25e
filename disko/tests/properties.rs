//! Property tests of the layout parser (issue 12, fuzzing): a layout is JSON
//! the server renders from an operator's file and the agent parses again.
//! Any value is a `Layout` or a `LayoutError`, never a panic.

use landfall_disko::{default_label, human, parse_size, type_guid, Layout};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A layout using most of what the parser knows: GPT, ESP, LUKS with btrfs
/// subvolumes, swap, a second disk, a nodev tmpfs.
fn base() -> Value {
    json!({"disko": {"devices": {
        "disk": {
            "main": {"type": "disk", "device": "/dev/vda", "content": {"type": "gpt", "partitions": {
                "ESP": {"type": "EF00", "size": "512M", "priority": 1,
                        "content": {"type": "filesystem", "format": "vfat", "mountpoint": "/boot",
                                    "mountOptions": ["umask=0077"]}},
                "swap": {"size": "1G", "content": {"type": "swap", "randomEncryption": true}},
                "crypt": {"size": "100%", "content": {"type": "luks", "name": "root",
                    "passwordFile": "/run/landfall/luks.key", "settings": {"allowDiscards": true},
                    "content": {"type": "btrfs", "extraArgs": ["-f"], "subvolumes": {
                        "/root": {"mountpoint": "/", "mountOptions": ["compress=zstd"]},
                        "/nix": {"mountpoint": "/nix"}
                    }}}}
            }}},
            "data": {"type": "disk", "device": "", "content": {"type": "gpt", "partitions": {
                "d": {"start": "1M", "end": "-1G", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/data"}}
            }}}
        },
        "nodev": {"/tmp": {"fsType": "tmpfs", "mountOptions": ["size=1G"]}}
    }}})
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "-?[0-9]{1,22}(\\.[0-9]{1,3})?[KMGTPkmgtp%]?i?B?".prop_map(Value::from),
        prop::sample::select(vec![
            "disk",
            "gpt",
            "filesystem",
            "luks",
            "btrfs",
            "swap",
            "nodev",
            "mbr",
            "lvm_pv",
            "zfs",
            "100%",
            "EF00",
            "EF02",
            "8300",
            "/",
            "/boot",
            "vfat",
            "ext4",
            "xfs",
            "btrfs",
        ])
        .prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "\\PC{0,8}",
                    prop::sample::select(vec![
                        "disko",
                        "devices",
                        "disk",
                        "nodev",
                        "type",
                        "device",
                        "content",
                        "partitions",
                        "size",
                        "start",
                        "end",
                        "format",
                        "mountpoint",
                        "subvolumes",
                        "name",
                        "settings",
                        "keyFile",
                        "passwordFile",
                    ])
                    .prop_map(str::to_owned),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replace the value found by following `path` (indexes into each level's
/// entries, taken modulo their count) with `with`.
fn replace_at(v: &mut Value, path: &[usize], with: Value) {
    let Some((&i, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    let child = match v {
        Value::Object(m) if !m.is_empty() => {
            let n = m.len();
            m.values_mut().nth(i % n)
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            a.get_mut(i % n)
        }
        _ => None,
    };
    match child {
        Some(c) => replace_at(c, rest, with),
        None => *v = with,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn any_json_is_a_layout_or_an_error(v in any_json()) {
        let _ = Layout::from_json(&v);
        let _ = Layout::from_json(&json!({"disko": {"devices": v.clone()}}));
        let _ = Layout::from_json(&json!({"disk": {"main": v}}));
    }

    #[test]
    fn a_damaged_layout_is_a_layout_or_an_error(
        edits in proptest::collection::vec(
            (proptest::collection::vec(any::<usize>(), 0..9), any_json()),
            1..4,
        ),
    ) {
        let mut v = base();
        if let Err(e) = Layout::from_json(&v) { panic!("the base layout: {e}"); }
        for (path, with) in edits {
            replace_at(&mut v, &path, with);
        }
        let _ = Layout::from_json(&v);
    }

    #[test]
    fn sizes_parse_or_fail(s in "\\PC{0,24}", n in any::<u64>(), unit in "[KMGTPE]?i?B?", b in any::<u64>()) {
        let _ = parse_size(&s);
        let _ = parse_size(&format!("{n}{unit}"));
        let _ = parse_size(&format!("-{n}{unit}"));
        let _ = parse_size(&format!("{}%", n % 1000));
        let _ = human(b);
    }

    #[test]
    fn labels_and_type_codes_never_panic(disk in "\\PC{0,40}", part in "\\PC{0,40}") {
        let l = default_label(&disk, &part);
        // disko's rule: the label, or its hash when over 36 characters.
        let plain = format!("disk-{disk}-{part}");
        if plain.chars().count() <= 36 {
            prop_assert_eq!(l, plain);
        } else {
            prop_assert_eq!(l.len(), 36);
        }
        let _ = type_guid(&part);
    }
}

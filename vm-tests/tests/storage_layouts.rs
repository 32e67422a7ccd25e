//! Issue 16: the fixtures of the storage stack applied for real, in ONE VM with three
//! virtio disks (1 GiB each; one boot under TCG instead of one per fixture): the test image
//! with md, device-mapper (crypt, thin pools, raid, mirror) and f2fs, booted directly, a
//! script in place of the agent's service running the real static `landfall-agent apply
//! --wipe` for each fixture in turn, on the disks the previous fixture left behind: its
//! mounts are undone and its LUKS mappings closed (anything mounted or open above a disk is
//! refused whatever the policy), but its md arrays and volume groups stay active, so each
//! apply's wipe stops and deactivates them (the explicit wipe policy).
//!
//! Each fixture is checked against its plan (`landfall-agent plan --json` on the host, for
//! the same disks and sizes): the agent succeeded (its own read-back included), every planned
//! mount is in the guest's /proc/mounts with its type, every md array has its level and
//! member count (`mdadm --detail`), every logical volume exists with its segment type
//! (`lvs`), every disk's table has the planned partitions (start, size, GPT name, MBR type
//! and active flag: `sfdisk -d`), and a file written to the target root reads back. The last
//! fixture (`mbr-table`) is read back from the disk image on the host after the VM powers
//! off: the MBR, and the file in the ext4 root.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use landfall_vm_tests::{agent, image, script, ImageSpec};
use serde_json::Value;

const DISK_BYTES: u64 = 1 << 30;
const DISKS: [&str; 3] = ["/dev/vda", "/dev/vdb", "/dev/vdc"];

/// In the order applied. The last one is read back on the host.
const FIXTURES: &[&str] = &[
    "mdadm-raid1",
    "luks-on-mdadm",
    "lvm-on-luks",
    "lvm-thin",
    "lvm-sizes",
    "f2fs",
    "mdadm-raid0",
    "mdadm-raid5",
    "hybrid-mbr",
    "gpt-attributes",
    "legacy-table",
    "lvm-raid",
    "luks-btrfs-raid",
    "luks-btrfs-swap",
    "mbr-table",
];

/// Runs every fixture of `/etc/landfall-test/list` (NAME DISK-ARGS...), printing
/// `lf-KIND NAME: ...` lines for the host to check.
const SCRIPT: &str = r#"#!/bin/sh
mkdir -p /run/landfall/secrets /etc/secrets/initrd /mnt
printf 'vm-luks-passphrase\n' > /run/landfall/secrets/luks.key
printf 'vm-luks-extra-key' > /run/landfall/secrets/luks-extra.key
head -c 64 /dev/urandom > /etc/secrets/initrd/crypted.key
chmod 0400 /run/landfall/secrets/* /etc/secrets/initrd/crypted.key
# What the previous fixture left mounted or open above the disks (the agent refuses
# those whatever the wipe policy); its md arrays and volume groups stay for the wipe.
teardown() {
    for m in $(awk '$2 ~ "^/mnt(/|$)" {print $2}' /proc/mounts | sort -r); do
        umount "$m" || echo "lf-note $m: umount failed"
    done
    swapoff -a 2>/dev/null
    for m in $(dmsetup ls --target crypt 2>/dev/null | awk '$1 != "No" {print $1}'); do
        for vg in $(lvm pvs --noheadings -o vg_name "/dev/mapper/$m" 2>/dev/null); do
            lvm vgchange -an "$vg" >/dev/null
        done
        cryptsetup close "$m" || echo "lf-note $m: cryptsetup close failed"
    done
}
exec </dev/null
while read -r name args <&3; do
    [ -n "$name" ] || continue
    teardown
    t0=$(date +%s)
    /bin/landfall-agent apply --json --wipe --root /mnt \
        --luks-format-arg=--pbkdf --luks-format-arg=pbkdf2 \
        --luks-format-arg=--pbkdf-force-iterations --luks-format-arg=1000 \
        --layout "/etc/landfall-test/layouts/$name.json" $args >/tmp/out.json 2>/tmp/err
    rc=$?
    echo "lf-rc $name: $rc $(( $(date +%s) - t0 ))"
    sed "s|^|lf-err $name: |" /tmp/err
    [ "$rc" = 0 ] || continue
    echo "lf-readback $name: $(tr -d '\n' </tmp/out.json)"
    grep ' /mnt' /proc/mounts | sed "s|^|lf-mount $name: |"
    for md in /dev/md/*; do
        [ -e "$md" ] || continue
        case "$md" in *p[0-9]) continue ;; esac
        echo "lf-md $name: ${md#/dev/md/} $(mdadm --detail --export "$md" | grep -E '^MD_(LEVEL|DEVICES|METADATA)=' | sort | tr '\n' ' ')"
    done
    lvm lvs --noheadings --separator ' ' -o vg_name,lv_name,segtype 2>/dev/null | sed "s|^ *|lf-lv $name: |"
    for d in /dev/vda /dev/vdb /dev/vdc; do
        sfdisk -d "$d" 2>/dev/null | grep '^/dev/' | sed "s|^|lf-part $name: |"
    done
    echo "$name" >/mnt/landfall-vm-check && sync
    echo "lf-marker $name: $(cat /mnt/landfall-vm-check)"
done 3</etc/landfall-test/list
teardown
# Stop what is left, so the disk images are consistent for the host.
for vg in $(lvm vgs --noheadings -o vg_name 2>/dev/null); do lvm vgchange -an "$vg" >/dev/null; done
mdadm --stop --scan 2>/dev/null
sync
echo "lf-done"
"#;

/// The fixture rendered (nix-instantiate) on the host.
fn render(name: &str) -> String {
    let path = agent::workspace_root()
        .join("disko-layouts")
        .join(format!("{name}.nix"));
    landfall_cmd::nix::render_json_blocking(&path).unwrap()
}

/// The layout's disk names, in order (the JSON object is sorted), mapped to vda, vdb, vdc.
fn disk_args(json: &str) -> Vec<(String, &'static str)> {
    let v: Value = serde_json::from_str(json).unwrap();
    let disks = v["disko"]["devices"]["disk"].as_object().unwrap();
    assert!(disks.len() <= DISKS.len(), "{disks:?}");
    disks.keys().cloned().zip(DISKS).collect()
}

/// `landfall-agent plan --json` on the host for the same disks and sizes.
fn host_plan(agent: &Path, layout: &Path, disks: &[(String, &str)]) -> Value {
    let mut cmd = Command::new(agent);
    cmd.args(["plan", "--json", "--layout"]).arg(layout);
    for (n, d) in disks {
        cmd.arg("--disk").arg(format!("{n}={d}"));
        cmd.arg("--size").arg(format!("{n}=1G"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "plan {}: {}",
        layout.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One line of `sfdisk -d`: node, start, size, type, name, bootable.
#[derive(Debug, PartialEq)]
struct SfdiskPart {
    node: String,
    start: u64,
    size: u64,
    ty: String,
    name: String,
    bootable: bool,
}

fn parse_sfdisk(line: &str) -> SfdiskPart {
    let (node, rest) = line.split_once(" : ").unwrap_or_else(|| panic!("{line}"));
    let mut p = SfdiskPart {
        node: node.trim().to_owned(),
        start: 0,
        size: 0,
        ty: String::new(),
        name: String::new(),
        bootable: false,
    };
    for field in rest.split(", ") {
        let field = field.trim();
        match field.split_once('=') {
            Some(("start", v)) => p.start = v.trim().parse().unwrap(),
            Some(("size", v)) => p.size = v.trim().parse().unwrap(),
            Some(("type", v)) => p.ty = v.trim().to_ascii_lowercase(),
            // sfdisk escapes a backslash in a name as \x5c.
            Some(("name", v)) => p.name = v.trim().trim_matches('"').replace("\\x5c", "\\"),
            None if field == "bootable" => p.bootable = true,
            _ => {}
        }
    }
    p
}

/// What the plan says each disk's table holds, as sfdisk prints it.
fn planned_parts(plan: &Value) -> Vec<SfdiskPart> {
    let mut out = Vec::new();
    for d in plan["disks"].as_array().unwrap() {
        for p in d["partitions"].as_array().unwrap() {
            let first = p["first_lba"].as_u64().unwrap();
            let last = p["last_lba"].as_u64().unwrap();
            let ty = match p["mbr_type"].as_u64() {
                Some(t) => format!("{t:x}"),
                None => p["type_guid"].as_str().unwrap().to_ascii_lowercase(),
            };
            out.push(SfdiskPart {
                node: p["device"].as_str().unwrap().to_owned(),
                start: first,
                size: last - first + 1,
                ty,
                // The udev-escaped name of legacy-table ("name\x20with\x20spaces").
                name: p["label"].as_str().unwrap().to_owned(),
                bootable: p["bootable"].as_bool().unwrap_or(false),
            });
        }
    }
    out
}

/// The plan's operations of one kind, over its disks and volumes.
fn ops<'a>(plan: &'a Value, kind: &str) -> Vec<&'a Value> {
    let disks = plan["disks"].as_array().unwrap().iter();
    let vols = plan["volumes"].as_array().into_iter().flatten();
    disks
        .chain(vols)
        .flat_map(|u| u["ops"].as_array().unwrap())
        .filter(|o| o["op"] == kind)
        .collect()
}

#[test]
fn fixtures_of_the_storage_stack_apply_one_after_another_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let agent_bin = agent::static_agent().unwrap();
    let mut spec = ImageSpec::new(&agent_bin, dir.path().join("artifacts")).with_storage_stack();
    spec.host_programs
        .extend(image::DISK_PROGRAMS.iter().map(|p| p.to_string()));
    spec.host_programs
        .extend(image::LUKS_PROGRAMS.iter().map(|p| p.to_string()));
    spec.modules
        .extend(image::LUKS_MODULES.iter().map(|m| m.to_string()));
    let mut list = String::new();
    let mut plans = BTreeMap::new();
    let layouts = dir.path().join("layouts");
    std::fs::create_dir_all(&layouts).unwrap();
    for name in FIXTURES {
        let json = render(name);
        let disks = disk_args(&json);
        let file = layouts.join(format!("{name}.json"));
        std::fs::write(&file, &json).unwrap();
        plans.insert(*name, host_plan(&agent_bin, &file, &disks));
        spec.extra_data.push((
            format!("etc/landfall-test/layouts/{name}.json"),
            json.into_bytes(),
            0o644,
        ));
        let args: Vec<String> = disks
            .iter()
            .map(|(n, d)| format!("--disk {n}={d}"))
            .collect();
        list.push_str(&format!("{name} {}\n", args.join(" ")));
    }
    spec.extra_data
        .push(("etc/landfall-test/list".into(), list.into_bytes(), 0o644));
    let disks = [
        ("LFSTACK-A", DISK_BYTES),
        ("LFSTACK-B", DISK_BYTES),
        ("LFSTACK-C", DISK_BYTES),
    ];
    let vm_dir = dir.path().join("vm");
    let run = script::run(spec, SCRIPT, &disks, &vm_dir, Duration::from_secs(3600)).unwrap();
    let log = &run.log;
    eprintln!(
        "storage layouts VM: {:.1}s ({})",
        run.took.as_secs_f64(),
        run.accel.as_str()
    );
    assert_eq!(run.status, 0, "the script failed:\n{log}");
    assert!(log.contains("lf-done"), "{log}");
    let lines = |kind: &str, name: &str| -> Vec<String> {
        run.lines(&format!("lf-{kind} {name}: "))
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let mut failures = Vec::new();
    for name in FIXTURES {
        let plan = &plans[name];
        let rc = lines("rc", name);
        let ok = rc.first().is_some_and(|l| l.starts_with("0 "));
        eprintln!(
            "{name}: apply {} ({} s)",
            if ok { "ok" } else { "FAILED" },
            rc.first().and_then(|l| l.split(' ').nth(1)).unwrap_or("?")
        );
        if !ok {
            failures.push(format!(
                "{name}: apply failed ({rc:?}):\n{}",
                lines("err", name).join("\n")
            ));
            continue;
        }
        let mut problems = Vec::new();
        // The agent's own read-back: every planned mount found mounted.
        let rb: Value = serde_json::from_str(&lines("readback", name)[0]).unwrap();
        let planned_mounts = plan["mounts"].as_array().unwrap();
        if rb["read_back"]["mounted"].as_array().map(Vec::len) != Some(planned_mounts.len()) {
            problems.push(format!("read-back mounts: {:#}", rb["read_back"]));
        }
        // The guest's /proc/mounts.
        let mounts: Vec<(String, String)> = lines("mount", name)
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_owned(), f[2].to_owned())
            })
            .collect();
        for m in planned_mounts {
            let mp = format!("/mnt{}", m["mountpoint"].as_str().unwrap())
                .trim_end_matches('/')
                .to_owned();
            let fs = m["fs_type"].as_str().unwrap().to_owned();
            if !mounts.contains(&(mp.clone(), fs.clone())) {
                problems.push(format!("{mp} ({fs}) not mounted: {mounts:?}"));
            }
        }
        // md arrays: level and members.
        let mds = lines("md", name);
        for op in ops(plan, "md_create") {
            let md = op["name"].as_str().unwrap();
            let want = format!(
                "MD_DEVICES={} MD_LEVEL=raid{} ",
                op["members"].as_array().unwrap().len(),
                op["level"]
            );
            if !mds
                .iter()
                .any(|l| l.starts_with(&format!("{md} ")) && l.contains(&want))
            {
                problems.push(format!("md {md}: want {want:?} in {mds:?}"));
            }
        }
        // Logical volumes and their segment types.
        let lvs = lines("lv", name);
        for op in ops(plan, "lv_create") {
            let seg = match op["lvm_type"].as_str() {
                Some("thin-pool") => "thin-pool",
                Some("thinlv") => "thin",
                Some(t) => t,
                None => "linear",
            };
            let want = format!(
                "{} {} {seg}",
                op["vg"].as_str().unwrap(),
                op["name"].as_str().unwrap()
            );
            if !lvs.iter().any(|l| l.trim() == want) {
                problems.push(format!("lv {want:?} not in {lvs:?}"));
            }
        }
        // Every disk's table as planned.
        let parts: Vec<SfdiskPart> = lines("part", name)
            .iter()
            .map(|l| parse_sfdisk(l))
            .collect();
        for want in planned_parts(plan) {
            if !parts.contains(&want) {
                problems.push(format!("partition {want:?} not in {parts:#?}"));
            }
        }
        if !planned_mounts.is_empty() && lines("marker", name) != [name.to_string()] {
            problems.push(format!("marker: {:?}", lines("marker", name)));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}\n\n{log}", failures.join("\n"));
    // The last fixture, from the disk image on the host.
    let last = FIXTURES[FIXTURES.len() - 1];
    let image = script::disk_path(&vm_dir, 0);
    let out = Command::new("sfdisk")
        .arg("-d")
        .arg(&image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let on_host: Vec<SfdiskPart> = text
        .lines()
        .filter(|l| l.starts_with(image.to_str().unwrap()))
        .map(parse_sfdisk)
        .collect();
    let planned = planned_parts(&plans[last]);
    assert_eq!(on_host.len(), planned.len(), "{text}");
    for (h, p) in on_host.iter().zip(&planned) {
        assert_eq!(
            (h.start, h.size, &h.ty, h.bootable),
            (p.start, p.size, &p.ty, p.bootable),
            "{last} on the host: {text}"
        );
    }
    let root = &on_host[1];
    let fs = common::Ext4::open(&image, root.start * 512, root.size * 512);
    assert_eq!(fs.state(), "clean", "unmounted before power-off");
    assert_eq!(fs.file("/landfall-vm-check").1.trim(), last);
}

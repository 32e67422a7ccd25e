//! Issue 16: a disk that is a member of an md array or holds an LVM physical volume holds
//! data. The host has neither md nor device-mapper, so one VM (the test image with the
//! storage stack, booted directly, a script in place of the agent's service) makes them with
//! the real tools and runs the real static agent's `landfall-agent apply` against them:
//! - a member of an active RAID1 (whole disks /dev/vda + /dev/vdb, ext4 on the array):
//!   refused with the wipe policy `never` before any operation, the array stays active with
//!   both members and its filesystem keeps its file; stopped: refused (`RAID member`), not a
//!   byte changed; assembled again with its filesystem mounted: refused whatever the policy;
//!   unmounted, with `--wipe`: the agent stops the array and applies the layout (the other
//!   member keeps its superblock: it was not a target);
//! - a physical volume of an active volume group (/dev/vdc, an LV with ext4 on it): refused
//!   before any operation, the LV stays active with its file; deactivated: refused (`LVM
//!   physical volume`), not a byte changed; active again, with `--wipe`: the agent
//!   deactivates the volume group and applies.
//!
//! The inactive LVM and ZFS cases also run on the host's loop devices
//! (`agent/tests/disk_loop.rs`).

use std::time::Duration;

use landfall_vm_tests::{agent, image, script, ImageSpec};

/// One 16 MiB ext4 partition: a layout that fits the small disks.
const LAYOUT: &str = r#"{"disk": {"main": {"type": "disk", "device": "", "content": {"type": "gpt",
  "partitions": {"root": {"size": "16M", "content": {"type": "filesystem", "format": "ext4",
  "mountpoint": "/"}}}}}}}"#;

const SCRIPT: &str = r#"#!/bin/sh
say() { echo "safety: $*"; }
fail() { say "FAILED: $*"; exit 1; }
# apply NAME DEVICE [--wipe]: the agent's apply, its exit status and whether any operation
# started (its progress lines are "[N/M] started: ...").
apply() {
    name=$1 dev=$2
    shift 2
    out=$(/bin/landfall-agent apply --layout /etc/landfall-test/layout.json --disk "main=$dev" --root /mnt "$@" 2>&1)
    rc=$?
    ops=$(echo "$out" | grep -c '^\[[0-9]*/[0-9]*\] started')
    say "$name: rc=$rc ops=$ops"
    echo "$out" | sed "s|^|safety-out $name: |"
}
sum() { sha256sum "$1" | cut -d ' ' -f 1; }
marker() { # DEV: the file the operator's filesystem holds
    mkdir -p /check && mount -t ext4 -o ro "$1" /check && cat /check/keep && umount /check
}

mdadm --create /dev/md/keep --level=1 --raid-devices=2 --metadata=1.2 --run --homehost=any \
    --assume-clean /dev/vda /dev/vdb || fail "mdadm --create"
mkfs.ext4 -q /dev/md/keep && mkdir -p /w && mount -t ext4 /dev/md/keep /w &&
    echo md-data > /w/keep && umount /w || fail "ext4 on the array"
apply md-active /dev/vda
say "md-active after: $(grep -o 'active raid1 .*' /proc/mdstat) file=$(marker /dev/md/keep)"
mdadm --stop /dev/md/keep || fail "mdadm --stop"
before=$(sum /dev/vda)
apply md-stopped /dev/vda
say "md-stopped after: same=$([ "$(sum /dev/vda)" = "$before" ] && echo yes || echo no) examine=$(mdadm --examine /dev/vda | grep -o 'Raid Level : raid1')"
mdadm --assemble /dev/md/keep /dev/vda /dev/vdb || fail "mdadm --assemble"
mount -t ext4 /dev/md/keep /w || fail "mount the array"
apply md-mounted-wipe /dev/vda --wipe
umount /w || fail "umount the array"
apply md-active-wipe /dev/vda --wipe
say "md-active-wipe after: arrays=$(grep -c '^md' /proc/mdstat) root=$(sfdisk -d /dev/vda | grep -c 'name="disk-main-root"') mounted=$(grep -c ' /mnt ext4 ' /proc/mounts) vdb=$(mdadm --examine /dev/vdb | grep -o 'Raid Level : raid1')"
umount /mnt || fail "umount /mnt"

lvm pvcreate --yes /dev/vdc && lvm vgcreate keepvg /dev/vdc && lvm lvcreate --yes -L 16M -n keep keepvg ||
    fail "pvcreate/vgcreate/lvcreate"
mkfs.ext4 -q /dev/keepvg/keep && mount -t ext4 /dev/keepvg/keep /w && echo lv-data > /w/keep && umount /w ||
    fail "ext4 on the LV"
apply vg-active /dev/vdc
say "vg-active after: $(dmsetup ls | grep -o 'keepvg-keep') file=$(marker /dev/keepvg/keep)"
lvm vgchange -an keepvg || fail "vgchange -an"
before=$(sum /dev/vdc)
apply vg-inactive /dev/vdc
say "vg-inactive after: same=$([ "$(sum /dev/vdc)" = "$before" ] && echo yes || echo no) vg=$(lvm pvs --noheadings -o vg_name /dev/vdc | tr -d ' ')"
lvm vgchange -ay keepvg || fail "vgchange -ay"
apply vg-active-wipe /dev/vdc --wipe
say "vg-active-wipe after: dm=$(dmsetup ls | grep -c keepvg) root=$(sfdisk -d /dev/vdc | grep -c 'name="disk-main-root"')"
umount /mnt || fail "umount /mnt"
"#;

#[test]
fn members_of_md_arrays_and_volume_groups_are_data_refused_without_the_wipe_policy_and_wiped_with_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent::static_agent().unwrap();
    let mut spec = ImageSpec::new(&agent, dir.path().join("artifacts")).with_storage_stack();
    spec.host_programs
        .extend(image::DISK_PROGRAMS.iter().map(|p| p.to_string()));
    spec.extra_data.push((
        "etc/landfall-test/layout.json".into(),
        LAYOUT.as_bytes().to_vec(),
        0o644,
    ));
    let disks = [
        ("LFSAFE-MD-A", 64 << 20),
        ("LFSAFE-MD-B", 64 << 20),
        ("LFSAFE-VG", 64 << 20),
    ];
    let run = script::run(
        spec,
        SCRIPT,
        &disks,
        &dir.path().join("vm"),
        Duration::from_secs(900),
    )
    .unwrap();
    let log = &run.log;
    eprintln!(
        "storage safety VM: {:.1}s ({})",
        run.took.as_secs_f64(),
        run.accel.as_str()
    );
    assert_eq!(run.status, 0, "the script failed:\n{log}");
    let said = run.lines("safety: ");
    let out = |name: &str| -> String { run.lines(&format!("safety-out {name}: ")).join("\n") };
    let refused = |name: &str, says: &str| {
        // Exit status 1 (an error), no operation started, the refusal names the disk and why.
        assert!(
            said.contains(&format!("{name}: rc=1 ops=0").as_str()),
            "{name}: {said:#?}\n{}",
            out(name)
        );
        assert!(
            out(name).contains(says),
            "{name}: {says:?} not in:\n{}",
            out(name)
        );
    };

    let applied = |name: &str| {
        let line = said
            .iter()
            .find(|l| l.starts_with(&format!("{name}: rc=")))
            .unwrap_or_else(|| panic!("{name}: {said:#?}"));
        assert!(
            line.starts_with(&format!("{name}: rc=0 ops=")) && !line.ends_with("ops=0"),
            "{name}: {line}\n{}",
            out(name)
        );
    };

    refused("md-active", "is a member of the active md array md");
    refused(
        "md-active",
        "refusing to overwrite it: the wipe policy is `never`",
    );
    assert!(
        said.contains(&"md-active after: active raid1 vdb[1] vda[0] file=md-data"),
        "{said:#?}"
    );
    refused(
        "md-stopped",
        "disk main (/dev/vda) holds data: RAID member; refusing to overwrite it: the wipe policy is `never`",
    );
    assert!(
        said.contains(&"md-stopped after: same=yes examine=Raid Level : raid1"),
        "{said:#?}"
    );
    refused("md-mounted-wipe", "disk main (/dev/vda) is mounted (");
    refused(
        "md-mounted-wipe",
        "on /w); refusing whatever the wipe policy",
    );
    applied("md-active-wipe");
    assert!(
        said.contains(&"md-active-wipe after: arrays=0 root=1 mounted=1 vdb=Raid Level : raid1"),
        "{said:#?}\n{}",
        out("md-active-wipe")
    );
    refused(
        "vg-active",
        "/dev/vdc is a physical volume of the active volume group keepvg",
    );
    refused("vg-active", "the wipe policy is `never`");
    assert!(
        said.contains(&"vg-active after: keepvg-keep file=lv-data"),
        "{said:#?}"
    );
    refused(
        "vg-inactive",
        "disk main (/dev/vdc) holds data: LVM physical volume; refusing to overwrite it",
    );
    assert!(
        said.contains(&"vg-inactive after: same=yes vg=keepvg"),
        "{said:#?}"
    );
    applied("vg-active-wipe");
    assert!(
        said.contains(&"vg-active-wipe after: dm=0 root=1"),
        "{said:#?}\n{}",
        out("vg-active-wipe")
    );
}

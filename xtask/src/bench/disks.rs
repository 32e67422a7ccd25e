//! `./x bench disks` (root): on loop devices, in one run,
//! 1. `two-disk` applied by `landfall-agent apply` (the static binary the
//!    image ships; disks prepared in parallel) against an equivalent
//!    sequential shell script written the way disko's generated script works
//!    (per partition: `sgdisk --align-end --new ...`, re-read, mkfs; disk
//!    after disk; then mount). sgdisk sleeps about a second after every
//!    write (gptfdisk's DiskSync), so that script is slow for a reason that
//!    is not parallelism; the ratio that shows the per-disk parallelism is
//!    against the same operations as a plain sequential script writing the
//!    tables with `sfdisk` (no sleep). Goal: ratio <= 0.8.
//! 2. `simple-efi` by the agent against the raw commands it amounts to
//!    (wipefs, sfdisk, partx, mkfs.vfat, mkfs.ext4, mount) in a plain
//!    script. Goal: the agent's overhead (safety probe, read-back) <= 5%.
//!
//! 3. In a VM (this host's kernel has neither md nor device-mapper): the
//!    test image with the storage stack, booted directly with two 1 GiB
//!    virtio disks, a script running, round after round, the fixtures
//!    `mdadm-raid1` (two RAID 1 arrays over two disks, a GPT on one),
//!    `lvm-sizes` (four logical volumes) and `lvm-thin` (a thin pool with two
//!    thin volumes) through `landfall-agent apply`, and the same operations
//!    as a plain sequential script (sfdisk, mdadm, lvm, mkfs, mount), blank
//!    disks for each (the cleanup is not timed). Reported: the agent's time
//!    over the raw commands'.
//!
//! Every measurement gets fresh sparse files and loop devices (not timed);
//! vfat is made but not mounted by either side (this kernel has no vfat).
//! Rounds alternate agent/script; medians are reported, and the minimum of
//! each (the cost with the least interference from other load on the machine).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, output, Cmd};

const ROUNDS: usize = 11;
const DISK_BYTES: u64 = 4 << 30;

pub fn run(agent: &Path) -> Result<()> {
    if !is_root() {
        bail!("./x bench disks writes to loop devices: run it as root");
    }
    let dir = std::env::temp_dir().join(format!("landfall-bench-disks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = bench(agent, &dir).and_then(|()| vm_cases(agent, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Rounds of each VM case (each side).
const VM_ROUNDS: usize = 5;

/// The VM cases: (fixture, its disks, the raw commands it amounts to).
const VM_CASES: &[(&str, &str, &str)] = &[
    (
        "mdadm-raid1",
        "--disk one=/dev/vda --disk two=/dev/vdb",
        r#"for d in /dev/vda /dev/vdb; do
    n=$([ $d = /dev/vda ] && echo one || echo two)
    wipefs --all --force --quiet $d
    printf "label: gpt\nsize=1MiB, type=$BIOS, name=disk-$n-boot\nsize=256MiB, type=$ESP, name=disk-$n-ESP\nsize=+, type=$LINUX, name=disk-$n-mdadm\n" | sfdisk -q $d
done
echo y | mdadm --create /dev/md/boot --level=1 --raid-devices=2 --metadata=1.0 --force --homehost=any /dev/vda2 /dev/vdb2 2>/dev/null
wipefs --all --force --quiet /dev/md/boot
mkfs.vfat /dev/md/boot >/dev/null
echo y | mdadm --create /dev/md/raid1 --level=1 --raid-devices=2 --metadata=default --force --homehost=any /dev/vda3 /dev/vdb3 2>/dev/null
wipefs --all --force --quiet /dev/md/raid1
printf "label: gpt\nsize=+, type=$LINUX, name=mdadm-raid1-primary\n" | sfdisk -q /dev/md/raid1
md=$(readlink -f /dev/md/raid1)
mkfs.ext4 -F -q ${md}p1
mount -t ext4 ${md}p1 /mnt && mkdir -p /mnt/boot && mount -t vfat -o umask=0077 /dev/md/boot /mnt/boot"#,
    ),
    (
        "lvm-sizes",
        "--disk one=/dev/vda",
        r#"wipefs --all --force --quiet /dev/vda
printf "label: gpt\nsize=500MiB, type=$ESP, name=disk-one-boot\nsize=+, type=$LINUX, name=disk-one-primary\n" | sfdisk -q /dev/vda
mkfs.vfat /dev/vda1 >/dev/null
pvcreate -q /dev/vda2 && vgcreate -q pool /dev/vda2
lvcreate -q --yes -L 4M -n aaa pool && lvcreate -q --yes -L 256M -n root pool
lvcreate -q --yes -L 4M -n zzz pool && lvcreate -q --yes -l 100%FREE -n home pool
mkfs.ext4 -F -q /dev/pool/root && mkfs.ext4 -F -q /dev/pool/home
mount -t ext4 /dev/pool/root /mnt && mkdir -p /mnt/boot /mnt/home
mount -t vfat -o umask=0077 /dev/vda1 /mnt/boot && mount -t ext4 /dev/pool/home /mnt/home"#,
    ),
    (
        "lvm-thin",
        "--disk main=/dev/vda",
        r#"wipefs --all --force --quiet /dev/vda
printf "label: gpt\nsize=500MiB, type=$ESP, name=disk-main-ESP\nsize=+, type=$LINUX, name=disk-main-primary\n" | sfdisk -q /dev/vda
mkfs.vfat /dev/vda1 >/dev/null
pvcreate -q /dev/vda2 && vgcreate -q mainpool /dev/vda2
lvcreate -q --yes -L 256M -n thinpool --type=thin-pool mainpool
lvcreate -q --yes -V 64M -n home --thinpool=thinpool mainpool
lvcreate -q --yes -L 16M -n raw mainpool
lvcreate -q --yes -V 128M -n root --thinpool=thinpool mainpool
mkfs.ext4 -F -q /dev/mainpool/home && mkfs.ext4 -F -q /dev/mainpool/root
mount -t ext4 /dev/mainpool/root /mnt && mkdir -p /mnt/boot /mnt/home
mount -t vfat -o umask=0077 /dev/vda1 /mnt/boot && mount -t ext4 /dev/mainpool/home /mnt/home"#,
    ),
];

/// The VM's script: per round and case, the agent then the raw commands, each on blank
/// disks, timed with /proc/uptime (10 ms; the cases take seconds under TCG).
fn vm_script() -> String {
    let mut s = String::from(
        r#"#!/bin/sh
export LVM_SUPPRESS_FD_WARNINGS=1
ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4
BIOS=21686148-6449-6E6F-744E-656564454649
mkdir -p /mnt
now() { cut -d ' ' -f 1 /proc/uptime; }
blank() {
    for m in $(awk '$2 ~ "^/mnt(/|$)" {print $2}' /proc/mounts | sort -r); do umount "$m"; done
    for vg in $(lvm vgs --noheadings -o vg_name 2>/dev/null); do lvm vgchange -q -an "$vg" >/dev/null; done
    mdadm --stop --scan 2>/dev/null
    for d in /dev/vda /dev/vdb; do
        for p in $d[0-9]*; do [ -e "$p" ] && wipefs --all --force --quiet "$p"; done
        wipefs --all --force --quiet "$d"
        blockdev --rereadpt "$d" 2>/dev/null
    done
    sync
}
"#,
    );
    for (i, (name, disks, raw)) in VM_CASES.iter().enumerate() {
        s.push_str(&format!(
            "raw{i}() {{
set -e
{raw}
}}
agent{i}() {{
/bin/landfall-agent apply --wipe --root /mnt --layout /etc/landfall-bench/{name}.json {disks} >/tmp/out 2>&1 || {{ cat /tmp/out; return 1; }}
}}
"
        ));
    }
    s.push_str(&format!(
        "for round in $(seq {VM_ROUNDS}); do
"
    ));
    for (i, (name, ..)) in VM_CASES.iter().enumerate() {
        for side in ["agent", "raw"] {
            s.push_str(&format!(
                "    blank; t0=$(now); ( {side}{i} ) || {{ echo \"bench-failed {name} {side}\"; exit 1; }}; t1=$(now)
    echo \"bench-vm {name} {side} $t0 $t1\"
"
            ));
        }
    }
    s.push_str(
        "done
blank
",
    );
    s
}

/// The mdadm and LVM cases, in a VM (see the module documentation).
fn vm_cases(agent: &Path, dir: &Path) -> Result<()> {
    use landfall_vm_tests::{image, script, ImageSpec};
    let layouts = build::workspace_root().join("disko-layouts");
    let mut spec = ImageSpec::new(agent, dir.join("artifacts")).with_storage_stack();
    spec.host_programs
        .extend(image::DISK_PROGRAMS.iter().map(|p| p.to_string()));
    for (name, ..) in VM_CASES {
        let json = landfall_cmd::nix::render_json_blocking(&layouts.join(format!("{name}.nix")))?;
        spec.extra_data.push((
            format!("etc/landfall-bench/{name}.json"),
            json.into_bytes(),
            0o644,
        ));
    }
    eprintln!("bench disks: the mdadm and LVM cases in a VM ({VM_ROUNDS} rounds)");
    let run = script::run(
        spec,
        &vm_script(),
        &[("LFBENCH-A", 1 << 30), ("LFBENCH-B", 1 << 30)],
        &dir.join("vm"),
        Duration::from_secs(3600),
    )?;
    if run.status != 0 {
        bail!("the VM bench script failed:\n{}", run.log);
    }
    println!(
        "bench disks, VM ({}, 2 x 1 GiB virtio disks, {VM_ROUNDS} rounds, same run; median / min; blank disks each time)",
        run.accel.as_str()
    );
    for (name, ..) in VM_CASES {
        let times = |side: &str| -> Vec<Duration> {
            run.lines(&format!("bench-vm {name} {side} "))
                .iter()
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(|x| x.parse::<f64>().ok());
                    let (a, b) = (f.next()??, f.next()??);
                    Some(Duration::from_secs_f64((b - a).max(0.0)))
                })
                .collect()
        };
        let (a, r) = (times("agent"), times("raw"));
        if a.len() != VM_ROUNDS || r.len() != VM_ROUNDS {
            bail!(
                "{name}: {} agent and {} raw times:\n{}",
                a.len(),
                r.len(),
                run.log
            );
        }
        let min = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
        let (am, rm) = (min(&a), min(&r));
        let (a, r) = (median(a), median(r));
        println!(
            "  {name:<12} landfall-agent apply {:>8.0} / {:>8.0} ms   raw commands {:>8.0} / {:>8.0} ms   ratio agent / raw {:.2} / {:.2}",
            ms(a),
            ms(am),
            ms(r),
            ms(rm),
            a.as_secs_f64() / r.as_secs_f64(),
            am.as_secs_f64() / rm.as_secs_f64()
        );
    }
    Ok(())
}

fn bench(agent: &Path, dir: &Path) -> Result<()> {
    let layouts = build::workspace_root().join("disko-layouts");
    let two = render(&layouts.join("two-disk.nix"), dir)?;
    let simple = render(&layouts.join("simple-efi.nix"), dir)?;
    let agent = agent.to_string_lossy().into_owned();

    let (mut a2, mut s2, mut r2, mut a1, mut s1) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        a2.push(measure(dir, 2, |d, root| {
            vec![
                agent.clone(),
                "apply".into(),
                "--layout".into(),
                two.to_string_lossy().into(),
                "--disk".into(),
                format!("system={}", d[0]),
                "--disk".into(),
                format!("data={}", d[1]),
                "--root".into(),
                root.into(),
                "--no-mount".into(),
                "vfat".into(),
            ]
        })?);
        s2.push(measure(dir, 2, |d, root| {
            vec![
                "bash".into(),
                "-c".into(),
                disko_style_two_disk(&d[0], &d[1], root),
            ]
        })?);
        r2.push(measure(dir, 2, |d, root| {
            vec!["bash".into(), "-c".into(), raw_two_disk(&d[0], &d[1], root)]
        })?);
        a1.push(measure(dir, 1, |d, root| {
            vec![
                agent.clone(),
                "apply".into(),
                "--layout".into(),
                simple.to_string_lossy().into(),
                "--disk".into(),
                format!("main={}", d[0]),
                "--root".into(),
                root.into(),
                "--no-mount".into(),
                "vfat".into(),
            ]
        })?);
        s1.push(measure(dir, 1, |d, root| {
            vec!["bash".into(), "-c".into(), raw_simple_efi(&d[0], root)]
        })?);
        eprintln!("bench disks: round {}/{ROUNDS} done", round + 1);
    }
    let min = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (a2m, s2m, r2m, a1m, s1m) = (min(&a2), min(&s2), min(&r2), min(&a1), min(&s1));
    let (a2, s2, r2, a1, s1) = (median(a2), median(s2), median(r2), median(a1), median(s1));
    println!(
        "bench disks (loop devices over sparse {} GiB files, {ROUNDS} rounds, same run; median / min)",
        DISK_BYTES >> 30
    );
    let row = |what: &str, med: Duration, mn: Duration| {
        println!("  {what:<58} {:>8.1} / {:>8.1} ms", ms(med), ms(mn));
    };
    row(
        "two-disk   landfall-agent apply (disks in parallel)",
        a2,
        a2m,
    );
    row(
        "two-disk   sequential script, disko's way (sgdisk)",
        s2,
        s2m,
    );
    row(
        "two-disk   sequential raw commands (sfdisk, no sleep)",
        r2,
        r2m,
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "  ratio agent / sequential raw commands: {:.2} / {:.2} (goal <= 0.8; per-disk parallelism)",
        ratio(a2, r2),
        ratio(a2m, r2m)
    );
    println!(
        "  ratio agent / disko-style sgdisk script: {:.2} / {:.2}",
        ratio(a2, s2),
        ratio(a2m, s2m)
    );
    row("simple-efi landfall-agent apply", a1, a1m);
    row(
        "simple-efi raw commands (wipefs, sfdisk, partx, mkfs, mount)",
        s1,
        s1m,
    );
    println!(
        "  agent overhead over the raw commands: {:+.1}% / {:+.1}% (goal <= 5%)",
        100.0 * (ratio(a1, s1) - 1.0),
        100.0 * (ratio(a1m, s1m) - 1.0)
    );
    Ok(())
}

/// Fresh loop devices, run argv (timed), unmount and detach.
fn measure(
    dir: &Path,
    disks: usize,
    argv: impl Fn(&[String], &str) -> Vec<String>,
) -> Result<Duration> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    let mut devs = Vec::new();
    let mut files = Vec::new();
    for i in 0..disks {
        let f = dir.join(format!("disk{i}.img"));
        let _ = std::fs::remove_file(&f);
        std::fs::File::create(&f)?.set_len(DISK_BYTES)?;
        devs.push(
            output(&["losetup", "--find", "--show", f.to_str().context("path")?])?
                .trim()
                .to_owned(),
        );
        // A reused loop device may still list partitions of its last user.
        let _ = Cmd::new("partx")
            .args(["-d", devs.last().context("dev")?])
            .output_blocking();
        files.push(f);
    }
    let root_s = root.to_string_lossy().into_owned();
    let a = argv(&devs, &root_s);
    // Settle the page cache so both sides start from the same state.
    let _ = Cmd::new("sync").output_blocking();
    let t0 = Instant::now();
    let out = Cmd::new(&a[0]).args(&a[1..]).run_blocking();
    let took = t0.elapsed();
    let _ = Cmd::new("umount").args(["-R", &root_s]).output_blocking();
    for d in &devs {
        let _ = Cmd::new("partx").args(["-d", d]).output_blocking();
        let _ = Cmd::new("losetup").args(["-d", d]).output_blocking();
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    out?;
    Ok(took)
}

/// disko's generated _create for the two-disk layout (lib/types/gpt.nix:
/// one `sgdisk --align-end --new` per partition, re-read, then the content),
/// disk after disk; then the mounts. `partx -a --nr N` stands in for
/// `partprobe; udevadm settle` (this kernel does not scan GPTs itself).
fn disko_style_two_disk(system: &str, data: &str, root: &str) -> String {
    format!(
        r#"set -euo pipefail
S={system}; D={data}; R={root}
wipefs --all --force --quiet "$S"
sgdisk --align-end --new=1:0:+500M --change-name=1:disk-system-ESP --typecode=1:EF00 "$S" >/dev/null
partx -a --nr 1 "$S"
mkfs.vfat "${{S}}p1" >/dev/null
sgdisk --align-end --new=2:0:-0 --change-name=2:disk-system-root --typecode=2:8300 "$S" >/dev/null
partx -a --nr 2 "$S"
mkfs.ext4 -F -q "${{S}}p2"
wipefs --all --force --quiet "$D"
sgdisk --align-end --new=1:0:-0 --change-name=1:disk-data-home --typecode=1:8300 "$D" >/dev/null
partx -a --nr 1 "$D"
mkfs.ext4 -F -q "${{D}}p1"
mount -t ext4 "${{S}}p2" "$R"
mkdir -p "$R/home" "$R/boot"
mount -t ext4 "${{D}}p1" "$R/home"
"#
    )
}

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// sfdisk input for a GPT (sfdisk aligns to 1 MiB; `size=+` is the rest).
fn sfdisk_script(parts: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("label: gpt\\n");
    for (size, ty, name) in parts {
        s.push_str(&format!("size={size}, type={ty}, name={name}\\n"));
    }
    s
}

/// The raw commands two-disk amounts to, one disk after the other.
fn raw_two_disk(system: &str, data: &str, root: &str) -> String {
    format!(
        r#"set -euo pipefail
S={system}; D={data}; R={root}
wipefs --all --force --quiet "$S"
printf '{}' | sfdisk --quiet --no-reread --no-tell-kernel "$S"
partx -a "$S"
mkfs.vfat "${{S}}p1" >/dev/null
mkfs.ext4 -F -q "${{S}}p2"
wipefs --all --force --quiet "$D"
printf '{}' | sfdisk --quiet --no-reread --no-tell-kernel "$D"
partx -a "$D"
mkfs.ext4 -F -q "${{D}}p1"
mount -t ext4 "${{S}}p2" "$R"
mkdir -p "$R/home" "$R/boot"
mount -t ext4 "${{D}}p1" "$R/home"
"#,
        sfdisk_script(&[
            ("500MiB", ESP, "disk-system-ESP"),
            ("+", LINUX, "disk-system-root")
        ]),
        sfdisk_script(&[("+", LINUX, "disk-data-home")]),
    )
}

/// The raw commands simple-efi amounts to.
fn raw_simple_efi(dev: &str, root: &str) -> String {
    format!(
        r#"set -euo pipefail
M={dev}; R={root}
wipefs --all --force --quiet "$M"
printf '{}' | sfdisk --quiet --no-reread --no-tell-kernel "$M"
partx -a "$M"
mkfs.vfat "${{M}}p1" >/dev/null
mkfs.ext4 -F -q "${{M}}p2"
mount -t ext4 "${{M}}p2" "$R"
mkdir -p "$R/boot"
"#,
        sfdisk_script(&[
            ("500MiB", ESP, "disk-main-ESP"),
            ("+", LINUX, "disk-main-root")
        ]),
    )
}

fn render(layout: &Path, dir: &Path) -> Result<PathBuf> {
    let rendered = landfall_cmd::nix::render_json_blocking(layout)?;
    let json = dir.join(format!(
        "{}.json",
        layout
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("layout")
    ));
    std::fs::write(&json, rendered)?;
    Ok(json)
}

fn is_root() -> bool {
    output(&["id", "-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

//! Every layout applied for real on loop devices (root; CI is root), read
//! back with blkid and mounted under a temporary root; failure cleanup;
//! refusals of mounted disks.
//!
//! Host limits are explicit, named options of `apply`, never silent skips:
//! formats the kernel cannot mount (this CI kernel has no vfat) go in
//! `no_mount_formats` and are checked with blkid only; without
//! device-mapper (in /proc/devices) `open_luks = false` writes and checks
//! the LUKS header but not what is inside. The VM test covers both fully.

mod disk_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use disk_common::*;
use landfall_agent::disk::{apply, plan, Applied, ApplyOptions, Keys, OpEvent, OpState, Plan};

const MIB: u64 = 1 << 20;
const KEY_PATH: &str = "/run/landfall/secrets/luks.key";

fn kernel_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

fn options(root: &Path, events: Arc<Mutex<Vec<OpEvent>>>) -> ApplyOptions {
    let no_mount: Vec<String> = ["vfat", "ext4", "xfs", "btrfs"]
        .iter()
        .filter(|f| !kernel_has(f))
        .map(|f| f.to_string())
        .collect();
    let open_luks = std::fs::read_to_string("/proc/devices")
        .unwrap()
        .lines()
        .any(|l| l.ends_with(" device-mapper"));
    eprintln!("host limits: no_mount_formats = {no_mount:?}, open_luks = {open_luks}");
    ApplyOptions {
        root: root.to_path_buf(),
        wipe: false,
        no_mount_formats: no_mount,
        open_luks,
        luks_format_args: ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
            .map(String::from)
            .to_vec(),
        keys: Arc::new(Keys {
            by_path: BTreeMap::from([(KEY_PATH.to_string(), b"correct horse battery".to_vec())]),
        }),
        progress: Some(Arc::new(move |e: &OpEvent| {
            events.lock().unwrap().push(e.clone())
        })),
        journal: None,
        ..Default::default()
    }
}

struct Run {
    plan: Plan,
    applied: Applied,
    events: Vec<OpEvent>,
    opts: ApplyOptions,
}

fn apply_on(name: &str, disks: &[(&str, &LoopDisk)], root: &Path) -> Run {
    let l = layout(name);
    let overrides: BTreeMap<String, String> = disks
        .iter()
        .map(|(n, d)| (n.to_string(), d.dev().to_string()))
        .collect();
    let targets = landfall_agent::disk::cli_targets(&l, &overrides, &BTreeMap::new()).unwrap();
    let p = plan(&l, &targets).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let opts = options(root, events.clone());
    let applied = rt()
        .block_on(apply(&p, &opts))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let events = events.lock().unwrap().clone();
    Run {
        plan: p,
        applied,
        events,
        opts,
    }
}

fn mounted_below(root: &Path) -> Vec<String> {
    let r = std::fs::canonicalize(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| *m == r || m.starts_with(&format!("{r}/")))
        .map(|m| m[r.len()..].to_string())
        .map(|m| if m.is_empty() { "/".into() } else { m })
        .collect()
}

/// Common read-back checks: PARTLABEL and signature of every partition,
/// every mount that was not skipped is there and writable, progress for
/// every operation; then close and nothing is left mounted.
fn check(run: Run, root: &Path) {
    for d in &run.plan.disks {
        for p in &d.partitions {
            let b = blkid(&p.device);
            assert_eq!(b.get("PART_ENTRY_NAME"), Some(&p.label), "{}", p.device);
            assert_eq!(
                b.get("PART_ENTRY_TYPE").map(|t| t.to_ascii_uppercase()),
                Some(p.type_guid.clone()),
                "{}",
                p.device
            );
        }
    }
    // Every operation reported, each ends done or skipped with a named reason.
    let total = run.plan.op_count();
    for i in 1..=total {
        let last = run
            .events
            .iter()
            .rfind(|e| e.index == i)
            .unwrap_or_else(|| panic!("no event for op {i}"));
        assert!(
            matches!(last.state, OpState::Done { .. } | OpState::Skipped { .. }),
            "op {i}: {last:?}"
        );
    }
    let expected: Vec<String> = run
        .plan
        .mounts
        .iter()
        .filter(|m| {
            !run.opts.no_mount_formats.contains(&m.fs_type)
                && (run.opts.open_luks || !m.device.starts_with("/dev/mapper/"))
        })
        .map(|m| m.mountpoint.clone())
        .collect();
    let mut got = mounted_below(root);
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);
    for m in &expected {
        let f = root.join(m.trim_start_matches('/')).join(".landfall-test");
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("writing into {m}: {e}"));
    }
    rt().block_on(run.applied.close()).unwrap();
    assert!(
        mounted_below(root).is_empty(),
        "still mounted: {:?}",
        mounted_below(root)
    );
}

#[test]
fn simple_efi_on_a_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("simple-efi", &[("main", &disk)], root.path());
    assert_eq!(
        blkid(&format!("{}p1", disk.dev()))
            .get("TYPE")
            .map(String::as_str),
        Some("vfat")
    );
    assert_eq!(
        blkid(&format!("{}p2", disk.dev()))
            .get("TYPE")
            .map(String::as_str),
        Some("ext4")
    );
    assert_eq!(run.applied.read_back.partitions.len(), 2);
    assert!(run.applied.nixos.to_nix().contains("disk-main-root"));
    check(run, root.path());
    // sgdisk agrees the table is sound.
    assert!(sh(&["sgdisk", "-v", disk.dev()]).contains("No problems found"));
}

#[test]
fn hybrid_on_a_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("hybrid", &[("main", &disk)], root.path());
    // The BIOS boot partition holds nothing; it is 1 MiB and first.
    let b = blkid(&format!("{}p1", disk.dev()));
    assert_eq!(
        b.get("PART_ENTRY_TYPE")
            .map(|s| s.to_ascii_uppercase())
            .as_deref(),
        Some("21686148-6449-6E6F-744E-656564454649")
    );
    assert_eq!(b.get("PART_ENTRY_SIZE").map(String::as_str), Some("2048"));
    assert_eq!(b.get("TYPE"), None);
    check(run, root.path());
}

#[test]
fn btrfs_subvolumes_on_a_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("btrfs-subvolumes", &[("main", &disk)], root.path());
    let list = sh(&["btrfs", "subvolume", "list", root.path().to_str().unwrap()]);
    for s in ["rootfs", "home", "nix"] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!("path {s}"))),
            "{s} missing:\n{list}"
        );
    }
    // /home is the subvolume, not a directory of the top level.
    let opts = sh(&[
        "findmnt",
        "-n",
        "-o",
        "OPTIONS",
        root.path().join("home").to_str().unwrap(),
    ]);
    assert!(opts.contains("subvol=/home"), "{opts}");
    check(run, root.path());
}

#[test]
fn luks_btrfs_on_a_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("luks-btrfs", &[("main", &disk)], root.path());
    let p2 = format!("{}p2", disk.dev());
    assert_eq!(
        blkid(&p2).get("TYPE").map(String::as_str),
        Some("crypto_LUKS")
    );
    // The key was fed on stdin and opens the header.
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("printf 'correct horse battery' | cryptsetup open --test-passphrase --key-file - {p2}")])
        .status()
        .unwrap();
    assert!(ok.success(), "the key does not open the LUKS header");
    let bad = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("printf 'wrong' | cryptsetup open --test-passphrase --key-file - {p2}"),
        ])
        .status()
        .unwrap();
    assert!(!bad.success());
    let dump = sh(&["cryptsetup", "luksDump", &p2]);
    assert!(
        dump.contains("Version:       \t2") || dump.contains("Version: \t2") || dump.contains("2"),
        "{dump}"
    );
    if !run.opts.open_luks {
        let skipped: Vec<&OpEvent> = run
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e.state,
                    OpState::Skipped {
                        because: "open_luks = false"
                    }
                )
            })
            .collect();
        assert!(!skipped.is_empty());
        eprintln!("no device-mapper here: {} operations inside LUKS reported as skipped (open_luks = false)", skipped.len());
    }
    let nix = run.applied.nixos.to_json();
    assert_eq!(
        nix["boot"]["initrd"]["luks"]["devices"]["crypted"]["allowDiscards"],
        true
    );
    check(run, root.path());
}

#[test]
fn two_disk_prepares_both_disks_in_parallel() {
    require_root();
    let _s = serial();
    let system = LoopDisk::new(1200 * MIB);
    let data = LoopDisk::new(400 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on(
        "two-disk",
        &[("system", &system), ("data", &data)],
        root.path(),
    );
    assert_eq!(
        blkid(&format!("{}p1", data.dev()))
            .get("PART_ENTRY_NAME")
            .map(String::as_str),
        Some("disk-data-home")
    );
    // Both disks' first operation started before either disk's last one finished.
    // (Mount events carry the disk too; only the per-disk operations count.)
    let disk_ops: usize = run.plan.disks.iter().map(|d| d.ops.len()).sum();
    let pos = |disk: &str, first: bool| -> usize {
        let mine = |e: &OpEvent| e.disk.as_deref() == Some(disk) && e.index <= disk_ops;
        if first {
            run.events.iter().position(mine).unwrap()
        } else {
            run.events.iter().rposition(mine).unwrap()
        }
    };
    assert!(
        pos("system", true) < pos("data", false) && pos("data", true) < pos("system", false),
        "{:#?}",
        run.events
    );
    check(run, root.path());
}

#[test]
fn xfs_swap_tmpfs_on_a_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(2000 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("xfs-swap", &[("main", &disk)], root.path());
    assert_eq!(
        blkid(&format!("{}p2", disk.dev()))
            .get("TYPE")
            .map(String::as_str),
        Some("xfs")
    );
    let swap = blkid(&format!("{}p3", disk.dev()));
    // randomEncryption: no signature, as disko does; NixOS makes a fresh
    // encrypted swap on it at every boot.
    assert_eq!(swap.get("TYPE"), None, "{swap:?}");
    assert_eq!(
        swap.get("PART_ENTRY_SIZE").map(String::as_str),
        Some("2097152")
    );
    let fst = sh(&[
        "findmnt",
        "-n",
        "-o",
        "FSTYPE",
        root.path().join("tmp").to_str().unwrap(),
    ]);
    assert_eq!(fst.trim(), "tmpfs");
    check(run, root.path());
}

#[test]
fn a_failing_operation_is_named_and_the_disk_cleaned_up() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(600 * MIB);
    let root = tempfile::tempdir().unwrap();
    let l = landfall_agent::disk::Layout::from_json(&serde_json::json!({"disko": {"devices": {"disk": {"main": {
        "type": "disk", "device": disk.dev(),
        "content": {"type": "gpt", "partitions": {
            "home": {"size": "100M", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/home"}},
            "root": {"size": "100%", "content": {"type": "filesystem", "format": "xfs", "mountpoint": "/",
                      "extraArgs": ["-O", "no_such_option=1"]}}
        }}}}}}}))
    .unwrap();
    let targets =
        landfall_agent::disk::cli_targets(&l, &BTreeMap::new(), &BTreeMap::new()).unwrap();
    let p = plan(&l, &targets).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = rt()
        .block_on(apply(&p, &options(root.path(), events.clone())))
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("operation 5 on disk main failed: mkfs.xfs -f -q -O no_such_option=1"),
        "{msg}"
    );
    assert!(msg.contains("wiped the new partition tables of"), "{msg}");
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.index == 5 && e.state == OpState::Failed));
    // No table, no filesystem left, nothing mounted.
    let b = blkid(disk.dev());
    assert_eq!(b.get("PTTYPE"), None, "{b:?}");
    assert!(mounted_below(root.path()).is_empty());
}

#[test]
fn a_mounted_disk_is_refused_even_with_wipe() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("simple-efi", &[("main", &disk)], root.path());
    let l = layout("simple-efi");
    let ov = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let p = plan(
        &l,
        &landfall_agent::disk::cli_targets(&l, &ov, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut o = options(other.path(), Arc::new(Mutex::new(Vec::new())));
    o.wipe = true;
    let e = rt().block_on(apply(&p, &o)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&format!(
            "disk main ({}) is mounted ({}p2 on",
            disk.dev(),
            disk.dev()
        )),
        "{msg}"
    );
    assert!(landfall_agent::disk::apply::is_refusal(&e));
    // An `auto` pick leaves it out and says why.
    let name = disk.dev().trim_start_matches("/dev/").to_owned();
    let at = std::fs::canonicalize(root.path()).unwrap();
    let why = landfall_agent::disk::use_of(disk.dev()).expect("in use");
    assert!(
        why.starts_with(&format!("{name}p"))
            && why.contains(&format!("mounted at {}", at.display())),
        "{why}"
    );
    let inv = landfall_proto::inventory::Disk {
        path: disk.dev().to_owned(),
        ..Default::default()
    };
    let (usable, left) = landfall_agent::disk::candidates(&[inv]);
    assert!(usable.is_empty());
    assert_eq!(left[0].path, disk.dev());
    assert_eq!(left[0].why, why);
    check(run, root.path());
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pipeline_disk_step_selects_by_rule_honours_the_wipe_policy_and_reports_each_operation() {
    use landfall_agent::cmdline::ConsoleMode;
    use landfall_agent::pipeline;
    use landfall_agent::report::{Console, Outbox, Reporter};
    use landfall_proto::{inventory, Assignment, Inventory, WipePolicy};

    require_root();
    let _s = serial();
    let disk = LoopDisk::new(700 * MIB);
    sh(&["mkfs.ext4", "-q", "-F", disk.dev()]);
    let root = tempfile::tempdir().unwrap();
    // The loop device stands in for the inventory's disk; the rule picks it
    // over a removable and a too-small one.
    let inv_disk = |name: &str, path: &str, size: u64, removable: bool| inventory::Disk {
        name: name.into(),
        path: path.into(),
        size_bytes: size,
        logical_sector_size: 512,
        removable,
        by_id: Some(format!("/dev/disk/by-id/test-{name}")),
        ..Default::default()
    };
    let inv = Inventory {
        disks: vec![
            inv_disk("usb", "/dev/null-usb", 64 << 30, true),
            inv_disk("tiny", "/dev/null-tiny", 100 * MIB, false),
            inv_disk("loop", disk.dev(), 700 * MIB, false),
        ],
        ..Default::default()
    };
    let layout = serde_json::json!({"disko": {"devices": {"disk": {"main": {
    "type": "disk", "device": "auto",
    "content": {"type": "gpt", "partitions": {
        "root": {"size": "100%", "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}},
        "swap": {"size": "64M", "type": "8200", "content": {"type": "swap"}}
    }}}}}}});
    // From JSON, as the server sends it (fields added later default).
    let mut a: Assignment = serde_json::from_value(serde_json::json!({
        "hostname": "h", "role": "r", "layout": "inline", "wipe": "never",
        "disko": layout, "disks": {"main": "auto:min=200M"}
    }))
    .unwrap();
    let buf = Buf::default();
    let reporter = Reporter::new(
        Outbox::new(),
        Console::new(
            Box::new(buf.clone()),
            false,
            ConsoleMode::Lines,
            &pipeline::console_steps(),
        ),
    );
    let base = || ApplyOptions {
        root: root.path().to_path_buf(),
        ..Default::default()
    };
    let before = disk.hash();
    let e = rt()
        .block_on(pipeline::disk_step(
            &reporter,
            &a,
            &layout,
            &inv,
            base(),
            None,
        ))
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("holds data: ext4 filesystem"),
        "{e:#}"
    );
    assert_eq!(disk.hash(), before);

    a.wipe = WipePolicy::Always;
    let seq_before = reporter.outbox.last_seq();
    let (applied, summary) = rt()
        .block_on(pipeline::disk_step(
            &reporter,
            &a,
            &layout,
            &inv,
            base(),
            None,
        ))
        .unwrap();
    assert!(
        summary.contains("main=/dev/disk/by-id/test-loop"),
        "{summary}"
    );
    assert!(
        summary.contains("2 partitions verified, 1 mounted"),
        "{summary}"
    );
    // A progress event when each operation starts and one when it is done,
    // plus the plan and the NixOS configuration as log events. (The console
    // shows at most one progress line a second; the outbox gets them all.)
    let total = 3 + 2 + 1; // wipe, gpt, reread; mkfs, mkswap; mount
    let events = reporter.outbox.last_seq() - seq_before;
    assert!(
        events >= 2 * total as u64 + 2,
        "{events} events for {total} operations"
    );
    let lines = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    assert!(
        lines.contains(&format!("[1/{total}] started: wipefs")),
        "{lines}"
    );
    // disko order: the fixed-size swap first, "100%" last.
    assert!(blkid(&format!("{}p1", disk.dev()))
        .get("TYPE")
        .is_some_and(|t| t == "swap"));
    assert!(blkid(&format!("{}p2", disk.dev()))
        .get("TYPE")
        .is_some_and(|t| t == "ext4"));
    assert_eq!(
        applied.nixos.to_json()["swapDevices"][0]["device"],
        "/dev/disk/by-partlabel/disk-main-swap"
    );
    rt().block_on(applied.close()).unwrap();
    assert!(mounted_below(root.path()).is_empty());
}

#[test]
fn luks_password_file_is_a_passphrase_fed_on_stdin() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let keydir = tempfile::tempdir().unwrap();
    let pw = keydir.path().join("pw");
    // As an operator writes it: with a trailing newline.
    std::fs::write(&pw, "s3cret phrase\n").unwrap();
    let l = landfall_agent::disk::Layout::from_json(&serde_json::json!({"disk": {"main": {
    "device": disk.dev(),
    "content": {"type": "gpt", "partitions": {
        "luks": {"size": "100%", "content": {"type": "luks", "name": "lftestpw",
            "passwordFile": pw.to_str().unwrap(),
            "content": {"type": "filesystem", "format": "ext4", "mountpoint": "/"}}}
    }}}}}))
    .unwrap();
    let p = plan(
        &l,
        &landfall_agent::disk::cli_targets(&l, &BTreeMap::new(), &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    assert!(
        !p.to_string().contains("s3cret"),
        "a key reached the printed plan"
    );
    let mut o = options(root.path(), Arc::new(Mutex::new(Vec::new())));
    o.keys = Arc::new(Keys::default()); // falls back to reading the file
    let applied = rt()
        .block_on(apply(&p, &o))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p1 = format!("{}p1", disk.dev());
    // The passphrase is the line without its newline, as typed at boot.
    let test = |key: &str| {
        std::process::Command::new("sh")
            .args([
                "-c",
                &format!("printf '{key}' | cryptsetup open --test-passphrase --key-file - {p1}"),
            ])
            .status()
            .unwrap()
            .success()
    };
    assert!(test("s3cret phrase"));
    assert!(!test("s3cret phrase\\n"));
    rt().block_on(applied.close()).unwrap();
}

#[test]
fn hybrid_on_a_4k_sector_loop_device() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::with_sector_size(1200 * MIB, Some(4096));
    let root = tempfile::tempdir().unwrap();
    let run = apply_on("hybrid", &[("main", &disk)], root.path());
    assert_eq!(run.plan.disks[0].target.sector_size, 4096);
    // 1 MiB alignment is 256 sectors of 4 KiB.
    let parts: Vec<(u64, u64)> = run.plan.disks[0]
        .partitions
        .iter()
        .map(|p| (p.first_lba, p.last_lba))
        .collect();
    assert_eq!(parts[0], (256, 511));
    assert_eq!(parts[1], (512, 512 + 500 * 256 - 1));
    let v = sh(&["sgdisk", "-v", disk.dev()]);
    assert!(v.contains("No problems found"), "{v}");
    let d = sh(&["sfdisk", "-d", disk.dev()]);
    assert!(
        d.contains("sector-size: 4096") && d.contains("start=         256, size=         256"),
        "{d}"
    );
    check(run, root.path());
}

#[test]
fn reinstall_with_wipe_over_another_layout_leaves_no_stale_signature() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let first = apply_on("simple-efi", &[("main", &disk)], root.path());
    rt().block_on(first.applied.close()).unwrap();
    // As after a reboot on a kernel that does not scan GPTs: the old
    // partitions are unknown, so wiping "them" cannot reach their signatures.
    sh(&["partx", "-d", disk.dev()]);
    // hybrid's BIOS boot partition starts where simple-efi's ESP (vfat) did.
    let l = layout("hybrid");
    let ov = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let p = plan(
        &l,
        &landfall_agent::disk::cli_targets(&l, &ov, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    let mut o = options(root.path(), Arc::new(Mutex::new(Vec::new())));
    let e = rt().block_on(apply(&p, &o)).unwrap_err();
    assert!(
        format!("{e:#}").contains("holds data: gpt partition table"),
        "{e:#}"
    );
    o.wipe = true;
    let applied = rt()
        .block_on(apply(&p, &o))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let b = blkid(&format!("{}p1", disk.dev()));
    assert_eq!(
        b.get("PART_ENTRY_NAME").map(String::as_str),
        Some("disk-main-boot")
    );
    assert_eq!(
        b.get("TYPE"),
        None,
        "stale signature in the BIOS boot partition: {b:?}"
    );
    rt().block_on(applied.close()).unwrap();
}

#[test]
fn read_only_and_active_swap_disks_are_refused_even_with_wipe() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let l = layout("simple-efi");
    let ov = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let p = plan(
        &l,
        &landfall_agent::disk::cli_targets(&l, &ov, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut o = options(root.path(), Arc::new(Mutex::new(Vec::new())));
    o.wipe = true;

    sh(&["blockdev", "--setro", disk.dev()]);
    let e = rt().block_on(apply(&p, &o)).unwrap_err();
    sh(&["blockdev", "--setrw", disk.dev()]);
    assert!(
        format!("{e:#}").contains(&format!("disk main ({}) is read-only", disk.dev())),
        "{e:#}"
    );

    // Swap in use on a partition of the disk.
    sh(&["sgdisk", "--new=1:0:+64M", "--typecode=1:8200", disk.dev()]);
    sh(&["partx", "-a", disk.dev()]);
    let p1 = format!("{}p1", disk.dev());
    sh(&["mkswap", &p1]);
    sh(&["swapon", &p1]);
    let e = rt().block_on(apply(&p, &o));
    sh(&["swapoff", &p1]);
    let msg = format!("{:#}", e.unwrap_err());
    assert!(
        msg.contains(&format!(
            "disk main ({}) is in use ({p1} is active swap)",
            disk.dev()
        )),
        "{msg}"
    );
}

/// The finish step's unmount: a busy target (a technician's shell left in
/// /mnt, here an open file) fails with the mount named and stays held, so a
/// retry can unmount it once it is free; nothing is left mounted after.
#[test]
fn a_busy_target_stays_held_until_it_can_be_released() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let root = tempfile::tempdir().unwrap();
    let mut run = apply_on("simple-efi", &[("main", &disk)], root.path());
    let held = run.applied.mounts.len();
    assert!(held >= 1);
    let busy = std::fs::File::create(root.path().join("busy")).unwrap();
    let e = rt().block_on(run.applied.try_close()).unwrap_err();
    assert!(format!("{e:#}").contains("still busy"), "{e:#}");
    assert!(
        !run.applied.mounts.is_empty(),
        "the busy mount is still held"
    );
    assert!(mounted_below(root.path()).contains(&"/".to_owned()));
    drop(busy);
    rt().block_on(run.applied.try_close()).unwrap();
    assert!(run.applied.mounts.is_empty());
    assert!(
        mounted_below(root.path()).is_empty(),
        "{:?}",
        mounted_below(root.path())
    );
}

/// A device that held another table: the kernel still knows the old
/// partitions (added with partx, as on a kernel without GPT scanning) when
/// the new table is written. Their nodes keep the old bounds until dropped,
/// and probing one reads past the new partition (the `libblkid probe ...:
/// Input/output error` once seen in nine runs). `sync_partitions` makes the
/// kernel's view exactly the new table.
#[test]
fn partitions_known_with_another_tables_bounds_are_dropped_and_re_added() {
    use landfall_agent::disk::apply::{kernel_parts, sync_partitions, KernelPart};
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(64 * MIB);
    let dev = disk.dev();
    // The old table: three partitions, known to the kernel.
    sh(&[
        "sgdisk",
        "-n",
        "1:2048:+8M",
        "-n",
        "2:0:+8M",
        "-n",
        "3:0:+8M",
        dev,
    ]);
    sh(&["partx", "-a", dev]);
    assert_eq!(kernel_parts(dev).unwrap().len(), 3);
    // The new table: partition 1 keeps its start but grows, 2 starts
    // elsewhere, 3 is gone, 4 is new.
    sh(&["sgdisk", "--zap-all", dev]);
    sh(&[
        "sgdisk",
        "-n",
        "1:2048:+16M",
        "-n",
        "2:0:+4M",
        "-n",
        "4:0:+4M",
        dev,
    ]);
    let want = vec![
        KernelPart {
            number: 1,
            start: 2048,
            sectors: 16 * 2048,
        },
        KernelPart {
            number: 2,
            start: 2048 + 16 * 2048,
            sectors: 4 * 2048,
        },
        KernelPart {
            number: 4,
            start: 2048 + 20 * 2048,
            sectors: 4 * 2048,
        },
    ];
    assert_ne!(
        kernel_parts(dev).unwrap(),
        want,
        "the kernel still holds the old bounds"
    );
    rt().block_on(sync_partitions(dev, &want))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(kernel_parts(dev).unwrap(), want);
    // Every node probes cleanly and carries the new table's entry.
    for n in [1, 2, 4] {
        let b = blkid(&format!("{dev}p{n}"));
        assert_eq!(
            b.get("PART_ENTRY_NUMBER").map(String::as_str),
            Some(&*n.to_string()),
            "{b:?}"
        );
    }
    assert!(!std::path::Path::new(&format!("{dev}p3")).exists());
}

/// The simple-efi plan for `disk` (apply options from [`options`], `wipe` as given).
fn simple_efi_on(disk: &LoopDisk, root: &Path, wipe: bool) -> (Plan, ApplyOptions) {
    let l = layout("simple-efi");
    let ov = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let p = plan(
        &l,
        &landfall_agent::disk::cli_targets(&l, &ov, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    let mut o = options(root, Arc::new(Mutex::new(Vec::new())));
    o.wipe = wipe;
    (p, o)
}

/// A disk holding `what` (blkid's TYPE `fs_type` on the whole disk) is data: with the wipe
/// policy `never` the apply is refused naming it, and not a byte of the disk changes; with
/// `wipe` it is applied and the signature is gone from the disk and every partition.
fn member_is_data_until_wiped(disk: &LoopDisk, fs_type: &str, what: &str) {
    assert_eq!(
        blkid(disk.dev()).get("TYPE").map(String::as_str),
        Some(fs_type),
        "the fixture is not what blkid calls {fs_type}"
    );
    let before = disk.hash();
    let root = tempfile::tempdir().unwrap();
    let (p, o) = simple_efi_on(disk, root.path(), false);
    let e = rt().block_on(apply(&p, &o)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(landfall_agent::disk::apply::is_refusal(&e), "{msg}");
    assert!(
        msg.contains(&format!("disk main ({}) holds data: {what}", disk.dev()))
            && msg.contains("wipe policy is `never`"),
        "{msg}"
    );
    assert_eq!(disk.hash(), before, "a refused disk was written to");

    let (p, o) = simple_efi_on(disk, root.path(), true);
    let applied = rt()
        .block_on(apply(&p, &o))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut nodes = vec![disk.dev().to_string()];
    nodes.extend(p.disks[0].partitions.iter().map(|p| p.device.clone()));
    for n in &nodes {
        let b = blkid(n);
        assert_ne!(
            b.get("TYPE").map(String::as_str),
            Some(fs_type),
            "{n} still holds the {what} after the wipe: {b:?}"
        );
    }
    rt().block_on(applied.close()).unwrap();
}

/// Issue 16: a disk that is a physical volume of a volume group counts as holding data.
/// Made with the host's lvm2 (metadata only: no device-mapper is needed to create a VG;
/// the VM test covers an active one), its backups kept out of the host's /etc/lvm.
#[test]
fn a_disk_in_a_volume_group_counts_as_data() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    let lvm_dir = tempfile::tempdir().unwrap();
    std::fs::write(lvm_dir.path().join("lvm.conf"), "").unwrap();
    let lvm = |argv: &[&str]| {
        let out = std::process::Command::new("lvm")
            .args(argv)
            .env("LVM_SYSTEM_DIR", lvm_dir.path())
            .output()
            .expect("lvm (Debian: lvm2; ./x installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "lvm {argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    lvm(&["pvcreate", "--yes", disk.dev()]);
    lvm(&["vgcreate", "landfall-test-vg", disk.dev()]);
    let pvs = |dev: &str| {
        lvm(&[
            "pvs",
            "--noheadings",
            "-o",
            "pv_name,vg_name",
            "--devices",
            dev,
        ])
    };
    assert!(pvs(disk.dev()).contains("landfall-test-vg"));
    member_is_data_until_wiped(&disk, "LVM2_member", "LVM physical volume");
    assert!(
        !pvs(disk.dev()).contains("landfall-test-vg"),
        "lvm still sees the volume group after the wipe"
    );
}

/// Issue 16: a disk that holds a ZFS pool label counts as holding data. The host has no ZFS
/// (no module for Debian's kernel in main), so the test writes the four vdev labels as ZFS
/// lays them out (vdev_impl.h: 256 KiB each, two at the start and two at the end of the
/// device; in each an XDR nvlist at 16 KiB with the pool's `name` and `pool_guid`, and the
/// uberblock ring at 128 KiB, 1 KiB each, magic 0x00bab10c), which is what libblkid
/// recognises as `zfs_member` (it wants 4 uberblocks).
#[test]
fn a_disk_with_a_zfs_pool_label_counts_as_data() {
    require_root();
    let _s = serial();
    let disk = LoopDisk::new(1200 * MIB);
    write_zfs_labels(disk.dev(), 1200 * MIB, "tank", 0x1d5e_a5e0_7a5c_0001);
    let b = blkid(disk.dev());
    assert_eq!(b.get("LABEL").map(String::as_str), Some("tank"), "{b:?}");
    member_is_data_until_wiped(&disk, "zfs_member", "ZFS pool member");
    // Not only what libblkid reports (one uberblock magic): none of the four labels keeps
    // its nvlist or an uberblock, which `zpool import` would still find.
    let raw = std::fs::read(disk.dev()).unwrap();
    let size = raw.len() as u64;
    assert_eq!(size, 1200 * MIB);
    for at in [0, ZFS_LABEL, size - 2 * ZFS_LABEL, size - ZFS_LABEL] {
        let label = &raw[at as usize..(at + ZFS_LABEL) as usize];
        let magic = 0x00ba_b10c_u64.to_le_bytes();
        let uberblocks = (128usize << 10..ZFS_LABEL as usize)
            .step_by(1024)
            .filter(|o| label[*o..*o + 8] == magic)
            .count();
        let nvlist = label.windows(9).any(|w| w == b"pool_guid");
        assert!(
            uberblocks == 0 && !nvlist,
            "the ZFS label at {at} survived the wipe: {uberblocks} uberblocks, nvlist: {nvlist}"
        );
    }
}

const ZFS_LABEL: u64 = 256 << 10;

/// Four ZFS vdev labels on `dev` of `size` bytes (see the test above).
fn write_zfs_labels(dev: &str, size: u64, pool: &str, guid: u64) {
    use std::io::{Seek, SeekFrom, Write};
    const LABEL: u64 = ZFS_LABEL;
    // XDR nvlist: encoding and endianness, version and flags, then the pairs (each: encoded
    // size, decoded size, name length, name padded to 4, type, element count, value), then
    // a zero size.
    fn pair(name: &str, value: &[u8]) -> Vec<u8> {
        let pad = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(b.len().div_ceil(4) * 4, 0);
            v
        };
        let mut body = pad(name.as_bytes());
        body.extend_from_slice(value);
        let size = (12 + body.len()) as u32;
        let mut out = Vec::new();
        for v in [size, size, name.len() as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend(body);
        out
    }
    let string = |s: &str| {
        let mut v = Vec::new();
        for n in [9u32, 1, s.len() as u32] {
            v.extend_from_slice(&n.to_be_bytes()); // DATA_TYPE_STRING, 1 element, length
        }
        v.extend_from_slice(s.as_bytes());
        v.resize(12 + s.len().div_ceil(4) * 4, 0);
        v
    };
    let uint64 = |n: u64| {
        let mut v = Vec::new();
        for x in [8u32, 1] {
            v.extend_from_slice(&x.to_be_bytes()); // DATA_TYPE_UINT64, 1 element
        }
        v.extend_from_slice(&n.to_be_bytes());
        v
    };
    let mut nvlist = vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    nvlist.extend(pair("version", &uint64(5000)));
    nvlist.extend(pair("name", &string(pool)));
    nvlist.extend(pair("pool_guid", &uint64(guid)));
    nvlist.extend([0; 8]);
    let mut label = vec![0u8; LABEL as usize];
    label[16 << 10..(16 << 10) + nvlist.len()].copy_from_slice(&nvlist);
    for i in 0..4u64 {
        // ub_magic, ub_version, ub_txg, ub_guid_sum, ub_timestamp (host endian: little)
        let at = (128 << 10) + (i as usize) * 1024;
        for (k, v) in [0x00ba_b10c, 5000, 4 + i, guid, 1_700_000_000 + i]
            .into_iter()
            .enumerate()
        {
            label[at + k * 8..at + k * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    for offset in [0, LABEL, size - 2 * LABEL, size - LABEL] {
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&label).unwrap();
    }
    f.sync_all().unwrap();
}

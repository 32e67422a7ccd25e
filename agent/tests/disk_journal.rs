//! The disk journal (issue 10 item 16): round trip and atomic write (no
//! root), and on loop devices (root; CI is root): an apply interrupted
//! after some operations is resumed from the journal with the same GPT
//! disk GUID and nothing re-made; a disk changed by someone else refuses
//! the resume with a message naming the disk, the field and both values.

mod disk_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use disk_common::*;
use landfall_agent::disk::journal::{Done, Journal};
use landfall_agent::disk::{apply, plan_pinned, ApplyOptions, Ids, JournalFile, OpEvent, OpState};

const MIB: u64 = 1 << 20;

fn mountable(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

#[test]
fn journal_round_trip_and_atomic_write() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout("xfs-swap");
    let targets = sized(&l, 2048 * MIB);
    let mut j = Journal::new("att-1", Ids::from_seed(&[7; 32]), targets);
    j.done.push(Done::Gpt {
        disk: "main".into(),
        device: "/dev/vda".into(),
        disk_guid: "0b6c6d58-7d7f-4f5e-9a0e-3d1d2f6a7b8c".into(),
    });
    let path = Journal::path(dir.path(), "att-1");
    assert_eq!(Journal::load(&path).unwrap(), None);
    j.save(&path).unwrap();
    assert_eq!(Journal::load(&path).unwrap(), Some(j.clone()));
    // Saved again over the old one: no temporary file is left beside it.
    j.done.push(Done::Op {
        disk: "main".into(),
        what: "x".into(),
    });
    j.save(&path).unwrap();
    assert_eq!(Journal::load(&path).unwrap().unwrap().done.len(), 2);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["disks-att-1.json"]);
    // A torn file is an error that names the file, never a fresh start.
    std::fs::write(&path, "{\"version\": 1, \"att").unwrap();
    let e = Journal::load(&path).unwrap_err();
    assert!(format!("{e:#}").contains("disks-att-1.json"), "{e:#}");
}

#[test]
fn the_same_seed_plans_the_same_ids() {
    let l = layout("xfs-swap");
    let t = sized(&l, 2048 * MIB);
    let a = plan_pinned(&l, &t, &Ids::from_seed(&[1; 32])).unwrap();
    let b = plan_pinned(&l, &t, &Ids::from_seed(&[1; 32])).unwrap();
    let c = plan_pinned(&l, &t, &Ids::from_seed(&[2; 32])).unwrap();
    let ids = |p: &landfall_agent::disk::Plan| serde_json::to_string(&p.disks).unwrap();
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
    assert!(a.disks[0].disk_guid.is_some());
    let argv: Vec<String> = a.disks[0]
        .ops
        .iter()
        .filter_map(|o| o.argv())
        .map(|a| a.join(" "))
        .collect();
    assert!(
        argv.iter()
            .any(|a| a.starts_with("mkfs.xfs") && a.contains("-m uuid=")),
        "{argv:?}"
    );
    assert!(
        argv.iter().any(|a| a.starts_with("mkfs.vfat -i ")),
        "{argv:?}"
    );
}

struct Setup {
    disk: LoopDisk,
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    plan: landfall_agent::disk::Plan,
    events: Arc<Mutex<Vec<OpEvent>>>,
}

fn setup() -> Setup {
    let disk = LoopDisk::new(2048 * MIB);
    let l = layout("xfs-swap");
    let overrides = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let targets = landfall_agent::disk::cli_targets(&l, &overrides, &BTreeMap::new()).unwrap();
    let plan = plan_pinned(&l, &targets, &Ids::random().unwrap()).unwrap();
    Setup {
        disk,
        root: tempfile::tempdir().unwrap(),
        state: tempfile::tempdir().unwrap(),
        plan,
        events: Arc::new(Mutex::new(Vec::new())),
    }
}

fn opts(s: &Setup, j: &JournalFile) -> ApplyOptions {
    let ev = s.events.clone();
    ApplyOptions {
        root: s.root.path().to_path_buf(),
        no_mount_formats: ["xfs", "vfat"]
            .iter()
            .filter(|f| !mountable(f))
            .map(|f| f.to_string())
            .collect(),
        progress: Some(Arc::new(move |e: &OpEvent| {
            ev.lock().unwrap().push(e.clone())
        })),
        journal: Some(j.clone()),
        ..Default::default()
    }
}

fn journal_file(s: &Setup) -> (std::path::PathBuf, JournalFile) {
    let targets = s
        .plan
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.target.clone()))
        .collect();
    let path = Journal::path(s.state.path(), "att-resume");
    let j = Journal::new("att-resume", Ids::from_seed(&[0; 32]), targets);
    (path.clone(), JournalFile::new(path, j))
}

fn ptuuid(dev: &str) -> String {
    blkid(dev).get("PTUUID").cloned().unwrap_or_default()
}

#[test]
fn an_interrupted_apply_resumes_with_the_same_disk_guid() {
    require_root();
    let _g = serial();
    let s = setup();
    let (path, jf) = journal_file(&s);
    let first = rt().block_on(apply(&s.plan, &opts(&s, &jf))).unwrap();
    let guid = ptuuid(s.disk.dev());
    assert_eq!(Some(&guid), s.plan.disks[0].disk_guid.as_ref());
    // A kill after the GPT and the first filesystem: the mounts stay, the
    // journal holds what was done up to there.
    first.leak();
    let mut j = Journal::load(&path).unwrap().unwrap();
    let gpt_at = j
        .done
        .iter()
        .position(|d| matches!(d, Done::Gpt { .. }))
        .unwrap();
    let fs_at = j
        .done
        .iter()
        .position(|d| matches!(d, Done::Signature { .. }))
        .unwrap();
    assert!(gpt_at < fs_at);
    j.done.truncate(fs_at + 1);
    let kept = j.done.len();
    j.save(&path).unwrap();

    s.events.lock().unwrap().clear();
    let jf = JournalFile::new(path.clone(), j);
    let again = rt()
        .block_on(apply(&s.plan, &opts(&s, &jf)))
        .unwrap_or_else(|e| panic!("resume: {e:#}"));
    assert_eq!(ptuuid(s.disk.dev()), guid, "the GPT was written again");
    let ev = s.events.lock().unwrap().clone();
    let skipped = ev
        .iter()
        .filter(
            |e| matches!(e.state, OpState::Skipped { because } if because.starts_with("journal")),
        )
        .count();
    assert_eq!(skipped, kept, "{ev:#?}");
    assert!(
        !ev.iter()
            .any(|e| e.state == OpState::Started && e.what.contains("GPT")),
        "{ev:#?}"
    );
    // Every filesystem carries the plan's UUID.
    for op in &s.plan.disks[0].ops {
        if let Some((dev, uuid)) = op.pinned_uuid() {
            assert_eq!(blkid(dev).get("UUID"), Some(&uuid), "{dev}");
        }
    }
    let total = Journal::load(&path).unwrap().unwrap().done.len();
    assert!(total > kept);
    rt().block_on(again.close()).unwrap();
}

#[test]
fn a_disk_changed_by_someone_else_refuses_the_resume() {
    require_root();
    let _g = serial();
    let s = setup();
    let (path, jf) = journal_file(&s);
    let first = rt().block_on(apply(&s.plan, &opts(&s, &jf))).unwrap();
    rt().block_on(first.close()).unwrap();
    let other = "11111111-2222-4333-8444-555555555555";
    sh(&["sfdisk", "--disk-id", s.disk.dev(), other]);
    let before = s.disk.hash();
    let jf = JournalFile::new(path.clone(), Journal::load(&path).unwrap().unwrap());
    let e = rt().block_on(apply(&s.plan, &opts(&s, &jf))).unwrap_err();
    let msg = format!("{e:#}");
    let want = s.plan.disks[0].disk_guid.clone().unwrap();
    assert!(msg.contains("disk main"), "{msg}");
    assert!(msg.contains("GPT disk GUID"), "{msg}");
    assert!(msg.contains(other) && msg.contains(&want), "{msg}");
    assert_eq!(
        s.disk.hash(),
        before,
        "the refused resume wrote to the disk"
    );
    let _ = Path::new(&path);
}

#[test]
fn a_failed_apply_leaves_a_journal_a_retry_starts_over_from() {
    require_root();
    let _g = serial();
    let s = setup();
    let (path, jf) = journal_file(&s);
    // A root that cannot be created (below a file): the mounts fail after
    // every disk operation ran; cleanup wipes the new table.
    let file = s.root.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut o = opts(&s, &jf);
    o.root = file.join("mnt");
    o.no_mount_formats.clear();
    let e = rt().block_on(apply(&s.plan, &o)).unwrap_err();
    assert!(
        format!("{e:#}").contains("wiped the new partition tables"),
        "{e:#}"
    );
    assert_eq!(Journal::load(&path).unwrap().unwrap().done, []);
    // The retry is a fresh apply on the same disk, not a refused resume.
    let jf = JournalFile::new(path.clone(), Journal::load(&path).unwrap().unwrap());
    let again = rt()
        .block_on(apply(&s.plan, &opts(&s, &jf)))
        .unwrap_or_else(|e| panic!("retry: {e:#}"));
    assert_eq!(
        Some(ptuuid(s.disk.dev())),
        s.plan.disks[0].disk_guid.clone()
    );
    rt().block_on(again.close()).unwrap();
}

/// An install pins every id (plan_pinned): an MBR entry has no GUID of its
/// own, its PARTUUID is the pinned disk id and the entry's number. The
/// read-back used to expect a GUID for each MBR entry and failed every
/// install of an msdos table (issue 16, the mbr-table VM test).
#[test]
fn a_pinned_mbr_table_reads_back_with_the_disk_ids_partuuids() {
    require_root();
    let _g = serial();
    let disk = LoopDisk::new(2048 * MIB);
    let l = layout("mbr-table");
    let overrides = BTreeMap::from([("main".to_string(), disk.dev().to_string())]);
    let targets = landfall_agent::disk::cli_targets(&l, &overrides, &BTreeMap::new()).unwrap();
    let plan = plan_pinned(&l, &targets, &Ids::from_seed(&[3; 32])).unwrap();
    let d = &plan.disks[0];
    let id = d.disk_guid.clone().unwrap();
    assert_eq!(id.len(), 8, "an MBR disk id is 8 hex digits: {id}");
    assert!(d.partitions.iter().all(|p| p.guid.is_none()), "{d:?}");
    let root = tempfile::tempdir().unwrap();
    let o = ApplyOptions {
        root: root.path().to_path_buf(),
        no_mount_formats: ["vfat", "ext4"]
            .iter()
            .filter(|f| !mountable(f))
            .map(|f| f.to_string())
            .collect(),
        ..Default::default()
    };
    let a = rt()
        .block_on(apply(&plan, &o))
        .unwrap_or_else(|e| panic!("apply: {e:#}"));
    assert_eq!(ptuuid(disk.dev()), id);
    for p in &d.partitions {
        assert_eq!(
            blkid(&p.device).get("PART_ENTRY_UUID").cloned(),
            Some(format!("{id}-{:02x}", p.number)),
            "{}",
            p.device
        );
    }
    assert_eq!(a.read_back.partitions.len(), 3);
    rt().block_on(a.close()).unwrap();
}

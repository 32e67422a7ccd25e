//! Bad input: every layout in disko-layouts/broken/ is refused with an error
//! naming the field (its `# expect:` lines), before anything is touched: the
//! target loop device is byte-identical afterwards, even with --wipe.
//! Also: a disk that holds data is refused without the wipe policy, and
//! left identical.

mod disk_common;

use std::process::Command;

use disk_common::*;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_landfall-agent"))
}

fn expectations(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn broken_layouts_are_refused_naming_the_field_and_the_disk_is_untouched() {
    require_root();
    let _s = serial();
    let dir = repo().join("disko-layouts/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "only {} broken layouts", files.len());

    let disk = LoopDisk::new(128 << 20);
    // Something worth protecting: a filesystem with a file's worth of data.
    sh(&["mkfs.ext4", "-q", "-F", "-L", "precious", disk.dev()]);
    let before = disk.hash();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for f in &files {
        let want = expectations(f);
        assert!(!want.is_empty(), "{} has no `# expect:` line", f.display());
        // The agent reads JSON, as the server sends it.
        let json = tmp.path().join("layout.json");
        std::fs::write(&json, render(f).to_string()).unwrap();
        let out = agent()
            .args(["apply", "--wipe", "--layout"])
            .arg(&json)
            .args(["--disk", &format!("main={}", disk.dev()), "--root"])
            .arg(tmp.path().join("root"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let name = f.file_name().unwrap().to_string_lossy();
        if out.status.success() {
            failures.push(format!("{name}: was accepted"));
        }
        for w in &want {
            if !err.contains(w.as_str()) {
                failures.push(format!("{name}: error does not contain {w:?}:\n{err}"));
            }
        }
        // The plan command refuses the same way.
        let out = agent()
            .args(["plan", "--layout"])
            .arg(&json)
            .args(["--size", "main=1G"])
            .output()
            .unwrap();
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains(want[0].as_str())
        {
            failures.push(format!("{name}: plan did not refuse with {:?}", want[0]));
        }
        assert_eq!(disk.hash(), before, "{name} changed the disk");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        blkid(disk.dev()).get("LABEL").map(String::as_str),
        Some("precious")
    );
}

#[test]
fn a_disk_with_data_is_refused_without_the_wipe_policy_and_left_identical() {
    require_root();
    let _s = serial();
    // What may be on a disk, how to put it there, and how the refusal names it.
    type Setup = fn(&str);
    let cases: &[(&str, Setup, &str)] = &[
        (
            "ext4",
            |d| {
                sh(&["mkfs.ext4", "-q", "-F", d]);
            },
            "ext4 filesystem",
        ),
        (
            "swap",
            |d| {
                sh(&["mkswap", d]);
            },
            "swap",
        ),
        (
            "LUKS",
            |d| {
                let cmd = format!("printf k | cryptsetup luksFormat --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - {d}");
                sh(&["sh", "-c", &cmd]);
            },
            "LUKS volume",
        ),
        (
            "gpt with an xfs partition",
            |d| {
                sh(&["sgdisk", "--new=1:0:0", d]);
                sh(&["partx", "-a", d]);
                sh(&["mkfs.xfs", "-q", "-f", &format!("{d}p1")]);
            },
            "gpt partition table, xfs filesystem on",
        ),
    ];
    for (what, setup, found) in cases {
        let disk = LoopDisk::new(600 << 20);
        setup(disk.dev());
        let before = disk.hash();
        let tmp = tempfile::tempdir().unwrap();
        let out = agent()
            .args(["apply", "--layout"])
            .arg(layout_path("simple-efi"))
            .args(["--disk", &format!("main={}", disk.dev()), "--root"])
            .arg(tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(&format!("disk main ({}) holds data: {found}", disk.dev())),
            "{what}: {err}"
        );
        assert!(
            err.contains("wipe policy is `never`") && err.contains("--wipe"),
            "{err}"
        );
        assert_eq!(disk.hash(), before, "{what}: the disk changed");
    }
}

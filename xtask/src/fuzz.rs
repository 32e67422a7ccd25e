//! `./x fuzz [--seconds N] [TARGET...]`: coverage-guided fuzzing (AFL++,
//! through the `afl` crate's `cargo afl`) of every parser of untrusted
//! bytes, `N` seconds per target (default 600), then executions and crashes
//! per target. Not part of `./x test` (CI's budget): the property tests in
//! the normal suite cover the same parsers briefly.
//!
//! Installs `cargo-afl` when missing (`cargo install --locked cargo-afl`), and
//! AFL++'s runtime for the current rustc (`cargo afl config --build`) when
//! `cargo afl build` asks for it.
//! The fuzzing binary is `fuzz/` (its own workspace), built into
//! `target/fuzz`; each run's corpus and findings are under
//! `target/fuzz/runs/TARGET/out` (crashes in `default/crashes/`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::build::{self, Cmd};

/// The targets of `fuzz/src/main.rs` with a seed input each.
fn seeds(root: &Path) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut range = 100_000u64.to_le_bytes().to_vec();
    range.extend_from_slice(b"bytes=0-99");
    Ok(vec![
        (
            "hello",
            br#"{"boot_token":"ab12","agent_version":"0.1.0","protocol":1,"inventory":{"nics":[{"name":"eth0","mac":"52:54:00:12:34:56","link_up":true}],"dmi":{"vendor":"QEMU"}}}"#.to_vec(),
        ),
        (
            "events",
            br#"{"attempt_id":"4b1f","events":[{"seq":1,"time":"2026-01-01T10:00:00Z","step":"disks","kind":"progress","progress":0.5,"message":"writing GPT"},{"seq":2,"time":"t","step":"done","kind":"failed","message":"x","data":{"step":"disks","security":true}}]}"#.to_vec(),
        ),
        ("range", range),
        (
            "boot_query",
            b"mac=52:54:00:12:34:56&arch=x86_64&platform=efi".to_vec(),
        ),
        (
            "layout",
            br#"{"disko":{"devices":{"disk":{"main":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"ESP":{"type":"EF00","size":"512M","content":{"type":"filesystem","format":"vfat","mountpoint":"/boot"}},"root":{"size":"100%","content":{"type":"luks","name":"root","passwordFile":"/run/k","content":{"type":"btrfs","subvolumes":{"/root":{"mountpoint":"/"}}}}}}}}}}}}"#.to_vec(),
        ),
        (
            "toml",
            b"[server]\nkernel_args = \"console=ttyS0\"\nmax_discovered = 10\n\n[enroll]\nunknown = \"hold\"\n\n[roles.workstation]\nlayout = \"single-disk\"\nwipe = \"always\"\n\n[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"ws-01\"\nrole = \"workstation\"\n".to_vec(),
        ),
        (
            "cmdline",
            b"initrd=initrd landfall.server=http://10.0.2.2:8080/ landfall.token=abc \"landfall.console=auto\" console=ttyS0,115200".to_vec(),
        ),
        (
            "mountinfo",
            b"36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext4 /dev/vda1 rw,errors=continue\n22 1 0:21 / /proc rw - proc proc rw\n".to_vec(),
        ),
        ("bundle_tar", seed_tar(root)?),
        ("dhcp", seed_dhcp()),
        (
            "tftp",
            b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00".to_vec(),
        ),
    ])
}

/// A PXE DISCOVER as EDK2 sends it (RFC 2131 header, options 53, 60, 93, 97,
/// 55), written out byte by byte.
fn seed_dhcp() -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0]; // BOOTREQUEST, Ethernet, hlen 6, hops
    p.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]); // xid
    p.extend_from_slice(&[0, 4, 0x80, 0]); // secs, flags: broadcast
    p.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    p.extend_from_slice(&chaddr);
    p.extend_from_slice(&[0; 64 + 128]); // sname, file
    p.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    p.extend_from_slice(&[53, 1, 1]); // DISCOVER
    let class = b"PXEClient:Arch:00007:UNDI:003000";
    p.extend_from_slice(&[60, class.len() as u8]);
    p.extend_from_slice(class);
    p.extend_from_slice(&[93, 2, 0, 7]); // client architecture: x86-64 UEFI
    p.extend_from_slice(&[97, 17, 0]); // client machine GUID
    p.extend_from_slice(&[0xab; 16]);
    p.extend_from_slice(&[55, 5, 1, 3, 43, 60, 67]); // parameter request list
    p.push(255);
    p
}

/// A ustar tar of two small files, from the system's `tar`.
fn seed_tar(root: &Path) -> Result<Vec<u8>> {
    let dir = root.join("target/fuzz/seed-tar");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files/ssh"))?;
    std::fs::write(dir.join("files/ssh/host_key"), b"-----BEGIN KEY-----\n")?;
    std::fs::write(dir.join("files/token"), b"s3cret\n")?;
    build::run(
        Cmd::new("tar")
            .args(["--format=ustar", "-C"])
            .arg(dir.join("files"))
            .args(["-cf"])
            .arg(dir.join("seed.tar"))
            .arg("."),
    )?;
    Ok(std::fs::read(dir.join("seed.tar"))?)
}

/// `cargo afl`, installed from crates.io when missing (as `./x` installs its
/// Debian packages): `cargo install --locked cargo-afl`.
fn ensure_cargo_afl() -> Result<()> {
    let present = || {
        Cmd::new("cargo")
            .args(["afl", "--version"])
            .run_blocking()
            .is_ok()
    };
    if present() {
        return Ok(());
    }
    eprintln!("fuzz: `cargo afl` is missing: installing it (cargo install --locked cargo-afl)");
    build::run(Cmd::new("cargo").args(["install", "--locked", "cargo-afl"]))
        .context("installing cargo-afl (`cargo install --locked cargo-afl`)")?;
    if !present() {
        bail!(
            "`cargo install cargo-afl` finished but `cargo afl` still does not run: is \
             ~/.cargo/bin (or $CARGO_HOME/bin) on PATH?"
        );
    }
    Ok(())
}

struct Outcome {
    target: &'static str,
    execs: u64,
    crashes: u64,
    hangs: u64,
    dir: PathBuf,
}

/// `key : value` lines of AFL++'s `fuzzer_stats`.
fn stat(stats: &str, key: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

pub fn run(args: &[&str]) -> Result<()> {
    let mut seconds = 600u64;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                seconds = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?} is not a number of seconds"))?;
            }
            t => only.push(t.to_owned()),
        }
    }
    let root = build::workspace_root();
    ensure_cargo_afl()?;
    let seeds = seeds(&root)?;
    for t in &only {
        if !seeds.iter().any(|(n, _)| n == t) {
            let names: Vec<&str> = seeds.iter().map(|(n, _)| *n).collect();
            bail!("no fuzz target {t:?}; the targets: {}", names.join(" "));
        }
    }
    let afl_build = || {
        Cmd::new("cargo")
            .args(["afl", "build", "--release", "--manifest-path"])
            .arg(root.join("fuzz/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target/fuzz"))
            .current_dir(&root)
            .run_blocking()
    };
    eprintln!("fuzz: building the fuzzing binary (cargo afl build --release)");
    if let Err(e) = afl_build() {
        // cargo-afl builds AFL++'s LLVM runtime once per rustc version, on request.
        if !e.to_string().contains("afl config --build") {
            return Err(e).context("cargo afl build");
        }
        eprintln!("fuzz: building AFL++'s runtime for this rustc (cargo afl config --build)");
        build::run(Cmd::new("cargo").args(["afl", "config", "--build"]))?;
        afl_build().context("cargo afl build")?;
    }
    let bin = root.join("target/fuzz/release/landfall-fuzz");
    let mut outcomes = Vec::new();
    for (target, seed) in seeds {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let dir = root.join("target/fuzz/runs").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("in"))?;
        std::fs::write(dir.join("in/seed"), &seed)?;
        eprintln!("fuzz: {target} for {seconds} s");
        build::run(
            Cmd::new("cargo")
                .args(["afl", "fuzz", "-i"])
                .arg(dir.join("in"))
                .arg("-o")
                .arg(dir.join("out"))
                .arg("-V")
                .arg(seconds.to_string())
                .arg("--")
                .arg(&bin)
                .env("LANDFALL_FUZZ_TARGET", target)
                .env("AFL_NO_UI", "1")
                .env("AFL_SKIP_CPUFREQ", "1")
                .env("AFL_NO_AFFINITY", "1")
                .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1"),
        )
        .with_context(|| format!("fuzzing {target}"))?;
        let stats_path = dir.join("out/default/fuzzer_stats");
        let stats = std::fs::read_to_string(&stats_path)
            .with_context(|| format!("reading {}", stats_path.display()))?;
        outcomes.push(Outcome {
            target,
            execs: stat(&stats, "execs_done").unwrap_or(0),
            crashes: stat(&stats, "saved_crashes")
                .or_else(|| stat(&stats, "unique_crashes"))
                .unwrap_or(0),
            hangs: stat(&stats, "saved_hangs")
                .or_else(|| stat(&stats, "unique_hangs"))
                .unwrap_or(0),
            dir,
        });
    }
    println!(
        "{:<12} {:>12} {:>8} {:>6}",
        "TARGET", "EXECS", "CRASHES", "HANGS"
    );
    for o in &outcomes {
        println!(
            "{:<12} {:>12} {:>8} {:>6}",
            o.target, o.execs, o.crashes, o.hangs
        );
    }
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| o.crashes > 0)
        .map(|o| {
            format!(
                "{} ({})",
                o.target,
                o.dir.join("out/default/crashes").display()
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!("crashes found: {}", bad.join(", "));
    }
    Ok(())
}

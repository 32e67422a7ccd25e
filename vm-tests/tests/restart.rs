//! Restart safety end to end (issue 10 item 16): the agent is killed (`kill -9`) mid-disks
//! and mid-install, and restarted the way the real image's systemd restarts it
//! (`Restart=on-abnormal`: the test image's RESTART LOOP, `image::RESTART_LOOP_COMMAND`).
//! Each restart registers again with the same boot token (the same attempt), resumes the disk
//! step from the attempt's journal in STATE_DIR (/run/landfall, a tmpfs that outlives the
//! agent) and sends what the killed agent's outbox still held.
//!
//! The kill points are deterministic (`image::KILL_PARAM`): `disks` when the disk journal
//! holds the written GPT, `install` while the `nixos-install` TEST DOUBLE holds
//! (`hold-once`). Before each kill the loop cuts the guest off the server until the outbox
//! holds unacknowledged events, and prints that outbox after the kill, so the test knows
//! which events only the next agent could deliver.
//!
//! Asserted: the machine ends `installed`; one attempt whose events have seqs 1..N without a
//! gap, all acked, no event stored twice, the steps of the three runs in order; every event
//! the kills left in the outbox stored once, at its seq; the resumes reported; the GPT written
//! once (started once, then left as journalled by each resumed run) and, read back from the disk image,
//! its disk GUID, partition GUIDs and the root filesystem's UUID those of the first run's
//! plan; the double ran twice; the target holds the secret and is cleanly unmounted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Ext4;
use landfall::{serve, ServeOptions};
use landfall_vm_tests::doubles::{NIXOS_INSTALL_MARKER, NIXOS_INSTALL_MODE_PARAM};
use landfall_vm_tests::{agent, image, DiskSpec, Firmware, Image, ImageSpec, Vm, VmSpec};
use serde_json::Value;

const DISK_BYTES: u64 = 2 << 30;
const MAC: &str = "52:54:00:4c:46:05";
const SERIAL: &str = "LFRESTART1";
const HOSTNAME: &str = "vm-restart";
const CANARY_SSH: &str = "canary-vm-restart-ssh-key-2b7e";
const SSH_KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key";

/// How a resumed disk step reports an operation the killed agent had done (not run again).
const JOURNALLED: &str = "(journal: done before the agent restarted)";
const GPT_OP: &str = "write protective MBR + GPT";

fn config() -> String {
    format!(
        r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff landfall.secrets_identity=/etc/landfall/bundle.key {NIXOS_INSTALL_MODE_PARAM}=hold-once {kill}=disks,install"
layouts = "{layouts}"
{tls}
[enroll]
unknown = "hold"

[roles.vmtest]
description = "VM restart test machine"
layout = "hybrid"
flake = "git+https://git.example.test/fleet#{{hostname}}"

[[roles.vmtest.secret_files]]
path = "{SSH_KEY_PATH}"
from = "bundle:hosts/{{hostname}}/ssh_host_ed25519_key"
mode = "0600"

[[machines]]
mac = "{MAC}"
hostname = "{HOSTNAME}"
role = "vmtest"
"#,
        console = image::CONSOLE_ARGS,
        tls = common::TLS_TOML,
        kill = image::KILL_PARAM,
        layouts = agent::workspace_root().join("disko-layouts").display(),
    )
}

/// The outboxes the restart loop printed after its kills: (kill point, `outbox.json`).
fn outboxes_at_kills(log: &str) -> Vec<(String, Value)> {
    log.lines()
        .filter_map(|l| l.trim_end().split_once(image::OUTBOX_AT_KILL).map(|x| x.1))
        .map(|rest| {
            let (point, json) = rest
                .split_once(": ")
                .unwrap_or_else(|| panic!("outbox line {rest:?}"));
            let outbox: Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("outbox at {point} is not JSON ({e}): {json}"));
            (point.to_owned(), outbox)
        })
        .collect()
}

/// `sfdisk --json` of the disk image: the partition table.
fn partition_table(disk: &Path) -> Value {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"].clone()
}

/// `blkid -p` UUID of the filesystem at `offset` (`size` bytes) in the image.
fn fs_uuid(disk: &Path, offset: u64, size: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-s", "UUID", "-o", "value", "-O"])
        .arg(offset.to_string())
        .arg("-S")
        .arg(size.to_string())
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or("")
}

#[test]
fn agent_killed_mid_disks_and_mid_install_resumes_and_installs_once() {
    let t0 = Instant::now();
    let agent = agent::static_agent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut spec = ImageSpec::new(&agent, &artifacts).with_nixos_install_double();
    spec.host_programs = image::DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
    spec.agent_command = image::RESTART_LOOP_COMMAND.to_owned();
    let (bundle, key) = common::make_bundle(
        &agent,
        dir.path(),
        HOSTNAME,
        &[("ssh_host_ed25519_key", CANARY_SSH.to_owned())],
    );
    spec.extra_files
        .push((bundle, "etc/landfall/secrets.age".into(), 0o400));
    spec.extra_files
        .push((key, "etc/landfall/bundle.key".into(), 0o400));
    // HTTPS: the server's CA in the image, the only one the agent trusts.
    let data = dir.path().join("data");
    let ca = common::server_ca(&data);
    spec.extra_files
        .push((ca.clone(), "etc/landfall/server-ca.pem".into(), 0o444));
    let image = Image::build(spec).unwrap();
    let conf = dir.path().join("landfall.toml");
    std::fs::write(&conf, config()).unwrap();
    let server = rt
        .block_on(serve(ServeOptions {
            config: Some(conf),
            data: data.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: Some(artifacts),
            database: None,
        }))
        .unwrap();
    let port = server.local_addr().port();
    let tls_addr = server.tls_addr().expect("TLS is on");
    let admin = common::Admin::tls(
        &format!("http://127.0.0.1:{port}"),
        &format!("https://{tls_addr}"),
        &ca,
        &data,
    );
    let image_built = t0.elapsed();

    let vm_dir = dir.path().join("vm");
    let disk = DiskSpec {
        path: vm_dir.join("disk0.raw"),
        serial: SERIAL.into(),
        size_bytes: DISK_BYTES,
    };
    let mut spec = VmSpec::new(
        Firmware::Bios,
        MAC,
        &format!("http://10.0.2.2:{port}/boot.ipxe"),
        &vm_dir,
    );
    spec.disks.push(disk.clone());
    let mut vm = Vm::start(spec).unwrap();
    let status = vm
        .wait_exit(Duration::from_secs(1200))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vm_time = vm.started().elapsed();
    let log = vm.serial_log();
    assert!(status.success(), "QEMU exited with {status}\n{log}");
    // The last agent powered the machine off itself (landfall.final=poweroff): the restart
    // loop never saw it exit.
    assert!(
        !log.contains(image::AGENT_EXITED),
        "the agent returned instead of powering off:\n{log}"
    );
    assert_eq!(
        log.matches(image::AGENT_RESTARTED).count(),
        2,
        "two kills, two restarts:\n{log}"
    );
    assert!(
        log.contains(&format!("{} 9;", image::AGENT_RESTARTED)),
        "killed by SIGKILL:\n{log}"
    );

    let m = admin.machine(MAC);
    assert_eq!(m["state"], "installed", "{m:#}\n{log}");
    assert_eq!(m["hostname"], HOSTNAME);
    let attempts = m["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "each restart registers with the same boot token: one attempt\n{m:#}"
    );
    let attempt_id = attempts[0]["attempt_id"].as_str().unwrap().to_owned();
    let events = attempts[0]["events"].as_array().unwrap();

    // Every event once, in order, acknowledged: seqs 1..N without a gap or a repeat.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(attempts[0]["acked_seq"].as_u64(), Some(seqs.len() as u64));
    // No event stored twice under two seqs (a resent event renumbered).
    let mut seen = std::collections::BTreeMap::new();
    for e in events {
        let k = (
            e["time"].to_string(),
            e["step"].to_string(),
            e["kind"].to_string(),
            message(e).to_owned(),
        );
        if let Some(first) = seen.insert(k, e["seq"].clone()) {
            panic!("event stored twice, as seq {first} and {}: {e:#}", e["seq"]);
        }
    }
    // The three runs: killed in disks, killed in install, then to the end. Each restart
    // starts over at detect and register (the same attempt) and resumes what was done.
    let run = |until: &[&'static str]| {
        let mut v = vec![
            "detect/started",
            "detect/finished",
            "register/started",
            "register/finished",
            "secrets/started",
            "secrets/finished",
        ];
        v.extend_from_slice(until);
        v
    };
    let mut expected = run(&["disks/started"]);
    expected.extend(run(&[
        "disks/started",
        "disks/finished",
        "configure/started",
        "configure/finished",
        "install/started",
    ]));
    expected.extend(run(&[
        "disks/started",
        "disks/finished",
        "configure/started",
        "configure/finished",
        "install/started",
        "install/finished",
        "finish/started",
        "finish/finished",
        "done/finished",
    ]));
    assert_eq!(common::step_kinds(events), expected);

    // What each kill left unacknowledged reached the server through the next agent, once,
    // at the seq it had.
    let outboxes = outboxes_at_kills(&log);
    let points: Vec<&str> = outboxes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(points, ["disks", "install"], "{log}");
    for (point, outbox) in &outboxes {
        assert_eq!(
            outbox["attempt_id"],
            attempt_id.as_str(),
            "{point}: {outbox:#}"
        );
        let pending = outbox["pending"].as_array().unwrap();
        assert!(
            pending.len() >= image::KILL_PENDING,
            "{point}: the kill left {} event(s) unacknowledged: {outbox:#}",
            pending.len()
        );
        for p in pending {
            let seq = p["seq"].as_u64().unwrap();
            let stored = &events[seq as usize - 1];
            for k in ["time", "step", "kind", "message"] {
                assert_eq!(stored[k], p[k], "{point}: seq {seq}: {stored:#} vs {p:#}");
            }
        }
        let last = pending.last().unwrap();
        eprintln!(
            "kill at {point}: {} event(s) unacknowledged (seqs {}..={}), the last {:?}, all stored once at their seqs",
            pending.len(),
            pending[0]["seq"],
            last["seq"],
            message(last)
        );
        let step = if point == "disks" { "disks" } else { "install" };
        assert_eq!(last["step"], step, "killed mid-{point}: {outbox:#}");
    }
    let last_install = outboxes[1].1["pending"].as_array().unwrap().last().unwrap();
    assert!(
        message(last_install).contains("hold-once: holding mid-install until killed"),
        "{last_install:#}"
    );

    // Each restart resumed the disk step from the attempt's journal.
    let resumes: Vec<&str> = events
        .iter()
        .map(message)
        .filter(|m| {
            m.starts_with(&format!(
                "resuming the disk step of attempt {attempt_id} from its journal"
            ))
        })
        .collect();
    assert_eq!(resumes.len(), 2, "{events:#?}");
    // The first run's plan; the resumed runs planned the same ids from the journal's seed.
    let plans: Vec<&Value> = events
        .iter()
        .filter(|e| e["step"] == "disks" && message(e).starts_with("plan: "))
        .map(|e| &e["data"])
        .collect();
    assert_eq!(plans.len(), 3, "a plan per run: {events:#?}");
    let plan = plans[0];
    for p in &plans[1..] {
        assert_eq!(p["disks"], plan["disks"], "a resumed run planned other ids");
    }
    let ops = plan["disks"][0]["ops"].as_array().unwrap();
    // The mid-install kill came after the whole disk step: nothing left to do after it.
    assert!(
        resumes[1].contains(&format!("({} operation(s) done)", ops.len())),
        "{resumes:?} ({} operations)",
        ops.len()
    );
    // The partition table was written once: by the first run; both resumed runs left it.
    let gpt: Vec<&str> = events
        .iter()
        .map(message)
        .filter(|m| m.contains(GPT_OP))
        .collect();
    let count = |word: &str| gpt.iter().filter(|m| m.contains(word)).count();
    assert_eq!(count("] started: "), 1, "{gpt:#?}");
    assert_eq!(count("] done in "), 1, "{gpt:#?}");
    assert_eq!(count(JOURNALLED), 2, "{gpt:#?}");
    assert_eq!(gpt.len(), 4, "{gpt:#?}");
    // After the mid-install kill no disk operation ran again.
    let after_second_resume = events
        .iter()
        .rposition(|e| message(e) == resumes[1])
        .map(|i| &events[i..])
        .unwrap_or_default()
        .iter()
        .filter(|e| e["step"] == "disks" && message(e).contains(JOURNALLED))
        .count();
    assert_eq!(after_second_resume, ops.len(), "{events:#?}");

    // The double ran twice: killed mid-install once, then through.
    let install_runs = events
        .iter()
        .filter(|e| {
            e["step"] == "install" && message(e).contains("building the flake in /mnt/etc/nixos")
        })
        .count();
    assert_eq!(install_runs, 2, "{events:#?}");

    // The disk, read back: the first run's GPT disk GUID and partition GUIDs, the pinned
    // root filesystem UUID.
    let table = partition_table(&disk.path);
    let guid = plan["disks"][0]["disk_guid"].as_str().unwrap();
    assert!(!guid.is_empty());
    assert!(
        table["id"].as_str().unwrap().eq_ignore_ascii_case(guid),
        "disk GUID {} on the disk, the first run's plan says {guid}",
        table["id"]
    );
    let planned: Vec<&str> = plan["disks"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["guid"].as_str().unwrap())
        .collect();
    let on_disk: Vec<String> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uuid"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(
        on_disk,
        planned
            .iter()
            .map(|g| g.to_ascii_lowercase())
            .collect::<Vec<_>>()
    );
    let parts = common::inspect(&disk.path);
    let root_part = parts
        .iter()
        .find(|p| p.name == "disk-main-root")
        .expect("a root partition");
    let root_uuid = ops
        .iter()
        .find(|o| o["op"] == "mkfs" && o["format"] == "ext4")
        .and_then(|o| o["uuid"].as_str())
        .expect("the plan pins the root filesystem's UUID");
    assert_eq!(
        fs_uuid(&disk.path, root_part.offset, root_part.size),
        root_uuid
    );
    let root = Ext4::partition(&disk.path, root_part);
    assert_eq!(
        root.state(),
        "clean",
        "the finish step unmounted the target"
    );
    assert_eq!(
        root.file(SSH_KEY_PATH),
        ("0600".to_owned(), CANARY_SSH.to_owned())
    );
    let (_, marker) = root.file(NIXOS_INSTALL_MARKER);
    let marker: Value = serde_json::from_str(&marker).unwrap();
    assert_eq!(marker["run"], 2, "{marker:#}");
    drop(root);

    // No secret value on the console or in the server's record.
    assert!(!log.contains(CANARY_SSH), "a secret reached the console");
    assert!(
        !serde_json::to_string(&m).unwrap().contains(CANARY_SSH),
        "a secret reached the server"
    );

    eprintln!(
        "Bios {HOSTNAME} ({}): image+server {:.1}s, QEMU start -> installed {:.1}s (killed mid-disks and mid-install, {} events); kernel {}",
        vm.accel().as_str(),
        image_built.as_secs_f64(),
        vm_time.as_secs_f64(),
        events.len(),
        image.kernel_version
    );
    common::print_timing(HOSTNAME, events);
    drop(vm);
    rt.block_on(server.shutdown()).unwrap();
}

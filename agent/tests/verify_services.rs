//! First-boot verify against real Debian servers (root, like CI): sshd, xrdp,
//! TigerVNC's Xvnc and smbd on free loopback ports. Each check passes against
//! its server, fails when the server is down, and fails when another server
//! answers on the port. Then end to end through a real landfall server
//! (in-process): hello mints the verify token -> `ready`; a service down ->
//! `degraded` naming the check; a bad token -> 401.
//!
//! SMB: this kernel may lack cifs. The share is then proven with smbclient
//! against the real smbd, and the SMB check's mount logic runs on a tmpfs
//! stand-in (named as such); a real cifs mount runs only where the kernel
//! has cifs (the VM test covers it otherwise).

mod verify_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use landfall::{serve, ServeOptions, ServerHandle};
use landfall_agent::install::verify::{
    self, check_mount, check_once, verify_config, write_verify_config, CheckOptions, VerifyOptions,
    SMB_FSTYPES,
};
use landfall_agent::retry::Retry;
use landfall_proto::inventory::Nic;
use landfall_proto::verify::{Check, NamedCheck};
use landfall_proto::{
    Event, EventKind, HelloRequest, HelloResponse, Inventory, MachineState, Step,
};
use serde_json::Value;
use verify_common::*;

fn opts() -> CheckOptions {
    CheckOptions {
        connect: Duration::from_secs(3),
        read: Duration::from_secs(1),
        window: Duration::ZERO,
    }
}

fn ssh(port: u16) -> Check {
    Check::Ssh {
        host: "127.0.0.1".into(),
        port,
    }
}
fn rdp(port: u16) -> Check {
    Check::Rdp {
        host: "127.0.0.1".into(),
        port,
    }
}
fn vnc(port: u16) -> Check {
    Check::Vnc {
        host: "127.0.0.1".into(),
        port,
    }
}

async fn pass(c: &Check) -> String {
    check_once(c, &opts())
        .await
        .unwrap_or_else(|e| panic!("{c:?} should pass: {e}"))
}

async fn fail(c: &Check) -> String {
    match check_once(c, &opts()).await {
        Ok(d) => panic!("{c:?} should fail, passed: {d}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn ssh_check_reads_the_banner_and_fails_when_sshd_is_down() {
    require_root();
    let mut sshd = sshd();
    let d = pass(&ssh(sshd.port)).await;
    assert!(d.starts_with("SSH-2.0-OpenSSH_"), "{d}");
    sshd.stop();
    let e = fail(&ssh(sshd.port)).await;
    assert!(e.contains("refused"), "{e}");
}

#[tokio::test]
async fn rdp_check_gets_xrdps_connection_confirm_and_fails_when_xrdp_is_down() {
    require_root();
    let mut xrdp = xrdp();
    let d = pass(&rdp(xrdp.port)).await;
    assert!(d.starts_with("X.224 Connection Confirm"), "{d}");
    // xrdp's default security_layer=negotiate with Debian's snakeoil cert picks TLS.
    assert!(d.contains("TLS selected"), "{d}");
    xrdp.stop();
    let e = fail(&rdp(xrdp.port)).await;
    assert!(e.contains("refused"), "{e}");
}

#[tokio::test]
async fn vnc_check_reads_the_rfb_banner_and_fails_when_xvnc_is_down() {
    require_root();
    let mut xvnc = xvnc();
    let d = pass(&vnc(xvnc.port)).await;
    assert!(d.starts_with("RFB 003.00"), "{d}");
    xvnc.stop();
    let e = fail(&vnc(xvnc.port)).await;
    assert!(e.contains("refused"), "{e}");
}

#[tokio::test]
async fn each_check_fails_when_another_server_answers() {
    require_root();
    let (sshd, xrdp, xvnc) = (sshd(), xrdp(), xvnc());
    // RDP at sshd: the SSH banner is no TPKT.
    let e = fail(&rdp(sshd.port)).await;
    assert!(e.contains("not an RDP server"), "{e}");
    // RDP at Xvnc: the RFB banner is no TPKT.
    let e = fail(&rdp(xvnc.port)).await;
    assert!(e.contains("not an RDP server"), "{e}");
    // VNC at sshd.
    let e = fail(&vnc(sshd.port)).await;
    assert!(
        e.contains("not a VNC server") && e.contains("SSH-2.0"),
        "{e}"
    );
    // VNC and SSH at xrdp: it waits for the client to speak first.
    let e = fail(&vnc(xrdp.port)).await;
    assert!(e.contains("no answer within"), "{e}");
    let e = fail(&ssh(xrdp.port)).await;
    assert!(e.contains("no answer within"), "{e}");
    // SSH at Xvnc: a line that is not an SSH version, then nothing.
    let e = fail(&ssh(xvnc.port)).await;
    assert!(
        e.contains("no SSH banner") && e.contains("RFB 003.00"),
        "{e}"
    );
    // A TCP check only needs the connection.
    let d = pass(&Check::Tcp {
        host: "127.0.0.1".into(),
        port: xrdp.port,
    })
    .await;
    assert!(d.starts_with("connected to 127.0.0.1:"), "{d}");
}

#[tokio::test]
async fn smb_share_with_real_smbd_and_the_mount_check_on_a_tmpfs_stand_in() {
    require_root();
    let mut smbd = smbd();
    let work = tempfile::tempdir().unwrap();
    let client_conf = smbd.dir.path().join("client.conf");

    // The real smbd serves the share: a file written and read back through SMB.
    std::fs::write(work.path().join("up.txt"), "landfall\n").unwrap();
    let out = smbclient(
        smbd.port,
        &client_conf,
        work.path(),
        "put up.txt up.txt; get up.txt down.txt; del up.txt",
    )
    .unwrap_or_else(|e| {
        panic!(
            "smbclient against the real smbd failed:\n{e}\n{}",
            smbd.log()
        )
    });
    assert_eq!(
        std::fs::read_to_string(work.path().join("down.txt")).unwrap(),
        "landfall\n",
        "{out}"
    );

    // Nothing mounted at the path -> fail; a missing path -> fail.
    let plain = work.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let smb = |p: &Path| Check::Smb {
        mountpoint: p.display().to_string(),
        write_test: true,
    };
    let e = fail(&smb(&plain)).await;
    assert!(e.contains("nothing is mounted at"), "{e}");
    let e = fail(&smb(&work.path().join("missing"))).await;
    assert!(e.contains("No such file"), "{e}");

    // Stand-in: a tmpfs mount, clearly not SMB. The SMB check refuses it by
    // type; the same logic accepting tmpfs writes, reads back and removes.
    let standin = work.path().join("tmpfs-standin");
    std::fs::create_dir(&standin).unwrap();
    let m = MountGuard::mount(&["-t", "tmpfs", "landfall-standin"], &standin).unwrap();
    let e = fail(&smb(&standin)).await;
    assert!(
        e.contains("is a tmpfs mount of landfall-standin, not cifs/smb3"),
        "{e}"
    );
    let d = check_mount(&standin, &["tmpfs"], true, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(d.contains("written, read back, removed"), "{d}");
    assert_eq!(std::fs::read_dir(&standin).unwrap().count(), 0);
    // A read-only mount fails the write test.
    drop(m);
    let _ro =
        MountGuard::mount(&["-t", "tmpfs", "-o", "ro", "landfall-standin"], &standin).unwrap();
    let e = check_mount(&standin, &["tmpfs"], true, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(e.contains("Read-only file system"), "{e}");

    // The real cifs mount, where the kernel has cifs.
    if kernel_has_cifs() {
        let mnt = work.path().join("cifs");
        std::fs::create_dir(&mnt).unwrap();
        let opts = format!("port={},guest,vers=3.1.1", smbd.port);
        let _m = MountGuard::mount(&["-t", "cifs", "//127.0.0.1/share", "-o", &opts], &mnt)
            .unwrap_or_else(|e| panic!("mount -t cifs: {e}"));
        let d = pass(&smb(&mnt)).await;
        assert!(d.starts_with("cifs //127.0.0.1/share"), "{d}");
        assert!(SMB_FSTYPES.contains(&"cifs"));
    } else {
        eprintln!(
            "NOTE: this kernel cannot mount cifs (not in /proc/filesystems after modprobe); \
             the real cifs mount is left to the VM test"
        );
    }

    // smbd down: the share is unreachable.
    smbd.stop();
    let e = smbclient(smbd.port, &client_conf, work.path(), "ls").unwrap_err();
    assert!(e.contains("NT_STATUS_CONNECTION_REFUSED"), "{e}");
}

#[tokio::test]
async fn hostname_check() {
    let h = verify::current_hostname();
    assert!(!h.is_empty());
    assert_eq!(
        pass(&Check::Hostname {
            expected: h.clone()
        })
        .await,
        h
    );
    let e = fail(&Check::Hostname {
        expected: "not-this-machine".into(),
    })
    .await;
    assert!(e.contains("expected \"not-this-machine\""), "{e}");
}

#[tokio::test]
async fn a_failing_check_is_retried_until_its_service_comes_up() {
    require_root();
    let port = free_port();
    let t = Instant::now();
    let checks = [NamedCheck::new("ssh", ssh(port))];
    let copts = CheckOptions {
        window: Duration::from_secs(20),
        ..opts()
    };
    let (results, sshd) = tokio::join!(verify::run_checks(&checks, &copts), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::spawn_blocking(move || sshd_on(port))
            .await
            .unwrap()
    });
    assert!(results[0].ok, "{results:?}\n{}", sshd.log());
    assert!(t.elapsed() >= Duration::from_millis(1500));
    // With no window a closed port fails at once.
    drop(sshd);
    let t = Instant::now();
    let r = verify::run_checks(&checks, &opts()).await;
    assert!(!r[0].ok && t.elapsed() < Duration::from_secs(2), "{r:?}");
}

/// sshd on a given port (for the retry test).
fn sshd_on(port: u16) -> Service {
    verify_common::sshd_at(port)
}

// ---- end to end through the real landfall server ----

const MAC: &str = "52:54:00:00:00:01";

const CONFIG: &str = r#"
[enroll]
unknown = "hold"

[roles.workstation]
description = "desk"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "workstation"
"#;

struct Landfall {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    _handle: ServerHandle,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Landfall {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("landfall.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let data = dir.path().join("data");
        let handle = serve(ServeOptions {
            config: Some(config),
            data: data.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: None,
            database: None,
        })
        .await
        .unwrap();
        Self {
            _dir: dir,
            data,
            addr: handle.local_addr(),
            _handle: handle,
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// PXE boot + hello: the hello answer.
    async fn hello(&self) -> HelloResponse {
        let script = self
            .http
            .get(format!("{}/boot.ipxe?mac={MAC}", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("landfall.token="))
            .unwrap_or_else(|| panic!("not an install script:\n{script}"));
        self.hello_with(token).await
    }

    async fn hello_with(&self, boot_token: &str) -> HelloResponse {
        let r = self
            .http
            .post(format!("{}/api/v1/agent/hello", self.base()))
            .json(&HelloRequest {
                boot_token: boot_token.into(),
                agent_version: "test".into(),
                protocol: 1,
                inventory: Inventory {
                    nics: vec![Nic {
                        name: "eth0".into(),
                        mac: MAC.into(),
                        link_up: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                nonce: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// The terminal `done finished` event: the machine is `installed`.
    async fn finish(&self, hello: &HelloResponse) {
        let r = self
            .http
            .post(format!("{}/api/v1/agent/events", self.base()))
            .bearer_auth(&hello.agent_token)
            .json(&serde_json::json!({
                "attempt_id": hello.attempt_id,
                "events": [Event {
                    seq: hello.next_seq,
                    time: "2026-01-01T00:00:00Z".into(),
                    step: Step::Done,
                    kind: EventKind::Finished,
                    progress: None,
                    message: "installed".into(),
                    data: None,
                }],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn machine(&self) -> Value {
        let token = std::fs::read_to_string(self.data.join("admin.token")).unwrap();
        self.http
            .get(format!("{}/api/v1/machines/{MAC}", self.base()))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post_verify(&self, token: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/agent/verify", self.base()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn run_opts(config: &Path) -> VerifyOptions {
    let mut o = VerifyOptions::new(config);
    o.checks = opts();
    o.retry = Retry {
        initial: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_tries: Some(3),
    };
    o
}

#[tokio::test]
async fn end_to_end_ready_then_degraded_then_bad_token() {
    require_root();
    let server = Landfall::start().await;
    let (sshd, mut xvnc) = (sshd(), xvnc());
    let hello = server.hello().await;
    let token = hello
        .assignment
        .verify_token
        .clone()
        .expect("hello mints a verify token");
    assert!(!format!("{:?}", hello.assignment).contains(token.expose()));

    // What the install step does: the config with the role's checks, into the target.
    let root = tempfile::tempdir().unwrap();
    let mut cfg = verify_config(
        &hello.assignment,
        &server.base(),
        vec![
            NamedCheck::new("ssh", ssh(sshd.port)),
            NamedCheck::new("vnc", vnc(xvnc.port)),
        ],
    )
    .unwrap();
    cfg.attempt_id = Some(hello.attempt_id.clone());
    // This file's server is plain HTTP (as the installer would have said).
    cfg.insecure_http = true;
    // The test machine is not called ws-01: expect this host's name.
    for c in &mut cfg.checks {
        if let Check::Hostname { expected } = &mut c.check {
            *expected = verify::current_hostname();
        }
    }
    let path = write_verify_config(root.path(), &cfg).unwrap();

    // Still installing: 409, the config stays.
    let out = verify::verify(&run_opts(&path)).await.unwrap();
    assert_eq!(out.exit_code, 2, "{out:?}");
    assert!(
        out.report_error.as_deref().unwrap().contains("409"),
        "{out:?}"
    );
    assert!(path.exists());

    server.finish(&hello).await;
    assert_eq!(server.machine().await["state"], "installed");

    // All up: ready, and the config (with its token) is removed.
    let out = verify::verify(&run_opts(&path)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.state, Some(MachineState::Ready));
    assert!(!path.exists(), "verify.json is removed after ready");
    let m = server.machine().await;
    assert_eq!(m["state"], "ready");
    assert_eq!(m["error"], Value::Null);
    let names: Vec<&str> = m["verify"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ssh", "vnc", "hostname"]);
    assert_eq!(m["verify"]["ok"], true);
    assert_eq!(m["verify"]["attempt_id"], hello.attempt_id.as_str());

    // VNC down on a later boot: degraded, naming the check; the config stays.
    xvnc.stop();
    let path = write_verify_config(root.path(), &cfg).unwrap();
    let out = verify::verify(&run_opts(&path)).await.unwrap();
    assert_eq!(out.exit_code, 1, "{out:?}");
    assert_eq!(out.state, Some(MachineState::Degraded));
    assert!(path.exists());
    let m = server.machine().await;
    assert_eq!(m["state"], "degraded");
    assert_eq!(m["error"], "failed checks: vnc");
    let vnc_result = &m["verify"]["checks"][1];
    assert_eq!(vnc_result["ok"], false);
    assert!(
        vnc_result["detail"].as_str().unwrap().contains("refused"),
        "{vnc_result}"
    );
    // `landfall machines` shows the state (the summary list).
    let token_admin = std::fs::read_to_string(server.data.join("admin.token")).unwrap();
    let list: Value = server
        .http
        .get(format!("{}/api/v1/machines", server.base()))
        .bearer_auth(token_admin.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["state"], "degraded");

    // A bad token: 401, exit 2, nothing changes.
    let mut bad = cfg.clone();
    bad.token = landfall_proto::SecretString::new("0".repeat(64));
    let path = write_verify_config(root.path(), &bad).unwrap();
    let out = verify::verify(&run_opts(&path)).await.unwrap();
    assert_eq!(out.exit_code, 2, "{out:?}");
    assert!(
        out.report_error.as_deref().unwrap().contains("401"),
        "{out:?}"
    );
    let r = server
        .post_verify("", serde_json::json!({"checks": []}))
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(server.machine().await["state"], "degraded");

    // Another attempt id with the right token: 403.
    let r = server
        .post_verify(
            token.expose(),
            serde_json::json!({"attempt_id": "someone-else", "checks": []}),
        )
        .await;
    assert_eq!(r.status(), 403);

    // Repeated verify: the state follows the latest (here all ok again).
    let r = server
        .post_verify(
            token.expose(),
            serde_json::json!({"hostname": "ws-01", "checks": [{"name": "vnc", "ok": true, "detail": "back"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "ready");
    assert_eq!(server.machine().await["error"], Value::Null);

    // A reinstall starts a new attempt: the old verify token is void (403),
    // and while installing the new one gets 409.
    let admin = token_admin.trim().to_owned();
    let r = server
        .http
        .post(format!("{}/api/v1/machines/{MAC}/reinstall", server.base()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hello2 = server.hello().await;
    let r = server
        .post_verify(token.expose(), serde_json::json!({"checks": []}))
        .await;
    assert_eq!(r.status(), 403);
    let t2 = hello2.assignment.verify_token.unwrap();
    let r = server
        .post_verify(t2.expose(), serde_json::json!({"checks": []}))
        .await;
    assert_eq!(r.status(), 409);
}

#[test]
fn cli_exit_codes_table_and_json() {
    require_root();
    let sshd = sshd();
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    // The NixOS module's checks.json format.
    let checks = dir.path().join("checks.json");
    std::fs::write(
        &checks,
        format!(
            r#"{{"timeout": 0, "checks": [{{"name": "ssh", "tcp": {}}}, {{"name": "rdp", "tcp": {closed}}}]}}"#,
            sshd.port
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_landfall-agent");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("verify")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg = dir.path().join("verify.json");
    let cfg = cfg.to_str().unwrap();
    let checks = checks.to_str().unwrap();
    // Sshd up, rdp port closed: exit 1; JSON lists both.
    let (code, out, err) = run(&["--config", cfg, "--checks", checks, "--no-report", "--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["checks"][0]["name"], "ssh");
    assert_eq!(v["checks"][0]["ok"], true);
    assert_eq!(v["checks"][1]["name"], "rdp");
    assert_eq!(v["checks"][1]["ok"], false);
    // The table.
    let (code, out, _) = run(&["--config", cfg, "--checks", checks, "--no-report"]);
    assert_eq!(code, Some(1));
    assert!(out.starts_with("CHECK"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("rdp") && l.contains("FAILED")),
        "{out}"
    );
    // Only passing checks: exit 0.
    let ok = dir.path().join("ok.json");
    std::fs::write(
        &ok,
        format!(r#"{{"checks": [{{"name": "ssh", "tcp": {}}}]}}"#, sshd.port),
    )
    .unwrap();
    let (code, out, err) = run(&[
        "--config",
        cfg,
        "--checks",
        ok.to_str().unwrap(),
        "--no-report",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Reporting without a config: exit 2 with the path in the error.
    let (code, _, err) = run(&["--config", cfg, "--checks", checks]);
    assert_eq!(code, Some(2));
    assert!(err.contains("verify.json"), "{err}");
}

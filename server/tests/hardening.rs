//! Issue 12 items 4-10: what a client on the provisioning LAN could do to
//! the server, each tried against the real server (and the real CLI binary
//! where the operator's terminal is the target).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use landfall_cmd::Cmd;
use landfall_proto::event::MAX_SEQ;
use landfall_proto::{EventKind, HelloRequest, Step};
use serde_json::Value;

/// `CONFIG` with extra `[server]` keys.
fn config_with(server_keys: &str) -> String {
    CONFIG.replace("[server]\n", &format!("[server]\n{server_keys}\n"))
}

async fn error_code(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["error"].as_str().unwrap_or_default().to_owned(),
    )
}

// ---- item 4: log forging ----------------------------------------------------

#[tokio::test]
async fn client_text_cannot_forge_a_log_line_or_reach_the_log_raw() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    write(&layouts.join("single-disk.json"), LAYOUT_JSON.as_bytes());
    let config = dir.path().join("landfall.toml");
    write(&config, CONFIG.as_bytes());
    let serve = ServeProcess::start(&config, &dir.path().join("data"));
    let http = reqwest::Client::new();
    let forged = "2026-12-07T00:00:00.000000Z  INFO landfall: FORGED admin token rotated";

    // A mac= value that is not a MAC is logged as what it was.
    let r = http
        .get(format!("{}/boot.ipxe", serve.base))
        .query(&[("mac", format!("zz\n{forged}\u{1b}[2J\u{202e}"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A hello's agent_version is logged with the accepted hello.
    let r = http
        .get(format!("{}/boot.ipxe", serve.base))
        .query(&[("mac", MAC1)])
        .send()
        .await
        .unwrap();
    let token = token_in(&r.text().await.unwrap()).unwrap();
    let r = http
        .post(format!("{}/api/v1/agent/hello", serve.base))
        .json(&HelloRequest {
            boot_token: token,
            agent_version: format!("1.0\r\n{forged}\u{1b}]0;owned\u{7}"),
            protocol: 1,
            inventory: inventory(MAC1),
            nonce: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let log = serve.stop();
    let all = log.join("\n");
    assert!(
        !log.iter().any(|l| l.starts_with("2026-12-07T00:00:00")),
        "a client wrote a line of its own into the log:\n{all}"
    );
    assert!(
        !all.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
        "{all:?}"
    );
    // Both were logged, escaped.
    assert!(all.contains("zz\\n2026-12-07"), "{all}");
    assert!(all.contains("1.0\\r\\n2026-12-07"), "{all}");
    assert!(all.contains("\\u{1b}[2J\\u{202e}"), "{all}");
}

// ---- item 5: the operator's terminal ----------------------------------------

async fn landfall_cli(s: &Server, args: &[&str]) -> String {
    Cmd::new(BIN)
        .args(args.iter().copied())
        .arg("--server")
        .arg(&s.base)
        .arg("--token-file")
        .arg(s.data().join("admin.token"))
        .env_clear()
        .run()
        .await
        .unwrap()
        .stdout
}

#[tokio::test]
async fn agent_text_reaches_the_terminal_escaped_and_on_its_line() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let mut inv = inventory(MAC1);
    inv.dmi.vendor = Some("ACME\u{1b}[2J\u{1b}[H".into());
    inv.dmi.product = Some("Box\n  state:   installed".into());
    let r = s
        .http
        .post(s.url("/api/v1/agent/hello"))
        .json(&HelloRequest {
            boot_token: token,
            agent_version: "t".into(),
            protocol: 1,
            inventory: inv,
            nonce: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (attempt, agent) = (
        v["attempt_id"].as_str().unwrap().to_owned(),
        v["agent_token"].as_str().unwrap().to_owned(),
    );
    let mut e1 = event(
        1,
        Step::Disks,
        EventKind::Log,
        "wiping\u{1b}[31m\r\n  state:   installed",
    );
    e1.time = "2026\u{1b}]0;title\u{7}\n  state:   installed".into();
    let mut e2 = event(
        2,
        Step::Done,
        EventKind::Failed,
        "bad\u{9b}31m\u{202e}desrever\n  state:   installed",
    );
    e2.time = "2026-01-01T00:00:01Z".into();
    assert_eq!(s.ack(&agent, &attempt, &[e1, e2]).await, 2);

    for args in [&["machine", "ws-01"][..], &["machines"][..]] {
        let out = landfall_cli(&s, args).await;
        assert!(
            !out.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r', '\u{202e}']),
            "{args:?}: {out:?}"
        );
        assert!(
            !out.lines()
                .any(|l| l.trim_start().starts_with("state:   installed")),
            "{args:?}: a fake line:\n{out}"
        );
    }
    let out = landfall_cli(&s, &["machine", "ws-01"]).await;
    let state_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("  state:")).collect();
    assert_eq!(state_lines, ["  state:   failed"], "{out}");
    assert!(
        out.contains("ACME\\u{1b}[2J\\u{1b}[H Box\\n  state:   installed"),
        "{out}"
    );
    assert!(out.contains("bad\\u{9b}31m\\u{202e}desrever"), "{out}");
    // The JSON view stays JSON, with the text as it was sent.
    let json: Value =
        serde_json::from_str(&landfall_cli(&s, &["machine", "ws-01", "--json"]).await).unwrap();
    assert_eq!(
        json["inventory"]["dmi"]["vendor"].as_str(),
        Some("ACME\u{1b}[2J\u{1b}[H")
    );
    s.stop().await;
}

// ---- item 6: caps ----------------------------------------------------------

fn unknown_mac(i: u32) -> String {
    format!("52:54:01:00:{:02x}:{:02x}", i >> 8, i & 0xff)
}

async fn discovered(s: &Server) -> Vec<String> {
    let list = s.admin_get("/api/v1/machines").await;
    list.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "discovered")
        .map(|m| m["mac"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn discovered_machines_are_capped_oldest_first() {
    let s = Server::start(Some(&config_with(
        "max_discovered = 5\nmax_discovered_per_minute = 1000",
    )))
    .await;
    for i in 0..12 {
        let (status, script) = s.boot(&unknown_mac(i)).await;
        assert_eq!(status, 200);
        assert!(script.contains("unknown machine"), "{script}");
    }
    let mut kept = discovered(&s).await;
    kept.sort();
    let newest: Vec<String> = (7..12).map(unknown_mac).collect();
    assert_eq!(kept, newest, "the five seen last stay");
    // Seen again (a second later: times are in seconds), an old one is the
    // newest; listed machines are never pruned.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.boot(&unknown_mac(7)).await;
    s.boot(&unknown_mac(100)).await;
    let kept = discovered(&s).await;
    assert!(kept.contains(&unknown_mac(7)) && !kept.contains(&unknown_mac(8)));
    assert_eq!(kept.len(), 5);
    assert_eq!(s.state_of(MAC1).await, "expected");
    s.stop().await;
}

#[tokio::test]
async fn new_discovered_machines_are_rate_limited() {
    let s = Server::start(Some(&config_with("max_discovered_per_minute = 3"))).await;
    for i in 0..3 {
        s.boot(&unknown_mac(i)).await;
    }
    let (status, script) = s.boot(&unknown_mac(3)).await;
    assert_eq!(status, 200);
    assert!(script.contains("too many new machines"), "{script}");
    assert_eq!(discovered(&s).await.len(), 3);
    // Known ones still boot: a listed machine, and a discovered one again.
    assert!(token_in(&s.boot(MAC1).await.1).is_some());
    assert!(s.boot(&unknown_mac(0)).await.1.contains("unknown machine"));
    s.stop().await;
}

#[tokio::test]
async fn an_attempts_events_have_a_count_and_byte_quota() {
    let s = Server::start(Some(&config_with(
        "max_events_per_attempt = 10\nmax_event_bytes_per_attempt = 4000",
    )))
    .await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let batch = |from: u64, n: u64| -> Vec<_> {
        (from..from + n)
            .map(|i| event(i, Step::Install, EventKind::Log, "line"))
            .collect()
    };
    assert_eq!(s.ack(&agent, &attempt, &batch(1, 8)).await, 8);
    let (status, code, msg) = error_code(s.events(&agent, &attempt, &batch(9, 5)).await).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "event_quota_exceeded"),
        "{msg}"
    );
    assert!(msg.contains("max_events_per_attempt"), "{msg}");
    // Nothing of the refused batch was stored; resending stored ones is free.
    assert_eq!(s.ack(&agent, &attempt, &batch(1, 8)).await, 8);
    assert_eq!(s.ack(&agent, &attempt, &batch(9, 2)).await, 10);

    let (attempt2, agent2) = s.start_attempt(MAC2).await;
    let big = event(1, Step::Install, EventKind::Log, &"x".repeat(5000));
    let (status, code, _) = error_code(s.events(&agent2, &attempt2, &[big]).await).await;
    assert_eq!((status, code.as_str()), (413, "event_quota_exceeded"));
    s.stop().await;
}

#[tokio::test]
async fn the_detail_pages_events_and_the_cli_reads_every_page() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    for from in [1u64, 1001, 2001] {
        let n = if from == 2001 { 500 } else { 1000 };
        let events: Vec<_> = (from..from + n)
            .map(|i| event(i, Step::Install, EventKind::Log, &format!("line {i}")))
            .collect();
        s.ack(&agent, &attempt, &events).await;
    }
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    let a = &d["attempts"][0];
    assert_eq!(a["events"].as_array().unwrap().len(), 1000);
    assert_eq!(a["more_events"], true);
    let d = s
        .admin_get(&format!(
            "/api/v1/machines/ws-01?attempt={attempt}&events_after=2400&limit=50"
        ))
        .await;
    let a = &d["attempts"][0];
    let seqs: Vec<u64> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (2401..=2450).collect::<Vec<_>>());
    assert_eq!(a["more_events"], true);
    // A limit above the page size is the page size.
    let d = s
        .admin_get(&format!(
            "/api/v1/machines/ws-01?attempt={attempt}&limit=100000"
        ))
        .await;
    assert_eq!(d["attempts"][0]["events"].as_array().unwrap().len(), 1000);

    let out = landfall_cli(&s, &["machine", "ws-01"]).await;
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" line ")).collect();
    assert_eq!(lines.len(), 2500, "{}", &out[..out.len().min(2000)]);
    assert!(lines[0].ends_with("line 1") && lines[2499].ends_with("line 2500"));
    let json: Value =
        serde_json::from_str(&landfall_cli(&s, &["machine", "ws-01", "--json"]).await).unwrap();
    assert_eq!(
        json["attempts"][0]["events"].as_array().unwrap().len(),
        2500
    );
    s.stop().await;
}

// ---- item 7: the admin token on a full disk ---------------------------------

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(at)
            .status_blocking()
            .expect("mounting a tmpfs (the test runs as root)");
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.0).status_blocking();
    }
}

/// Fill the filesystem of `dir` until a write fails.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
    p
}

fn serve_opts(data: &Path) -> landfall::ServeOptions {
    landfall::ServeOptions {
        config: None,
        data: data.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        artifacts: None,
        database: None,
    }
}

#[tokio::test]
async fn a_full_disk_at_first_start_leaves_no_broken_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _fs = Tmpfs::mount(&data, "4m");
    let filler = fill(&data);
    let e = landfall::serve(serve_opts(&data))
        .await
        .err()
        .expect("a full disk");
    assert!(format!("{e:#}").contains("admin token"), "{e:#}");
    let token = data.join("admin.token");
    assert!(!token.exists(), "a failed write left {}", token.display());

    // Room again: the next start writes the token and serves.
    std::fs::remove_file(filler).unwrap();
    let h = landfall::serve(serve_opts(&data)).await.unwrap();
    let t = std::fs::read_to_string(&token).unwrap();
    assert_eq!(t.trim().len(), 64, "{t:?}");
    h.shutdown().await.unwrap();

    // An empty or cut-short file (what an older landfall left) is replaced.
    for broken in ["", "abc\n"] {
        std::fs::write(&token, broken).unwrap();
        let h = landfall::serve(serve_opts(&data)).await.unwrap();
        let t = std::fs::read_to_string(&token).unwrap();
        assert_eq!(t.trim().len(), 64, "{t:?}");
        assert_eq!(
            std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
        h.shutdown().await.unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---- item 8: seq bounds ----------------------------------------------------

#[tokio::test]
async fn seqs_are_bounded_and_hello_never_hands_out_one_the_server_refuses() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let r = s.hello(&token, MAC1).await;
    let v: Value = r.json().await.unwrap();
    let (attempt, agent) = (
        v["attempt_id"].as_str().unwrap().to_owned(),
        v["agent_token"].as_str().unwrap().to_owned(),
    );
    for too_big in [i64::MAX as u64, MAX_SEQ + 1] {
        let e = event(too_big, Step::Install, EventKind::Log, "x");
        let (status, code, msg) = error_code(s.events(&agent, &attempt, &[e]).await).await;
        assert_eq!((status, code.as_str()), (400, "seq_out_of_range"), "{msg}");
    }
    let e = event(MAX_SEQ, Step::Install, EventKind::Log, "x");
    let r = s.events(&agent, &attempt, &[e]).await;
    assert_eq!(r.status(), 200);
    // The agent restarts: a repeated hello has no next seq to give.
    let (status, code, msg) = error_code(s.hello(&token, MAC1).await).await;
    assert_eq!((status, code.as_str()), (409, "seq_out_of_range"), "{msg}");
    assert!(msg.contains("PXE-boot"), "{msg}");

    // Below the bound, the next_seq a repeated hello gives is accepted.
    let token = s.boot_token(MAC2).await;
    let v: Value = s.hello(&token, MAC2).await.json().await.unwrap();
    let (attempt, agent) = (
        v["attempt_id"].as_str().unwrap().to_owned(),
        v["agent_token"].as_str().unwrap().to_owned(),
    );
    let e = event(MAX_SEQ - 1, Step::Install, EventKind::Log, "x");
    assert_eq!(s.events(&agent, &attempt, &[e]).await.status(), 200);
    let v: Value = s.hello(&token, MAC2).await.json().await.unwrap();
    let next = v["next_seq"].as_u64().unwrap();
    assert_eq!(next, MAX_SEQ);
    let agent = v["agent_token"].as_str().unwrap();
    let e = event(next, Step::Install, EventKind::Log, "x");
    assert_eq!(s.events(agent, &attempt, &[e]).await.status(), 200);
    s.stop().await;
}

// ---- item 9: modes of the data directory --------------------------------------

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn the_data_directory_and_its_files_are_private_at_every_start() {
    // The database files in the data directory are SQLite's: on SQLite
    // whatever LANDFALL_TEST_DATABASE says.
    let mut s = Server::start_with_database(Some(CONFIG), None).await;
    let data = s.data();
    let db = data.join("landfall.sqlite");
    let files = [
        "landfall.sqlite",
        "landfall.sqlite-wal",
        "landfall.sqlite-shm",
        "admin.token",
    ];
    assert_eq!(mode(&data), 0o700);
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} at first start");
    }
    // Opened up (an older landfall, a restore from backup, an operator).
    if let Some(h) = s.handle.take() {
        h.shutdown().await.unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files {
        let p = data.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    assert!(db.exists());
    s.restart().await;
    assert_eq!(mode(&data), 0o700);
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} after a restart");
    }
    s.stop().await;
}

// ---- item 10: boot.ipxe HEAD, artifacts that are not regular files ---------

#[tokio::test]
async fn head_boot_ipxe_changes_nothing() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let r = s
        .http
        .head(s.url("/boot.ipxe"))
        .query(&[("mac", MAC1)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The token of the GET still works: the HEAD minted none in its place.
    assert_eq!(s.hello(&token, MAC1).await.status(), 200);
    // Nor did a HEAD record an unknown machine.
    s.http
        .head(s.url("/boot.ipxe"))
        .query(&[("mac", unknown_mac(1).as_str())])
        .send()
        .await
        .unwrap();
    assert!(discovered(&s).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_symlink_in_the_artifacts_is_not_followed() {
    let s = Server::start(Some(CONFIG)).await;
    let admin = s.admin_token();
    std::fs::create_dir_all(s.artifacts()).unwrap();
    std::os::unix::fs::symlink(s.data().join("admin.token"), s.artifacts().join("leak")).unwrap();
    std::os::unix::fs::symlink("../admin.token", s.artifacts().join("leak2")).unwrap();
    for name in ["leak", "leak2"] {
        let r = s
            .http
            .get(s.url(&format!("/artifacts/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
        assert!(!r.text().await.unwrap().contains(&admin));
    }
    // A link inside the directory, or into the Nix store (the NixOS module's
    // netboot directory), is served.
    write(&s.artifacts().join("real"), b"kernel bytes");
    std::os::unix::fs::symlink("real", s.artifacts().join("vmlinuz")).unwrap();
    let r = s
        .http
        .get(s.url("/artifacts/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "kernel bytes");
    // (The Nix store case: artifacts.rs's unit test, with a stand-in store.)
    // Nor is the image's cmdline file read through one.
    std::os::unix::fs::symlink(s.data().join("admin.token"), s.artifacts().join("cmdline"))
        .unwrap();
    let (_, script) = s.boot(MAC1).await;
    assert!(!script.contains(&admin), "{script}");
    s.stop().await;
}

#[tokio::test]
async fn a_fifo_in_the_artifacts_does_not_hang_a_request() {
    let s = Server::start(Some(CONFIG)).await;
    std::fs::create_dir_all(s.artifacts()).unwrap();
    for name in ["pipe", "cmdline"] {
        Cmd::new("mkfifo")
            .arg(s.artifacts().join(name))
            .status_blocking()
            .unwrap();
    }
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = quick.get(s.url("/artifacts/pipe")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = quick
        .get(s.url("/boot.ipxe"))
        .query(&[("mac", MAC1)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(token_in(&r.text().await.unwrap()).is_some());
    s.stop().await;
}

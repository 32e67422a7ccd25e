//! The agent's pin of the server's CA (issue 12 item 3), against the real
//! landfall server serving HTTPS on 127.0.0.1: the right CA (file or
//! fingerprint) is accepted; a wrong one is refused in the handshake, naming
//! both fingerprints, before the hello reaches the server; plain HTTP needs
//! `landfall.insecure_http=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use landfall::{serve, ServeOptions, ServerHandle};
use landfall_agent::cmdline::AgentConfig;
use landfall_agent::pipeline::{self, RunOptions};
use landfall_agent::report::{ApiError, Client, Console, ServerTrust};
use landfall_agent::retry::Retry;
use landfall_proto::inventory::Nic;
use landfall_proto::{HelloRequest, Inventory};

const MAC: &str = "52:54:00:12:34:56";

struct Tls {
    handle: ServerHandle,
    dir: tempfile::TempDir,
}

impl Tls {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("landfall.toml");
        std::fs::write(
            &conf,
            format!(
                "[server]\nlisten_tls = \"127.0.0.1:0\"\ntls_sans = [\"127.0.0.1\"]\n\
                 # two boots of one machine in a row: not an alarm\n\
                 agent_alive_secs = 0\n\n\
                 [roles.r]\ndescription = \"r\"\n\n\
                 [[machines]]\nmac = \"{MAC}\"\nhostname = \"ws-tls\"\nrole = \"r\"\n"
            ),
        )
        .unwrap();
        let handle = serve(ServeOptions {
            config: Some(conf),
            data: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: None,
            database: None,
        })
        .await
        .unwrap();
        Self { handle, dir }
    }

    fn https(&self) -> String {
        format!("https://{}", self.handle.tls_addr().unwrap())
    }

    fn http(&self) -> String {
        format!("http://{}", self.handle.local_addr())
    }

    fn ca(&self) -> PathBuf {
        self.handle.ca_file().unwrap().to_owned()
    }

    fn fingerprint(&self) -> String {
        landfall::tls::ca_fingerprint(&self.dir.path().join("data")).unwrap()
    }

    /// A boot token from the plain-HTTP boot script, as iPXE gets it.
    async fn boot_token(&self) -> String {
        let s = reqwest::get(format!("{}/boot.ipxe?mac={MAC}", self.http()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            s.contains(&format!("landfall.server={}", self.https())),
            "{s}"
        );
        s.split_whitespace()
            .find_map(|w| w.strip_prefix("landfall.token="))
            .unwrap()
            .to_owned()
    }

    /// The machine's state as the admin API (over HTTPS) shows it.
    async fn state(&self) -> String {
        let pem = std::fs::read(self.ca()).unwrap();
        let c = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let token = std::fs::read_to_string(self.dir.path().join("data/admin.token")).unwrap();
        let v: serde_json::Value = c
            .get(format!("{}/api/v1/machines/{MAC}", self.https()))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["state"].as_str().unwrap().to_owned()
    }
}

fn hello_req(token: &str) -> HelloRequest {
    HelloRequest {
        boot_token: token.into(),
        agent_version: "0.1.0-test".into(),
        protocol: 1,
        inventory: Inventory {
            nics: vec![Nic {
                name: "eth0".into(),
                mac: MAC.into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        nonce: None,
    }
}

/// Another CA the server does not use: made by the same code elsewhere.
fn other_ca() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    landfall::tls::generate(d.path(), &["127.0.0.1".to_owned()]).unwrap();
    let p = d.path().join("ca.pem");
    (d, p)
}

fn trust_file(server: &str, ca: &Path) -> ServerTrust {
    ServerTrust::resolve(server, ca, None, false).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_ca_file_or_fingerprint_is_accepted() {
    let s = Tls::start().await;
    let token = s.boot_token().await;
    let c = Client::new(&s.https(), &trust_file(&s.https(), &s.ca())).unwrap();
    let r = c.hello(&hello_req(&token)).await.unwrap();
    assert_eq!(r.assignment.hostname, "ws-tls");

    // The kernel line's fingerprint (the CA's, as `landfall ca-fingerprint` prints it).
    let token = {
        // A new boot for a new token (the first one was exchanged).
        s.boot_token().await
    };
    let fp = s.fingerprint();
    let t = ServerTrust::resolve(&s.https(), Path::new("/nonexistent"), Some(&fp), false).unwrap();
    let c = Client::new(&s.https(), &t).unwrap();
    c.hello(&hello_req(&token)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_naming_both_fingerprints_before_hello() {
    let s = Tls::start().await;
    let token = s.boot_token().await;
    let (_keep, wrong) = other_ca();
    let wrong_fp = landfall::tls::fingerprint(&landfall::tls::read_certs(&wrong).unwrap()[0]);
    let right_fp = s.fingerprint();
    assert_ne!(wrong_fp, right_fp);

    for trust in [
        trust_file(&s.https(), &wrong),
        ServerTrust::resolve(
            &s.https(),
            Path::new("/nonexistent"),
            Some(&wrong_fp),
            false,
        )
        .unwrap(),
    ] {
        let c = Client::new(&s.https(), &trust).unwrap();
        let e = c.hello(&hello_req(&token)).await.unwrap_err();
        assert!(matches!(e, ApiError::Untrusted { .. }), "{e}");
        assert!(!e.retryable(), "a wrong CA is final: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&wrong_fp),
            "expected fingerprint missing: {msg}"
        );
        assert!(
            msg.contains(&right_fp),
            "presented fingerprint missing: {msg}"
        );
        assert!(msg.contains("before registering"), "{msg}");
    }
    // Nothing reached the server: the machine was never registered, and
    // the boot token is still unexchanged (the right CA can still use it).
    assert_eq!(s.state().await, "assigned");
    let c = Client::new(&s.https(), &trust_file(&s.https(), &s.ca())).unwrap();
    c.hello(&hello_req(&token)).await.unwrap();
    assert_eq!(s.state().await, "installing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_stops_at_a_wrong_ca_without_retrying_or_registering() {
    let s = Tls::start().await;
    let token = s.boot_token().await;
    let (_keep, wrong) = other_ca();
    let etc = tempfile::tempdir().unwrap();
    std::fs::copy(&wrong, etc.path().join("server-ca.pem")).unwrap();
    let cmdline = format!(
        "landfall.server={} landfall.token={token} landfall.final=none",
        s.https()
    );
    let cfg = AgentConfig::resolve(None, &cmdline, Default::default()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        etc_dir: etc.path().to_owned(),
        cmdline,
        state_dir: state.path().to_owned(),
        hello_retry: Retry {
            initial: Duration::from_millis(50),
            cap: Duration::from_millis(50),
            max_tries: Some(40),
        },
        ..RunOptions::default()
    };
    let t0 = std::time::Instant::now();
    let console = Console::new(
        Box::new(std::io::sink()),
        false,
        landfall_agent::cmdline::ConsoleMode::Lines,
        &[],
    );
    let e = pipeline::run(&cfg, &opts, console).await.unwrap_err();
    let msg = format!("{e:#}");
    eprintln!("the agent's error: {msg}");
    assert!(msg.contains(&s.fingerprint()), "{msg}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "retried: {:?}",
        t0.elapsed()
    );
    assert_eq!(s.state().await, "assigned");
}

#[test]
fn plain_http_is_refused_without_insecure_http() {
    let e = AgentConfig::resolve(
        None,
        "landfall.server=http://10.0.2.2:8080 landfall.token=abc",
        Default::default(),
    )
    .and_then(|cfg| ServerTrust::for_agent(&cfg, Path::new("/nonexistent")))
    .unwrap_err()
    .to_string();
    assert!(e.contains("landfall.insecure_http=1"), "{e}");
    let cfg = AgentConfig::resolve(
        None,
        "landfall.server=http://10.0.2.2:8080 landfall.token=abc landfall.insecure_http=1",
        Default::default(),
    )
    .unwrap();
    assert!(matches!(
        ServerTrust::for_agent(&cfg, Path::new("/nonexistent")).unwrap(),
        ServerTrust::InsecureHttp
    ));
    // The image's pin wins over the kernel line's opt-in.
    let (_keep, ca) = other_ca();
    let etc = ca.parent().unwrap();
    std::fs::copy(&ca, etc.join("server-ca.pem")).unwrap();
    let e = ServerTrust::for_agent(&cfg, etc).unwrap_err().to_string();
    assert!(e.contains("plain HTTP") && e.contains("pinned"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_http_client_cannot_be_pointed_at_https() {
    let s = Tls::start().await;
    let token = s.boot_token().await;
    let c = Client::new(&s.https(), &ServerTrust::InsecureHttp).unwrap();
    let e = c.hello(&hello_req(&token)).await.unwrap_err();
    assert!(matches!(e, ApiError::Untrusted { .. }), "{e}");
    assert_eq!(s.state().await, "assigned");
}

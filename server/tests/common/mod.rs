//! Shared helpers: a real server on 127.0.0.1:0 with SQLite in a tempdir.
#![allow(dead_code)]

pub mod dash;
pub mod pg;

use std::path::{Path, PathBuf};

use landfall::{serve, ServeOptions, ServerHandle};
use landfall_proto::inventory::Nic;
use landfall_proto::{Event, EventKind, HelloRequest, Inventory, Step};
use serde_json::Value;

pub const MAC1: &str = "52:54:00:00:00:01";
pub const MAC2: &str = "52:54:00:00:00:02";

/// `layouts/single-disk.json` beside the config: a disko layout as rendered JSON.
pub const LAYOUT_JSON: &str = r#"{"disko":{"devices":{"disk":{"main":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}}}"#;

/// A config with two listed machines and unknown machines held.
pub const CONFIG: &str = r#"
[server]
kernel_args = "console=ttyS0,115200"

[enroll]
unknown = "hold"

[roles.workstation]
description = "desk"
layout = "single-disk"
wipe = "always"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "workstation"

[[machines]]
mac = "52-54-00-00-00-02"
hostname = "ws-02"
role = "workstation"
"#;

pub struct Server {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Option<PathBuf>,
    /// The PostgreSQL database (`LANDFALL_TEST_DATABASE=postgres`), else
    /// `None`: SQLite in the data directory.
    pub database: Option<String>,
}

impl Server {
    /// Start with `config` (None = demo mode) in a fresh data dir.
    pub async fn start(config: Option<&str>) -> Self {
        Self::start_with_database(config, pg::suite_database()).await
    }

    /// [`Server::start`] on `database` (a PostgreSQL URL; `None`: SQLite in
    /// the data dir), e.g. two servers on one database.
    pub async fn start_with_database(config: Option<&str>, database: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config.map(|c| {
            let layouts = dir.path().join("layouts");
            std::fs::create_dir_all(&layouts).unwrap();
            std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON).unwrap();
            let p = dir.path().join("landfall.toml");
            std::fs::write(&p, c).unwrap();
            p
        });
        let mut s = Self {
            handle: None,
            dir,
            base: String::new(),
            http: reqwest::Client::new(),
            config,
            database,
        };
        s.restart().await;
        s
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.data().join("artifacts")
    }

    /// (Re)start on the same data dir.
    pub async fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.unwrap();
        }
        let h = serve(ServeOptions {
            config: self.config.clone(),
            data: self.data(),
            listen: "127.0.0.1:0".parse().unwrap(),
            artifacts: None,
            database: self.database.clone(),
        })
        .await
        .unwrap();
        self.base = format!("http://{}", h.local_addr());
        self.handle = Some(h);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// GET /boot.ipxe for a MAC: (status, script).
    pub async fn boot(&self, mac: &str) -> (u16, String) {
        let r = self
            .http
            .get(self.url("/boot.ipxe"))
            .query(&[("mac", mac), ("arch", "x86_64"), ("platform", "efi")])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    /// Boot and return the token from an install script (panics if not install).
    pub async fn boot_token(&self, mac: &str) -> String {
        let (status, s) = self.boot(mac).await;
        assert_eq!(status, 200);
        token_in(&s).unwrap_or_else(|| panic!("not an install script:\n{s}"))
    }

    /// Hello as the boot token's own agent: its nonce is derived from the
    /// token, so saying hello again is a retry by the same client.
    pub async fn hello(&self, token: &str, mac: &str) -> reqwest::Response {
        self.hello_as(token, mac, Some(&format!("nonce-of-{token}")))
            .await
    }

    /// Hello with the given nonce (`None`: an agent that sends none).
    pub async fn hello_as(&self, token: &str, mac: &str, nonce: Option<&str>) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/agent/hello"))
            .json(&HelloRequest {
                boot_token: token.into(),
                agent_version: "0.1.0-test".into(),
                protocol: 1,
                inventory: inventory(mac),
                nonce: nonce.map(str::to_owned),
            })
            .send()
            .await
            .unwrap()
    }

    /// Boot + hello: (attempt_id, agent_token).
    pub async fn start_attempt(&self, mac: &str) -> (String, String) {
        let token = self.boot_token(mac).await;
        let r = self.hello(&token, mac).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        (
            v["attempt_id"].as_str().unwrap().to_owned(),
            v["agent_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn events(
        &self,
        agent_token: &str,
        attempt: &str,
        events: &[Event],
    ) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/agent/events"))
            .bearer_auth(agent_token)
            .json(&serde_json::json!({ "attempt_id": attempt, "events": events }))
            .send()
            .await
            .unwrap()
    }

    /// POST events and return acked_seq (asserting 200).
    pub async fn ack(&self, agent_token: &str, attempt: &str, events: &[Event]) -> u64 {
        let r = self.events(agent_token, attempt, events).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["acked_seq"].as_u64().unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub async fn state_of(&self, key: &str) -> String {
        self.admin_get(&format!("/api/v1/machines/{key}")).await["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.unwrap();
        }
    }
}

pub fn inventory(mac: &str) -> Inventory {
    Inventory {
        nics: vec![Nic {
            name: "eth0".into(),
            mac: mac.into(),
            link_up: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn event(seq: u64, step: Step, kind: EventKind, message: &str) -> Event {
    Event {
        seq,
        time: "2026-01-01T00:00:00Z".into(),
        step,
        kind,
        progress: None,
        message: message.into(),
        data: None,
    }
}

/// The `landfall.token=` value of an install script.
pub fn token_in(script: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("landfall.token="))
        .map(str::to_owned)
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The server binary the tests spawn.
pub const BIN: &str = env!("CARGO_BIN_EXE_landfall");

/// `landfall serve` as a process (the real binary), its stderr (the log)
/// collected line by line.
pub struct ServeProcess {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `https://127.0.0.1:PORT`, when the config turns TLS on.
    pub tls_base: Option<String>,
}

impl ServeProcess {
    pub fn start(config: &Path, data: &Path) -> Self {
        Self::start_under(&[], config, data)
    }

    /// Started by `wrapper` (e.g. `prlimit --nofile=200:200`), when not empty.
    pub fn start_under(wrapper: &[&str], config: &Path, data: &Path) -> Self {
        use std::io::BufRead;
        let cmd = match wrapper.split_first() {
            Some((prog, args)) => landfall_cmd::Cmd::new(prog).args(args).arg(BIN),
            None => landfall_cmd::Cmd::new(BIN),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("LANDFALL_LOG", "info")
            .spawn(std::process::Stdio::null(), std::process::Stdio::piped())
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).split(b'\n') {
                let Ok(l) = l else { break };
                if tx.send(String::from_utf8_lossy(&l).into_owned()).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            lines,
            log: Vec::new(),
            base: String::new(),
            tls_base: None,
        };
        let tls = std::fs::read_to_string(config)
            .unwrap()
            .contains("listen_tls");
        while s.base.is_empty() || (tls && s.tls_base.is_none()) {
            let l = s
                .lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!("landfall serve did not say where it listens: {:#?}", s.log)
                });
            if let Some(addr) = l.split("listening on ").nth(1) {
                let url = addr.split_whitespace().next().unwrap().to_owned();
                if url.starts_with("https://") {
                    s.tls_base = Some(url);
                } else {
                    s.base = url;
                }
            }
            s.log.push(l);
        }
        s
    }

    /// `host:port` of the plain listener.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Every log line so far.
    pub fn read_log(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        &self.log
    }

    /// Wait up to `within` for the process to exit on its own.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kill it and return every line it logged.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log.extend(self.lines.iter());
        self.log
    }
}

/// An HTTPS client that trusts only the CA in `ca` (PEM).
pub fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

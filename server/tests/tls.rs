//! HTTPS (issue 12 item 3): the generated CA and certificate, the
//! fingerprint command, and the split between the plain-HTTP listener (boot
//! scripts, artifacts) and the HTTPS one (agent and admin API). Real TLS on
//! 127.0.0.1 with rustls on both ends.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{https_client, Server, CONFIG, MAC1};
use landfall::tls;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_landfall");

fn tls_config() -> String {
    CONFIG.replace(
        "[server]\n",
        "[server]\nlisten_tls = \"127.0.0.1:0\"\ntls_sans = [\"127.0.0.1\", \"landfall.test\"]\n",
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn generated_ca_and_keys_are_0600_reused_and_the_leaf_follows_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let names = vec!["127.0.0.1".to_owned(), "landfall.test".to_owned()];
    assert!(
        tls::generate(&tls_dir, &names).unwrap(),
        "first start makes a leaf"
    );
    for f in [tls::CA_KEY_FILE, tls::SERVER_KEY_FILE] {
        assert_eq!(mode(&tls_dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&tls_dir), 0o700);
    let ca1 = std::fs::read(tls_dir.join(tls::CA_CERT_FILE)).unwrap();
    let leaf1 = std::fs::read(tls_dir.join(tls::SERVER_CERT_FILE)).unwrap();

    // A restart with the same names changes nothing.
    assert!(!tls::generate(&tls_dir, &names).unwrap());
    assert_eq!(std::fs::read(tls_dir.join(tls::CA_CERT_FILE)).unwrap(), ca1);
    assert_eq!(
        std::fs::read(tls_dir.join(tls::SERVER_CERT_FILE)).unwrap(),
        leaf1
    );

    // Other names: a new leaf, the same CA (images that pin it keep working).
    let more = vec!["127.0.0.1".to_owned(), "10.0.0.1".to_owned()];
    assert!(tls::generate(&tls_dir, &more).unwrap());
    assert_eq!(std::fs::read(tls_dir.join(tls::CA_CERT_FILE)).unwrap(), ca1);
    assert_ne!(
        std::fs::read(tls_dir.join(tls::SERVER_CERT_FILE)).unwrap(),
        leaf1
    );
    assert_eq!(mode(&tls_dir.join(tls::SERVER_KEY_FILE)), 0o600);

    // A CA key without its certificate is refused, not replaced.
    std::fs::remove_file(tls_dir.join(tls::CA_CERT_FILE)).unwrap();
    let e = tls::generate(&tls_dir, &more).unwrap_err().to_string();
    assert!(e.contains("ca.pem") && e.contains("both"), "{e}");
}

#[test]
fn ca_fingerprint_command_prints_the_sha256_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let none = std::process::Command::new(BIN)
        .args(["ca-fingerprint", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("listen_tls"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    tls::generate(&dir.path().join("tls"), &["localhost".to_owned()]).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["ca-fingerprint", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let der = tls::read_certs(&dir.path().join("tls/ca.pem")).unwrap();
    let want: String = Sha256::digest(&der[0])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(printed.trim(), want);
    assert_eq!(want.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_apis_and_plain_http_only_boot_files() {
    let mut srv = Server::start(Some(&tls_config())).await;
    std::fs::write(srv.artifacts().join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(srv.artifacts().join("initrd"), b"initrd").unwrap();
    let h = srv.handle.as_ref().unwrap();
    let tls_addr = h.tls_addr().expect("TLS is on");
    let ca = h.ca_file().expect("a generated CA").to_owned();
    assert_eq!(ca, srv.data().join("tls/ca.pem"));
    let https = https_client(&ca);
    let token = srv.admin_token();

    // Admin API over HTTPS, trusted through the CA alone.
    let r = https
        .get(format!("https://{tls_addr}/api/v1/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The same request in clear: refused with a code, before auth or body.
    for path in ["/api/v1/machines", "/api/v1/agent/hello"] {
        let r = srv
            .http
            .post(srv.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "https_required", "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&tls_addr.port().to_string()),
            "{body}"
        );
    }

    // What iPXE fetches stays on HTTP; the agent is sent to the https URL.
    let (status, script) = srv.boot(MAC1).await;
    assert_eq!(status, 200);
    let http_base = srv.base.clone();
    assert!(
        script.contains(&format!("kernel {http_base}/artifacts/vmlinuz")),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "landfall.server=https://127.0.0.1:{}",
            tls_addr.port()
        )),
        "{script}"
    );
    let k = srv
        .http
        .get(srv.url("/artifacts/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(k.bytes().await.unwrap().as_ref(), b"kernel");
    let chain = srv.http.get(srv.url("/chain.ipxe")).send().await.unwrap();
    assert_eq!(chain.status(), 200);

    // The agent's hello works over HTTPS with the token from that script.
    let t = common::token_in(&script).unwrap();
    let hello = https
        .post(format!("https://{tls_addr}/api/v1/agent/hello"))
        .json(&landfall_proto::HelloRequest {
            boot_token: t,
            agent_version: "0.1.0-test".into(),
            protocol: 1,
            inventory: common::inventory(MAC1),
            nonce: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200, "{}", hello.text().await.unwrap());

    // A client that does not trust the CA (the public roots only) is refused.
    let public = reqwest::Client::new();
    assert!(public
        .get(format!("https://{tls_addr}/"))
        .send()
        .await
        .is_err());

    // Restart: the same CA is served again.
    let fp1 = tls::ca_fingerprint(&srv.data()).unwrap();
    srv.restart().await;
    assert_eq!(tls::ca_fingerprint(&srv.data()).unwrap(), fp1);
    let tls_addr = srv.handle.as_ref().unwrap().tls_addr().unwrap();
    let r = https
        .get(format!("https://{tls_addr}/api/v1/machines"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    srv.handle.take().unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn the_operators_certificate_is_served_as_given() {
    // The operator's PEM files: here a CA and leaf made by the same code in
    // another directory, so the server's data dir gets no CA of its own.
    let own = tempfile::tempdir().unwrap();
    tls::generate(own.path(), &["127.0.0.1".to_owned()]).unwrap();
    let config = CONFIG.replace(
        "[server]\n",
        &format!(
            "[server]\nlisten_tls = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            own.path().join("server.pem").display(),
            own.path().join("server.key").display()
        ),
    );
    let srv = Server::start(Some(&config)).await;
    let h = srv.handle.as_ref().unwrap();
    assert!(h.ca_file().is_none());
    assert!(!srv.data().join("tls").exists());
    let https = https_client(&own.path().join("ca.pem"));
    let r = https
        .get(format!("https://{}/", h.tls_addr().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tls_settings_are_checked_naming_the_field() {
    for (extra, field) in [
        ("listen_tls = \"0.0.0.0\"\n", "server.listen_tls"),
        ("listen = \"localhost:80\"\n", "server.listen"),
        ("tls_cert = \"c.pem\"\n", "server.tls_cert"),
        (
            "listen_tls = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\n",
            "server.tls_key",
        ),
        (
            "listen_tls = \"127.0.0.1:0\"\ntls_sans = [\"a b\"]\n",
            "server.tls_sans",
        ),
        (
            "listen_tls = \"127.0.0.1:0\"\npublic_tls_url = \"http://x:1\"\n",
            "server.public_tls_url",
        ),
    ] {
        let text = CONFIG.replace("[server]\n", &format!("[server]\n{extra}"));
        let e = landfall::config::Config::parse(&text)
            .unwrap()
            .validate(Path::new("."))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(field), "{extra}: {e}");
    }
}

#[tokio::test]
async fn public_tls_url_is_what_the_agent_is_told() {
    let config = tls_config().replace(
        "[server]\n",
        "[server]\npublic_tls_url = \"https://landfall.test:9443/\"\n",
    );
    let srv = Server::start(Some(&config)).await;
    let (_, script) = srv.boot(MAC1).await;
    assert!(
        script.contains("landfall.server=https://landfall.test:9443 "),
        "{script}"
    );
    // Its host is one of the certificate's names.
    let sans = std::fs::read_to_string(srv.data().join("tls/server.sans")).unwrap();
    assert!(sans.lines().any(|l| l == "landfall.test"), "{sans}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_trusts_the_ca_it_is_given() {
    let srv = Server::start(Some(&tls_config())).await;
    let h = srv.handle.as_ref().unwrap();
    let https = format!("https://{}", h.tls_addr().unwrap());
    let ca = h.ca_file().unwrap().to_owned();
    let token = srv.data().join("admin.token");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["machines", "--server", &https, "--token-file"])
            .arg(&token)
            .args(args)
            .env_remove("LANDFALL_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let ok = tokio::task::block_in_place(|| run(&["--ca", ca.to_str().unwrap()]));
    assert!(ok.status.success(), "{ok:?}");
    // Without --ca the public roots do not know this CA.
    let no = tokio::task::block_in_place(|| run(&[]));
    assert!(!no.status.success(), "{no:?}");
}

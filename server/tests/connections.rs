//! Connections (issue 14): slow and idle clients, plain and TLS, do not
//! starve others; idle ones are closed after the timeouts; the connection
//! cap keeps the server below its descriptor limit; SIGTERM with slow
//! clients exits within the grace. Each against the real `landfall serve`
//! binary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use landfall_cmd::Cmd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tempdir with `CONFIG`, `[server]` keys and a `[server.http]` table
/// added: (the dir, its data dir, the config file).
fn setup(server_keys: &str, http: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    std::fs::create_dir_all(&layouts).unwrap();
    std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON).unwrap();
    let text = CONFIG
        .replace("[server]\n", &format!("[server]\n{server_keys}\n"))
        .replace("[enroll]", &format!("[server.http]\n{http}\n\n[enroll]"));
    let cfg = dir.path().join("landfall.toml");
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    (dir, data, cfg)
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Whether the server has closed `s`: EOF or a reset within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer (the 400 of a cut head); read on to the close
        }
    }
}

/// A rustls client trusting only `ca`.
fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in landfall::tls::read_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn quick_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn slow_and_idle_clients_plain_and_tls_do_not_starve_others_and_are_closed() {
    let (_dir, data, cfg) = setup(
        "listen_tls = \"127.0.0.1:0\"\ntls_sans = [\"127.0.0.1\"]",
        "header_timeout_secs = 5\nidle_timeout_secs = 3\ntls_handshake_timeout_secs = 5\nsend_timeout_secs = 3",
    );
    let mut srv = ServeProcess::start(&cfg, &data);
    let plain = srv.addr();
    let tls = srv
        .tls_base
        .clone()
        .unwrap()
        .trim_start_matches("https://")
        .to_owned();
    let ca = data.join("tls/ca.pem");
    let kernel: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    write(&data.join("artifacts/vmlinuz"), &kernel);
    let big: Vec<u8> = vec![7u8; 48 << 20];
    write(&data.join("artifacts/big"), &big);

    // The crowd: idle and half-sent connections, plain and TLS.
    let started = Instant::now();
    let mut crowd: Vec<(&str, TcpStream)> = Vec::new();
    for _ in 0..150 {
        crowd.push(("plain idle", connect(&plain).await));
    }
    for i in 0..150 {
        let mut s = connect(&plain).await;
        s.write_all(
            format!("GET /boot.ipxe?mac={MAC1} HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes(),
        )
        .await
        .unwrap();
        crowd.push(("plain half-sent head", s));
    }
    for _ in 0..100 {
        crowd.push(("TLS without a handshake", connect(&tls).await));
    }
    for _ in 0..50 {
        let mut s = connect(&tls).await;
        // A TLS record header announcing a ClientHello that never comes.
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        crowd.push(("TLS half a ClientHello", s));
    }
    let connector = tls_connector(&ca);
    let mut tls_crowd = Vec::new();
    for _ in 0..50 {
        let s = connect(&tls).await;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut t = connector.connect(name, s).await.unwrap();
        t.write_all(b"GET /api/v1/machines HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        t.flush().await.unwrap();
        tls_crowd.push(t);
    }
    let built = started.elapsed();
    println!(
        "crowd of {} connections open in {built:?}",
        crowd.len() + tls_crowd.len()
    );
    assert!(
        built < Duration::from_millis(4000),
        "building the crowd took {built:?}: the checks below assume it is still there"
    );

    // While they hang, a normal client is answered promptly on both listeners.
    let http = quick_client();
    let https = https_client(&ca);
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let r = http
            .get(format!("{}/boot.ipxe", srv.base))
            .query(&[("mac", MAC1)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(token_in(&r.text().await.unwrap()).is_some());
        let r = http
            .get(format!("{}/artifacts/vmlinuz", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == kernel);
        let r = https
            .get(format!("https://{tls}/api/v1/machines"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let took = t.elapsed();
        println!("a normal client's three requests beside the crowd: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "answered in {took:?} beside the crowd"
        );
    }

    // Nothing was closed before its timeout...
    for (what, s) in crowd.iter_mut().step_by(25) {
        if started.elapsed() < Duration::from_millis(4700) {
            assert!(
                !closed_within(s, Duration::from_millis(50)).await,
                "{what} closed before the 5 s timeout"
            );
        }
    }
    // ...and every one is closed after it (5 s, plus scheduling slack).
    let mut checks = Vec::new();
    for (what, mut s) in crowd {
        checks.push(tokio::spawn(async move {
            (what, closed_within(&mut s, Duration::from_secs(9)).await)
        }));
    }
    for c in checks {
        let (what, closed) = c.await.unwrap();
        assert!(closed, "{what}: still open 9 s after the 5 s timeout");
    }
    for mut t in tls_crowd {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(9), t.read_to_end(&mut buf)).await;
        assert!(
            r.is_ok(),
            "a TLS connection with half a request is still open"
        );
    }
    let closed_by = started.elapsed();
    println!("the crowd was closed by {closed_by:?}");

    // A kept-alive connection is closed after idle_timeout (3 s), not before.
    let mut s = connect(&plain).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = s.read(&mut got).await.unwrap();
    assert!(
        got[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..n])
    );
    let answered = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest))
        .await
        .expect("the idle kept-alive connection was not closed")
        .unwrap_or_default();
    let idle = answered.elapsed();
    println!("kept-alive connection closed after {idle:?} idle");
    assert!(
        idle >= Duration::from_millis(2500),
        "closed after only {idle:?}"
    );

    // A client that stops reading an artifact is dropped after send_timeout
    // (3 s): it gets less than the file, then the end.
    let mut s = connect(&plain).await;
    s.write_all(b"GET /artifacts/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut all = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    assert!(r.is_ok(), "the stalled download's connection is still open");
    assert!(
        all.len() < big.len(),
        "a stalled client got the whole file ({} bytes)",
        all.len()
    );

    // Failed handshakes are logged, but not one line each.
    let log = srv.read_log().to_vec();
    let handshakes = log.iter().filter(|l| l.contains("TLS handshake")).count();
    assert!(
        (1..=3).contains(&handshakes),
        "{handshakes} handshake lines for 150 failed handshakes:\n{}",
        log.join("\n")
    );
    srv.stop();
}

#[tokio::test]
async fn the_connection_cap_keeps_the_server_below_its_descriptor_limit() {
    let (_dir, data, cfg) = setup("", "header_timeout_secs = 2");
    // 200 descriptors: (200 - 128 reserved) / 2 = 36 connections.
    let srv = ServeProcess::start_under(&["prlimit", "--nofile=200:200", "--"], &cfg, &data);
    assert!(
        srv.log
            .iter()
            .any(|l| l.contains("at most 36 open (descriptor limit 200)")),
        "{:#?}",
        srv.log
    );
    let plain = srv.addr();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(connect(&plain).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queued behind the cap, answered once the idle ones time out (2 s).
    let t = Instant::now();
    let r = quick_client()
        .get(format!("{}/", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let waited = t.elapsed();
    println!("a client behind the cap was answered after {waited:?}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // The idle ones are all closed.
    for mut s in idle {
        assert!(closed_within(&mut s, Duration::from_secs(8)).await);
    }
    let log = srv.stop();
    let cap_lines = log
        .iter()
        .filter(|l| l.contains("connection cap reached"))
        .count();
    assert!(
        (1..=2).contains(&cap_lines),
        "{cap_lines} cap lines:\n{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains("Too many open files")),
        "{}",
        log.join("\n")
    );
}

/// SIGTERM, then how long until the process exited (successfully).
fn sigterm_exit(srv: &mut ServeProcess, with: &str) -> Duration {
    let t = Instant::now();
    Cmd::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status_blocking()
        .unwrap();
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("no exit within 10 s");
    let took = t.elapsed();
    println!("SIGTERM with {with}: exit after {took:?}");
    assert!(st.success(), "{st}");
    took
}

#[tokio::test]
async fn sigterm_with_slow_clients_exits_within_the_grace() {
    let (_dir, data, cfg) = setup(
        "",
        "header_timeout_secs = 60\nidle_timeout_secs = 60\nsend_timeout_secs = 60\nshutdown_grace_secs = 2",
    );

    // Idle and half-sent connections alone do not hold a shutdown.
    let mut srv = ServeProcess::start(&cfg, &data);
    let mut crowd = Vec::new();
    for _ in 0..20 {
        crowd.push(connect(&srv.addr()).await);
    }
    for _ in 0..5 {
        let mut s = connect(&srv.addr()).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        crowd.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = sigterm_exit(&mut srv, "idle connections only");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Downloads that never read hold it for the grace (2 s), no longer.
    write(&data.join("artifacts/big"), &vec![1u8; 64 << 20]);
    let mut srv = ServeProcess::start(&cfg, &data);
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&srv.addr()).await;
        s.write_all(b"GET /artifacts/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        slow.push(s);
    }
    for _ in 0..20 {
        slow.push(connect(&srv.addr()).await);
    }
    let took = sigterm_exit(&mut srv, "3 stalled downloads");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?} (grace 2 s)"
    );
    let log = srv.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("still busy after 2s") && l.contains("dropped")),
        "{}",
        log.join("\n")
    );
}

//! The TFTP server against real TFTP clients (tftp-hpa and atftp, Debian
//! packages installed by `./x`), serving Debian's `ipxe` binaries
//! (issue 13, TFTP).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use landfall::netboot::tftp::{Files, Limits, TftpServer, TftpStats};
use landfall_cmd::Cmd;
use tokio::net::UdpSocket;

const IPXE_DIR: &str = "/usr/lib/ipxe";
const BINARIES: [&str; 2] = ["undionly.kpxe", "snponly.efi"];

fn ipxe_files() -> Files {
    let mut f = Files::new();
    for name in BINARIES {
        let p = Path::new(IPXE_DIR).join(name);
        let data = std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; install Debian's `ipxe` package (`./x` does)",
                p.display()
            )
        });
        f.insert(name.to_owned(), Arc::from(data));
    }
    f
}

async fn start(limits: Limits) -> TftpServer {
    TftpServer::start("127.0.0.1:0".parse().unwrap(), ipxe_files(), limits)
        .await
        .unwrap()
}

/// `tftp-hpa`: plain RFC 1350 (512-byte blocks, no options).
async fn tftp_hpa_get(addr: SocketAddr, name: &str, out: &Path) -> String {
    let o = Cmd::new("tftp")
        .args(["-m", "binary"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(["-c", "get", name])
        .arg(out)
        .run()
        .await;
    match o {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    }
}

/// `atftp` with the blksize and tsize options (RFC 2348, 2349).
async fn atftp_get(addr: SocketAddr, name: &str, out: &Path, blksize: u32) -> Result<(), String> {
    Cmd::new("atftp")
        .arg("--get")
        .args(["-r", name])
        .arg("-l")
        .arg(out)
        .args(["--option", &format!("blksize {blksize}")])
        .args(["--option", "tsize 0"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .run()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(IPXE_DIR).join(name)).unwrap()
}

#[tokio::test]
async fn real_clients_receive_the_ipxe_binaries_byte_identical() {
    let srv = start(Limits::default()).await;
    let addr = srv.local_addr();
    let dir = tempfile::tempdir().unwrap();
    for name in BINARIES {
        let out = dir.path().join(format!("{name}.hpa"));
        let log = tftp_hpa_get(addr, name, &out).await;
        assert_eq!(
            std::fs::read(&out).unwrap_or_default(),
            expected(name),
            "tftp-hpa {name}: {log}"
        );
        // A leading slash, as some PXE ROMs send it.
        let out = dir.path().join(format!("{name}.slash"));
        let log = tftp_hpa_get(addr, &format!("/{name}"), &out).await;
        assert_eq!(
            std::fs::read(&out).unwrap_or_default(),
            expected(name),
            "{log}"
        );
        for blksize in [1468, 8192] {
            let out = dir.path().join(format!("{name}.{blksize}"));
            atftp_get(addr, name, &out, blksize).await.unwrap();
            assert_eq!(
                std::fs::read(&out).unwrap(),
                expected(name),
                "atftp {name} blksize {blksize}"
            );
        }
    }
    let st = srv.stats();
    assert_eq!(TftpStats::get(&st.requests), 8);
    // The client exits on sending the last ACK; the server counts the
    // transfer when that ACK arrives.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while TftpStats::get(&st.completed) < 8 && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(TftpStats::get(&st.completed), 8);
    let total: usize = BINARIES.iter().map(|n| expected(n).len()).sum();
    assert_eq!(TftpStats::get(&st.bytes), 4 * total as u64);
    assert_eq!(TftpStats::get(&st.refused), 0);
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_paths_and_malformed_packets_are_refused_and_the_server_keeps_serving() {
    let srv = start(Limits::default()).await;
    let addr = srv.local_addr();
    let st = srv.stats();
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "../undionly.kpxe",
        "/etc/passwd",
        "x/../undionly.kpxe",
        "ipxe.efi",
        "UNDIONLY.KPXE",
    ] {
        let out = dir.path().join("bad");
        let _ = std::fs::remove_file(&out);
        let log = tftp_hpa_get(addr, bad, &out).await;
        assert!(
            std::fs::read(&out).unwrap_or_default().is_empty(),
            "{bad} was served: {log}"
        );
        assert!(log.contains("not found"), "{bad}: {log}");
    }
    assert_eq!(TftpStats::get(&st.refused), 5);

    // Junk, a truncated request, a write request: dropped (the write refused).
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b"\x00"[..],
        b"\x00\x01undionly.kpxe",
        b"\x00\x09undionly.kpxe\x00octet\x00",
        b"\xff\xff\xff\xff\xff\xff",
        b"\x00\x01undionly.kpxe\x00octet\x00blksize\x00",
    ] {
        s.send_to(junk, addr).await.unwrap();
    }
    s.send_to(b"\x00\x02evil\x00octet\x00", addr).await.unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("an answer to the write request")
        .unwrap();
    assert_eq!(&buf[..4], b"\x00\x05\x00\x02", "ERROR access violation");
    assert!(String::from_utf8_lossy(&buf[4..n]).contains("read-only"));
    // Nothing else answered.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(TftpStats::get(&st.malformed), 6);

    // Still serving.
    let out = dir.path().join("after");
    let log = tftp_hpa_get(addr, "snponly.efi", &out).await;
    assert_eq!(
        std::fs::read(&out).unwrap_or_default(),
        expected("snponly.efi"),
        "{log}"
    );
    srv.shutdown().await;
}

fn rrq(name: &str) -> Vec<u8> {
    let mut p = b"\x00\x01".to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(b"\x00octet\x00");
    p
}

#[tokio::test]
async fn sessions_and_retransmits_are_bounded() {
    let srv = start(Limits {
        max_sessions: 1,
        max_sends: 3,
        timeout: Duration::from_millis(200),
    })
    .await;
    let addr = srv.local_addr();
    let st = srv.stats();
    // A client that asks and never acknowledges.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    silent.send_to(&rrq("undionly.kpxe"), addr).await.unwrap();
    let mut buf = [0u8; 600];
    let mut blocks = 0;
    let mut tid = None;
    while let Ok(Ok((n, from))) =
        tokio::time::timeout(Duration::from_secs(2), silent.recv_from(&mut buf)).await
    {
        assert_eq!(&buf[..4], b"\x00\x03\x00\x01", "block 1 each time");
        assert_eq!(n, 516);
        assert_ne!(from, addr, "the transfer runs from its own port");
        tid.get_or_insert(from);
        blocks += 1;
        if blocks == 1 {
            // While it runs, a second transfer is refused as busy.
            let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            other.send_to(&rrq("snponly.efi"), addr).await.unwrap();
            let (n, _) = other.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..2], b"\x00\x05");
            assert!(String::from_utf8_lossy(&buf[4..n]).contains("busy"));
            // A packet from another port to the transfer's: never reaches it
            // (its socket is connected to its client).
            other
                .send_to(b"\x00\x04\x00\x01", tid.unwrap())
                .await
                .unwrap();
        }
    }
    assert_eq!(
        blocks, 3,
        "sent once and retransmitted twice, then given up"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(TftpStats::get(&st.timeouts), 1);
    assert_eq!(TftpStats::get(&st.retransmits), 2);
    assert_eq!(TftpStats::get(&st.busy), 1);
    // The session slot is free again.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("after");
    let log = tftp_hpa_get(addr, "undionly.kpxe", &out).await;
    assert_eq!(
        std::fs::read(&out).unwrap_or_default(),
        expected("undionly.kpxe"),
        "{log}"
    );
    srv.shutdown().await;
}

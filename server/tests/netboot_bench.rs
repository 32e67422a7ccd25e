//! `./x bench netboot` (issue 13): not a timed test. In the normal suite it
//! runs small (100 DISCOVERs, 1 round) and checks behaviour only: every
//! DISCOVER answered, every fetch byte-identical; the bench runs it full
//! (`LANDFALL_BENCH=full`, release build, `--nocapture`, as root).
//! 1. DHCP: the answer time of landfall's proxyDHCP under a storm of 1,000
//!    PXE DISCOVERs (1,000 MACs, sent back to back) across a veth pair
//!    between two namespaces: p50, p99, max, answered.
//! 2. TFTP: `undionly.kpxe` and `snponly.efi` fetched by atftp (blksize 1468)
//!    from landfall's TFTP and from dnsmasq's TFTP on the same files, in one
//!    namespace's loopback, rounds alternating: throughput and the ratio
//!    (goal: landfall / dnsmasq >= 1.0).

mod netns;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use landfall::netboot::dhcp::{DhcpOptions, DhcpServer};
use landfall::netboot::tftp::{Files, Limits, TftpServer};
use landfall::netboot::{Endpoints, IpxeFiles};
use landfall_cmd::Cmd;
use netns::{Pair, SERVER_IF, SERVER_IP};

/// DISCOVERs in the storm and fetch rounds per file: full under the bench,
/// small in the normal suite.
fn scale() -> (u32, usize) {
    match std::env::var("LANDFALL_BENCH").as_deref() {
        Ok("full") => (1000, 10),
        _ => (100, 1),
    }
}
const BINARIES: [&str; 2] = ["undionly.kpxe", "snponly.efi"];

fn files() -> Files {
    let mut f = Files::new();
    for n in BINARIES {
        f.insert(
            n.to_owned(),
            Arc::from(std::fs::read(format!("/usr/lib/ipxe/{n}")).unwrap()),
        );
    }
    f
}

#[test]
fn bench_netboot() {
    dhcp_storm();
    tftp_vs_dnsmasq();
}

fn dhcp_storm() {
    let (storm, _) = scale();
    let pair = Pair::new("bench");
    let srv_ns = pair.srv.clone();
    let (ready, wait) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = std::thread::spawn(move || {
        Pair::enter(&srv_ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ipxe = IpxeFiles {
                bios: Some("undionly.kpxe".into()),
                efi_x86_64: Some("snponly.efi".into()),
                efi_arm64: None,
                files: Files::new(),
            };
            let d = DhcpServer::start(DhcpOptions {
                mode: landfall::config::DhcpMode::Proxy,
                interface: SERVER_IF.into(),
                endpoints: Endpoints::new(None, SERVER_IP.parse().unwrap(), 8080),
                files: Arc::new(ipxe),
                pool: None,
                dhcp_port: 67,
                pxe_port: 4011,
                store: landfall::store::Store::open(&db).unwrap(),
            })
            .await
            .unwrap();
            ready.send(()).unwrap();
            tokio::task::spawn_blocking(move || stopped.recv())
                .await
                .unwrap()
                .ok();
            d.shutdown().await;
        });
    });
    wait.recv().unwrap();
    Pair::enter(&pair.cli);
    let s = netns::client_socket(68);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let packets: Vec<Vec<u8>> = (0..storm)
        .map(|i| {
            let b = i.to_be_bytes();
            let m = landfall::netboot::dhcp::discover(
                [0x52, 0x54, 0x01, b[1], b[2], b[3]],
                Some("PXEClient:Arch:00007:UNDI:003000"),
                Some(7),
                false,
            );
            let mut out = Vec::new();
            m.encode(&mut Encoder::new(&mut out)).unwrap();
            out
        })
        .collect();
    let mut sent = vec![None; storm as usize];
    let mut got = vec![None; storm as usize];
    let r = s.try_clone().unwrap();
    let t0 = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut times = vec![None; storm as usize];
        let end = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while Instant::now() < end && n < storm {
            if let Ok((len, _)) = r.recv_from(&mut buf) {
                let m = Message::decode(&mut Decoder::new(&buf[..len])).unwrap();
                let i = (m.xid() & 0x00ff_ffff) as usize;
                if i < times.len() && times[i].is_none() {
                    times[i] = Some(Instant::now());
                    n += 1;
                }
            }
        }
        times
    });
    for (i, p) in packets.iter().enumerate() {
        sent[i] = Some(Instant::now());
        s.send_to(p, SocketAddr::from(([255, 255, 255, 255], 67)))
            .unwrap();
    }
    let storm_sent = t0.elapsed();
    for (i, t) in receiver.join().unwrap().into_iter().enumerate() {
        got[i] = t;
    }
    let mut lat: Vec<Duration> = sent
        .iter()
        .zip(&got)
        .filter_map(|(s, g)| Some(g.as_ref()?.duration_since(*s.as_ref()?)))
        .collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    assert_eq!(lat.len(), storm as usize, "every DISCOVER is answered");
    println!(
        "bench netboot dhcp: {storm} PXE DISCOVERs ({storm} MACs) sent in {:.1} ms across a veth: \
         {} answered; answer time p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        storm_sent.as_secs_f64() * 1e3,
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
    let _ = stop.send(());
    server.join().unwrap();
}

/// atftp fetching `name` from 127.0.0.1:`port`, `n` times: seconds.
fn fetch(port: u16, name: &str, n: usize, out: &std::path::Path) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        Cmd::new("atftp")
            .args(["--get", "-r", name, "-l"])
            .arg(out)
            .args(["--option", "blksize 1468", "127.0.0.1", &port.to_string()])
            .run_blocking()
            .unwrap_or_else(|e| panic!("{e}"));
    }
    t.elapsed().as_secs_f64()
}

fn tftp_vs_dnsmasq() {
    let (_, rounds) = scale();
    let pair = Pair::new("btftp");
    Pair::enter(&pair.srv);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    std::fs::create_dir(&root).unwrap();
    for n in BINARIES {
        std::fs::copy(format!("/usr/lib/ipxe/{n}"), root.join(n)).unwrap();
    }
    let log = std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap();
    let mut dnsmasq = Cmd::new("dnsmasq")
        .args(["--no-daemon", "--user=root", "--port=0", "--enable-tftp"])
        .args(["--interface=lo", "--bind-interfaces"])
        .arg(format!("--tftp-root={}", root.display()))
        .spawn(Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let srv = rt
        .block_on(TftpServer::start(
            "127.0.0.1:6969".parse().unwrap(),
            files(),
            Limits::default(),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = dir.path().join("out");
    for name in BINARIES {
        let size = std::fs::metadata(root.join(name)).unwrap().len() as f64;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(fetch(6969, name, 5, &out));
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(root.join(name)).unwrap()
            );
            theirs.push(fetch(69, name, 5, &out));
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(root.join(name)).unwrap()
            );
        }
        ours.sort_by(f64::total_cmp);
        theirs.sort_by(f64::total_cmp);
        let (o, t) = (ours[rounds / 2] / 5.0, theirs[rounds / 2] / 5.0);
        println!(
            "bench netboot tftp {name} ({:.0} KiB, atftp blksize 1468, median of {rounds}x5): \
             landfall {:.1} MB/s ({:.1} ms), dnsmasq {:.1} MB/s ({:.1} ms): ratio {:.2}x (goal >= 1.0)",
            size / 1024.0,
            size / o / 1e6,
            o * 1e3,
            size / t / 1e6,
            t * 1e3,
            t / o
        );
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    rt.block_on(srv.shutdown());
}

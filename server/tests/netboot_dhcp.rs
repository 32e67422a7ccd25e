//! The built-in DHCP on a real layer-2 link: `landfall serve` runs in one
//! network namespace, the clients in another, joined by a veth pair
//! (issue 13, DHCP). Clients are DISCOVERs built with dhcproto as firmware
//! sends them, and busybox udhcpc as a real DHCP client. As root.

mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use landfall::netboot::dhcp::{discover, DhcpStats, RATE_LIMIT};
use landfall::netboot::tftp::TftpStats;
use landfall::{serve_with, NetbootOverrides, ServeOptions};
use landfall_cmd::Cmd;
use netns::{boot_file, class, client_socket, Pair, CLIENT_IF, SERVER_IP};

const HTTP_PORT: u16 = 8080;

struct Running {
    dhcp: Arc<DhcpStats>,
    tftp: Arc<TftpStats>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

/// `landfall serve` (in-process, its own runtime) inside namespace `ns`.
fn serve_in(ns: &str, config: &Path, data: &Path) -> Running {
    let (ns, config, data) = (ns.to_owned(), config.to_owned(), data.to_owned());
    let (ready_tx, ready) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        Pair::enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = serve_with(
                ServeOptions {
                    config: Some(config),
                    data,
                    listen: SocketAddr::from(([0, 0, 0, 0], HTTP_PORT)),
                    artifacts: None,
                    database: None,
                },
                NetbootOverrides::default(),
            )
            .await
            .unwrap();
            let nb = h.netboot().unwrap();
            ready_tx
                .send((
                    nb.dhcp.as_ref().unwrap().stats(),
                    nb.tftp.as_ref().unwrap().stats(),
                ))
                .unwrap();
            tokio::task::spawn_blocking(move || stop_rx.recv())
                .await
                .unwrap()
                .ok();
            h.shutdown().await.unwrap();
        });
    });
    let (dhcp, tftp) = ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the server started");
    Running {
        dhcp,
        tftp,
        stop,
        thread,
    }
}

fn write_config(dir: &Path, mode: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("landfall.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[enroll]
unknown = "install"
role = "demo"

[roles.demo]

[netboot]
dhcp = "{mode}"
interface = "{}"
server_address = "{SERVER_IP}"
ipxe_bios = "/usr/lib/ipxe/undionly.kpxe"
ipxe_efi_x86_64 = "/usr/lib/ipxe/snponly.efi"
{extra}
"#,
            netns::SERVER_IF
        ),
    )
    .unwrap();
    p
}

fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Send `m` to `to` and collect the answers with its xid for `wait`.
fn ask(s: &UdpSocket, m: &Message, to: SocketAddr, wait: Duration) -> Vec<Message> {
    s.send_to(&encode(m), to).unwrap();
    collect(s, m.xid(), wait)
}

fn collect(s: &UdpSocket, xid: u32, wait: Duration) -> Vec<Message> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let m = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
            if m.xid() == xid {
                out.push(m);
            }
        }
    }
    out
}

fn broadcast() -> SocketAddr {
    SocketAddr::from(([255, 255, 255, 255], 67))
}

fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x13, 0x00, last]
}

/// `GET url` over HTTP/1.0: the body.
fn http_get(host: &str, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect((host, HTTP_PORT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(all.starts_with(b"HTTP/1.0 200") || all.starts_with(b"HTTP/1.1 200"));
    all[at + 4..].to_vec()
}

#[test]
fn proxy_dhcp_answers_netboot_clients_only_with_their_boot_file() {
    let pair = Pair::new("proxy");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "proxy", "");
    let srv = serve_in(&pair.srv, &cfg, &dir.path().join("data"));
    Pair::enter(&pair.cli);
    let s = client_socket(68);
    let w = Duration::from_millis(600);
    let server: Ipv4Addr = SERVER_IP.parse().unwrap();

    // (vendor class, option 93, iPXE user class, the boot file, the class echoed)
    let cases = [
        (
            "PXEClient:Arch:00000:UNDI:002001",
            0,
            false,
            "undionly.kpxe".to_owned(),
            "PXEClient",
        ),
        (
            "PXEClient:Arch:00007:UNDI:003000",
            7,
            false,
            "snponly.efi".to_owned(),
            "PXEClient",
        ),
        (
            "HTTPClient:Arch:00016:UNDI:003001",
            16,
            false,
            format!("http://{SERVER_IP}:{HTTP_PORT}/netboot/snponly.efi"),
            "HTTPClient",
        ),
        (
            "PXEClient:Arch:00007:UNDI:003000",
            7,
            true,
            format!(
                "http://{SERVER_IP}:{HTTP_PORT}/boot.ipxe?mac=52:54:00:13:00:04&arch=${{buildarch}}&platform=${{platform}}"
            ),
            "PXEClient",
        ),
    ];
    for (i, (vc, arch, ipxe, file, echo)) in cases.iter().enumerate() {
        let m = discover(mac(i as u8 + 1), Some(vc), Some(*arch), *ipxe);
        let got = ask(&s, &m, broadcast(), w);
        assert_eq!(got.len(), 1, "{vc} ipxe={ipxe}: {got:?}");
        let o = &got[0];
        assert_eq!(o.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "proxyDHCP never gives an address"
        );
        assert_eq!(o.siaddr(), server);
        assert_eq!(&boot_file(o), file);
        assert_eq!(class(o), *echo);
        assert!(matches!(
            o.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(a)) if *a == server
        ));
    }

    // Not a netboot client: proxyDHCP stays silent.
    assert!(ask(&s, &discover(mac(9), None, None, false), broadcast(), w).is_empty());
    assert!(ask(
        &s,
        &discover(mac(9), Some("MSFT 5.0"), None, false),
        broadcast(),
        w
    )
    .is_empty());

    // With the address the site's DHCP gave, the PXE client asks the boot
    // server port (4011) and gets the boot file in an ACK; then fetches the
    // EFI iPXE over HTTP (UEFI HTTP Boot's URL) byte-identical.
    pair.client_address("10.77.0.50/24");
    let mut req = discover(
        mac(2),
        Some("PXEClient:Arch:00007:UNDI:003000"),
        Some(7),
        false,
    );
    req.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    req.set_ciaddr(Ipv4Addr::new(10, 77, 0, 50));
    let u = UdpSocket::bind("10.77.0.50:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let got = ask(&u, &req, SocketAddr::from((server, 4011)), w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(boot_file(&got[0]), "snponly.efi");
    assert_eq!(
        http_get(SERVER_IP, "/netboot/snponly.efi"),
        std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap()
    );

    // Malformed packets are dropped and counted; the server keeps answering.
    let before = DhcpStats::get(&srv.dhcp.malformed);
    for junk in [&b"\x01\x02"[..], &[0u8; 300], b"not dhcp at all"] {
        s.send_to(junk, broadcast()).unwrap();
    }
    let mut boot_reply = discover(mac(7), Some("PXEClient:Arch:00000"), Some(0), false);
    boot_reply.set_opcode(dhcproto::v4::Opcode::BootReply);
    s.send_to(&encode(&boot_reply), broadcast()).unwrap();
    // Found by `./x fuzz dhcp`: an hlen over 16 (dhcproto's chaddr() slices by
    // it) and an option of a length dhcproto asserts on (Rapid Commit, 80).
    let good = encode(&discover(
        mac(9),
        Some("PXEClient:Arch:00000"),
        Some(0),
        false,
    ));
    let mut long_hlen = good.clone();
    long_hlen[2] = 200;
    let mut bad_option = good[..good.len() - 1].to_vec();
    bad_option.extend_from_slice(&[80, 1, 0, 255]);
    for junk in [long_hlen, bad_option] {
        s.send_to(&junk, broadcast()).unwrap();
    }
    assert_eq!(
        ask(
            &s,
            &discover(mac(8), Some("PXEClient:Arch:00000"), Some(0), false),
            broadcast(),
            w
        )
        .len(),
        1
    );
    assert_eq!(DhcpStats::get(&srv.dhcp.malformed) - before, 6);

    // A flood from one MAC: at most RATE_LIMIT answers, the rest counted.
    let flood_mac = mac(0x66);
    let mut answered = 0;
    for i in 0..(RATE_LIMIT + 20) {
        let mut m = discover(flood_mac, Some("PXEClient:Arch:00000"), Some(0), false);
        m.set_xid(0x6600 + i);
        s.send_to(&encode(&m), broadcast()).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let m = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
            if m.chaddr().starts_with(&flood_mac) {
                answered += 1;
            }
        }
    }
    assert_eq!(answered, RATE_LIMIT);
    assert_eq!(DhcpStats::get(&srv.dhcp.rate_limited), 20);
    // Another MAC is still answered.
    assert_eq!(
        ask(
            &s,
            &discover(mac(0x67), Some("PXEClient:Arch:00007"), Some(7), false),
            broadcast(),
            w
        )
        .len(),
        1
    );
    assert_eq!(TftpStats::get(&srv.tftp.requests), 0);

    // The same counters in `GET /metrics` (Prometheus text format), as the
    // server's own count has them.
    let metrics = String::from_utf8(http_get(SERVER_IP, "/metrics")).unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
    };
    for (name, c) in [
        ("landfall_dhcp_received_total", &srv.dhcp.received),
        ("landfall_dhcp_answered_total", &srv.dhcp.answered),
        ("landfall_dhcp_malformed_total", &srv.dhcp.malformed),
        ("landfall_dhcp_rate_limited_total", &srv.dhcp.rate_limited),
    ] {
        assert_eq!(value(name), DhcpStats::get(c) as f64, "{name}");
    }
    assert_eq!(value("landfall_dhcp_rate_limited_total"), 20.0);
    assert!(value("landfall_dhcp_answered_total") >= 6.0);
    assert_eq!(value("landfall_tftp_requests_total"), 0.0);
    srv.stop();
}

/// busybox udhcpc as the client; its script writes what it got.
fn udhcpc(dir: &Path, vendor: &str, arch_hex: &str) -> String {
    let script = dir.join("udhcpc.sh");
    let out = dir.join("udhcpc.env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip mask=$mask siaddr=$siaddr boot_file=$boot_file serverid=$serverid lease=$lease\" > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(&out);
    Cmd::new("busybox")
        .args([
            "udhcpc", "-f", "-q", "-n", "-t", "3", "-T", "1", "-i", CLIENT_IF,
        ])
        .args(["-V", vendor])
        .args(["-x", &format!("0x5d:{arch_hex}")])
        .arg("-s")
        .arg(&script)
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::read_to_string(&out).unwrap_or_default()
}

#[test]
fn full_dhcp_leases_from_the_pool_and_keeps_them_across_a_restart() {
    let pair = Pair::new("full");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "full",
        "[netboot.pool]\nstart = \"10.77.0.100\"\nend = \"10.77.0.101\"\nprefix_len = 24\nlease_time = \"10m\"\n",
    );
    let data = dir.path().join("data");
    let srv = serve_in(&pair.srv, &cfg, &data);
    Pair::enter(&pair.cli);

    // A real DHCP client, as x86-64 UEFI PXE firmware.
    let got = udhcpc(dir.path(), "PXEClient:Arch:00007:UNDI:003000", "0007");
    assert!(got.contains("ip=10.77.0.100 "), "{got}");
    assert!(
        got.contains("mask=24") || got.contains("mask=255.255.255.0"),
        "{got}"
    );
    assert!(got.contains(&format!("siaddr={SERVER_IP} ")), "{got}");
    assert!(got.contains("boot_file=snponly.efi "), "{got}");
    assert!(got.contains("lease=600"), "{got}");
    Cmd::new("ip")
        .args(["addr", "flush", "dev", CLIENT_IF])
        .run_blocking()
        .unwrap();
    srv.stop();

    // The lease is in the store: after a restart the same MAC gets the same
    // address, and another MAC the next one.
    let srv = serve_in(&pair.srv, &cfg, &data);
    let got = udhcpc(dir.path(), "PXEClient:Arch:00007:UNDI:003000", "0007");
    assert!(got.contains("ip=10.77.0.100 "), "{got}");
    let s = client_socket(68);
    let offers = ask(
        &s,
        &discover(mac(0x20), None, None, false),
        broadcast(),
        Duration::from_millis(600),
    );
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].yiaddr(), Ipv4Addr::new(10, 77, 0, 101));
    assert_eq!(boot_file(&offers[0]), "", "no boot file for a plain client");
    // The pool (two addresses) is exhausted for a third MAC.
    assert!(ask(
        &s,
        &discover(mac(0x21), None, None, false),
        broadcast(),
        Duration::from_millis(600)
    )
    .is_empty());
    assert_eq!(DhcpStats::get(&srv.dhcp.pool_exhausted), 1);
    srv.stop();
}

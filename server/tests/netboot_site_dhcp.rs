//! `landfall dhcp-config` for sites that keep their own DHCP server: Debian's
//! dnsmasq, Kea and ISC dhcpd accept the printed snippets, and a dnsmasq
//! and a Kea whose boot options come only from them answer PXE, HTTP Boot
//! and iPXE clients on a real layer-2 link in network namespaces
//! (issue 13, dhcp-config). As root.

mod netns;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use landfall::netboot::dhcp::discover;
use landfall_cmd::Cmd;
use netns::{boot_file, class, client_socket, Pair, SERVER_IF, SERVER_IP};

fn landfall_toml(dir: &Path) -> PathBuf {
    let p = dir.join("landfall.toml");
    std::fs::write(
        &p,
        format!(
            "[roles.demo]\n[netboot]\nserver_address = \"{SERVER_IP}\"\n\
             ipxe_bios = \"/usr/lib/ipxe/undionly.kpxe\"\n\
             ipxe_efi_x86_64 = \"/usr/lib/ipxe/snponly.efi\"\n"
        ),
    )
    .unwrap();
    p
}

/// What `landfall dhcp-config --for SITE` prints.
fn dhcp_config(site: &str, dir: &Path) -> String {
    Cmd::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["dhcp-config", "--for", site, "--config"])
        .arg(landfall_toml(dir))
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"))
        .stdout
}

#[test]
fn dnsmasq_kea_and_dhcpd_accept_the_printed_snippets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("dnsmasq.conf"), dhcp_config("dnsmasq", d)).unwrap();
    let o = Cmd::new("dnsmasq")
        .arg("--test")
        .arg("-C")
        .arg(d.join("dnsmasq.conf"))
        .output_blocking()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("syntax check OK"),
        "{text}"
    );

    std::fs::write(d.join("kea.conf"), dhcp_config("kea", d)).unwrap();
    Cmd::new("kea-dhcp4")
        .arg("-t")
        .arg(d.join("kea.conf"))
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"));

    std::fs::write(d.join("dhcpd.conf"), dhcp_config("isc", d)).unwrap();
    Cmd::new("dhcpd")
        .args(["-t", "-q", "-cf"])
        .arg(d.join("dhcpd.conf"))
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"));

    // A broken snippet is refused by the same checks (they can fail).
    std::fs::write(
        d.join("bad.conf"),
        "dhcp-boot=tag:x,,,,,,\ndhcp-match=nonsense\n",
    )
    .unwrap();
    assert!(Cmd::new("dnsmasq")
        .arg("--test")
        .arg("-C")
        .arg(d.join("bad.conf"))
        .run_blocking()
        .is_err());
}

/// A site DHCP server running in the server namespace; killed on drop.
struct Site(Child);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first OFFER for `m`, asking again each second for up to `wait`
/// (the site server may still be starting).
fn offer(s: &UdpSocket, m: &Message, wait: Duration) -> Option<Message> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    let end = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        s.send_to(&b, SocketAddr::from(([255, 255, 255, 255], 67)))
            .unwrap();
        let again = Instant::now() + Duration::from_secs(1);
        while Instant::now() < again {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let r = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
                if r.xid() == m.xid() && r.opts().msg_type() == Some(MessageType::Offer) {
                    return Some(r);
                }
            }
        }
    }
    None
}

/// The answers of a site server configured by `landfall dhcp-config`.
fn check_answers(s: &UdpSocket) {
    let wait = Duration::from_secs(15);
    let server: Ipv4Addr = SERVER_IP.parse().unwrap();
    let m = discover(
        [0x52, 0x54, 0, 0x14, 0, 1],
        Some("PXEClient:Arch:00007:UNDI:003000"),
        Some(7),
        false,
    );
    let o = offer(s, &m, wait).expect("an offer to UEFI PXE");
    assert_eq!(boot_file(&o), "snponly.efi");
    assert_eq!(o.siaddr(), server, "next-server");
    assert!(
        !o.yiaddr().is_unspecified(),
        "the site server gives the address"
    );

    let m = discover(
        [0x52, 0x54, 0, 0x14, 0, 2],
        Some("PXEClient:Arch:00000:UNDI:002001"),
        Some(0),
        false,
    );
    let o = offer(s, &m, wait).expect("an offer to BIOS PXE");
    assert_eq!(boot_file(&o), "undionly.kpxe");

    // iPXE (loaded by that PXE) asks again: the boot script, never iPXE again.
    let m = discover(
        [0x52, 0x54, 0, 0x14, 0, 3],
        Some("PXEClient:Arch:00007:UNDI:003010"),
        Some(7),
        true,
    );
    let o = offer(s, &m, wait).expect("an offer to iPXE");
    assert_eq!(
        boot_file(&o),
        format!("http://{SERVER_IP}:8080/boot.ipxe?mac=${{net0/mac}}&arch=${{buildarch}}&platform=${{platform}}")
    );

    let m = discover(
        [0x52, 0x54, 0, 0x14, 0, 4],
        Some("HTTPClient:Arch:00016:UNDI:003001"),
        Some(16),
        false,
    );
    let o = offer(s, &m, wait).expect("an offer to UEFI HTTP Boot");
    assert_eq!(
        boot_file(&o),
        format!("http://{SERVER_IP}:8080/netboot/snponly.efi")
    );
    assert_eq!(class(&o), "HTTPClient");
}

fn spawn_in(ns: &str, log: &Path, cmd: &[&str]) -> Site {
    // Kea's pid and lock files go beside the log, not under /run/kea.
    let run = log.parent().unwrap();
    let log = std::fs::File::create(log).unwrap();
    Site(
        Cmd::new("ip")
            .env("KEA_PIDFILE_DIR", run)
            .env("KEA_LOCKFILE_DIR", run)
            .args(["netns", "exec", ns])
            .args(cmd.iter().copied())
            .spawn(Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

#[test]
fn dnsmasq_configured_by_dhcp_config_boots_pxe_http_and_ipxe_clients() {
    let pair = Pair::new("dnsm");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The site's own part (interface, range) and landfall's snippet, as is.
    let conf = d.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=0\ninterface={SERVER_IF}\nbind-interfaces\ndhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h\n\
             dhcp-leasefile={}\n{}",
            d.join("leases").display(),
            dhcp_config("dnsmasq", d)
        ),
    )
    .unwrap();
    let log = d.join("dnsmasq.log");
    let conf_s = conf.display().to_string();
    let _site = spawn_in(
        &pair.srv,
        &log,
        &[
            "dnsmasq",
            "--no-daemon",
            "--user=root",
            "--log-dhcp",
            "--pid-file",
            "-C",
            &conf_s,
        ],
    );
    Pair::enter(&pair.cli);
    let s = client_socket(68);
    let r = std::panic::catch_unwind(|| check_answers(&s));
    if let Err(e) = r {
        eprintln!(
            "dnsmasq's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn kea_configured_by_dhcp_config_boots_pxe_http_and_ipxe_clients() {
    let pair = Pair::new("kea");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // landfall's snippet, its client-classes merged into the site's Dhcp4.
    let snippet: String = dhcp_config("kea", d)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut v: serde_json::Value = serde_json::from_str(&snippet).unwrap();
    let dhcp4 = v["Dhcp4"].as_object_mut().unwrap();
    dhcp4.insert(
        "interfaces-config".into(),
        serde_json::json!({ "interfaces": [SERVER_IF], "dhcp-socket-type": "raw" }),
    );
    dhcp4.insert(
        "lease-database".into(),
        serde_json::json!({ "type": "memfile", "persist": false }),
    );
    dhcp4.insert(
        "subnet4".into(),
        serde_json::json!([{ "id": 1, "subnet": "10.77.0.0/24",
            "pools": [{ "pool": "10.77.0.100 - 10.77.0.150" }] }]),
    );
    let conf = d.join("kea.conf");
    std::fs::write(&conf, v.to_string()).unwrap();
    let conf_s = conf.display().to_string();
    let log = d.join("kea.log");
    let _site = spawn_in(&pair.srv, &log, &["kea-dhcp4", "-c", &conf_s]);
    Pair::enter(&pair.cli);
    let s = client_socket(68);
    let r = std::panic::catch_unwind(|| check_answers(&s));
    if let Err(e) = r {
        eprintln!(
            "kea's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}

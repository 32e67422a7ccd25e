//! Network namespaces for the netboot tests: two namespaces (`srv`, `cli`)
//! joined by a veth pair, private addresses only inside them, deleted on
//! drop. Threads enter one with `setns`; sockets keep the namespace they
//! were made in.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use landfall_cmd::Cmd;

pub const SERVER_IP: &str = "10.77.0.1";
pub const SERVER_IF: &str = "lfsrv0";
pub const CLIENT_IF: &str = "lfcli0";

/// Two namespaces and a veth pair; deleted on drop.
pub struct Pair {
    pub srv: String,
    pub cli: String,
}

fn ip(args: &[&str]) {
    Cmd::new("ip")
        .args(args.iter().copied())
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"));
}

impl Pair {
    /// `tag` keeps the names of tests running at once apart.
    pub fn new(tag: &str) -> Self {
        let id = std::process::id();
        let p = Self {
            srv: format!("lfnb-{tag}-s{id}"),
            cli: format!("lfnb-{tag}-c{id}"),
        };
        ip(&["netns", "add", &p.srv]);
        ip(&["netns", "add", &p.cli]);
        ip(&[
            "link", "add", SERVER_IF, "netns", &p.srv, "type", "veth", "peer", "name", CLIENT_IF,
            "netns", &p.cli,
        ]);
        for (ns, ifc) in [(&p.srv, SERVER_IF), (&p.cli, CLIENT_IF)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", ifc, "up"]);
        }
        ip(&[
            "-n",
            &p.srv,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            SERVER_IF,
        ]);
        // Let the veth carrier come up.
        std::thread::sleep(Duration::from_millis(200));
        p
    }

    /// Give the client side an address (what the site's DHCP would have).
    pub fn client_address(&self, cidr: &str) {
        ip(&["-n", &self.cli, "addr", "add", cidr, "dev", CLIENT_IF]);
    }

    /// Move the calling thread into namespace `ns`.
    pub fn enter(ns: &str) {
        let f = File::open(format!("/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Cmd::new("ip")
                .args(["netns", "del", ns.as_str()])
                .run_blocking();
        }
    }
}

/// A DHCP client's socket on the client's interface, `0.0.0.0:port`,
/// broadcast allowed, reads time out after 100 ms.
pub fn client_socket(port: u16) -> UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.bind_device(Some(CLIENT_IF.as_bytes())).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// The boot file of an answer: option 67 (dnsmasq ends it with a NUL), else
/// the `file` field.
pub fn boot_file(m: &Message) -> String {
    let f = match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => String::from_utf8(b.clone()).unwrap(),
        _ => m
            .fname_str()
            .and_then(Result::ok)
            .unwrap_or_default()
            .to_owned(),
    };
    f.trim_end_matches('\0').to_owned()
}

/// Option 60 of an answer.
pub fn class(m: &Message) -> String {
    match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(b)) => String::from_utf8(b.clone()).unwrap(),
        _ => String::new(),
    }
}

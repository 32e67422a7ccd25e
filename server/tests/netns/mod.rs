//! Network namespaces for the netboot tests: two namespaces (`srv`, `cli`)
//! joined by a veth pair, private addresses only inside them, deleted on
//! drop. Threads enter one with `setns`; sockets keep the namespace they
//! were made in.

#![allow(dead_code)]

use std::fs::File;
use std::time::Duration;

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

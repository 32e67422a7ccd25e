//! Network boot on a real layer-2 network (issue 13, VM test 1): a network
//! namespace with a Linux bridge, the VM's NIC on a tap device (no QEMU user
//! network, no QEMU DHCP), OVMF with no option ROM on the NIC, so EDK2's own
//! PXE boots: it asks DHCP with `PXEClient:Arch:00007`, gets an address from
//! a dnsmasq that only hands out addresses (in its own namespace, on the
//! bridge) and the boot file from landfall's proxyDHCP, TFTPs `snponly.efi`
//! from landfall, and that iPXE asks again with user class `iPXE` and is
//! handed the `boot.ipxe` URL. Then the install runs as in install.rs: the
//! machine ends installed, every event acknowledged, the disk read back.
//!
//! landfall runs in-process inside the namespace (this test's thread enters
//! it with `setns`, so the server's sockets, the admin client and QEMU's tap
//! are all there). As root.

mod common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use landfall::{serve, ServeOptions};
use landfall_cmd::Cmd;
use landfall_vm_tests::{agent, image, DiskSpec, Firmware, Image, ImageSpec, Tap, Vm, VmSpec};

const DISK_BYTES: u64 = 2 << 30;
const SERVER_IP: &str = "10.77.0.1";
const BRIDGE: &str = "lfbr0";
const TAP: &str = "lftap0";

fn ip(args: &[&str]) {
    Cmd::new("ip")
        .args(args.iter().copied())
        .run_blocking()
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The boot network: `lan` (bridge, tap, landfall) and `site` (the site's
/// DHCP server on a veth into the bridge). Deleted on drop.
struct Network {
    lan: String,
    site: String,
}

impl Network {
    /// `tag` keeps the networks of tests running at once apart.
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let n = Network {
            lan: format!("lfl2-{tag}-l{id}"),
            site: format!("lfl2-{tag}-s{id}"),
        };
        ip(&["netns", "add", &n.lan]);
        ip(&["netns", "add", &n.site]);
        let lan = n.lan.as_str();
        ip(&["-n", lan, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            lan,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        ip(&[
            "-n",
            lan,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            BRIDGE,
        ]);
        ip(&["-n", lan, "link", "set", BRIDGE, "up"]);
        ip(&["-n", lan, "tuntap", "add", "dev", TAP, "mode", "tap"]);
        ip(&["-n", lan, "link", "set", TAP, "master", BRIDGE, "up"]);
        ip(&[
            "-n", lan, "link", "add", "lfsitep", "type", "veth", "peer", "name", "lfsite0",
            "netns", &n.site,
        ]);
        ip(&["-n", lan, "link", "set", "lfsitep", "master", BRIDGE, "up"]);
        ip(&["-n", &n.site, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &n.site,
            "addr",
            "add",
            "10.77.0.2/24",
            "dev",
            "lfsite0",
        ]);
        ip(&["-n", &n.site, "link", "set", "lfsite0", "up"]);
        n
    }

    /// dnsmasq as the site's DHCP: addresses only, no boot options, no DNS.
    fn site_dhcp(&self, dir: &std::path::Path) -> Site {
        let log = File::create(dir.join("dnsmasq.log")).unwrap();
        let leases = dir.join("dnsmasq.leases");
        Site(
            Cmd::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.site,
                    "dnsmasq",
                    "--no-daemon",
                    "--user=root",
                ])
                .args([
                    "--port=0",
                    "--interface=lfsite0",
                    "--bind-interfaces",
                    "--log-dhcp",
                ])
                .args(["--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h"])
                .arg(format!("--dhcp-leasefile={}", leases.display()))
                .spawn(Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Move the calling thread into the `lan` namespace.
    fn enter_lan(&self) {
        let f = File::open(format!("/run/netns/{}", self.lan)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in [&self.lan, &self.site] {
            let _ = Cmd::new("ip")
                .args(["netns", "del", ns.as_str()])
                .run_blocking();
        }
    }
}

struct Site(Child);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How one machine boots on the L2 network.
struct Scenario {
    tag: &'static str,
    firmware: Firmware,
    mac: &'static str,
    hostname: &'static str,
    /// No iPXE option ROM on the NIC: the firmware's own network boot.
    firmware_pxe: bool,
    /// landfall's `[netboot] dhcp`: "proxy" beside the site's dnsmasq, or
    /// "full" alone on the network.
    dhcp: &'static str,
    /// Extra QEMU arguments (OVMF's fw_cfg knobs).
    qemu_args: &'static [&'static str],
    /// On the serial console: the firmware's boot path.
    serial: &'static [&'static str],
    /// Files landfall's TFTP sent in full.
    tftp_transfers: u64,
}

#[test]
fn ovmf_native_pxe_with_proxy_dhcp_beside_a_site_dnsmasq_installs() {
    run(Scenario {
        tag: "pxe",
        firmware: Firmware::Uefi,
        mac: "52:54:00:13:01:01",
        hostname: "l2-pxe-01",
        firmware_pxe: true,
        dhcp: "proxy",
        qemu_args: &[],
        serial: &["Start PXE over IPv4", "iPXE"],
        tftp_transfers: 1,
    });
}

#[test]
fn ovmf_uefi_http_boot_with_full_dhcp_installs() {
    run(Scenario {
        tag: "http",
        firmware: Firmware::Uefi,
        mac: "52:54:00:13:02:01",
        hostname: "l2-http-01",
        firmware_pxe: true,
        dhcp: "full",
        // OVMF's fw_cfg switches: no PXE boot options, so the NIC's HTTP Boot runs.
        qemu_args: &[
            "-fw_cfg",
            "name=opt/org.tianocore/IPv4PXESupport,string=n",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6PXESupport,string=n",
        ],
        serial: &["Start HTTP Boot over IPv4", "iPXE"],
        tftp_transfers: 0,
    });
}

#[test]
fn seabios_with_the_ipxe_rom_and_proxy_dhcp_installs() {
    run(Scenario {
        tag: "bios",
        firmware: Firmware::Bios,
        mac: "52:54:00:13:03:01",
        hostname: "l2-bios-01",
        firmware_pxe: false,
        dhcp: "proxy",
        qemu_args: &[],
        serial: &["iPXE"],
        tftp_transfers: 0,
    });
}

fn run(sc: Scenario) {
    let Scenario { mac, hostname, .. } = sc;
    let t0 = Instant::now();
    let agent = agent::static_agent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let mut spec = ImageSpec::new(&agent, &artifacts).with_nixos_install_double();
    spec.host_programs = image::DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
    Image::build(spec).unwrap();

    let net = Network::new(sc.tag);
    let _site = (sc.dhcp == "proxy").then(|| net.site_dhcp(dir.path()));
    // From here on this thread (the server's runtime, the admin client and
    // QEMU with its tap) lives on the boot network.
    net.enter_lan();
    let conf = dir.path().join("landfall.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff"
layouts = "{layouts}"

[enroll]
unknown = "hold"

[roles.vmtest]
layout = "simple-efi"
flake = "git+https://git.example.test/fleet#{{hostname}}"

[[machines]]
mac = "{mac}"
hostname = "{hostname}"
role = "vmtest"

[netboot]
dhcp = "{dhcp}"
interface = "{BRIDGE}"
server_address = "{SERVER_IP}"
ipxe_bios = "/usr/lib/ipxe/undionly.kpxe"
ipxe_efi_x86_64 = "/usr/lib/ipxe/snponly.efi"

[netboot.pool]
start = "10.77.0.160"
end = "10.77.0.170"
prefix_len = 24
"#,
            dhcp = sc.dhcp,
            console = image::CONSOLE_ARGS,
            layouts = agent::workspace_root().join("disko-layouts").display(),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(serve(ServeOptions {
            config: Some(conf),
            data: data.clone(),
            listen: format!("{SERVER_IP}:8080").parse().unwrap(),
            artifacts: Some(artifacts),
        }))
        .unwrap();
    let admin = common::Admin::new(&format!("http://{SERVER_IP}:8080"), &data);

    let vm_dir = dir.path().join("vm");
    let disk = DiskSpec {
        path: vm_dir.join("disk0.raw"),
        serial: "L2DISK0".into(),
        size_bytes: DISK_BYTES,
    };
    let mut spec = VmSpec::new(sc.firmware, mac, "", &vm_dir);
    spec.tap = Some(Tap {
        ifname: TAP.into(),
        firmware_pxe: sc.firmware_pxe,
    });
    spec.extra_args = sc.qemu_args.iter().map(|a| a.to_string()).collect();
    spec.disks.push(disk.clone());
    let mut vm = Vm::start(spec).unwrap();
    let status = vm
        .wait_exit(Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = vm.serial_log();
    let site_log = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(
        status.success(),
        "QEMU exited with {status}\n{log}\n--- dnsmasq:\n{site_log}"
    );
    // The firmware's boot path (EDK2's own PXE or HTTP Boot, or the iPXE ROM).
    for want in sc.serial {
        assert!(log.contains(want), "{want:?} not on the console:\n{log}");
    }

    let m = admin.machine(mac);
    assert_eq!(
        m["state"], "installed",
        "{m:#}\n{log}\n--- dnsmasq:\n{site_log}"
    );
    assert_eq!(m["hostname"], hostname);
    // The address came from the site's dnsmasq (proxy) or landfall's pool (full).
    let inv = &m["inventory"];
    let nic = inv["nics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mac"] == mac)
        .unwrap_or_else(|| panic!("no NIC with {mac}: {inv:#}"));
    let addrs: Vec<&str> = nic["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    if sc.dhcp == "proxy" {
        assert!(addrs.iter().any(|a| a.starts_with("10.77.0.1")), "{nic:#}");
        assert!(
            site_log
                .lines()
                .any(|l| l.contains("DHCPACK(lfsite0)") && l.contains(mac)),
            "{site_log}"
        );
    } else {
        assert!(
            addrs.iter().any(|a| a.starts_with("10.77.0.160")),
            "{nic:#}"
        );
    }
    let attempts = m["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    let events = attempts[0]["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        attempts[0]["acked_seq"].as_u64(),
        Some(seqs.len() as u64),
        "every event acked"
    );
    let kinds = common::step_kinds(events);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("done/finished"),
        "{kinds:?}"
    );

    // What went over the wire from landfall: snponly.efi by TFTP, the answers by proxyDHCP.
    let nb = server.netboot().unwrap();
    let tftp = nb.tftp.as_ref().unwrap().stats();
    assert_eq!(
        landfall::netboot::tftp::TftpStats::get(&tftp.completed),
        sc.tftp_transfers
    );
    let dhcp = nb.dhcp.as_ref().unwrap().stats();
    assert!(landfall::netboot::dhcp::DhcpStats::get(&dhcp.answered) >= 2);

    // The target, read back from the disk image.
    let parts = common::inspect(&disk.path);
    let root_part = parts
        .iter()
        .find(|p| p.name == "disk-main-root")
        .expect("a root partition");
    let root = common::Ext4::partition(&disk.path, root_part);
    assert_eq!(
        root.state(),
        "clean",
        "the finish step unmounted the target"
    );
    assert!(root.mode("/etc/nixos/flake.nix").is_some());

    // The installed machine now boots from its disk.
    let next = admin.boot_script(mac);
    assert!(next.lines().any(|l| l.trim() == "exit"), "{next}");
    eprintln!("netboot_l2 {}: installed in {:.0?}", sc.tag, t0.elapsed());
    rt.block_on(server.shutdown()).unwrap();
}

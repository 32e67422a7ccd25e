//! Network boot on a real layer-2 network (issue 13, VM tests 1-4): a
//! network namespace with a Linux bridge, the VM's NIC on a tap device (no
//! QEMU user network, no QEMU DHCP), landfall in-process on the bridge, and
//! the site's DHCP server (dnsmasq or Kea) in a second namespace on a veth
//! into the bridge. Each machine ends installed as in install.rs: every event
//! acknowledged, the disk read back, the next boot `exit`.
//!
//! - OVMF with no option ROM on the NIC, so EDK2's own PXE boots: it asks with
//!   `PXEClient:Arch:00007`, gets its address from a dnsmasq that only hands
//!   out addresses and the boot file from landfall's proxyDHCP (a BINL answer
//!   on 4011), TFTPs `snponly.efi` from landfall, and that iPXE asks again
//!   with user class `iPXE` and is handed the `boot.ipxe` URL;
//! - OVMF's UEFI HTTP Boot (PXE switched off by fw_cfg) against landfall's
//!   full DHCP: `HTTPClient:Arch:00016`, the http URL of the EFI iPXE;
//! - SeaBIOS with QEMU's iPXE ROM, landfall's proxyDHCP beside dnsmasq;
//! - OVMF's PXE with landfall's DHCP off and the site's dnsmasq, then Kea,
//!   configured only by `landfall dhcp-config` (plus their own range).
//!
//! landfall runs inside the namespace (this test's thread enters it with
//! `setns`, so the server's sockets, the admin client and QEMU's tap are all
//! there). As root; with KVM about a minute a machine.

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

    /// dnsmasq as the site's DHCP: addresses, and the boot options only if
    /// `snippet` (`landfall dhcp-config --for dnsmasq`) is given; no DNS.
    fn site_dnsmasq(&self, dir: &std::path::Path, snippet: &str) -> Site {
        let conf = dir.join("dnsmasq.conf");
        std::fs::write(
            &conf,
            format!(
                "port=0\ninterface=lfsite0\nbind-interfaces\nlog-dhcp\n\
                 dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h\n\
                 dhcp-leasefile={}\n{snippet}",
                dir.join("dnsmasq.leases").display()
            ),
        )
        .unwrap();
        let conf = conf.display().to_string();
        self.spawn_site(dir, &["dnsmasq", "--no-daemon", "--user=root", "-C", &conf])
    }

    /// Kea as the site's DHCP: its subnet and pool, and `landfall dhcp-config
    /// --for kea`'s client-classes merged in.
    fn site_kea(&self, dir: &std::path::Path, snippet: &str) -> Site {
        let json: String = snippet
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let d = v["Dhcp4"].as_object_mut().unwrap();
        d.insert(
            "interfaces-config".into(),
            serde_json::json!({ "interfaces": ["lfsite0"], "dhcp-socket-type": "raw" }),
        );
        d.insert(
            "lease-database".into(),
            serde_json::json!({ "type": "memfile", "persist": false }),
        );
        d.insert(
            "subnet4".into(),
            serde_json::json!([{ "id": 1, "subnet": "10.77.0.0/24",
                "pools": [{ "pool": "10.77.0.100 - 10.77.0.150" }] }]),
        );
        let conf = dir.join("kea.conf");
        std::fs::write(&conf, v.to_string()).unwrap();
        let conf = conf.display().to_string();
        self.spawn_site(dir, &["kea-dhcp4", "-c", &conf])
    }

    /// Run `cmd` in the site namespace, its output in `dir/site.log`.
    fn spawn_site(&self, dir: &std::path::Path, cmd: &[&str]) -> Site {
        let log = File::create(dir.join("site.log")).unwrap();
        Site(
            Cmd::new("ip")
                // Kea's pid and lock files, not under /run/kea.
                .env("KEA_PIDFILE_DIR", dir)
                .env("KEA_LOCKFILE_DIR", dir)
                .args(["netns", "exec", &self.site])
                .args(cmd.iter().copied())
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

/// The site's own DHCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SiteDhcp {
    /// None: landfall's full DHCP is alone on the network.
    None,
    /// dnsmasq handing out addresses only (landfall's proxyDHCP does the boot).
    Addresses,
    /// dnsmasq configured by `landfall dhcp-config --for dnsmasq` (landfall's DHCP off).
    DnsmasqByDhcpConfig,
    /// Kea configured by `landfall dhcp-config --for kea` (landfall's DHCP off).
    KeaByDhcpConfig,
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
    /// The site's DHCP server beside landfall.
    site: SiteDhcp,
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
        site: SiteDhcp::Addresses,
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
        site: SiteDhcp::None,
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
        site: SiteDhcp::Addresses,
        qemu_args: &[],
        serial: &["iPXE"],
        tftp_transfers: 0,
    });
}

#[test]
fn ovmf_native_pxe_with_a_dnsmasq_configured_by_dhcp_config_installs() {
    run(Scenario {
        tag: "dnsm",
        firmware: Firmware::Uefi,
        mac: "52:54:00:13:04:01",
        hostname: "l2-dnsmasq-01",
        firmware_pxe: true,
        dhcp: "off",
        site: SiteDhcp::DnsmasqByDhcpConfig,
        qemu_args: &[],
        serial: &["Start PXE over IPv4", "iPXE"],
        tftp_transfers: 1,
    });
}

#[test]
fn ovmf_native_pxe_with_a_kea_configured_by_dhcp_config_installs() {
    run(Scenario {
        tag: "kea",
        firmware: Firmware::Uefi,
        mac: "52:54:00:13:05:01",
        hostname: "l2-kea-01",
        firmware_pxe: true,
        dhcp: "off",
        site: SiteDhcp::KeaByDhcpConfig,
        qemu_args: &[],
        serial: &["Start PXE over IPv4", "iPXE"],
        tftp_transfers: 1,
    });
}

/// What `landfall dhcp-config --for SITE --config CONF` prints (its library
/// call: the settings' `[netboot]`, the boot URL on port 8080).
fn dhcp_config(site: landfall::netboot::config::SiteDhcp, conf: &std::path::Path) -> String {
    let s = landfall::load_settings(Some(conf)).unwrap();
    let files = landfall::netboot::IpxeFiles::load(&s.netboot).unwrap();
    let ep = landfall::netboot::Endpoints::new(
        s.public_url.as_deref(),
        s.netboot.server_address.unwrap(),
        8080,
    );
    landfall::netboot::config::render(site, &files, &ep).unwrap()
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
    // From here on this thread (the server's runtime, the admin client and
    // QEMU with its tap) lives on the boot network.
    net.enter_lan();
    let conf = dir.path().join("landfall.toml");
    // These tests are about the firmware's way to the boot script (DHCP,
    // TFTP, HTTP Boot) on a real L2 network; the agent's API stays plain HTTP
    // here (insecure_http), HTTPS with a pinned CA is the install tests' part.
    std::fs::write(
        &conf,
        format!(
            r#"
[server]
kernel_args = "{console} landfall.console=lines landfall.final=poweroff landfall.insecure_http=1"
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
tftp = true
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
    use landfall::netboot::config::SiteDhcp as For;
    let _site = match sc.site {
        SiteDhcp::None => None,
        SiteDhcp::Addresses => Some(net.site_dnsmasq(dir.path(), "")),
        SiteDhcp::DnsmasqByDhcpConfig => {
            Some(net.site_dnsmasq(dir.path(), &dhcp_config(For::Dnsmasq, &conf)))
        }
        SiteDhcp::KeaByDhcpConfig => Some(net.site_kea(dir.path(), &dhcp_config(For::Kea, &conf))),
    };
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
            database: None,
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
    let site_log = std::fs::read_to_string(dir.path().join("site.log")).unwrap_or_default();
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
    if sc.site != SiteDhcp::None {
        assert!(addrs.iter().any(|a| a.starts_with("10.77.0.1")), "{nic:#}");
    }
    if matches!(sc.site, SiteDhcp::Addresses | SiteDhcp::DnsmasqByDhcpConfig) {
        assert!(
            site_log
                .lines()
                .any(|l| l.contains("DHCPACK(lfsite0)") && l.contains(mac)),
            "{site_log}"
        );
    }
    if sc.site == SiteDhcp::None {
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
    if let Some(d) = &nb.dhcp {
        assert!(landfall::netboot::dhcp::DhcpStats::get(&d.stats().answered) >= 2);
    } else {
        assert_eq!(sc.dhcp, "off");
    }

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

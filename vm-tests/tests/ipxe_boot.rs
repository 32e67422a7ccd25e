//! Boots the test image through the real iPXE ROM, SeaBIOS and OVMF, against a tiny HTTP
//! server, and checks what the in-image "agent" saw: the network, the kernel command line and
//! the disk serial. Needs root-readable /boot/vmlinuz-*, QEMU, ipxe-qemu, ovmf, busybox-static.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Result};
use landfall_vm_tests::image::{AGENT_EXITED, CONSOLE_ARGS, NETWORK_UP};
use landfall_vm_tests::qemu::detect_accel;
use landfall_vm_tests::testsrv::Request;
use landfall_vm_tests::{DiskSpec, Firmware, Image, ImageSpec, TestServer, Vm, VmSpec};

const DISK_SERIAL: &str = "LF-TEST-DISK0";
/// Generous for TCG on a busy 2-core machine; a KVM boot takes seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// The stand-in agent, installed as /bin/landfall-agent and run as `landfall-agent run`.
const AGENT: &str = r#"#!/bin/sh
for w in $(cat /proc/cmdline); do
    case "$w" in
    landfall.server=*) server=${w#landfall.server=} ;;
    landfall.token=*) token=${w#landfall.token=} ;;
    esac
done
serial=$(cat /sys/block/vda/serial)
echo "test-agent: argv=$* server=$server token=$token serial=$serial"
wget -q -O /tmp/ack "$server/report?token=$token&serial=$serial&argv=$*" || exit 3
grep -q '^ok$' /tmp/ack || exit 4
exit 0
"#;

#[test]
fn bios_boot_through_ipxe() -> Result<()> {
    boot(Firmware::Bios, "52:54:00:1a:00:01")
}

#[test]
fn uefi_boot_through_ipxe() -> Result<()> {
    boot(Firmware::Uefi, "52:54:00:1a:00:02")
}

fn boot(firmware: Firmware, mac: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let artifacts = tmp.path().join("artifacts");
    let agent = tmp.path().join("agent.sh");
    std::fs::write(&agent, AGENT)?;
    let t = Instant::now();
    let image = Image::build(ImageSpec::new(&agent, &artifacts))?;
    println!(
        "{firmware:?}: image built in {:.1?}: kernel {}, {} modules, initrd {} KiB; notes: {:?}",
        t.elapsed(),
        image.kernel_version,
        image.modules.len(),
        std::fs::metadata(&image.initrd)?.len() / 1024,
        image.notes
    );

    let srv = TestServer::start(&artifacts)?;
    let base = format!("http://10.0.2.2:{}", srv.port());
    let token = format!(
        "tok{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos()
    );
    // The DHCP bootfile cannot carry the MAC, so a first-stage script chains with it (as the
    // real server's boot.ipxe does).
    srv.route_text(
        "/boot.ipxe",
        format!("#!ipxe\nchain {base}/boot2.ipxe?mac=${{net0/mac}}\n"),
    );
    // Old (2019) iPXE under UEFI needs initrd=NAME on the kernel line for the EFI stub to find
    // the initrd; harmless under BIOS.
    srv.route_text(
        "/boot2.ipxe",
        format!(
            "#!ipxe\necho landfall-test: stage 2\n\
             kernel {base}/vmlinuz initrd=initrd {CONSOLE_ARGS} landfall.server={base} landfall.token={token}\n\
             initrd {base}/initrd\nboot\n"
        ),
    );
    srv.route_text("/report", "ok\n");

    let mut spec = VmSpec::new(
        firmware,
        mac,
        &format!("{base}/boot.ipxe"),
        tmp.path().join("vm"),
    );
    spec.disks.push(DiskSpec {
        path: tmp.path().join("disk0.raw"),
        serial: DISK_SERIAL.into(),
        size_bytes: 64 << 20,
    });
    let mut vm = Vm::start(spec)?;
    println!(
        "{firmware:?}: accelerator {:?} ({})",
        vm.accel(),
        detect_accel().1
    );
    let result = watch(&mut vm, &srv, firmware, mac, &token);
    // Keep the console for reading after the run (the tempdir goes away).
    let keep = std::env::temp_dir().join(format!("landfall-vm-{firmware:?}-serial.log"));
    let _ = std::fs::write(&keep, vm.serial_log());
    println!("{firmware:?}: serial log kept in {}", keep.display());
    result
}

fn watch(vm: &mut Vm, srv: &TestServer, firmware: Firmware, mac: &str, token: &str) -> Result<()> {
    let t0 = vm.started();
    let since = |i: Instant| i.duration_since(t0);
    let ipxe = vm.wait_for_serial("iPXE", BOOT_TIMEOUT)?;
    let script = wait_request(vm, srv, "/boot2.ipxe")?;
    ensure!(
        script.query_param("mac").as_deref() == Some(mac),
        "boot2.ipxe asked with {:?}",
        script.query
    );
    let kernel = wait_request(vm, srv, "/vmlinuz")?;
    let initrd = wait_request(vm, srv, "/initrd")?;
    let net = vm.wait_for_serial(NETWORK_UP, BOOT_TIMEOUT)?;
    let report = wait_request(vm, srv, "/report")?;
    ensure!(
        report.query_param("token").as_deref() == Some(token),
        "report: {:?}",
        report.query
    );
    ensure!(
        report.query_param("serial").as_deref() == Some(DISK_SERIAL),
        "report: {:?}",
        report.query
    );
    ensure!(
        report.query_param("argv").as_deref() == Some("run"),
        "report: {:?}",
        report.query
    );
    let status = vm.wait_exit(BOOT_TIMEOUT)?;
    let done = vm.started().elapsed();
    let log = vm.serial_log();
    ensure!(
        log.contains(&format!("{AGENT_EXITED} 0")),
        "{}",
        vm.failure("agent did not exit 0")
    );
    ensure!(
        status.success(),
        "{}",
        vm.failure(&format!("QEMU exited with {status}"))
    );
    println!(
        "{firmware:?} timings since QEMU start: iPXE banner {ipxe:.1?}, boot script {:.1?}, \
         kernel fetched {:.1?}, initrd fetched {:.1?} ({} KiB in {:.1?}), network up {net:.1?}, \
         agent report {:.1?}, powered off {done:.1?}",
        since(script.received),
        since(kernel.completed),
        since(initrd.completed),
        initrd.bytes_sent / 1024,
        initrd.completed - initrd.received,
        since(report.received),
    );
    Ok(())
}

/// Waits for a request on `path`, failing early (with the serial log) if the VM exits.
fn wait_request(vm: &mut Vm, srv: &TestServer, path: &str) -> Result<Request> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(r) = srv.requests().into_iter().find(|r| r.path == path) {
            ensure!(r.status == 200, "{path}: HTTP {}", r.status);
            return Ok(r);
        }
        if let Some(status) = vm.try_wait()? {
            bail!(vm.failure(&format!("QEMU exited ({status}) before requesting {path}")));
        }
        if Instant::now() > deadline {
            bail!(vm.failure(&format!("no request for {path} within {BOOT_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

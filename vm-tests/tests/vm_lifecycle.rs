//! A Vm never outlives its owner: Drop kills QEMU, and so does the end of the thread that
//! started it even when Drop never runs. Errors carry the QEMU command line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use landfall_vm_tests::{Firmware, Vm, VmSpec};

/// Nothing listens on port 9: iPXE fails and SeaBIOS stays up with "No bootable device".
fn idle_vm(dir: &Path, mac: &str) -> Result<Vm> {
    Vm::start(VmSpec::new(
        Firmware::Bios,
        mac,
        "http://10.0.2.2:9/none.ipxe",
        dir,
    ))
}

/// Running means not gone and not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn drop_kills_qemu_and_errors_name_the_command() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut vm = idle_vm(tmp.path(), "52:54:00:1a:00:10")?;
    vm.wait_for_serial("iPXE", Duration::from_secs(120))?;
    let err = format!(
        "{:#}",
        vm.wait_exit(Duration::from_millis(300)).unwrap_err()
    );
    ensure!(
        err.contains("still running") && err.contains("bootfile=http://10.0.2.2:9/none.ipxe"),
        "{err}"
    );
    let pid = vm.pid();
    ensure!(running(pid));
    drop(vm);
    ensure!(wait_gone(pid), "QEMU {pid} survived Drop");
    Ok(())
}

#[test]
fn qemu_dies_with_its_thread_even_without_drop() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let pid = std::thread::spawn(move || -> Result<u32> {
        let mut vm = idle_vm(&dir, "52:54:00:1a:00:11")?;
        vm.wait_for_serial("iPXE", Duration::from_secs(120))?;
        let pid = vm.pid();
        std::mem::forget(vm); // as if the test process were killed
        Ok(pid)
    })
    .join()
    .unwrap()?;
    ensure!(
        wait_gone(pid),
        "QEMU {pid} outlived the thread that started it"
    );
    Ok(())
}

/// On machines whose /dev/kvm is broken (guests hang), detection must answer, not hang.
#[test]
fn kvm_probe_answers_in_bounded_time() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm; nothing to probe");
        return;
    }
    let t = Instant::now();
    let result = landfall_vm_tests::qemu::probe_kvm_boot().map_err(|e| format!("{e:#}"));
    let summary = match &result {
        Ok(d) => format!("KVM boots (kernel console after {d:.1?})"),
        Err(e) => format!("KVM unusable: {}", e.lines().next().unwrap_or("")),
    };
    println!("KVM probe after {:.1?}: {summary}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(30));
}

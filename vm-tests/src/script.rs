//! A shell script in the test image in place of the agent's service, booted directly
//! (`-kernel/-initrd`, no iPXE, no server) with the given disks: for what runs the agent's
//! CLI (`landfall-agent apply`) and the raw tools side by side in one VM, as the storage
//! safety test and `./x bench disks` do. The script's output is the serial log; /init
//! prints its exit status ([`crate::image::AGENT_EXITED`]) and powers off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::image::{self, Image, ImageSpec};
use crate::qemu::{Accel, DiskSpec, Firmware, KernelBoot, Vm, VmSpec};

/// Where the script is in the image.
pub const SCRIPT_PATH: &str = "/bin/landfall-test-script";

/// What one run left behind.
pub struct ScriptRun {
    /// The serial console: the kernel's and /init's lines and the script's output.
    pub log: String,
    /// The script's exit status as /init printed it.
    pub status: i32,
    pub accel: Accel,
    /// QEMU start to power-off.
    pub took: Duration,
    pub image: Image,
}

impl ScriptRun {
    /// The script's lines that start with `prefix`, without it.
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.log
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .collect()
    }
}

/// Builds `spec` (its agent stays at [`image::AGENT_PATH`]) with `script` as the command
/// /init runs, boots it with `disks` (created sparse under `work_dir` when missing) and
/// waits up to `timeout` for it to power off.
pub fn run(
    mut spec: ImageSpec,
    script: &str,
    disks: &[(&str, u64)],
    work_dir: &Path,
    timeout: Duration,
) -> Result<ScriptRun> {
    spec.extra_data.push((
        SCRIPT_PATH.trim_start_matches('/').to_owned(),
        script.as_bytes().to_vec(),
        0o755,
    ));
    spec.agent_command = format!("sh {SCRIPT_PATH}");
    let image = Image::build(spec)?;
    let mut vm_spec = VmSpec::new(Firmware::Bios, "52:54:00:4c:53:01", "none", work_dir);
    for (i, (serial, size)) in disks.iter().enumerate() {
        vm_spec.disks.push(DiskSpec {
            path: disk_path(work_dir, i),
            serial: serial.to_string(),
            size_bytes: *size,
        });
    }
    vm_spec.kernel_boot = Some(KernelBoot {
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        append: image::CONSOLE_ARGS.to_owned(),
    });
    let mut vm = Vm::start(vm_spec)?;
    let exit = vm.wait_exit(timeout)?;
    let log = vm.serial_log();
    ensure!(
        exit.success(),
        "{}",
        vm.failure(&format!("QEMU exited with {exit}"))
    );
    let status = log
        .lines()
        .find_map(|l| l.split(image::AGENT_EXITED).nth(1))
        .and_then(|s| s.trim().parse().ok());
    let Some(status) = status else {
        return Err(vm.failure("the script did not finish"));
    };
    Ok(ScriptRun {
        log,
        status,
        accel: vm.accel(),
        took: vm.started().elapsed(),
        image,
    })
}

/// The file behind the VM's disk `i` (/dev/vda is 0).
pub fn disk_path(work_dir: &Path, i: usize) -> PathBuf {
    work_dir.join(format!("disk{i}.raw"))
}

//! Boots a QEMU x86_64 machine through the iPXE ROM of its virtio NIC (from Debian's
//! ipxe-qemu, which QEMU finds on its firmware path) with a headless serial console.
//!
//! Lifetime: a [`Vm`] kills its QEMU when dropped, and QEMU is started under
//! `setpriv --pdeathsig KILL` so it also dies when the thread that started it ends (a killed
//! test process leaves no QEMU behind). Keep a `Vm` on the thread that started it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, the QEMU default; iPXE runs as a legacy option ROM.
    Bios,
    /// OVMF (Debian package `ovmf`); iPXE runs as an EFI driver from the same ROM.
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Created as a sparse raw file of `size_bytes` when missing; an existing file is used as
    /// is (qcow2 is recognised by its magic, anything else is raw).
    pub path: PathBuf,
    /// What the guest sees in /sys/block/vdX/serial (at most 20 bytes for virtio-blk).
    pub serial: String,
    pub size_bytes: u64,
}

/// QEMU's direct kernel boot (`-kernel/-initrd/-append`): firmware runs, then the kernel
/// starts without iPXE or a boot loader (the first-boot stand-in of the VM tests).
#[derive(Debug, Clone)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub firmware: Firmware,
    /// e.g. "52:54:00:12:34:56"
    pub mac: String,
    /// Handed out by QEMU's DHCP server; iPXE chains it. The host is 10.0.2.2 from the guest.
    pub bootfile_url: String,
    pub disks: Vec<DiskSpec>,
    pub memory_mib: u32,
    pub smp: u32,
    /// The serial console (kernel console=ttyS0, and iPXE/firmware output).
    pub serial_log: PathBuf,
    /// Per-VM files: the UEFI vars copy, QEMU's stderr.
    pub work_dir: PathBuf,
    /// `None`: [`detect_accel`].
    pub accel: Option<Accel>,
    /// `Some`: boot this kernel directly; the NIC then is no boot device and `bootfile_url`
    /// is not used.
    pub kernel_boot: Option<KernelBoot>,
    /// Appended to the QEMU command line.
    pub extra_args: Vec<String>,
    /// `Some`: the NIC is on this tap device (a real L2 network: bridge,
    /// DHCP servers) instead of QEMU's user network; `bootfile_url` is then
    /// not used (the network's DHCP says what to boot).
    pub tap: Option<Tap>,
}

/// A NIC on a tap device (`-netdev tap,ifname=..,script=no,downscript=no`).
#[derive(Debug, Clone)]
pub struct Tap {
    pub ifname: String,
    /// No option ROM (`romfile=`): the firmware's own network stack boots
    /// (OVMF: EDK2's PXE and HTTP Boot) instead of QEMU's iPXE ROM.
    pub firmware_pxe: bool,
}

impl VmSpec {
    pub fn new(
        firmware: Firmware,
        mac: &str,
        bootfile_url: &str,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        let work_dir = work_dir.into();
        VmSpec {
            firmware,
            mac: mac.to_string(),
            bootfile_url: bootfile_url.to_string(),
            disks: Vec::new(),
            memory_mib: 1024,
            smp: 1,
            serial_log: work_dir.join("serial.log"),
            work_dir,
            accel: None,
            kernel_boot: None,
            extra_args: Vec::new(),
            tap: None,
        }
    }
}

pub struct Vm {
    child: Child,
    status: Option<ExitStatus>,
    command_line: String,
    accel: Accel,
    serial_log: PathBuf,
    stderr_log: PathBuf,
    started: Instant,
}

impl Vm {
    pub fn start(spec: VmSpec) -> Result<Vm> {
        let VmSpec {
            firmware,
            mac,
            bootfile_url,
            disks,
            memory_mib,
            smp,
            serial_log,
            work_dir,
            accel,
            kernel_boot,
            extra_args,
            tap,
        } = spec;
        fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        let accel = accel.unwrap_or_else(|| detect_accel().0);

        let mut args: Vec<String> = Vec::new();
        let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        push(&[
            "-name",
            "landfall-vm-test",
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
        ]);
        push(&["-accel", accel.as_str()]);
        if accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-m", &memory_mib.to_string(), "-smp", &smp.to_string()]);
        push(&["-serial", &format!("file:{}", serial_log.display())]);
        match firmware {
            Firmware::Bios => {
                // SeaBIOS "sercon": with no VGA, mirror the BIOS/option ROM text console (and so
                // iPXE's messages) on the first serial port, which is the serial log.
                let sercon = work_dir.join("sercon-port");
                fs::write(&sercon, 0x3f8u16.to_le_bytes())
                    .context("writing the sercon fw_cfg file")?;
                push(&["-machine", "pc"]);
                push(&[
                    "-fw_cfg",
                    &format!("name=etc/sercon-port,file={}", sercon.display()),
                ]);
            }
            Firmware::Uefi => {
                // OVMF's console is the serial port already. Code read-only; the vars (NVRAM)
                // are per VM and kept in work_dir, so a second start with the same work_dir
                // (the installed machine's first boot) sees the boot entries the install wrote.
                let (code, vars_template) = ovmf_files()?;
                let vars = work_dir.join("OVMF_VARS.fd");
                if !vars.exists() {
                    fs::copy(&vars_template, &vars)
                        .with_context(|| format!("copying {}", vars_template.display()))?;
                }
                push(&["-machine", "q35"]);
                push(&[
                    "-drive",
                    &format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        code.display()
                    ),
                ]);
                push(&[
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
            }
        }
        // The NIC first in the firmware boot order (fw_cfg "bootorder", honoured by SeaBIOS and
        // OVMF), then the disks in order: OVMF drops boot options for devices that have no
        // bootindex when any device has one, and an installed disk must stay bootable after
        // iPXE `exit`s. QEMU loads efi-virtio.rom (legacy + EFI iPXE) as the NIC's option ROM.
        // Entropy for the guest: TCG's CPU has no RDRAND, so getrandom() in the
        // guest (GPT and filesystem UUIDs) would block until the pool is seeded.
        push(&["-device", "virtio-rng-pci"]);
        match (&kernel_boot, &tap) {
            (None, Some(t)) => {
                push(&[
                    "-netdev",
                    &format!("tap,id=n0,ifname={},script=no,downscript=no", t.ifname),
                ]);
                let rom = if t.firmware_pxe { ",romfile=" } else { "" };
                push(&[
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1{rom}"),
                ]);
            }
            (None, None) => {
                push(&["-netdev", &format!("user,id=n0,bootfile={bootfile_url}")]);
                push(&[
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
                ]);
            }
            (Some(k), _) => {
                push(&["-netdev", "user,id=n0"]);
                push(&["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
                push(&["-kernel", &k.kernel.display().to_string()]);
                push(&["-initrd", &k.initrd.display().to_string()]);
                push(&["-append", &k.append]);
            }
        }
        for (i, d) in disks.iter().enumerate() {
            let format = prepare_disk(d)?;
            push(&[
                "-drive",
                &format!("file={},if=none,id=d{i},format={format}", d.path.display()),
            ]);
            push(&[
                "-device",
                &format!(
                    "virtio-blk-pci,drive=d{i},serial={},bootindex={}",
                    d.serial,
                    i + 2
                ),
            ]);
        }
        args.extend(extra_args);

        let stderr_log = work_dir.join("qemu.stderr");
        let stderr = fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let c = match which("setpriv") {
            Some(setpriv) => cmd::Cmd::new(setpriv).args(["--pdeathsig", "KILL", "--", QEMU]),
            None => cmd::Cmd::new(QEMU),
        }
        .args(&args);
        let command_line = c.display();
        let started = Instant::now();
        let child = c
            .spawn(Stdio::null(), stderr)
            .context("starting QEMU (Debian: qemu-system-x86)")?;
        Ok(Vm {
            child,
            status: None,
            command_line,
            accel,
            serial_log,
            stderr_log,
            started,
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The serial console so far (lossy UTF-8; contains the firmware's escape sequences).
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial log contains `pattern`; returns the time since the VM started.
    /// Fails when QEMU exits first or on timeout.
    pub fn wait_for_serial(&mut self, pattern: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(pattern) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.try_wait()? {
                // One last look: QEMU may have written the line and exited.
                if self.serial_log().contains(pattern) {
                    return Ok(self.started.elapsed());
                }
                return Err(self.failure(&format!(
                    "QEMU exited ({status}) before {pattern:?} appeared"
                )));
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("{pattern:?} did not appear within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit (guest power-off or reboot, because of -no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("QEMU still running after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) -> Result<()> {
        if self.try_wait()?.is_none() {
            self.child.kill().context("killing QEMU")?;
            self.status = Some(self.child.wait().context("reaping QEMU")?);
        }
        Ok(())
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waiting for QEMU")?;
        }
        Ok(self.status)
    }

    /// An error saying `what`, with the command line, QEMU's stderr and the serial log tail.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let serial = self.serial_log();
        anyhow::anyhow!(
            "{what} ({} accel, {:.1?} since start)\ncommand: {}\nqemu stderr: {}\nserial log ({}) tail:\n{}",
            self.accel.as_str(),
            self.started.elapsed(),
            self.command_line,
            cmd::tail(&stderr, 2000).trim(),
            self.serial_log.display(),
            cmd::tail(&serial, 3000).trim()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn prepare_disk(d: &DiskSpec) -> Result<&'static str> {
    if !d.path.exists() {
        let f = fs::File::create(&d.path)
            .with_context(|| format!("creating disk {}", d.path.display()))?;
        f.set_len(d.size_bytes)
            .with_context(|| format!("sizing disk {}", d.path.display()))?;
        return Ok("raw");
    }
    let mut magic = [0u8; 4];
    let f =
        fs::File::open(&d.path).with_context(|| format!("opening disk {}", d.path.display()))?;
    let is_qcow2 = std::io::Read::read_exact(&mut &f, &mut magic).is_ok() && &magic == b"QFI\xfb";
    Ok(if is_qcow2 { "qcow2" } else { "raw" })
}

/// (code, vars template) of OVMF without Secure Boot, 4 MiB flavour first (Debian 12 default).
pub fn ovmf_files() -> Result<(PathBuf, PathBuf)> {
    for dir in ["/usr/share/OVMF", "/usr/share/edk2/ovmf"] {
        for (code, vars) in [
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            ("OVMF_CODE.fd", "OVMF_VARS.fd"),
        ] {
            let (c, v) = (Path::new(dir).join(code), Path::new(dir).join(vars));
            if c.is_file() && v.is_file() {
                return Ok((c, v));
            }
        }
    }
    bail!("no OVMF firmware found (Debian: apt-get install ovmf)")
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// The accelerator to use and why: `LANDFALL_VM_ACCEL=kvm|tcg` if set; else KVM when
/// /dev/kvm opens, the CPU advertises vmx/svm and a Linux kernel actually starts under it
/// within 10 s (some sandboxes have a /dev/kvm whose guests hang); else TCG. Probed once.
pub fn detect_accel() -> (Accel, String) {
    static CACHE: OnceLock<(Accel, String)> = OnceLock::new();
    CACHE.get_or_init(probe_accel).clone()
}

fn probe_accel() -> (Accel, String) {
    match std::env::var("LANDFALL_VM_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "LANDFALL_VM_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "LANDFALL_VM_ACCEL=tcg".into()),
        _ => {}
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, format!("/dev/kvm: {e}"));
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return (
            Accel::Tcg,
            "/dev/kvm exists but the CPU has no vmx/svm flag".into(),
        );
    }
    match probe_kvm_boot() {
        Ok(t) => (Accel::Kvm, format!("a kernel started under KVM in {t:.1?}")),
        Err(e) => (Accel::Tcg, format!("KVM probe failed: {e:#}")),
    }
}

/// Boots the host kernel (no initrd; it panics and, with -no-reboot, exits) and waits for its
/// first console line.
pub fn probe_kvm_boot() -> Result<Duration> {
    let kver = crate::image::newest_kernel()?;
    let dir = tempfile::tempdir()?;
    let mut spec = VmSpec::new(Firmware::Bios, "52:54:00:00:00:01", "none", dir.path());
    spec.accel = Some(Accel::Kvm);
    spec.memory_mib = 256;
    spec.extra_args = [
        "-kernel",
        &format!("/boot/vmlinuz-{kver}"),
        "-append",
        "console=ttyS0 earlyprintk=ttyS0 panic=-1",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::start(spec)?;
    vm.wait_for_serial("Linux version", Duration::from_secs(10))
}

//! The test boot image: the host's kernel and an initrd (busybox, kernel modules, the agent)
//! whose /init does what the real image's systemd does before the agent starts.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::cmd::Cmd;
use crate::cpio::CpioWriter;

/// Where the agent lives in the image, and how /init runs it by default (like its service).
pub const AGENT_PATH: &str = "/bin/landfall-agent";
pub const DEFAULT_AGENT_COMMAND: &str = "/bin/landfall-agent run";

/// Kernel arguments the boot script should pass so the console (and /init's messages) reach
/// the VM's serial log. Old iPXE under UEFI also needs `initrd=initrd` (the initrd's name).
pub const CONSOLE_ARGS: &str = "console=ttyS0 loglevel=4";

/// Printed by /init on the console; tests wait for these.
pub const NETWORK_UP: &str = "landfall-test-image: network up";
pub const AGENT_EXITED: &str = "landfall-test-image: agent exited with status";
/// Printed at the end of the first-boot stand-in ([`FIRSTBOOT_PARAM`]), with verify's status.
pub const FIRSTBOOT_EXITED: &str = "landfall-test-image: firstboot exited with status";

/// The agent under the RESTART LOOP ([`RESTART_LOOP`]): set it as [`ImageSpec::agent_command`]
/// to run the agent as systemd runs it in the real image (`Restart=on-abnormal`).
pub const RESTART_LOOP_COMMAND: &str = "sh /bin/landfall-test-restart-loop /bin/landfall-agent run";

/// Kernel parameter of the restart loop: `landfall_test.kill=POINT[,POINT]` kills the agent
/// (`kill -9`) once at each point: `disks` when the attempt's disk journal holds a written GPT
/// (mid-disks), `install` when the `nixos-install` double holds (its mode `hold-once`,
/// [`crate::doubles::NIXOS_INSTALL_MODE_PARAM`]). Before each kill the server is cut off (a
/// `prohibit` route to 10.0.2.2) until the outbox holds [`KILL_PENDING`] events, so the kill
/// leaves unacknowledged events behind; the loop restores the route when the agent is dead.
pub const KILL_PARAM: &str = "landfall_test.kill";
/// How many unacknowledged events the outbox holds when the restart loop kills the agent.
pub const KILL_PENDING: usize = 3;
/// Printed by the restart loop after a kill: `... at POINT: OUTBOX-JSON`, the agent's
/// `outbox.json` as the kill found it (the events the next agent must send).
pub const OUTBOX_AT_KILL: &str = "landfall-test-image: outbox at the kill at ";
/// Printed by the restart loop each time it starts the agent again after a signal.
pub const AGENT_RESTARTED: &str = "landfall-test-image: agent killed by signal";

/// Kernel parameter `landfall_test.mode=firstboot`: /init runs the FIRST-BOOT STAND-IN
/// (`/bin/landfall-test-firstboot`) instead of the agent. No NixOS closure exists (its
/// `nixos-install` is a TEST DOUBLE), so the installed disk cannot boot by itself; the harness
/// boots this image again with QEMU's `-kernel/-initrd` and these parameters:
///
/// - `landfall_test.boot=DEV`: the installed boot partition. The stand-in runs stage 1 from
///   what the bootloader install left there (the nixos-install TEST DOUBLE writes the
///   initrd's view, `landfall-test-initrd/`): the initrd's secrets at their paths, each
///   `boot.initrd.luks.devices` entry opened with its `keyFile`, or, for a `tpm2` entry
///   (`luks_unlock = "tpm2"`), by `systemd-cryptsetup attach NAME DEV - tpm2-device=auto`
///   as the installed systemd initrd does, with no key file anywhere ([`TPM2_PROGRAMS`],
///   a TPM on the VM: the installer's swtpm state); `fileSystems."/"` mounted;
/// - or `landfall_test.root=DEV`: the installed root filesystem (ext4); either way mounted
///   read-write on /sysroot. Refused unless it holds `etc/NIXOS` (what nixos-install leaves);
/// - the hostname from its `etc/hostname`;
/// - `landfall_test.smb=//HOST/SHARE`, `landfall_test.smb_port=PORT`,
///   `landfall_test.smb_mount=DIR` and `landfall_test.smb_credentials=PATH` (optional, all
///   four): the role's SMB share mounted (`-t cifs`) at DIR, with the `username=`/`password=`
///   lines of PATH in the installed root (the stand-in for the target's `fileSystems` entry
///   with `credentials=`; a password must not contain a comma);
/// - then the real `landfall-agent verify --config /sysroot/etc/landfall/verify.json`, and
///   power off. The network is up (as for the agent) before it starts.
pub const FIRSTBOOT_PARAM: &str = "landfall_test.mode=firstboot";

/// The modules the installer needs on a VM (disks, NICs, filesystems, LUKS). Missing or
/// built-in ones are skipped with a note.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    // Entropy: TCG's CPU has no RDRAND, and getrandom() (GPT GUIDs, mkfs
    // UUIDs) blocks until the pool is seeded; the VM gets a virtio-rng device.
    "virtio_rng",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sd_mod",
    "e1000",
    "e1000e",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "crc32c_generic",
    "btrfs",
    "xfs",
    "dm_crypt",
    "dm_mod",
    "af_packet",
];

/// What the first-boot stand-in needs to mount the role's SMB share: cifs (its dependencies
/// come along) and what SMB 3.1.1 asks of the crypto API that Debian builds as modules (the
/// module's softdeps; nothing loads them on demand here): SHA-512 for the pre-authentication
/// hash, AES-CMAC for signing, AES-GCM and AES-CCM, which the client allocates while
/// negotiating (a mount fails with ENOENT without them), and NLS UTF-8. Add them to
/// [`ImageSpec::modules`] for an image that boots with [`FIRSTBOOT_PARAM`].
pub const CIFS_MODULES: &[&str] = &[
    "sha512_generic",
    "cmac",
    "ctr",
    "ghash_generic",
    "gcm",
    "ccm",
    "nls_utf8",
    "cifs",
];

/// What LUKS and btrfs ask of the kernel beyond [`DEFAULT_MODULES`], which nothing loads on
/// demand here (no modprobe): XTS over ECB for aes-xts-plain64, and the AF_ALG sockets
/// cryptsetup computes its keyslot area with. Add them with [`LUKS_PROGRAMS`].
pub const LUKS_MODULES: &[&str] = &["ecb", "xts", "af_alg", "algif_skcipher", "algif_hash"];

/// The programs a LUKS + btrfs layout needs beside [`DISK_PROGRAMS`], in the installer and in
/// the first-boot stand-in (which opens the volume as the installed initrd would).
pub const LUKS_PROGRAMS: &[&str] = &["cryptsetup", "mkfs.btrfs", "btrfs"];

/// What `luks_unlock = "tpm2"` needs beside [`LUKS_PROGRAMS`]: the agent's
/// `systemd-cryptenroll`, and the first-boot stand-in's `systemd-cryptsetup` (what the
/// installed systemd initrd runs for a crypttab line; Debian keeps it in /lib/systemd).
/// The kernel's TPM drivers (tpm_crb, tpm_tis) are built in on Debian (CONFIG_TCG_CRB=y).
pub const TPM2_PROGRAMS: &[&str] = &["systemd-cryptenroll", "/lib/systemd/systemd-cryptsetup"];

/// What [`TPM2_PROGRAMS`] dlopen() and `ldd` does not show (Debian packages libtss2-esys,
/// -mu, -rc, -tcti-device; the token plugin is systemd's): systemd's TPM2 code loads the
/// TSS2 libraries and its TCTI module at run time, libcryptsetup its token plugins from
/// its plugin directory.
pub const TPM2_LIBRARIES: &[&str] = &[
    "/lib/x86_64-linux-gnu/libtss2-esys.so.0",
    "/lib/x86_64-linux-gnu/libtss2-mu.so.0",
    "/lib/x86_64-linux-gnu/libtss2-rc.so.0",
    "/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0",
    "/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-tpm2.so",
];

/// The storage stack beyond GPTs and mkfs, for disko's `mdadm`, `lvm_vg` (thin pools,
/// RAID LVs), `f2fs` contents and MBR tables: mdadm (Debian `mdadm`), lvm and dmsetup
/// (`lvm2`), the thin-provisioning tools (`thin-provisioning-tools`: one `pdata_tools`
/// binary that dispatches on its name), mkfs.f2fs (`f2fs-tools`), sfdisk (`fdisk`: MBR
/// types and the active flag) and sgdisk (`gdisk`: hybrid MBRs). Add them with
/// [`STORAGE_MODULES`] and [`STORAGE_ALIASES`], or all three with
/// [`ImageSpec::with_storage_stack`].
pub const STORAGE_PROGRAMS: &[&str] = &[
    "mdadm",
    "lvm",
    "dmsetup",
    "/usr/sbin/pdata_tools",
    "mkfs.f2fs",
    "sfdisk",
    "sgdisk",
];

/// Programs of [`STORAGE_PROGRAMS`] whose host symlinks come along at the same paths: `lvm`'s
/// command names (`pvcreate`, `vgcreate`, `lvcreate`, `vgchange`, ...) and `pdata_tools`'
/// (`thin_check`, `thin_repair`, `thin_dump`, ...), which lvm runs by the absolute paths
/// compiled into it (`lvmconfig --type default global/thin_check_executable`:
/// /usr/sbin/thin_check).
pub const STORAGE_ALIASES: &[&str] = &["lvm", "/usr/sbin/pdata_tools"];

/// What [`STORAGE_PROGRAMS`] ask of the kernel, which nothing loads on demand here (no
/// modprobe; each comes with its dependencies, `modprobe --show-depends`): md with the
/// RAID levels disko's examples use (0, 1, 5 in raid456), device-mapper with thin pools
/// (dm-thin-pool: dm-bufio, dm-bio-prison, dm-persistent-data), LVM's RAID and mirror LVs
/// (dm-raid, dm-mirror), and f2fs. dm-crypt is in [`DEFAULT_MODULES`].
pub const STORAGE_MODULES: &[&str] = &[
    "md_mod",
    "raid0",
    "raid1",
    "raid456",
    "dm_mod",
    "dm_thin_pool",
    "dm_raid",
    "dm_mirror",
    "f2fs",
];

/// `/etc/lvm/lvm.conf` of the test image ([`ImageSpec::with_storage_stack`]). The image has
/// no udev (the real installer runs systemd-udevd, whose rules make the device nodes):
/// lvm's defaults wait for udev to create `/dev/mapper/VG-LV` and `/dev/VG/LV`, and fail
/// with "not found: device not cleared"; with these, libdevmapper and lvm make them
/// themselves, as cryptsetup does when it finds no udev. No dmeventd either, so no
/// monitoring of thin pools (lvm would warn at every activation).
pub const LVM_CONF: &str = "# landfall test image: no udev, so lvm makes its device nodes itself
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
}
";

const BUSYBOX: &str = "/bin/busybox";

pub struct ImageSpec {
    /// The agent: a static binary (or a `#!/bin/sh` script), placed at [`AGENT_PATH`].
    pub agent: PathBuf,
    /// (host file, guest path, mode), placed as given.
    pub extra_files: Vec<(PathBuf, String, u32)>,
    /// (guest path, contents, mode), placed as given (after `extra_files`).
    pub extra_data: Vec<(String, Vec<u8>, u32)>,
    /// Receives `vmlinuz` and `initrd`: serve it as the artifacts directory.
    pub out_dir: PathBuf,
    /// The shell command /init runs as the agent; its exit status is printed.
    pub agent_command: String,
    /// Module names to include with their dependencies, loaded in this order at boot.
    pub modules: Vec<String>,
    /// A kernel version under /boot and /lib/modules; `None`: the newest one that has both.
    pub kernel_version: Option<String>,
    /// Dynamically linked programs of this host (by name, found on PATH) the
    /// agent calls, copied to `/usr/local/sbin` with the shared libraries and
    /// the loader `ldd` names: the installer image's tools (mkfs, partx, ...). An absolute
    /// path is taken as is (a program off PATH) and placed under its file name.
    pub host_programs: Vec<String>,
    /// Shared libraries of this host that programs dlopen() (so `ldd` does not list
    /// them), placed at the same path with the libraries they need.
    pub host_libraries: Vec<String>,
    /// Programs of `host_programs` whose symlinks on this host (in the program's own
    /// directory, e.g. /usr/sbin/pvcreate -> lvm) are placed at the same paths, pointing at
    /// the copied program: a multi-call binary run by another name.
    pub host_aliases: Vec<String>,
}

/// What the agent's disk step calls (util-linux, e2fsprogs, dosfstools), as
/// the real image has them on PATH.
pub const DISK_PROGRAMS: &[&str] = &[
    "blkid",
    "blockdev",
    "partx",
    "wipefs",
    "mount",
    "umount",
    "mkfs.ext4",
    "mkfs.vfat",
    "mkswap",
];

impl ImageSpec {
    pub fn new(agent: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        ImageSpec {
            agent: agent.into(),
            extra_files: Vec::new(),
            extra_data: Vec::new(),
            out_dir: out_dir.into(),
            agent_command: DEFAULT_AGENT_COMMAND.to_string(),
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            kernel_version: None,
            host_programs: Vec::new(),
            host_libraries: Vec::new(),
            host_aliases: Vec::new(),
        }
    }

    /// Adds the storage stack ([`STORAGE_PROGRAMS`], [`STORAGE_ALIASES`],
    /// [`STORAGE_MODULES`]): md RAID, LVM with thin pools, f2fs.
    pub fn with_storage_stack(mut self) -> Self {
        let own = |l: &[&str]| l.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        self.host_programs.extend(own(STORAGE_PROGRAMS));
        self.host_aliases.extend(own(STORAGE_ALIASES));
        self.modules.extend(own(STORAGE_MODULES));
        self.extra_data.push((
            "etc/lvm/lvm.conf".into(),
            LVM_CONF.as_bytes().to_vec(),
            0o644,
        ));
        self
    }

    /// Puts the `nixos-install` TEST DOUBLE ([`crate::doubles`]) on the image's PATH.
    pub fn with_nixos_install_double(mut self) -> Self {
        self.extra_data.push((
            crate::doubles::NIXOS_INSTALL_GUEST_PATH.to_string(),
            crate::doubles::NIXOS_INSTALL.as_bytes().to_vec(),
            0o755,
        ));
        self
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
    /// Guest paths of the module files, in load order.
    pub modules: Vec<String>,
    /// Why requested modules are not in the image (built in, not found).
    pub notes: Vec<String>,
}

impl Image {
    pub fn build(spec: ImageSpec) -> Result<Image> {
        let kver = match &spec.kernel_version {
            Some(v) => v.clone(),
            None => newest_kernel()?,
        };
        fs::create_dir_all(&spec.out_dir)
            .with_context(|| format!("creating {}", spec.out_dir.display()))?;
        let kernel = spec.out_dir.join("vmlinuz");
        let src = Path::new("/boot").join(format!("vmlinuz-{kver}"));
        fs::copy(&src, &kernel)
            .with_context(|| format!("copying {} to {}", src.display(), kernel.display()))?;

        let (module_files, notes) = resolve_modules(&kver, &spec.modules)?;
        let initrd = spec.out_dir.join("initrd");
        let out =
            fs::File::create(&initrd).with_context(|| format!("creating {}", initrd.display()))?;
        let mut w = CpioWriter::new(BufWriter::new(out));

        for d in [
            "proc", "sys", "dev", "run", "tmp", "sbin", "usr/bin", "usr/sbin", "etc", "mnt", "root",
        ] {
            w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
        }
        // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.file(BUSYBOX, 0o755, &read_static(Path::new(BUSYBOX))?)?;
        w.symlink("bin/sh", "busybox")?;
        w.file("init", 0o755, INIT.as_bytes())?;
        w.file(
            "etc/landfall-test/agent-command",
            0o644,
            format!("{}\n", spec.agent_command).as_bytes(),
        )?;
        w.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes())?;
        w.file(FIRSTBOOT_PATH, 0o755, FIRSTBOOT.as_bytes())?;
        w.file(RESTART_LOOP_PATH, 0o755, RESTART_LOOP.as_bytes())?;

        let mut guest_modules = Vec::new();
        for host in &module_files {
            let guest = guest_module_path(host)?;
            w.file(&guest, 0o644, &read_module(host)?)?;
            guest_modules.push(guest);
        }
        let list: String = guest_modules.iter().map(|m| format!("{m}\n")).collect();
        w.file("etc/landfall-test/modules", 0o644, list.as_bytes())?;

        let mut libs = std::collections::BTreeSet::new();
        for name in &spec.host_programs {
            let host = find_program(name)?;
            let file = name.rsplit('/').next().unwrap_or(name);
            let guest = format!("/usr/local/sbin/{file}");
            w.file(&guest, 0o755, &read_file(&host)?)?;
            libs.extend(shared_libraries(&host)?);
            if spec.host_aliases.contains(name) {
                for alias in host_aliases(&host)? {
                    w.symlink(alias.trim_start_matches('/'), &guest)?;
                }
            }
        }
        if let Some(a) = spec
            .host_aliases
            .iter()
            .find(|a| !spec.host_programs.contains(a))
        {
            bail!("host_aliases names {a}, which is not one of host_programs");
        }
        for lib in &spec.host_libraries {
            let host = Path::new(lib);
            anyhow::ensure!(
                host.is_file(),
                "{lib} is not installed on this host (see PACKAGES in ./x)"
            );
            libs.extend(shared_libraries(host)?);
            libs.insert(lib.clone());
        }
        for lib in &libs {
            w.file(
                lib.trim_start_matches('/'),
                0o755,
                &read_file(Path::new(lib))?,
            )?;
        }

        w.file(AGENT_PATH, 0o755, &read_static(&spec.agent)?)?;
        for (host, guest, mode) in &spec.extra_files {
            let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            w.file(guest, *mode, &data)?;
        }
        for (guest, data, mode) in &spec.extra_data {
            w.file(guest, *mode, data)?;
        }
        w.finish()?;

        Ok(Image {
            kernel,
            initrd,
            kernel_version: kver,
            modules: guest_modules,
            notes,
        })
    }
}

/// The newest `/boot/vmlinuz-VER` that has a `/lib/modules/VER`.
pub fn newest_kernel() -> Result<String> {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .filter(|v| Path::new("/lib/modules").join(v).is_dir())
        .collect();
    versions.sort_by_key(|v| version_key(v));
    versions
        .pop()
        .context("no /boot/vmlinuz-VER with a matching /lib/modules/VER (Debian: apt-get install linux-image-amd64)")
}

/// "6.1.0-56-amd64" -> [6, 1, 0, 56] so that 6.10 sorts after 6.9.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The module files for `names` with their dependencies, each once, dependencies first.
fn resolve_modules(kver: &str, names: &[String]) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    for name in names {
        let out = match Cmd::new("modprobe")
            .args(["-d", "/", "-S", kver, "--show-depends", name])
            .run_blocking()
        {
            Ok(out) => out,
            Err(e) => {
                notes.push(format!("{name}: skipped ({e:#})"));
                continue;
            }
        };
        for line in out.stdout.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("insmod"), Some(path)) => {
                    let path = PathBuf::from(path.replace("//", "/"));
                    if !files.contains(&path) {
                        files.push(path);
                    }
                }
                (Some("builtin"), Some(m)) => notes.push(format!("{m}: built into the kernel")),
                _ => {}
            }
        }
    }
    Ok((files, notes))
}

/// `/lib/modules/V/kernel/fs/xfs/xfs.ko.xz` -> `lib/modules/V/kernel/fs/xfs/xfs.ko`: the image
/// holds modules uncompressed because busybox insmod may not read .xz/.zst.
fn guest_module_path(host: &Path) -> Result<String> {
    let s = host
        .to_str()
        .with_context(|| format!("non-UTF-8 module path {}", host.display()))?;
    let s = s.trim_start_matches('/');
    Ok([".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| s.strip_suffix(ext))
        .unwrap_or(s)
        .to_string())
}

fn read_module(host: &Path) -> Result<Vec<u8>> {
    let tool = match host.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(host).with_context(|| format!("reading {}", host.display())),
    };
    Ok(Cmd::new(tool).arg("-dc").arg(host).run_bytes_blocking()?)
}

/// `name` on this host's PATH (and the sbin directories, which root's PATH may lack).
fn find_program(name: &str) -> Result<PathBuf> {
    if name.starts_with('/') {
        let p = PathBuf::from(name);
        return if p.is_file() {
            Ok(p)
        } else {
            bail!("{name} is not installed on this host (see PACKAGES in ./x)")
        };
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.with_context(|| format!("{name} is not installed on this host (see PACKAGES in ./x)"))
}

/// The symlinks in `program`'s directory that resolve to it (/usr/sbin/pvcreate -> lvm), as
/// absolute host paths in name order.
fn host_aliases(program: &Path) -> Result<Vec<String>> {
    let real =
        fs::canonicalize(program).with_context(|| format!("resolving {}", program.display()))?;
    let dir = program
        .parent()
        .with_context(|| format!("{} has no directory", program.display()))?;
    let mut found = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && path != program && fs::canonicalize(&path).is_ok_and(|p| p == real) {
            found.push(path.to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// The contents behind `path`, following symlinks (mkfs.ext4 -> mke2fs).
fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Absolute paths of the shared libraries and the loader `ldd` lists for `program`.
fn shared_libraries(program: &Path) -> Result<Vec<String>> {
    let out = Cmd::new("ldd").arg(program).run_blocking()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            // "libblkid.so.1 => /lib/x86_64-linux-gnu/libblkid.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// Reads an executable for the image; a dynamically linked ELF would not run there.
fn read_static(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if elf_interpreter(&data) {
        bail!(
            "{} is dynamically linked; the test image has no libc (Debian: busybox-static)",
            path.display()
        );
    }
    Ok(data)
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header (is dynamically linked).
fn elf_interpreter(d: &[u8]) -> bool {
    if d.len() < 64 || &d[..4] != b"\x7fELF" || d[4] != 2 || d[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(d[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        d.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3)
    })
}

/// busybox udhcpc calls this with $1 = deconfig | bound | renew | leasefail | nak.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"#;

const FIRSTBOOT_PATH: &str = "bin/landfall-test-firstboot";

/// The FIRST-BOOT STAND-IN (see [`FIRSTBOOT_PARAM`]): what the installed NixOS system would do
/// at its first boot, done from the test image because no NixOS closure exists.
const FIRSTBOOT: &str = r#"#!/bin/sh
# FIRST-BOOT STAND-IN, not a NixOS system: mounts the installed root, takes its
# hostname, mounts the role's SMB share, runs the real `landfall-agent verify`.
say() { echo "landfall-test-firstboot: $*"; }
param() { tr ' ' '\n' < /proc/cmdline | sed -n "s|^$1=||p" | tail -n 1; }

# A device the installed system names by partition label, as udev would link it.
resolve() {
    case "$1" in
    /dev/disk/by-partlabel/*) blkid -t "PARTLABEL=${1#/dev/disk/by-partlabel/}" -o device | head -n 1 ;;
    *) echo "$1" ;;
    esac
}

boot=$(param landfall_test.boot)
root=$(param landfall_test.root)
fstype=ext4 opts=
if [ -n "$boot" ]; then
    # Stage 1 as the installed initrd would run it, from what the bootloader install left
    # on the boot partition (the nixos-install TEST DOUBLE writes the initrd's view there):
    # its secrets at their paths, its LUKS devices, its root file system. Nothing of the
    # installer's is used: this boot starts with an empty /run and no secrets.
    mkdir -p /bootpart
    if ! mount -o ro "$boot" /bootpart; then
        say "error: cannot mount the boot partition $boot"
        exit 2
    fi
    stage1=/bootpart/landfall-test-initrd/stage1
    [ -f "$stage1" ] || { say "error: $boot holds no initrd (no $stage1)"; exit 2; }
    [ -d /bootpart/landfall-test-initrd/secrets ] && cp -R /bootpart/landfall-test-initrd/secrets/. /
    while read -r kind a b c; do
        case "$kind" in
        luks)
            dev=$(resolve "$b")
            if [ "$c" = tpm2 ]; then
                # systemd stage 1, crypttab `NAME DEV - tpm2-device=auto`: systemd-cryptsetup
                # unseals the volume key from the systemd-tpm2 token in the LUKS header with
                # this machine's TPM. headless: a failed unseal is an error here, not a prompt.
                n=$(find /bootpart/landfall-test-initrd/secrets /etc/secrets -type f 2>/dev/null | wc -l)
                if [ "$n" != 0 ]; then
                    say "error: LUKS $a: tpm2, but the initrd holds $n key file(s)"
                    exit 2
                fi
                if ! systemd-cryptsetup attach "$a" "$dev" - tpm2-device=auto,headless=true; then
                    say "error: LUKS $a: systemd-cryptsetup attach $dev with tpm2-device=auto failed"
                    exit 2
                fi
                say "LUKS $a ($dev) unlocked by systemd-cryptsetup with the TPM2 (tpm2-device=auto), no key file in the initrd"
                say "PCR 7 (sha256) at this boot: $(cat /sys/class/tpm/tpm0/pcr-sha256/7 2>/dev/null || echo unreadable)"
                continue
            fi
            if [ "$c" = - ]; then
                say "error: LUKS $a ($b) has no keyFile: the initrd would ask for the passphrase"
                exit 2
            fi
            if [ ! -f "$c" ]; then
                say "error: LUKS $a: keyFile $c is not in the initrd"
                exit 2
            fi
            if ! cryptsetup open --key-file "$c" "$dev" "$a"; then
                say "error: LUKS $a: cryptsetup open $dev with $c failed"
                exit 2
            fi
            say "LUKS $a ($dev) unlocked with $c from the initrd on $boot"
            ;;
        root) root=$(resolve "$a") fstype=$b opts=$c ;;
        esac
    done < "$stage1"
    cp "$stage1" /run/landfall-test-stage1
    stage1=/run/landfall-test-stage1
    umount /bootpart
fi
[ -n "$root" ] || { say "error: landfall_test.root= is missing (and no landfall_test.boot=)"; exit 2; }
mkdir -p /sysroot
if ! mount -t "$fstype" -o "rw${opts:+,$opts}" "$root" /sysroot; then
    say "error: cannot mount the installed root $root ($fstype${opts:+, $opts})"
    exit 2
fi
for k in $(sed -n 's/^luks [^ ]* [^ ]* //p' "${stage1:-/dev/null}"); do
    case "$k" in
    tpm2)
        if [ -e /sysroot/etc/secrets/initrd ]; then
            say "error: tpm2, but the installed root holds /etc/secrets/initrd: $(ls /sysroot/etc/secrets/initrd)"
            exit 2
        fi
        say "no initrd key in the installed root (tpm2)"
        ;;
    *) say "initrd key $k in the installed root: mode $(stat -c %a "/sysroot$k")" ;;
    esac
done
if [ ! -e /sysroot/etc/NIXOS ]; then
    say "error: $root holds no installed system (no /etc/NIXOS): nothing to boot"
    umount /sysroot
    exit 2
fi
say "installed root $root mounted on /sysroot"
hostname "$(cat /sysroot/etc/hostname)"
say "hostname $(hostname)"

smb=$(param landfall_test.smb)
mp=
if [ -n "$smb" ]; then
    port=$(param landfall_test.smb_port)
    mp=$(param landfall_test.smb_mount)
    cred=/sysroot$(param landfall_test.smb_credentials)
    user=$(sed -n 's/^username=//p' "$cred")
    pass=$(sed -n 's/^password=//p' "$cred")
    host=${smb#//}
    host=${host%%/*}
    mkdir -p "$mp"
    # -i: no mount.cifs helper (the image has none); the kernel takes these options.
    if mount -i -t cifs "$smb" "$mp" -o "ip=$host,port=$port,username=$user,password=$pass,vers=3.1.1"; then
        say "SMB share $smb (port $port) mounted on $mp as $user"
    else
        say "error: mounting the SMB share $smb on $mp failed"
        mp=
    fi
fi

/bin/landfall-agent verify --config /sysroot/etc/landfall/verify.json
rc=$?
if [ -e /sysroot/etc/landfall/verify.json ]; then
    say "verify.json is still on the installed root"
else
    say "verify.json left the installed root"
fi
[ -n "$mp" ] && umount "$mp"
sync
umount /sysroot
exit $rc
"#;

const RESTART_LOOP_PATH: &str = "bin/landfall-test-restart-loop";

/// The RESTART LOOP ([`RESTART_LOOP_COMMAND`], [`KILL_PARAM`]): runs its arguments (the agent)
/// like systemd's `Restart=on-abnormal` with `KillMode=control-group`, the way the real
/// image's `landfall-agent.service` runs it (iso-module/default.nix; `RestartSec` 1 s here
/// instead of 5). /run is a tmpfs that outlives the agent, as the real STATE_DIR does.
pub const RESTART_LOOP: &str = r#"#!/bin/sh
# RESTART LOOP of the test image: the agent ("$@") is started again after it was
# killed by a signal, not after it exited (systemd's Restart=on-abnormal); what it
# started dies with it (it runs in its own session, killed as a process group, like
# KillMode=control-group). landfall_test.kill=POINT[,POINT]: kill -9 the agent once
# at each point (disks: the disk journal holds a written GPT; install: the
# nixos-install double holds), with the server cut off until the outbox holds
# unacknowledged events; the outbox file as the kill found it is printed.
say() { echo "landfall-test-image: $*"; }
param() { tr ' ' '\n' < /proc/cmdline | sed -n "s|^$1=||p" | tail -n 1; }
state=${LANDFALL_STATE_DIR:-$(param landfall.state_dir)}
state=${state:-/run/landfall}
flags=/run/landfall-test
mkdir -p "$flags"
points=$(param landfall_test.kill | tr , ' ')
server=10.0.2.2/32
want=3

reached() {
    case "$1" in
    disks) grep -qs '"step": "gpt"' "$state"/disks-*.json ;;
    install) [ -e /run/landfall-test-double.holding ] ;;
    *) return 1 ;;
    esac
}

pending() { grep -o '"seq":' "$state/outbox.json" 2>/dev/null | wc -l; }

kill_at() { # POINT PID
    : >"$flags/killed-$1"
    ip route add prohibit "$server"
    i=0
    while [ "$(pending)" -lt "$want" ] && [ "$i" -lt 600 ]; do
        i=$((i + 1))
        sleep 0.1
    done
    cp "$state/outbox.json" "$flags/outbox-$1.json"
    echo "$1" >"$flags/last-kill"
    kill -9 "$2"
}

watch() { # PID
    while kill -0 "$1" 2>/dev/null; do
        for p in $points; do
            [ -e "$flags/killed-$p" ] && continue
            if reached "$p"; then
                kill_at "$p" "$1"
                return
            fi
        done
        sleep 0.1
    done
}

while :; do
    setsid "$@" &
    pid=$!
    watcher=
    if [ -n "$points" ]; then
        watch "$pid" &
        watcher=$!
    fi
    wait "$pid"
    rc=$?
    [ -n "$watcher" ] && wait "$watcher"
    kill -9 "-$pid" 2>/dev/null
    ip route del prohibit "$server" 2>/dev/null
    [ "$rc" -gt 128 ] || exit "$rc"
    say "agent killed by signal $((rc - 128)); starting it again (Restart=on-abnormal)"
    p=$(cat "$flags/last-kill" 2>/dev/null)
    rm -f "$flags/last-kill"
    [ -n "$p" ] && say "outbox at the kill at $p: $(cat "$flags/outbox-$p.json")"
    sleep 1
done
"#;

/// PID 1 of the test image. Kernel parameter `landfall.test.shell=1`: a console shell after
/// the agent exits, instead of powering off. [`FIRSTBOOT_PARAM`]: the first-boot stand-in
/// instead of the agent.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
say() { echo "landfall-test-image: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
# If init dies anyway, reboot at once (QEMU runs with -no-reboot, so it exits).
echo -1 > /proc/sys/kernel/panic

while read -r m; do
    # Failures are expected for CPU-specific modules (crc32c-intel without SSE4.2 under TCG).
    err=$(insmod "/$m" 2>&1) || say "insmod /$m failed (ignored): $err"
done < /etc/landfall-test/modules

ip link set lo up
nic=
for i in $(seq 1 50); do
    for n in /sys/class/net/*; do
        case "${n##*/}" in lo|'*') ;; *) nic=${n##*/}; break ;; esac
    done
    [ -n "$nic" ] && break
    sleep 0.2
done
if [ -z "$nic" ]; then
    say "no network interface"
elif udhcpc -i "$nic" -q -n -t 10 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1; then
    say "network up $(ip -4 -o addr show dev "$nic" | awk '{print $4}') on $nic"
else
    say "DHCP failed on $nic"
fi

if grep -q 'landfall_test.mode=firstboot' /proc/cmdline; then
    sh /bin/landfall-test-firstboot
    say "firstboot exited with status $?"
else
    sh -c "$(cat /etc/landfall-test/agent-command)"
    say "agent exited with status $?"
fi

if grep -q 'landfall.test.shell=1' /proc/cmdline; then
    say "landfall.test.shell=1: starting a shell; exit it to power off"
    setsid cttyhack sh
fi
sync
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec!["6.10.0-1-amd64", "6.9.12-amd64", "6.1.0-56-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["6.1.0-56-amd64", "6.9.12-amd64", "6.10.0-1-amd64"]);
    }

    #[test]
    fn module_paths_are_decompressed_names() {
        assert_eq!(
            guest_module_path(Path::new("/lib/modules/v/x.ko.xz")).unwrap(),
            "lib/modules/v/x.ko"
        );
        assert_eq!(
            guest_module_path(Path::new("/lib/modules/v/x.ko")).unwrap(),
            "lib/modules/v/x.ko"
        );
    }

    #[test]
    fn the_restart_loop_is_valid_sh_and_waits_for_kill_pending_events() {
        assert!(RESTART_LOOP.contains(&format!("\nwant={KILL_PENDING}\n")));
        assert!(RESTART_LOOP_COMMAND.contains(&format!("/{RESTART_LOOP_PATH} {AGENT_PATH} ")));
        for (what, script) in [
            ("restart loop", RESTART_LOOP),
            ("init", INIT),
            ("first-boot stand-in", FIRSTBOOT),
        ] {
            let out = Cmd::new(BUSYBOX)
                .args(["sh", "-n", "-c", script])
                .output_blocking()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The storage stack's programs, their libraries, their other names (lvm's commands,
    /// the thin tools where lvm runs them) and modules in load order reach the image.
    #[test]
    fn the_storage_stack_reaches_the_image_with_libraries_aliases_and_modules_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sh");
        fs::write(&agent, "#!/bin/sh\nexit 0\n").unwrap();
        // The install tests' image (the disk step's programs), with and without the stack.
        let spec = |out: &str| {
            let mut spec = ImageSpec::new(&agent, dir.path().join(out));
            spec.host_programs = DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
            spec
        };
        let t = std::time::Instant::now();
        let image = Image::build(spec("out").with_storage_stack()).unwrap();
        let took = t.elapsed();
        let listing = Cmd::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < {}", image.initrd.display()))
            .run_blocking()
            .expect("cpio (Debian: cpio; ./x installs it)")
            .stdout;
        // "lrwxrwxrwx ... usr/sbin/thin_check -> /usr/local/sbin/pdata_tools"
        let entry = |name: &str| {
            listing
                .lines()
                .find(|l| l.split_whitespace().nth(8) == Some(name))
                .unwrap_or_else(|| panic!("{name} not in the image:\n{listing}"))
                .to_owned()
        };
        for p in [
            "mdadm",
            "lvm",
            "dmsetup",
            "pdata_tools",
            "mkfs.f2fs",
            "sfdisk",
            "sgdisk",
        ] {
            assert!(entry(&format!("usr/local/sbin/{p}")).starts_with("-rwxr-xr-x"));
        }
        for (alias, target) in [
            ("usr/sbin/thin_check", "pdata_tools"),
            ("usr/sbin/thin_repair", "pdata_tools"),
            ("usr/sbin/thin_dump", "pdata_tools"),
            ("usr/sbin/pvcreate", "lvm"),
            ("usr/sbin/vgcreate", "lvm"),
            ("usr/sbin/lvcreate", "lvm"),
            ("usr/sbin/vgchange", "lvm"),
        ] {
            // lvm's names are in the directory PATH found it in (/usr/sbin, or /sbin).
            let line = match listing.contains(&format!(" {alias} -> ")) {
                true => entry(alias),
                false => entry(alias.trim_start_matches("usr/")),
            };
            assert!(
                line.ends_with(&format!("-> /usr/local/sbin/{target}")),
                "{line}"
            );
        }
        for lib in ["libdevmapper.so.1.02.1", "libstdc++.so.6", "libudev.so.1"] {
            entry(&format!("lib/x86_64-linux-gnu/{lib}"));
        }
        let pos = |m: &str| {
            image
                .modules
                .iter()
                .position(|p| p.ends_with(&format!("/{m}.ko")))
                .unwrap_or_else(|| panic!("{m} not loaded: {:?}", image.modules))
        };
        assert!(pos("md-mod") < pos("raid1"));
        assert!(pos("md-mod") < pos("raid0"));
        assert!(pos("raid6_pq") < pos("raid456"));
        assert!(pos("dm-mod") < pos("dm-thin-pool"));
        assert!(pos("dm-persistent-data") < pos("dm-thin-pool"));
        assert!(pos("raid456") < pos("dm-raid"));
        assert!(pos("dm-region-hash") < pos("dm-mirror"));
        pos("f2fs");
        let base = Image::build(spec("base")).unwrap();
        let kib = |i: &Image| fs::metadata(&i.initrd).unwrap().len() / 1024;
        eprintln!(
            "storage image: built in {took:.1?}, initrd {} KiB ({} KiB without the storage stack), {} modules",
            kib(&image),
            kib(&base),
            image.modules.len()
        );
    }

    #[test]
    fn busybox_is_static_and_a_script_is_fine() {
        if let Ok(bb) = fs::read(BUSYBOX) {
            assert!(!elf_interpreter(&bb), "{BUSYBOX} should be busybox-static");
        }
        assert!(elf_interpreter(&fs::read("/bin/ls").unwrap()));
        assert!(!elf_interpreter(b"#!/bin/sh\necho hi\n"));
    }
}

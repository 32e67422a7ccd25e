//! Shared by the VM tests: the real host services the first-boot verify checks, the
//! first-boot stand-in VM, reading files back from a disk image, and the timing printout.
#![allow(dead_code)]

// The verify tests' servers (sshd, xrdp, Xvnc, smbd on free loopback ports, each
// stopped on drop): the guest reaches 127.0.0.1:PORT as 10.0.2.2:PORT.
#[path = "../../../agent/tests/verify_common/mod.rs"]
pub mod verify_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use landfall_vm_tests::{image, DiskSpec, Firmware, Image, KernelBoot, Vm, VmSpec};
use serde_json::Value;

use verify_common::Service;

/// The SMB share's user. Its password is a canary: it must reach the share's
/// credentials file in the target and nothing else (console, events, server).
pub const SMB_USER: &str = "landfall";
pub const SMB_PASSWORD: &str = "smb-canary-pw-5e2a9";
/// Where the first-boot stand-in mounts the share (the role's `fileSystems` entry).
pub const SMB_MOUNT: &str = "/srv/share";
/// The role's secret file with the share's credentials (mount.cifs `credentials=` format).
pub const SMB_CREDENTIALS: &str = "/etc/nixos/smb-credentials";

/// The credentials file's contents.
pub fn smb_credentials() -> String {
    format!("username={SMB_USER}\npassword={SMB_PASSWORD}\n")
}

/// What the role's first-boot checks talk to: real sshd, xrdp, Xvnc and smbd (with a user),
/// each on its own free port of this machine, all killed on drop.
pub struct HostServices {
    pub ssh: Service,
    pub rdp: Service,
    pub vnc: Service,
    pub smb: Service,
}

impl HostServices {
    pub fn start() -> HostServices {
        verify_common::require_root();
        HostServices {
            ssh: verify_common::sshd(),
            rdp: verify_common::xrdp(),
            vnc: verify_common::xvnc(),
            smb: verify_common::smbd_with_user(SMB_USER, SMB_PASSWORD),
        }
    }

    /// The role's checks (`[[roles.ROLE.checks]]`) for these services, as the guest reaches
    /// them. The agent adds a `hostname` check itself.
    pub fn checks_toml(&self, role: &str) -> String {
        let tcp = |name: &str, port: u16| {
            format!(
                "\n[[roles.{role}.checks]]\nname = \"{name}\"\nkind = \"{name}\"\nhost = \"10.0.2.2\"\nport = {port}\n"
            )
        };
        format!(
            "{}{}{}\n[[roles.{role}.checks]]\nname = \"share\"\nkind = \"smb\"\nmountpoint = \"{SMB_MOUNT}\"\nwrite_test = true\n",
            tcp("ssh", self.ssh.port),
            tcp("rdp", self.rdp.port),
            tcp("vnc", self.vnc.port),
        )
    }

    /// The same checks as `verify.json` holds them, plus the hostname check.
    pub fn checks_json(&self, hostname: &str) -> Value {
        let tcp = |name: &str, port: u16| serde_json::json!({"name": name, "kind": name, "host": "10.0.2.2", "port": port});
        serde_json::json!([
            {"name": "hostname", "kind": "hostname", "expected": hostname},
            tcp("ssh", self.ssh.port),
            tcp("rdp", self.rdp.port),
            tcp("vnc", self.vnc.port),
            {"name": "share", "kind": "smb", "mountpoint": SMB_MOUNT, "write_test": true},
        ])
    }

    /// The share's directory on this machine.
    pub fn share_dir(&self) -> PathBuf {
        self.smb.dir.path().join("share")
    }

    /// Kernel arguments of the first-boot stand-in for the installed root `root_dev`.
    /// `root`: how the stand-in finds the installed root (`landfall_test.root=DEV` or
    /// `landfall_test.boot=DEV`, see `image::FIRSTBOOT_PARAM`).
    pub fn firstboot_append(&self, root: &str) -> String {
        format!(
            "{} {} {root} landfall_test.smb=//10.0.2.2/share landfall_test.smb_port={} landfall_test.smb_mount={SMB_MOUNT} landfall_test.smb_credentials={SMB_CREDENTIALS}",
            image::CONSOLE_ARGS,
            image::FIRSTBOOT_PARAM,
            self.smb.port
        )
    }

    /// What each service logged (for failure messages).
    pub fn logs(&self) -> String {
        [&self.ssh, &self.rdp, &self.vnc, &self.smb]
            .iter()
            .map(|s| format!("--- {} (port {}):\n{}", s.what, s.port, s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The FIRST-BOOT STAND-IN: boots `disk` (the installed machine's disk, same MAC, same
/// work dir so UEFI keeps its NVRAM) with the test image's kernel and initrd directly, in
/// firstboot mode; waits for it to power off. Returns (serial log, VM wall time).
/// `extra_args`: more QEMU arguments (the machine's TPM, [`landfall_vm_tests::Swtpm`]).
pub fn first_boot(
    image: &Image,
    firmware: Firmware,
    mac: &str,
    work_dir: &Path,
    disk: DiskSpec,
    append: String,
    extra_args: Vec<String>,
) -> (String, Duration) {
    let mut spec = VmSpec::new(firmware, mac, "none", work_dir);
    spec.serial_log = work_dir.join("serial-firstboot.log");
    spec.disks.push(disk);
    spec.extra_args = extra_args;
    spec.kernel_boot = Some(KernelBoot {
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        append,
    });
    let mut vm = Vm::start(spec).unwrap();
    let status = vm
        .wait_exit(Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = vm.serial_log();
    assert!(status.success(), "QEMU exited with {status}\n{log}");
    assert!(
        log.contains(image::FIRSTBOOT_EXITED),
        "the first-boot stand-in did not finish:\n{log}"
    );
    (log, vm.started().elapsed())
}

/// A partition of the disk image as `sfdisk --json` and `blkid -p` see it.
#[derive(Debug)]
pub struct Part {
    /// 1-based: the guest's /dev/vdaN.
    pub number: usize,
    pub name: String,
    pub type_guid: String,
    pub fs: Option<String>,
    pub offset: u64,
    pub size: u64,
}

/// Read the GPT and each partition's filesystem from the image file on the
/// host (no loop device: `blkid -p -O OFFSET -S SIZE` probes inside the file).
pub fn inspect(image: &Path) -> Vec<Part> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &table["partitiontable"];
    // GPT, or an MBR (disko's legacy msdos `table`: no names, types as bytes).
    assert!(t["label"] == "gpt" || t["label"] == "dos", "{table:#}");
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap_or("");
            let number = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("partition node {node:?}"));
            let offset = p["start"].as_u64().unwrap() * sector;
            let size = p["size"].as_u64().unwrap() * sector;
            let fs = blkid_type(image, offset, size);
            Part {
                number,
                name: p["name"].as_str().unwrap_or("").to_owned(),
                type_guid: p["type"].as_str().unwrap_or("").to_owned(),
                fs,
                offset,
                size,
            }
        })
        .collect()
}

fn blkid_type(image: &Path, offset: u64, size: u64) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value", "-O"])
        .arg(offset.to_string())
        .arg("-S")
        .arg(size.to_string())
        .arg(image)
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!fs.is_empty()).then_some(fs)
}

/// An ext4 filesystem inside a disk image, read with e2fsprogs' debugfs (no mount).
pub struct Ext4 {
    _dir: tempfile::TempDir,
    fs: PathBuf,
}

impl Ext4 {
    /// Copies `size` bytes at `offset` of `image` (sparse) to read them in peace.
    pub fn open(image: &Path, offset: u64, size: u64) -> Ext4 {
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("part.img");
        let dd = Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", fs.display()))
            .args([
                "bs=1M",
                "iflag=skip_bytes,count_bytes",
                "conv=sparse",
                "status=none",
            ])
            .arg(format!("skip={offset}"))
            .arg(format!("count={size}"))
            .status()
            .unwrap();
        assert!(dd.success());
        Ext4 { _dir: dir, fs }
    }

    pub fn partition(image: &Path, part: &Part) -> Ext4 {
        Ext4::open(image, part.offset, part.size)
    }

    fn debugfs(&self, req: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", req])
            .arg(&self.fs)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The octal permission bits ("0600"), `None` when `path` does not exist.
    pub fn mode(&self, path: &str) -> Option<String> {
        let stat = self.debugfs(&format!("stat {path}"));
        stat.split("Mode:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    }

    /// The superblock's "Filesystem state" ("clean" after a proper unmount).
    pub fn state(&self) -> String {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&self.fs)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem state:"))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// (mode, contents); panics when `path` does not exist.
    pub fn file(&self, path: &str) -> (String, String) {
        let mode = self
            .mode(path)
            .unwrap_or_else(|| panic!("{path} is not in the filesystem"));
        (mode, self.debugfs(&format!("cat {path}")))
    }
}

/// Wall time per step from an attempt's events (each run of a step: its `started` to its
/// `finished`/`failed`; a step run again after a retry is summed, as the agent's timing sums
/// it), and the agent's own `timing` from the terminal event when present
/// (`{"timing": {"steps": {STEP: {"wall_ms", "tools_ms", "cpu_ms"}}, "agent_ms", "tools_ms",
/// "cpu_ms", "wall_ms"}}`, docs/install.md): per step the wall time not spent waiting on tools
/// (an upper bound of the agent's own time: it holds the kernel's in-process work too), the
/// waiting, and the agent's CPU time (its own work). Printed as a table; returns the agent's
/// own share (CPU time over the steps' wall time) when known.
pub fn print_timing(label: &str, events: &[Value]) -> Option<f64> {
    use std::time::SystemTime;
    let time = |e: &Value| {
        e["time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    };
    // (step, wall of the finished runs, runs), in order of first start; the open run's start.
    let mut steps: Vec<(String, Duration, u32)> = Vec::new();
    let mut open: Vec<(String, SystemTime)> = Vec::new();
    for e in events {
        let (Some(step), Some(t)) = (e["step"].as_str(), time(e)) else {
            continue;
        };
        if step == "done" {
            continue; // the terminal event: no step of its own
        }
        match e["kind"].as_str() {
            Some("started") => {
                if !steps.iter().any(|s| s.0 == step) {
                    steps.push((step.to_owned(), Duration::ZERO, 0));
                }
                open.retain(|o| o.0 != step);
                open.push((step.to_owned(), t));
            }
            Some("finished" | "failed") => {
                if let Some(i) = open.iter().position(|o| o.0 == step) {
                    let (_, start) = open.remove(i);
                    let s = steps.iter_mut().find(|s| s.0 == step).expect("started");
                    s.1 += t.duration_since(start).unwrap_or_default();
                    s.2 += 1;
                }
            }
            _ => {}
        }
    }
    let terminal = events
        .iter()
        .rev()
        .find(|e| e["step"] == "done" && (e["kind"] == "finished" || e["kind"] == "failed"));
    let timing = terminal
        .map(|e| &e["data"]["timing"])
        .filter(|t| t.is_object());
    let secs = |ms: u64| format!("{:.2}", ms as f64 / 1000.0);
    let mut out =
        format!("{label}: time per step (wall from the events; agent/tools from its timing)\n");
    out.push_str(&format!(
        "  {:<10} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "step", "runs", "wall s", "!tools s", "tools s", "cpu s", "user s"
    ));
    let mut total = Duration::ZERO;
    for (step, wall, runs) in &steps {
        total += *wall;
        let (agent, tools, cpu, user) = match timing.map(|t| &t["steps"][step.as_str()]) {
            Some(s) if s.is_object() => match (s["wall_ms"].as_u64(), s["tools_ms"].as_u64()) {
                (Some(w), Some(t)) => (
                    secs(w.saturating_sub(t)),
                    secs(t),
                    s["cpu_ms"].as_u64().map(secs).unwrap_or_default(),
                    s["user_ms"].as_u64().map(secs).unwrap_or_default(),
                ),
                _ => Default::default(),
            },
            _ => Default::default(),
        };
        out.push_str(&format!(
            "  {step:<10} {runs:>4} {:>8.2} {agent:>8} {tools:>8} {cpu:>8} {user:>8}\n",
            wall.as_secs_f64()
        ));
    }
    out.push_str(&format!(
        "  {:<10} {:>4} {:>8.2}\n",
        "all steps",
        "",
        total.as_secs_f64()
    ));
    let ms = |t: &Value, k: &str| t[k].as_u64();
    let share = timing.and_then(|t| {
        let (agent, tools) = (ms(t, "agent_ms")?, ms(t, "tools_ms")?);
        let wall = ms(t, "wall_ms").unwrap_or(agent + tools);
        (wall > 0).then(|| ms(t, "cpu_ms").unwrap_or(agent) as f64 / wall as f64)
    });
    match (timing, share) {
        (Some(t), Some(share)) => {
            let wall = ms(t, "wall_ms").unwrap_or(0);
            let not_tools = ms(t, "agent_ms").unwrap_or(0);
            out.push_str(&format!(
                "  agent's own work (its CPU time) {} s of {} s: agent's own share {:.1}% (goal < 10%){}\n  \
                 of it in user space {} s ({:.1}%), the rest the guest kernel's work for it (syscalls, \
                 mount, page faults; slow under TCG)\n  \
                 wall not waiting on tools {} s ({:.1}%: also the kernel's in-process work, e.g. mount, \
                 partition re-read, sync); waiting on tools {} s\n",
                secs(ms(t, "cpu_ms").unwrap_or(0)),
                secs(wall),
                share * 100.0,
                if share < 0.10 { "" } else { "  <-- over the goal" },
                secs(ms(t, "user_ms").unwrap_or(0)),
                100.0 * ms(t, "user_ms").unwrap_or(0) as f64 / wall.max(1) as f64,
                secs(not_tools),
                100.0 * not_tools as f64 / wall.max(1) as f64,
                secs(ms(t, "tools_ms").unwrap_or(0)),
            ))
        }
        _ => out.push_str("  (the terminal event carries no timing: an agent without it)\n"),
    }
    eprint!("{out}");
    share
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `[server]` lines for HTTPS: the agent and admin API on their own
/// listener, iPXE keeping plain HTTP for the boot script and artifacts.
/// slirp's 10.0.2.2 is the host's loopback.
pub const TLS_TOML: &str = "listen_tls = \"127.0.0.1:0\"\ntls_sans = [\"10.0.2.2\"]\n";
/// The names the server's certificate gets from [`TLS_TOML`] (listen_tls's IP, then tls_sans).
pub const TLS_NAMES: [&str; 2] = ["127.0.0.1", "10.0.2.2"];

/// The server's CA made before the image is built (the server keeps it at
/// its start), so the image can carry it as /etc/landfall/server-ca.pem.
pub fn server_ca(data: &Path) -> PathBuf {
    let names: Vec<String> = TLS_NAMES.iter().map(|s| s.to_string()).collect();
    landfall::tls::generate(&data.join(landfall::tls::TLS_DIR), &names).unwrap();
    data.join(landfall::tls::TLS_DIR)
        .join(landfall::tls::CA_CERT_FILE)
}

/// The admin API of the in-process server.
pub struct Admin {
    base: String,
    /// Where boot scripts are served (the plain-HTTP listener).
    boot_base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Admin {
    /// A server on plain HTTP only.
    pub fn new(base: &str, data: &Path) -> Admin {
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
        Admin {
            base: base.to_owned(),
            boot_base: base.to_owned(),
            token: token.trim().to_owned(),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// A server with TLS on: the admin API at `https_base`, trusted through
    /// the server's CA alone; boot scripts from `http_base`.
    pub fn tls(http_base: &str, https_base: &str, ca: &Path, data: &Path) -> Admin {
        let pem = std::fs::read(ca).unwrap();
        let http = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        Admin {
            base: https_base.to_owned(),
            boot_base: http_base.to_owned(),
            http,
            ..Admin::new(http_base, data)
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().unwrap()
    }

    pub fn post(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    pub fn machine(&self, mac: &str) -> Value {
        self.get(&format!("/api/v1/machines/{mac}"))
    }

    /// What the machine's next PXE boot gets.
    pub fn boot_script(&self, mac: &str) -> String {
        reqwest::blocking::get(format!("{}/boot.ipxe?mac={mac}", self.boot_base))
            .unwrap()
            .text()
            .unwrap()
    }
}

/// An age bundle of the machine's secrets for one X25519 key, made the way an
/// operator would: `age-keygen` (Debian's age) and `landfall-agent bundle create`:
/// `files` are (key, value) under `hosts/HOSTNAME/`. Returns (bundle file, identity file).
pub fn make_bundle(
    agent: &Path,
    dir: &Path,
    hostname: &str,
    files: &[(&str, String)],
) -> (PathBuf, PathBuf) {
    let key = dir.join("bundle.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen names the public key")
        .to_owned();
    let from = dir.join("bundle-src");
    let host = from.join("hosts").join(hostname);
    std::fs::create_dir_all(&host).unwrap();
    for (key, value) in files {
        std::fs::write(host.join(key), value).unwrap();
    }
    let bundle = dir.join("secrets.age");
    let out = Command::new(agent)
        .args(["bundle", "create", "--from"])
        .arg(&from)
        .args(["--recipient", &recipient, "-o"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bundle create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&from).unwrap();
    (bundle, key)
}

/// `step/kind` of the events that are neither progress nor log lines.
pub fn step_kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] != "progress" && e["kind"] != "log")
        .map(|e| {
            format!(
                "{}/{}",
                e["step"].as_str().unwrap(),
                e["kind"].as_str().unwrap()
            )
        })
        .collect()
}

//! `./x demo`: the landfall server on the embedded SQLite default, and one QEMU
//! machine that PXE-boots through the real iPXE ROM, runs the agent and reports.
//! Prints the server's events as they arrive, the agent's console lines, and
//! the final `landfall machines` table.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use landfall_vm_tests::{DiskSpec, Firmware, Image, ImageSpec, Vm, VmSpec};

use crate::build::{server_release, static_agent, workspace_root, Cmd};

const MAC: &str = "52:54:00:1a:0f:a1";
const DISK_SERIAL: &str = "LANDFALL-DEMO-0";

/// Kills the server when the demo ends, however it ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let firmware = match args {
        [] | ["--bios"] => Firmware::Bios,
        ["--uefi"] => Firmware::Uefi,
        _ => bail!("usage: ./x demo [--bios | --uefi]"),
    };
    let root = workspace_root();
    let data = root.join("landfall-data");
    let agent = static_agent()?;
    let server = server_release()?;

    // A fresh demo each time: the machine would otherwise be `installed` and boot `local`.
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("resetting {}", data.display()))?;
    }
    // The demo default, plus a layout so the machine's disk is really
    // partitioned (hybrid boots BIOS and UEFI alike) and a flake to install.
    // No NixOS closure can be built here: the image's `nixos-install` is the
    // TEST DOUBLE from vm-tests/doubles (it checks what the agent prepared
    // and writes a marker), so the demo shows the whole flow around it.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)
            .with_context(|| format!("creating {}", data.display()))?;
    }
    let config = data.join("landfall.toml");
    std::fs::write(
        &config,
        format!(
            "# Written by ./x demo: every machine installs as `demo` on the hybrid layout.\n\
             # The demo image's nixos-install is a TEST DOUBLE (vm-tests/doubles).\n\
             # HTTPS for the agent and admin API with the CA the server makes in\n\
             # DATA/tls (the image carries it); iPXE keeps plain HTTP.\n\
             [server]\nkernel_args = \"console=tty0 console=ttyS0,115200\"\nlayouts = \"{}\"\n\
             listen_tls = \"127.0.0.1:0\"\ntls_sans = [\"10.0.2.2\"]\n\n\
             [enroll]\nunknown = \"install\"\nrole = \"demo\"\n\n\
             [roles.demo]\ndescription = \"demo install\"\nlayout = \"hybrid\"\n\
             flake = \"git+https://git.example/fleet#{{hostname}}\"\n",
            root.join("disko-layouts").display()
        ),
    )?;
    let (mut child, addr, tls_addr) = start_server(&server, &data, &config)?;
    let lines = child.1.take();
    let _server = ServerProcess(child.0);
    let base = format!("http://{addr}");
    let ca = data.join("tls/ca.pem");
    let api = Api::new(&format!("https://{tls_addr}"), &data, &ca)?;
    eprintln!(
        "xtask: landfall server at {base} (agent and admin API: {}, data in {})",
        api.base,
        data.display()
    );
    let artifacts = data.join("artifacts");
    eprintln!(
        "xtask: building the test boot image into {}",
        artifacts.display()
    );
    let mut spec = ImageSpec::new(&agent, &artifacts).with_nixos_install_double();
    spec.host_programs = landfall_vm_tests::image::DISK_PROGRAMS
        .iter()
        .map(|p| p.to_string())
        .collect();
    // The CA the server made at its start: the only one the agent trusts.
    spec.extra_files
        .push((ca.clone(), "etc/landfall/server-ca.pem".into(), 0o444));
    let image = Image::build(spec)?;
    eprintln!(
        "xtask: kernel {}, initrd {} MiB",
        image.kernel_version,
        std::fs::metadata(&image.initrd)?.len() >> 20
    );

    let port = addr.rsplit(':').next().unwrap_or("8080");
    let vm_dir = data.join("vm");
    let mut spec = VmSpec::new(
        firmware,
        MAC,
        &format!("http://10.0.2.2:{port}/boot.ipxe"),
        &vm_dir,
    );
    spec.disks.push(DiskSpec {
        path: vm_dir.join("disk0.raw"),
        serial: DISK_SERIAL.into(),
        size_bytes: 8 << 30,
    });
    let serial_log = spec.serial_log.clone();
    let mut vm = Vm::start(spec)?;
    eprintln!(
        "xtask: VM {MAC} ({firmware:?}, {}) booting through iPXE; serial console: {}",
        vm.accel().as_str(),
        serial_log.display()
    );

    let started = Instant::now();
    let mut seen_events = 0usize;
    let mut console_lines = 0usize;
    let mut server_lines = HashSet::new();
    let status = loop {
        if let Some(rx) = &lines {
            while let Ok(l) = rx.try_recv() {
                if server_lines.insert(l.clone()) {
                    println!("server  | {l}");
                }
            }
        }
        let log = vm.serial_log();
        for l in log.lines().skip(console_lines) {
            let image_says = l.starts_with("landfall-test-image") && !l.contains("insmod");
            if l.starts_with("[landfall") || image_says {
                println!("console | {l}");
            }
        }
        console_lines = log.lines().count();
        seen_events = print_new_events(&api, seen_events)?;
        if let Some(st) = vm.try_wait()? {
            break st;
        }
        // A failed install holds the machine and waits for the operator
        // (`landfall retry`): the demo stops there and says so.
        let state = machine_state(&api).ok(); // None until the machine's first boot
        if matches!(state.as_deref(), Some("failed" | "compromised")) {
            print_new_events(&api, seen_events)?;
            return Err(vm.failure(
                "the demo machine's install failed (events above); it waits for `landfall retry`",
            ));
        }
        if started.elapsed() > Duration::from_secs(1200) {
            return Err(vm.failure("the demo VM did not finish within 20 minutes"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    print_new_events(&api, seen_events)?;
    eprintln!(
        "xtask: VM exited ({status}) after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(panel) = last_panel(&vm.serial_log()) {
        println!("\nThe machine's console at the end (what a technician saw):");
        for l in panel.lines() {
            println!("  | {l}");
        }
    }
    // The machine's disk, as the layout left it.
    if let Ok(out) = Cmd::new("sfdisk")
        .arg("-l")
        .arg(vm_dir.join("disk0.raw"))
        .output_blocking()
    {
        println!("\n$ sfdisk -l {}", vm_dir.join("disk0.raw").display());
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let out = Cmd::new(&server)
        .args(["machines", "--server", &api.base, "--token-file"])
        .arg(data.join("admin.token"))
        .arg("--ca")
        .arg(&ca)
        .output_blocking()?;
    println!(
        "\n$ landfall machines\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let state = machine_state(&api)?;
    if state != "installed" {
        bail!(
            "the demo machine ended in state {state:?}; serial console: {}",
            serial_log.display()
        );
    }
    println!(
        "demo: {MAC} registered, partitioned its disk (hybrid layout), wrote its configuration, \
         ran nixos-install (the TEST DOUBLE: no NixOS closure can be built here), unmounted, \
         reported every step and is `installed`; its next PXE boot gets `local`."
    );
    Ok(())
}

type Lines = Option<mpsc::Receiver<String>>;

/// Start `landfall serve` on free loopback ports; returns the process and its
/// plain-HTTP and HTTPS addresses.
fn start_server(
    server: &Path,
    data: &PathBuf,
    config: &Path,
) -> Result<((Child, Lines), String, String)> {
    let mut child = Cmd::new(server)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .spawn(Stdio::inherit(), Stdio::piped())?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the server did not say it was listening within 30 s")?;
        println!("server  | {l}");
        if let Some(i) = l.find("listening on http://") {
            addr = Some(l[i + "listening on http://".len()..].trim().to_owned());
        }
        if let Some(i) = l.find("listening on https://") {
            let rest = &l[i + "listening on https://".len()..];
            let tls = rest.split_whitespace().next().unwrap_or("").to_owned();
            let addr = addr.context("the server said https before http")?;
            return Ok(((child, Some(rx)), addr, tls));
        }
    }
}

/// The admin API over HTTPS, trusting the server's CA alone.
struct Api {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(base: &str, data: &Path, ca: &Path) -> Result<Self> {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let http = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let token = std::fs::read_to_string(data.join("admin.token"))?
            .trim()
            .to_owned();
        Ok(Self {
            base: base.to_owned(),
            token,
            http,
        })
    }
}

fn admin_get(api: &Api, path: &str) -> Result<Option<serde_json::Value>> {
    let r = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .send()?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    Ok(Some(r.error_for_status()?.json()?))
}

fn print_new_events(api: &Api, seen: usize) -> Result<usize> {
    let Some(m) = admin_get(api, &format!("/api/v1/machines/{MAC}"))? else {
        return Ok(seen);
    };
    let events: Vec<&serde_json::Value> = m["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["events"].as_array().into_iter().flatten())
        .collect();
    for e in events.iter().skip(seen) {
        println!(
            "event   | #{:<3} {:<9} {:<8} {}",
            e["seq"],
            e["step"].as_str().unwrap_or("?"),
            e["kind"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(events.len().max(seen))
}

fn machine_state(api: &Api) -> Result<String> {
    let m = admin_get(api, &format!("/api/v1/machines/{MAC}"))?
        .context("the server never saw the demo machine")?;
    Ok(m["state"].as_str().unwrap_or("unknown").to_owned())
}

/// The agent's last redrawn console panel in a serial log: the text after the
/// last "cursor up N lines, clear" sequence, without escape sequences.
fn last_panel(log: &str) -> Option<String> {
    let start = log.rfind("\x1b[J")? + "\x1b[J".len();
    let tail = &log[start..];
    let end = tail.find("landfall-test-image").unwrap_or(tail.len());
    let mut out = String::new();
    let mut chars = tail[..end].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    // Kernel messages ("[   12.34] reboot: ...") may follow; panel lines never start with '['.
    let out: Vec<&str> = out.lines().filter(|l| !l.starts_with('[')).collect();
    let out = out.join("\n").trim_end().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_panel_is_cut_from_the_serial_log() {
        let log = "boot\nPANEL1\x1b[K\n\x1b[2F\x1b[Jhost x\x1b[K\n  [ ok ] detect\x1b[K\n[   9.1] reboot\nlandfall-test-image: bye\n";
        assert_eq!(super::last_panel(log).unwrap(), "host x\n  [ ok ] detect");
        assert_eq!(super::last_panel("no escapes"), None);
    }
}

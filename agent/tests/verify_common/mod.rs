//! Real Debian servers for the verify tests, each on a free loopback port
//! with its configuration in a tempdir, stopped (killed and reaped) on drop.
//! They run as root (CI does). A missing program names its Debian package.
#![allow(dead_code)]

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process; killed and waited for on drop.
pub struct Service {
    pub what: &'static str,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop now (the port is closed when this returns).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Each service leads its own process group (smbd signals its whole
            // group when it stops). SIGTERM first, so Xvnc removes its display
            // lock; then SIGKILL for whatever is left of the group.
            let group = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_closed(self.port);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the verify service tests start sshd, xrdp, Xvnc and smbd and must run as root (CI does)"
    );
}

fn require(program: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} is missing: install the Debian package {package} (./x test does)");
}

/// A loopback port nothing listens on (bound once and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn wait_closed(port: u16) {
    let t = Instant::now();
    while listening(port) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(what: &'static str, port: u16, dir: tempfile::TempDir, cmd: &mut Command) -> Service {
    let log = dir.path().join("service.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut s = Service {
        what,
        port,
        dir,
        child: Some(child),
        log,
    };
    let t = Instant::now();
    while !listening(port) {
        if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "{what} exited ({st}) before listening on {port}:\n{}",
                s.log()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} does not listen on {port} after 20 s:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// OpenSSH: `sshd -D -e -f CONFIG -p PORT` with an ed25519 host key made by ssh-keygen.
pub fn sshd() -> Service {
    sshd_at(free_port())
}

/// sshd on a chosen port.
pub fn sshd_at(port: u16) -> Service {
    let sshd = require("sshd", "openssh-server");
    let keygen = require("ssh-keygen", "openssh-client");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host_key");
    let st = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed");
    let conf = dir.path().join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "HostKey {}\nPidFile none\nUsePAM no\nListenAddress 127.0.0.1\n",
            key.display()
        ),
    )
    .unwrap();
    // sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    spawn(
        "sshd",
        port,
        dir,
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .args(["-p", &port.to_string()]),
    )
}

/// xrdp with a copy of Debian's xrdp.ini (`--config`), logging into the
/// tempdir, on `--port`. xrdp-sesman is only needed for a login, not for
/// the X.224 handshake.
pub fn xrdp() -> Service {
    let xrdp = require("xrdp", "xrdp");
    let dir = tempfile::tempdir().unwrap();
    let ini = std::fs::read_to_string("/etc/xrdp/xrdp.ini")
        .expect("/etc/xrdp/xrdp.ini: install the Debian package xrdp");
    let log = dir.path().join("xrdp.log");
    let ini: String = ini
        .lines()
        .map(|l| {
            if l.starts_with("LogFile=") {
                format!("LogFile={}", log.display())
            } else if l.starts_with("EnableSyslog=") {
                "EnableSyslog=false".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf = dir.path().join("xrdp.ini");
    std::fs::write(&conf, ini).unwrap();
    std::fs::create_dir_all("/run/xrdp").unwrap();
    let port = free_port();
    spawn(
        "xrdp",
        port,
        dir,
        Command::new(xrdp)
            .arg("--nodaemon")
            .arg("--config")
            .arg(&conf)
            .args(["--port", &port.to_string()]),
    )
}

/// TigerVNC's standalone X server on a free display, RFB on a free port, loopback only.
pub fn xvnc() -> Service {
    let xvnc = require("Xvnc", "tigervnc-standalone-server");
    let dir = tempfile::tempdir().unwrap();
    let display = (40..99)
        .find(|n| {
            !Path::new(&format!("/tmp/.X{n}-lock")).exists()
                && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        })
        .expect("no free X display between :40 and :99");
    let port = free_port();
    spawn(
        "Xvnc",
        port,
        dir,
        Command::new(xvnc).args([
            &format!(":{display}"),
            "-rfbport",
            &port.to_string(),
            "-SecurityTypes",
            "None",
            "-localhost",
            "-interface",
            "127.0.0.1",
            "-nolisten",
            "tcp",
        ]),
    )
}

/// Samba: `smbd --foreground --no-process-group -s CONF` with every directory
/// in the tempdir and a writable guest share `share` on `DIR/share`.
pub fn smbd() -> Service {
    smbd_share(None)
}

/// Samba with a share `share` on `DIR/share` that only `user` (with
/// `password`) may use: no guest access. `user` needs no account on this
/// machine: the share's `username map` maps it to root, whose entry in the
/// tempdir's passdb (`smbpasswd -c CONF -a root`) holds the password.
pub fn smbd_with_user(user: &str, password: &str) -> Service {
    smbd_share(Some((user, password)))
}

fn smbd_share(user: Option<(&str, &str)>) -> Service {
    let smbd = require("smbd", "samba");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["share", "state", "private", "lock", "cache", "pid", "log"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let port = free_port();
    let conf = d.join("smb.conf");
    let (global, share) = match user {
        None => (
            "  map to guest = Bad User\n".to_owned(),
            "  guest ok = yes\n".to_owned(),
        ),
        Some((user, _)) => {
            std::fs::write(d.join("users.map"), format!("root = {user}\n")).unwrap();
            (
                format!(
                    "  map to guest = Never\n  username map = {}/users.map\n",
                    d.display()
                ),
                "  guest ok = no\n  valid users = root\n".to_owned(),
            )
        }
    };
    std::fs::write(
        &conf,
        format!(
            "[global]
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  server role = standalone server
  pid directory = {d}/pid
  lock directory = {d}/lock
  state directory = {d}/state
  cache directory = {d}/cache
  private dir = {d}/private
  ncalrpc dir = {d}/lock/ncalrpc
  passdb backend = tdbsam:{d}/private/passdb.tdb
  log file = {d}/log/log.%m
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
{global}[share]
  path = {d}/share
  read only = no
{share}  force user = root
",
            d = d.display()
        ),
    )
    .unwrap();
    if let Some((_, password)) = user {
        let mut child = Command::new(require("smbpasswd", "samba"))
            .arg("-c")
            .arg(&conf)
            .args(["-s", "-a", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        write!(child.stdin.take().unwrap(), "{password}\n{password}\n").unwrap();
        assert!(child.wait().unwrap().success(), "smbpasswd -a root failed");
    }
    std::fs::write(d.join("client.conf"), "[global]\n").unwrap();
    spawn(
        "smbd",
        port,
        dir,
        Command::new(smbd)
            .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(&conf),
    )
}

/// `smbclient //127.0.0.1/share -p PORT -N -c CMDS` as a guest, in `cwd`.
pub fn smbclient(
    smbd_port: u16,
    client_conf: &Path,
    cwd: &Path,
    cmds: &str,
) -> Result<String, String> {
    let smbclient = require("smbclient", "smbclient");
    let out = Command::new(smbclient)
        .current_dir(cwd)
        .arg("//127.0.0.1/share")
        .args(["-p", &smbd_port.to_string(), "-N", "-s"])
        .arg(client_conf)
        .args(["-c", cmds])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Is `cifs` a filesystem this kernel can mount (after `modprobe cifs`)?
pub fn kernel_has_cifs() -> bool {
    let _ = Command::new("modprobe")
        .arg("cifs")
        .stderr(Stdio::null())
        .status();
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("cifs"))
}

/// A mount at `path`, unmounted (lazily) on drop.
pub struct MountGuard(pub PathBuf);

impl MountGuard {
    pub fn mount(args: &[&str], path: &Path) -> Result<Self, String> {
        let out = Command::new("mount").args(args).arg(path).output().unwrap();
        if out.status.success() {
            Ok(Self(path.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

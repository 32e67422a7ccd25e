//! First-boot verification (`landfall-agent verify`, docs/verify.md): run the
//! checks the role declares in the installed system and report them to the
//! server, which marks the machine `ready` or `degraded`.
//!
//! The install step writes `/etc/landfall/verify.json` into the target with
//! [`verify_config`] and [`write_verify_config`]; the NixOS unit
//! (`nix/modules/target/verify.nix`) adds `/etc/landfall/checks.json`
//! ([`ChecksFile`]).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use landfall_proto::verify::{
    Check, CheckResult, NamedCheck, VerifyConfig, VerifyRequest, VerifyResponse,
};
use landfall_proto::Assignment;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cmd::Cmd;
use crate::report::Client;
use crate::retry::{Attempt, Retry, RetryError};

/// Where the config lives in the installed system.
pub const CONFIG_PATH: &str = "etc/landfall/verify.json";
/// Filesystem types that count as an SMB mount.
pub const SMB_FSTYPES: &[&str] = &["cifs", "smb3"];
/// Detail of a check whose kind this agent does not know.
pub const UNKNOWN_KIND: &str = "unknown check kind, agent too old";

/// The config the install step writes: the server, the attempt's verify
/// token from the assignment, and `checks` plus a `hostname` check for the
/// assigned hostname (unless `checks` has one). Fails when the server sent no
/// verify token (a server older than first-boot verification).
pub fn verify_config(
    assignment: &Assignment,
    server_url: &str,
    mut checks: Vec<NamedCheck>,
) -> Result<VerifyConfig> {
    let Some(token) = assignment.verify_token.clone().filter(|t| !t.is_empty()) else {
        bail!("the server's assignment has no verify_token (server older than first-boot verification)");
    };
    if !checks
        .iter()
        .any(|c| matches!(c.check, Check::Hostname { .. }))
    {
        checks.push(NamedCheck::new(
            "hostname",
            Check::Hostname {
                expected: assignment.hostname.clone(),
            },
        ));
    }
    Ok(VerifyConfig {
        server: server_url.trim_end_matches('/').to_owned(),
        attempt_id: None,
        token,
        hostname: assignment.hostname.clone(),
        checks,
        timeout: None,
        server_ca_pem: None,
        server_ca_sha256: None,
        insecure_http: false,
    })
}

/// Write `root/etc/landfall/verify.json` atomically, mode 0600 in a 0700
/// `etc/landfall` (a missing `etc` is made 0755), the way secret files are
/// written ([`crate::secrets::place::write_target_file`]). Returns the path.
pub fn write_verify_config(root: &Path, cfg: &VerifyConfig) -> Result<PathBuf> {
    let mut bytes = serde_json::to_vec_pretty(cfg)?;
    bytes.push(b'\n');
    let path =
        crate::secrets::place::write_target_file(root, &format!("/{CONFIG_PATH}"), &bytes, 0o600)?;
    let dir = path.parent().expect("CONFIG_PATH has a directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    Ok(path)
}

/// `/etc/landfall/checks.json` as `nix/modules/target/verify.nix` renders it
/// from `landfall.verify.checks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChecksFile {
    /// Seconds the checks may take (failing ones are retried within it).
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub checks: Vec<ModuleCheck>,
}

/// One `landfall.verify.checks.NAME`: any of a unit, a TCP port, a path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleCheck {
    pub name: String,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub tcp: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
    /// A check in this file may also be written in the tagged form (`kind`).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl ChecksFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The checks to run. `tcp` becomes the protocol check the name suggests
    /// (`ssh*` -> SSH banner, `rdp*` -> X.224, `vnc*` -> RFB, else a plain
    /// connect) on localhost; `path` an SMB check with a write test when the
    /// name starts with `smb`, else a readable-path check; `unit` a
    /// `systemctl` active check. When an entry has several, the protocol or
    /// path check keeps the name and the others get `NAME.unit` / `NAME.path`.
    pub fn to_checks(&self) -> Vec<NamedCheck> {
        let mut out = Vec::new();
        for m in &self.checks {
            if m.rest.contains_key("kind") {
                let mut v = m.rest.clone();
                v.insert("name".into(), m.name.clone().into());
                let c = serde_json::from_value(serde_json::Value::Object(v))
                    .unwrap_or_else(|_| NamedCheck::new(&m.name, Check::Unknown));
                out.push(c);
                continue;
            }
            let lname = m.name.to_ascii_lowercase();
            let mut main_named = false;
            let mut name_for = |suffix: &str| {
                if main_named {
                    format!("{}.{suffix}", m.name)
                } else {
                    main_named = true;
                    m.name.clone()
                }
            };
            if let Some(port) = m.tcp {
                let host = "localhost".to_owned();
                let check = if lname.starts_with("ssh") {
                    Check::Ssh { host, port }
                } else if lname.starts_with("rdp") {
                    Check::Rdp { host, port }
                } else if lname.starts_with("vnc") {
                    Check::Vnc { host, port }
                } else {
                    Check::Tcp { host, port }
                };
                out.push(NamedCheck::new(name_for("tcp"), check));
            }
            if let Some(path) = &m.path {
                let check = if lname.starts_with("smb") {
                    Check::Smb {
                        mountpoint: path.clone(),
                        write_test: true,
                    }
                } else {
                    Check::Path { path: path.clone() }
                };
                out.push(NamedCheck::new(name_for("path"), check));
            }
            if let Some(unit) = &m.unit {
                out.push(NamedCheck::new(
                    name_for("unit"),
                    Check::Unit { unit: unit.clone() },
                ));
            }
            if !main_named {
                out.push(NamedCheck::new(&m.name, Check::Unknown));
            }
        }
        out
    }
}

/// Timeouts of the checks.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// TCP connect.
    pub connect: Duration,
    /// Each read of an answer (and the automount trigger of an SMB check).
    pub read: Duration,
    /// How long a failing check is retried (0: one try).
    pub window: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(3),
            window: Duration::ZERO,
        }
    }
}

/// Run every check concurrently; results in the order of `checks`. A check
/// that fails is tried again (1 s doubling to 5 s) until it passes or
/// `opts.window` is over; its last try is reported.
pub async fn run_checks(checks: &[NamedCheck], opts: &CheckOptions) -> Vec<CheckResult> {
    let deadline = Instant::now() + opts.window;
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in checks.iter().enumerate() {
        let c = c.clone();
        let opts = *opts;
        set.spawn(async move { (i, run_one(&c, &opts, deadline).await) });
    }
    let mut out: Vec<Option<CheckResult>> = vec![None; checks.len()];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, res)) => out[i] = Some(res),
            Err(e) => tracing::error!("a check task failed: {e}"),
        }
    }
    out.into_iter()
        .zip(checks)
        .map(|(r, c)| {
            r.unwrap_or_else(|| CheckResult {
                name: c.display_name().to_owned(),
                ok: false,
                detail: "the check panicked".into(),
                millis: 0,
            })
        })
        .collect()
}

async fn run_one(c: &NamedCheck, opts: &CheckOptions, deadline: Instant) -> CheckResult {
    let name = c.display_name().to_owned();
    let retry = Retry {
        initial: Duration::from_secs(1),
        cap: Duration::from_secs(5),
        max_tries: None,
    };
    let unknown = matches!(c.check, Check::Unknown);
    let r = retry
        .run(
            |_| async {
                let t = Instant::now();
                let r = check_once(&c.check, opts).await;
                let ms = t.elapsed().as_millis() as u64;
                match r {
                    Ok(d) => Attempt::Done((d, ms)),
                    Err(d) if unknown || Instant::now() >= deadline => Attempt::Fatal((d, ms)),
                    Err(d) => Attempt::Retry((d, ms)),
                }
            },
            |(d, _), n, wait| {
                tracing::info!(check = %name, tries = n, "not yet: {d}; again in {wait:?}")
            },
        )
        .await;
    let (ok, (detail, millis)) = match r {
        Ok(v) => (true, v),
        Err(RetryError::Fatal(v) | RetryError::Exhausted { last: v, .. }) => (false, v),
    };
    CheckResult {
        name,
        ok,
        detail,
        millis,
    }
}

/// One try of one check: `Ok(what was seen)` or `Err(why not)`.
pub async fn check_once(check: &Check, opts: &CheckOptions) -> Result<String, String> {
    match check {
        Check::Ssh { host, port } => ssh(host, *port, opts).await,
        Check::Rdp { host, port } => rdp(host, *port, opts).await,
        Check::Vnc { host, port } => vnc(host, *port, opts).await,
        Check::Tcp { host, port } => connect(host, *port, opts)
            .await
            .map(|s| format!("connected to {}", peer(&s, host, *port))),
        Check::Smb {
            mountpoint,
            write_test,
        } => check_mount(Path::new(mountpoint), SMB_FSTYPES, *write_test, opts.read).await,
        Check::Hostname { expected } => hostname(expected),
        Check::Unit { unit } => unit_active(unit).await,
        Check::Path { path } => path_readable(Path::new(path), opts.read).await,
        Check::Unknown => Err(UNKNOWN_KIND.to_owned()),
    }
}

async fn connect(host: &str, port: u16, opts: &CheckOptions) -> Result<TcpStream, String> {
    match tokio::time::timeout(opts.connect, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "connect {host}:{port}: no answer within {:?}",
            opts.connect
        )),
    }
}

fn peer(s: &TcpStream, host: &str, port: u16) -> String {
    s.peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("{host}:{port}"))
}

/// Read once (at most `buf.len()` bytes) within the read timeout; 0 bytes is an error.
async fn read_some(
    s: &mut TcpStream,
    buf: &mut [u8],
    opts: &CheckOptions,
) -> Result<usize, String> {
    match tokio::time::timeout(opts.read, s.read(buf)).await {
        Ok(Ok(0)) => Err("the server closed the connection without answering".into()),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("reading: {e}")),
        Err(_) => Err(format!("no answer within {:?}", opts.read)),
    }
}

/// Shown bytes of an unexpected answer: printable ASCII, the rest as `.`.
fn shown(b: &[u8]) -> String {
    b.iter()
        .take(40)
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

/// RFC 4253 4.2: the server sends `SSH-2.0-...\r\n` (other lines may come first).
async fn ssh(host: &str, port: u16, opts: &CheckOptions) -> Result<String, String> {
    let mut s = connect(host, port, opts).await?;
    let mut got = Vec::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = read_some(&mut s, &mut buf, opts).await.map_err(|e| {
            if seen.is_empty() {
                format!("{host}:{port}: {e}")
            } else {
                format!("{host}:{port}: no SSH banner ({e}); the server said {seen:?}")
            }
        })?;
        got.extend_from_slice(&buf[..n]);
        while let Some(end) = got.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = got.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if line.starts_with("SSH-2.0-") || line.starts_with("SSH-1.99-") {
                return Ok(line);
            }
            if line.starts_with("SSH-") {
                return Err(format!("{host}:{port}: unsupported SSH version: {line}"));
            }
            seen.push(shown(line.as_bytes()));
        }
        // No SSH server sends more than a few lines before its version.
        if got.len() > 255 || got.first().is_some_and(|&c| !(0x20..0x7f).contains(&c)) {
            return Err(format!(
                "{host}:{port}: not an SSH server (answered {:?})",
                shown(&got)
            ));
        }
    }
}

/// MS-RDPBCGR 2.2.1.1: TPKT (RFC 1006) + X.224 Connection Request (class 0)
/// + RDP Negotiation Request for TLS | CredSSP (`PROTOCOL_SSL | PROTOCOL_HYBRID`).
pub const RDP_CONNECTION_REQUEST: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, // TPKT: version 3, reserved, length 19
    0x0e, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, // X.224: LI 14, CR, DST-REF, SRC-REF, class 0
    0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00,
    0x00, // RDP_NEG_REQ, flags, length 8, SSL|HYBRID
];

/// Interpret a server's answer to [`RDP_CONNECTION_REQUEST`]
/// (MS-RDPBCGR 2.2.1.2): a TPKT with an X.224 Connection Confirm (0xD0),
/// optionally an RDP Negotiation Response or Failure.
pub fn parse_rdp_confirm(b: &[u8]) -> Result<String, String> {
    if b.len() < 11 || b[0] != 0x03 || b[1] != 0x00 {
        return Err(format!(
            "not an RDP server (no TPKT answer: {:02x?})",
            &b[..b.len().min(11)]
        ));
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if len < 11 || len > b.len() {
        return Err(format!("not an RDP server (TPKT length {len})"));
    }
    if b[5] & 0xf0 != 0xd0 {
        return Err(format!(
            "not an RDP server (X.224 code {:#04x}, not a Connection Confirm 0xd0)",
            b[5]
        ));
    }
    let neg = &b[11..len];
    if neg.len() >= 8 {
        let value = u32::from_le_bytes([neg[4], neg[5], neg[6], neg[7]]);
        match neg[0] {
            0x02 => {
                let proto = match value {
                    0 => "standard RDP security",
                    1 => "TLS",
                    2 => "CredSSP",
                    4 => "RDSTLS",
                    8 => "CredSSP with early user authorization",
                    _ => "protocol",
                };
                return Ok(format!(
                    "X.224 Connection Confirm, {proto} selected ({value:#x})"
                ));
            }
            0x03 => {
                return Ok(format!(
                    "X.224 Connection Confirm with negotiation failure code {value}"
                ))
            }
            _ => {}
        }
    }
    Ok("X.224 Connection Confirm".to_owned())
}

async fn rdp(host: &str, port: u16, opts: &CheckOptions) -> Result<String, String> {
    let mut s = connect(host, port, opts).await?;
    tokio::time::timeout(opts.read, s.write_all(&RDP_CONNECTION_REQUEST))
        .await
        .map_err(|_| format!("{host}:{port}: sending the connection request timed out"))?
        .map_err(|e| format!("{host}:{port}: sending the connection request: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = read_some(&mut s, &mut buf, opts)
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        got.extend_from_slice(&buf[..n]);
        if got.len() >= 4 {
            if got[0] != 0x03 {
                return Err(format!(
                    "{host}:{port}: not an RDP server (answered {:?})",
                    shown(&got)
                ));
            }
            let len = u16::from_be_bytes([got[2], got[3]]) as usize;
            if got.len() >= len.max(11) || got.len() >= 256 {
                return parse_rdp_confirm(&got).map_err(|e| format!("{host}:{port}: {e}"));
            }
        }
    }
}

/// RFC 6143 7.1.1: the server starts with `RFB xxx.yyy\n` (12 bytes).
async fn vnc(host: &str, port: u16, opts: &CheckOptions) -> Result<String, String> {
    let mut s = connect(host, port, opts).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 12];
    while got.len() < 12 {
        let n = read_some(&mut s, &mut buf[..12 - got.len()], opts)
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        got.extend_from_slice(&buf[..n]);
        if !b"RFB ".starts_with(&got[..got.len().min(4)]) {
            break;
        }
    }
    let ok = got.len() == 12
        && got.starts_with(b"RFB ")
        && got[4..7].iter().all(u8::is_ascii_digit)
        && got[7] == b'.'
        && got[8..11].iter().all(u8::is_ascii_digit)
        && got[11] == b'\n';
    if ok {
        Ok(String::from_utf8_lossy(&got[..11]).into_owned())
    } else {
        Err(format!(
            "{host}:{port}: not a VNC server (answered {:?})",
            shown(&got)
        ))
    }
}

fn hostname(expected: &str) -> Result<String, String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("reading /proc/sys/kernel/hostname: {e}"))?;
    let h = h.trim();
    if h == expected {
        Ok(h.to_owned())
    } else {
        Err(format!("hostname is {h:?}, expected {expected:?}"))
    }
}

async fn unit_active(unit: &str) -> Result<String, String> {
    let out = Cmd::new("systemctl")
        .args(["show", "--property=ActiveState", "--value", unit])
        .run()
        .await
        .map_err(|e| e.to_string())?;
    match out.stdout.trim() {
        "active" => Ok(format!("{unit} is active")),
        s => Err(format!("{unit} is {s}")),
    }
}

/// Run blocking filesystem work with a time limit (an automount of an
/// unreachable server can hang for long).
async fn blocking<T: Send + 'static>(
    what: String,
    limit: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

async fn path_readable(path: &Path, limit: Duration) -> Result<String, String> {
    let p = path.to_owned();
    blocking(format!("reading {}", path.display()), limit, move || {
        let md = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if md.is_dir() {
            let n = std::fs::read_dir(&p)
                .map_err(|e| format!("listing {}: {e}", p.display()))?
                .count();
            Ok(format!("{}: directory, {n} entries", p.display()))
        } else {
            let mut b = [0u8; 1];
            std::fs::File::open(&p)
                .and_then(|mut f| f.read(&mut b))
                .map_err(|e| format!("reading {}: {e}", p.display()))?;
            Ok(format!("{}: readable, {} bytes", p.display(), md.len()))
        }
    })
    .await
}

pub use crate::hw::mountinfo::{parse as parse_mountinfo, MountEntry};

/// The SMB check's logic with the accepted filesystem types as a parameter
/// (`Check::Smb` passes [`SMB_FSTYPES`]): list `mountpoint` (which triggers
/// an automount), find the top mount at exactly that path in
/// /proc/self/mountinfo, require one of `fstypes`, and with `write_test`
/// write a file, read it back and remove it.
pub async fn check_mount(
    mountpoint: &Path,
    fstypes: &[&str],
    write_test: bool,
    limit: Duration,
) -> Result<String, String> {
    if !mountpoint.is_absolute() {
        return Err(format!("{}: not an absolute path", mountpoint.display()));
    }
    let mp = mountpoint.to_owned();
    let types: Vec<String> = fstypes.iter().map(|s| s.to_string()).collect();
    blocking(
        format!("checking {}", mountpoint.display()),
        limit,
        move || {
            // Listing it mounts an automount (x-systemd.automount) first.
            std::fs::read_dir(&mp).map_err(|e| format!("listing {}: {e}", mp.display()))?;
            let info = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
            let want = mp.to_string_lossy();
            let want = want.trim_end_matches('/');
            let top = parse_mountinfo(&info)
                .into_iter()
                .rev()
                .find(|m| m.mountpoint == want || (want.is_empty() && m.mountpoint == "/"))
                .ok_or_else(|| format!("nothing is mounted at {}", mp.display()))?;
            if !types.contains(&top.fstype) {
                return Err(format!(
                    "{} is a {} mount of {}, not {}",
                    mp.display(),
                    top.fstype,
                    top.source,
                    types.join("/")
                ));
            }
            let mut detail = format!("{} {} at {}", top.fstype, top.source, mp.display());
            if write_test {
                write_read_remove(&mp)?;
                detail.push_str(", file written, read back, removed");
            }
            Ok(detail)
        },
    )
    .await
}

fn write_read_remove(dir: &Path) -> Result<(), String> {
    let mut rnd = [0u8; 8];
    random_bytes(&mut rnd);
    let tag: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!(".landfall-verify-{tag}"));
    let content = format!("landfall first-boot verification {tag}\n");
    let r = (|| -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::read(&path)
    })();
    let removed = std::fs::remove_file(&path);
    let back = r.map_err(|e| format!("writing {}: {e}", path.display()))?;
    if back != content.as_bytes() {
        return Err(format!(
            "{}: read back {} bytes that differ from the {} written",
            path.display(),
            back.len(),
            content.len()
        ));
    }
    removed.map_err(|e| format!("removing {}: {e}", path.display()))
}

/// Unpredictable enough for a file name: time and pid through SHA-256.
fn random_bytes(buf: &mut [u8]) {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let h = Sha256::digest(seed.as_bytes());
    for (b, h) in buf.iter_mut().zip(h.iter()) {
        *b = *h;
    }
}

/// The running system's hostname, as reported.
pub fn current_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Send the results (retried: 500 ms doubling to 10 s, 8 tries; 4xx is final).
pub async fn report(
    cfg: &VerifyConfig,
    checks: &[CheckResult],
    retry: &Retry,
) -> Result<VerifyResponse> {
    let client = Client::new(&cfg.server, &crate::report::ServerTrust::for_verify(cfg)?)?;
    let req = VerifyRequest {
        attempt_id: cfg.attempt_id.clone(),
        hostname: current_hostname(),
        checks: checks.to_vec(),
    };
    retry
        .run(
            |_| async {
                match client.verify(cfg.token.expose(), &req).await {
                    Ok(r) => Attempt::Done(r),
                    Err(e) if e.retryable() => Attempt::Retry(e),
                    Err(e) => Attempt::Fatal(e),
                }
            },
            |e, n, d| {
                tracing::warn!("reporting verification (try {n}) failed: {e}; again in {d:?}")
            },
        )
        .await
        .with_context(|| format!("reporting the verification to {}", cfg.server))
}

/// The report retry policy of `landfall-agent verify`.
pub fn report_retry() -> Retry {
    Retry {
        initial: Duration::from_millis(500),
        cap: Duration::from_secs(10),
        max_tries: Some(8),
    }
}

/// Results as a table for the console and the journal.
pub fn table(results: &[CheckResult]) -> String {
    let w = results
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut s = format!("{:<w$}  {:<6}  {:>6}  DETAIL\n", "CHECK", "RESULT", "MS");
    for r in results {
        s.push_str(&format!(
            "{:<w$}  {:<6}  {:>6}  {}\n",
            r.name,
            if r.ok { "ok" } else { "FAILED" },
            r.millis,
            r.detail
        ));
    }
    s
}

/// What `landfall-agent verify` was asked to do.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// verify.json (needed to report; `--no-report` runs without it).
    pub config: PathBuf,
    /// The NixOS module's checks.json, if any.
    pub checks_file: Option<PathBuf>,
    pub report: bool,
    /// Retry window in seconds; default: checks.json's, else verify.json's, else 0.
    pub timeout: Option<u64>,
    /// Keep verify.json after the server answered `ready` (it is removed otherwise).
    pub keep_config: bool,
    pub checks: CheckOptions,
    pub retry: Retry,
}

impl VerifyOptions {
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            checks_file: None,
            report: true,
            timeout: None,
            keep_config: false,
            checks: CheckOptions::default(),
            retry: report_retry(),
        }
    }
}

/// What `landfall-agent verify` did; `exit_code` is its process status.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    pub checks: Vec<CheckResult>,
    /// The server's answer (`ready`/`degraded`), when reported.
    pub state: Option<landfall_proto::MachineState>,
    /// Why reporting failed.
    pub report_error: Option<String>,
    /// 0: every check passed (and was reported); 1: a check failed (and the
    /// failure was reported); 2: reporting failed.
    pub exit_code: u8,
}

/// Load the config and checks, run them, report. `Err` only for a config
/// that cannot be read (the caller exits 2 for it too).
pub async fn verify(opts: &VerifyOptions) -> Result<VerifyOutcome> {
    let cfg = match std::fs::read_to_string(&opts.config) {
        Ok(text) => Some(
            serde_json::from_str::<VerifyConfig>(&text)
                .with_context(|| format!("parsing {}", opts.config.display()))?,
        ),
        Err(e) if !opts.report && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", opts.config.display())),
    };
    let file = match &opts.checks_file {
        Some(p) => Some(ChecksFile::load(p)?),
        None => None,
    };
    let mut checks: Vec<NamedCheck> = cfg.as_ref().map(|c| c.checks.clone()).unwrap_or_default();
    if let Some(f) = &file {
        checks.extend(f.to_checks());
    }
    let window = opts
        .timeout
        .or(file.as_ref().and_then(|f| f.timeout))
        .or(cfg.as_ref().and_then(|c| c.timeout))
        .unwrap_or(0);
    let copts = CheckOptions {
        window: Duration::from_secs(window),
        ..opts.checks
    };
    let results = run_checks(&checks, &copts).await;
    let all_ok = results.iter().all(|r| r.ok);
    let mut out = VerifyOutcome {
        checks: results,
        state: None,
        report_error: None,
        exit_code: if all_ok { 0 } else { 1 },
    };
    let Some(cfg) = cfg.filter(|_| opts.report) else {
        return Ok(out);
    };
    match report(&cfg, &out.checks, &opts.retry).await {
        Ok(r) => {
            out.state = Some(r.state);
            if r.state == landfall_proto::MachineState::Ready && !opts.keep_config {
                // The token has done its job; later boots skip the unit.
                if let Err(e) = std::fs::remove_file(&opts.config) {
                    tracing::warn!("removing {}: {e}", opts.config.display());
                }
            }
        }
        Err(e) => {
            out.report_error = Some(format!("{e:#}"));
            out.exit_code = 2;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdp_confirm_parses() {
        // xrdp's answer selecting TLS.
        let cc = [
            0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x02, 0x00, 0x08,
            0x00, 0x01, 0x00, 0x00, 0x00,
        ];
        assert_eq!(
            parse_rdp_confirm(&cc).unwrap(),
            "X.224 Connection Confirm, TLS selected (0x1)"
        );
        let bare = [0x03, 0x00, 0x00, 0x0b, 0x06, 0xd0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_rdp_confirm(&bare).unwrap(),
            "X.224 Connection Confirm"
        );
        let mut cr = RDP_CONNECTION_REQUEST;
        assert!(parse_rdp_confirm(&cr).unwrap_err().contains("0xe0"));
        cr[0] = b'S';
        assert!(parse_rdp_confirm(&cr).is_err());
        assert!(parse_rdp_confirm(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn mountinfo_parses_escapes() {
        let m = parse_mountinfo(
            "36 35 98:0 / /mnt/my\\040share rw,noatime master:1 - cifs //srv/homes rw\n\
             37 35 98:0 / /home/a rw shared:2 - autofs systemd-1 rw\n",
        );
        assert_eq!(m[0].mountpoint, "/mnt/my share");
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("cifs", "//srv/homes")
        );
        assert_eq!(m[1].fstype, "autofs");
    }

    #[test]
    fn module_checks_map_to_protocol_checks() {
        let f: ChecksFile = serde_json::from_str(
            r#"{"timeout":300,"checks":[
                {"name":"ssh","unit":"sshd.service","tcp":22},
                {"name":"rdp","tcp":3389},
                {"name":"smb-home-alice","path":"/home/alice"},
                {"name":"web","tcp":80},
                {"name":"mystery"},
                {"name":"h","kind":"hostname","expected":"ws-01"}]}"#,
        )
        .unwrap();
        let c = f.to_checks();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ssh",
                "ssh.unit",
                "rdp",
                "smb-home-alice",
                "web",
                "mystery",
                "h"
            ]
        );
        assert!(matches!(c[0].check, Check::Ssh { port: 22, .. }));
        assert!(matches!(&c[1].check, Check::Unit { unit } if unit == "sshd.service"));
        assert!(matches!(c[2].check, Check::Rdp { port: 3389, .. }));
        assert!(matches!(
            c[3].check,
            Check::Smb {
                write_test: true,
                ..
            }
        ));
        assert!(matches!(c[4].check, Check::Tcp { port: 80, .. }));
        assert_eq!(c[5].check, Check::Unknown);
        assert!(matches!(&c[6].check, Check::Hostname { expected } if expected == "ws-01"));
    }

    #[tokio::test]
    async fn unknown_kinds_fail_at_once() {
        let opts = CheckOptions {
            window: Duration::from_secs(60),
            ..Default::default()
        };
        let t = Instant::now();
        let r = run_checks(&[NamedCheck::new("future", Check::Unknown)], &opts).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            r,
            [CheckResult {
                name: "future".into(),
                ok: false,
                detail: UNKNOWN_KIND.into(),
                millis: r[0].millis,
            }]
        );
    }

    #[test]
    fn config_is_written_0600_in_0700() {
        let dir = tempfile::tempdir().unwrap();
        let a: Assignment =
            serde_json::from_str(r#"{"hostname":"ws-01","role":"r","verify_token":"CANARYtok"}"#)
                .unwrap();
        let cfg = verify_config(&a, "http://srv:8080/", vec![]).unwrap();
        assert_eq!(cfg.server, "http://srv:8080");
        assert!(
            matches!(&cfg.checks[0].check, Check::Hostname { expected } if expected == "ws-01")
        );
        let p = write_verify_config(dir.path(), &cfg).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        let back: VerifyConfig = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, cfg);
        // Rewriting replaces it; no temporary file is left.
        write_verify_config(dir.path(), &cfg).unwrap();
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);

        let old: Assignment = serde_json::from_str(r#"{"hostname":"a","role":"r"}"#).unwrap();
        assert!(verify_config(&old, "http://s", vec![]).is_err());
    }
}

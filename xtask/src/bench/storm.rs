//! `./x bench storm [N]`: a boot storm of N simulated machines (default
//! 1,000) through the real HTTP API of a real `landfall serve` (release).
//!
//! Each machine, all of them at once: `GET /boot.ipxe` on a new connection
//! (as iPXE does), `hello` with the boot token from the script (the agent
//! protocol, `landfall-proto` types, a nonce of its own), 40 progress events
//! as one request each, then the terminal event (`done finished`). Every
//! request is retried until it is answered 2xx (an event until it is acked);
//! a transport error moves the machine to the next server, as an agent
//! whose server is gone would reach another behind the same name.
//!
//! Run 1: one server on SQLite. Run 2: two servers sharing PostgreSQL, one
//! of them killed -9 when half the events are acked; its machines go on
//! against the other. Printed per run: p50/p99/max per request kind,
//! events/s, the server's CPU per event (utime+stime from /proc/PID/stat
//! over the storm), its peak RSS (VmHWM), lost events (acked by a server
//! but not read back through the admin API: must be 0) and machines ending
//! `installed`, beside the goals of issue 14. With two or more CPUs the
//! server(s) run on CPU 0 (taskset) and the load generator (this process,
//! one thread) on CPU 1; its own CPU use is printed so a saturated generator
//! is visible.
//!
//! The load generator speaks HTTP/1.1 through hyper's client connection
//! directly (no pool, no per-request client machinery): each machine keeps
//! one keep-alive connection for hello and its events, as an agent does,
//! and each `boot.ipxe` opens (and closes) a connection of its own. Bodies
//! are serialized once per request, not once per try.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, StatusCode};
use landfall_proto::inventory::Nic;
use landfall_proto::{
    Event, EventKind, EventsRequest, EventsResponse, HelloRequest, HelloResponse, Inventory, Step,
};

use crate::build::{self, Cmd};

// The throwaway PostgreSQL cluster of the server's tests, not a copy of it.
#[allow(dead_code)]
#[path = "../../../server/tests/common/pg.rs"]
mod pg;

pub const DEFAULT_MACHINES: usize = 1000;
const PROGRESS_EVENTS: u64 = 40;
/// The terminal event's seq.
const LAST_SEQ: u64 = PROGRESS_EVENTS + 1;

/// Issue 14's goals on a 2-core machine.
const GOAL_EVENTS_S: f64 = 20_000.0;
const GOAL_CPU_MS: f64 = 0.05;
const GOAL_P99_MS: f64 = 50.0;
const GOAL_BOOT_P99_MS: f64 = 100.0;

const LAYOUT_JSON: &str = r#"{"disko":{"devices":{"disk":{"main":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}}}}}}"#;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Boot,
    Hello,
    Event,
    Terminal,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::Boot, "boot.ipxe"),
    (Kind::Hello, "hello"),
    (Kind::Event, "event"),
    (Kind::Terminal, "terminal"),
];

#[derive(Default)]
struct Stats {
    ok: HashMap<Kind, Vec<Duration>>,
    /// Transport errors and non-2xx answers, per kind.
    errors: HashMap<Kind, u64>,
    /// boot.ipxe answered with a hold (e.g. "server busy") instead of an install.
    holds: u64,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
}

/// The servers under test, killed when the bench ends (or fails).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `landfall serve`: its pid, base URL and data dir (admin token).
#[derive(Clone)]
struct Server {
    pid: u32,
    base: String,
    data: PathBuf,
}

pub fn run(n: usize) -> Result<()> {
    if n == 0 {
        bail!("./x bench storm N: N is the number of machines, at least 1");
    }
    let landfall = build::server_release()?;
    let pin = std::thread::available_parallelism().map_or(1, |c| c.get()) >= 2;
    if pin {
        if super::artifacts::which("taskset").is_none() {
            bail!("taskset is missing: apt install util-linux");
        }
        // This process (one thread so far; the runtime's threads inherit it).
        build::output(&[
            "taskset",
            "-a",
            "-p",
            "-c",
            "1",
            &std::process::id().to_string(),
        ])?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(sqlite(&landfall, n, pin))?;
    rt.block_on(postgres(&landfall, n, pin))
}

/// Run 1: one server, its embedded SQLite.
async fn sqlite(bin: &Path, n: usize, pin: bool) -> Result<()> {
    let tmp = tempfile::tempdir().context("making a tempdir")?;
    let config = write_config(tmp.path(), n)?;
    let mut procs = Procs(Vec::new());
    let server = start(&mut procs, bin, &config, &tmp.path().join("a"), &[], pin)?;
    println!(
        "bench storm: {n} machines on SQLite, one landfall serve (release){}",
        if pin {
            " on CPU 0, the load generator on CPU 1 (taskset)"
        } else {
            ", one CPU shared with the load generator"
        }
    );
    print_load();
    let report = storm(std::slice::from_ref(&server), n, None).await?;
    let lost = read_back(&server, n, &report).await?;
    report.print(n, &lost, &[server.pid]);
    drop(procs);
    Ok(())
}

/// The machine's load average: other work on a shared machine takes CPU
/// from the pinned server and shows in its figures.
fn print_load() {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        println!(
            "  load average before the storm (1/5/15 min): {}",
            l.join(" ")
        );
    }
}

/// Run 2: two servers on one PostgreSQL, one killed -9 mid-storm.
async fn postgres(bin: &Path, n: usize, pin: bool) -> Result<()> {
    let help = build::output(&[bin.to_str().context("path")?, "serve", "--help"])?;
    if !help.contains("--database") {
        println!(
            "bench storm on PostgreSQL (two servers, one killed -9 mid-storm): NOT RUN: this \
             landfall has no `serve --database` (issue 14's PostgreSQL backend is not merged)"
        );
        return Ok(());
    }
    // The suite's throwaway cluster (server/tests/common/pg.rs): initdb and
    // pg_ctl as nobody in a tempdir, stopped by its watchdog when we exit.
    let url = pg::new_database();
    let tmp = tempfile::tempdir().context("making a tempdir")?;
    let config = write_config(tmp.path(), n)?;
    let mut procs = Procs(Vec::new());
    let db = ["--database", url.as_str()];
    let a = start(&mut procs, bin, &config, &tmp.path().join("a"), &db, pin)?;
    let b = start(&mut procs, bin, &config, &tmp.path().join("b"), &db, pin)?;
    println!(
        "bench storm: {n} machines on two landfall serve (release) sharing PostgreSQL (Debian's, \
         a throwaway cluster: fsync off, unpinned){}; server 2 is killed -9 when half the \
         events are acked and its machines go on against server 1",
        if pin {
            ", both servers on CPU 0, the load generator on CPU 1"
        } else {
            ""
        }
    );
    print_load();
    let victim = procs.0.remove(1);
    let half = n as u64 * LAST_SEQ / 2;
    let kill = KillAt {
        events: half,
        server: 1,
    };
    let report = storm(&[a.clone(), b], n, Some((kill, victim))).await?;
    let back = read_back(&a, n, &report).await?;
    println!("  (CPU and RSS: the landfall processes; PostgreSQL's own CPU is not counted)");
    report.print(n, &back, &[a.pid]);
    drop(procs);
    Ok(())
}

fn mac(i: usize) -> String {
    format!(
        "52:54:01:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// landfall.toml listing the N machines (role `ws`, a one-disk layout).
fn write_config(dir: &Path, n: usize) -> Result<PathBuf> {
    let layouts = dir.join("layouts");
    std::fs::create_dir_all(&layouts)?;
    std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON)?;
    let mut c =
        String::from("[enroll]\nunknown = \"hold\"\n\n[roles.ws]\nlayout = \"single-disk\"\n");
    for i in 0..n {
        c.push_str(&format!(
            "\n[[machines]]\nmac = \"{}\"\nhostname = \"storm-{i:05}\"\nrole = \"ws\"\n",
            mac(i)
        ));
    }
    let path = dir.join("landfall.toml");
    std::fs::write(&path, c)?;
    Ok(path)
}

/// `landfall serve` on a free loopback port with its own data dir,
/// `extra` arguments after `serve` (e.g. `--database URL`).
fn start(
    procs: &mut Procs,
    bin: &Path,
    config: &Path,
    data: &Path,
    extra: &[&str],
    pin: bool,
) -> Result<Server> {
    std::fs::create_dir_all(data)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut argv: Vec<&str> = if pin {
        vec!["taskset", "-c", "0"]
    } else {
        vec![]
    };
    let (b, c, d) = (
        bin.to_str().context("path")?,
        config.to_str().context("path")?,
        data.to_str().context("path")?,
    );
    argv.extend([b, "serve", "--config", c, "--data", d, "--listen", &listen]);
    argv.extend(extra);
    let log = data.join("serve.log");
    let child = Cmd::new(argv[0])
        .args(&argv[1..])
        .env("LANDFALL_LOG", "warn")
        .spawn(Stdio::null(), std::fs::File::create(&log)?)?;
    let pid = child.id();
    procs.0.push(child);
    let child = procs.0.last_mut().expect("pushed");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(&listen).is_ok() {
            break;
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("landfall serve exited ({st}) before listening:\n{log}");
        }
        if Instant::now() > until {
            bail!("landfall serve does not listen on {listen} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        pid,
        base: format!("http://{listen}"),
        data: data.to_owned(),
    })
}

/// What one storm measured.
struct Report {
    stats: Stats,
    wall: Duration,
    /// The servers' CPU ticks over the storm (a killed one: until its kill).
    server_ticks: u64,
    own_ticks: u64,
    clk_tck: f64,
    /// Per machine: the highest seq a server acked (0: none).
    acked: Vec<u64>,
    failures: Vec<String>,
    peak_rss_kib: u64,
}

/// Kill `server` (SIGKILL) once this many events are acked.
struct KillAt {
    events: u64,
    server: usize,
}

struct Shared {
    /// The servers' `host:port`.
    addrs: Vec<String>,
    stats: Mutex<Stats>,
    acked_events: AtomicU64,
    /// A server killed: its index (usize::MAX: none).
    killed: AtomicUsize,
}

async fn storm(servers: &[Server], n: usize, kill: Option<(KillAt, Child)>) -> Result<Report> {
    let clk_tck: f64 = build::output(&["getconf", "CLK_TCK"])?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let shared = Arc::new(Shared {
        addrs: servers
            .iter()
            .map(|s| s.base.trim_start_matches("http://").to_owned())
            .collect(),
        stats: Mutex::new(Stats::default()),
        acked_events: AtomicU64::new(0),
        killed: AtomicUsize::new(usize::MAX),
    });
    let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    let own0 = cpu_ticks(std::process::id())?;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let sh = shared.clone();
            tokio::spawn(async move { machine(&sh, i).await })
        })
        .collect();
    // The killer: SIGKILL once enough events are acked; that server's CPU
    // is read just before.
    let mut killed_ticks = None;
    if let Some((at, mut child)) = kill {
        while shared.acked_events.load(Ordering::Relaxed) < at.events {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!(
                    "the storm did not reach {} acked events in 10 minutes",
                    at.events
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        killed_ticks = Some((at.server, cpu_ticks(pids[at.server])?));
        child.kill().context("kill -9 the server")?;
        shared.killed.store(at.server, Ordering::Relaxed);
        let _ = child.wait();
        println!(
            "  killed -9 server {} ({}) after {} acked events, {:.1} s into the storm",
            at.server + 1,
            servers[at.server].base,
            at.events,
            t0.elapsed().as_secs_f64()
        );
    }
    let mut acked = vec![0; n];
    let mut failures = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(seq) => acked[i] = seq,
            Err((seq, e)) => {
                acked[i] = seq;
                failures.push(format!("{}: {e:#}", mac(i)));
            }
        }
    }
    let wall = t0.elapsed();
    let own_ticks = cpu_ticks(std::process::id())? - own0;
    let mut server_ticks = 0;
    let mut peak_rss_kib = 0;
    for (k, pid) in pids.iter().enumerate() {
        server_ticks += match killed_ticks {
            Some((s, t)) if s == k => t - cpu0[k],
            _ => {
                peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(*pid)?);
                cpu_ticks(*pid)? - cpu0[k]
            }
        };
    }
    let stats = std::mem::take(&mut *shared.stats.lock().expect("stats"));
    Ok(Report {
        stats,
        wall,
        server_ticks,
        own_ticks,
        clk_tck,
        acked,
        failures,
        peak_rss_kib,
    })
}

/// One machine's install: Ok(highest acked seq) or the seq reached and why
/// it stopped.
async fn machine(sh: &Shared, i: usize) -> Result<u64, (u64, anyhow::Error)> {
    let mac = mac(i);
    let mut at = i % sh.addrs.len();
    let mut acked = 0;
    // The agent's keep-alive connection (None: open one on the next request).
    let mut conn = None;
    let run = async {
        // boot.ipxe until it answers an install script.
        let boot = Req {
            method: Method::GET,
            path: format!(
                "/boot.ipxe?mac={}&arch=x86_64&platform=efi",
                mac.replace(':', "%3A")
            ),
            auth: None,
            body: Bytes::new(),
        };
        let token = loop {
            let script = request(sh, Kind::Boot, &mut at, &mut None, &boot).await?;
            let script = String::from_utf8_lossy(&script);
            match script
                .split_whitespace()
                .find_map(|w| w.strip_prefix("landfall.token="))
            {
                Some(t) => break t.to_owned(),
                None => {
                    // A hold ("server busy"): sleep as the script says, as iPXE does.
                    sh.stats.lock().expect("stats").holds += 1;
                    tokio::time::sleep(Duration::from_secs(hold_sleep(&script))).await;
                }
            }
        };
        let hello = HelloRequest {
            boot_token: token.clone(),
            agent_version: "bench-storm".into(),
            protocol: landfall_proto::PROTOCOL_VERSION,
            inventory: Inventory {
                nics: vec![Nic {
                    name: "eth0".into(),
                    mac: mac.clone(),
                    link_up: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            nonce: Some(format!("{:064x}", i + 1)),
        };
        let hello = Req {
            method: Method::POST,
            path: "/api/v1/agent/hello".into(),
            auth: None,
            body: serde_json::to_vec(&hello)?.into(),
        };
        let body = request(sh, Kind::Hello, &mut at, &mut conn, &hello).await?;
        let h: HelloResponse = serde_json::from_slice(&body).context("reading hello's answer")?;
        let auth = format!("Bearer {}", h.agent_token);
        for seq in h.next_seq..=LAST_SEQ {
            let terminal = seq == LAST_SEQ;
            let event = Event {
                seq,
                time: "2026-12-07T12:00:00Z".into(),
                step: if terminal { Step::Done } else { Step::Install },
                kind: if terminal {
                    EventKind::Finished
                } else {
                    EventKind::Progress
                },
                progress: (!terminal).then_some(seq as f32 / PROGRESS_EVENTS as f32),
                message: format!("copying paths {seq}/{PROGRESS_EVENTS}"),
                data: None,
            };
            let req = EventsRequest {
                attempt_id: h.attempt_id.clone(),
                events: vec![event],
            };
            let req = Req {
                method: Method::POST,
                path: "/api/v1/agent/events".into(),
                auth: Some(auth.clone()),
                body: serde_json::to_vec(&req)?.into(),
            };
            let kind = if terminal {
                Kind::Terminal
            } else {
                Kind::Event
            };
            {
                let mut st = sh.stats.lock().expect("stats");
                st.first_event.get_or_insert_with(Instant::now);
            }
            loop {
                let body = request(sh, kind, &mut at, &mut conn, &req).await?;
                let r: EventsResponse =
                    serde_json::from_slice(&body).context("reading the events answer")?;
                if r.acked_seq >= seq {
                    acked = r.acked_seq;
                    break;
                }
            }
            sh.acked_events.fetch_add(1, Ordering::Relaxed);
            sh.stats.lock().expect("stats").last_event = Some(Instant::now());
        }
        anyhow::Ok(())
    };
    match run.await {
        Ok(()) => Ok(acked),
        Err(e) => Err((acked, e)),
    }
}

/// The seconds of a hold script's `sleep N` (1 when it has none).
fn hold_sleep(script: &str) -> u64 {
    script
        .lines()
        .find_map(|l| l.trim().strip_prefix("sleep "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

/// One request, built once and sent on every try.
struct Req {
    method: Method,
    /// Path and query.
    path: String,
    /// `Authorization` value.
    auth: Option<String>,
    /// JSON (empty: none).
    body: Bytes,
}

/// How long one try may take before it counts as a transport error.
const TRY_TIMEOUT: Duration = Duration::from_secs(60);

/// A new HTTP/1.1 connection to `addr` (TCP_NODELAY, as an agent's).
async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One try on `conn` (opened first when None; kept open after a 2xx or
/// 5xx answer unless the server closes it): status and body.
async fn send_once(
    addr: &str,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    req: &Req,
) -> Result<(StatusCode, Bytes)> {
    let send = match conn {
        Some(c) => c,
        None => conn.insert(connect(addr).await?),
    };
    send.ready().await?;
    let mut r = hyper::Request::builder()
        .method(req.method.clone())
        .uri(req.path.as_str())
        .header(header::HOST, addr);
    if let Some(a) = &req.auth {
        r = r.header(header::AUTHORIZATION, a.as_str());
    }
    if !req.body.is_empty() {
        r = r.header(header::CONTENT_TYPE, "application/json");
    }
    let answer = send
        .send_request(r.body(Full::new(req.body.clone()))?)
        .await?;
    let status = answer.status();
    let body = answer.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Send until answered 2xx: the body. `conn` is the machine's keep-alive
/// connection (`&mut None` for a new connection per try, as `boot.ipxe`).
/// A transport error moves to the next server; a 5xx is asked again after
/// 100 ms; another status is an error (the bench's machines never deserve
/// one).
async fn request(
    sh: &Shared,
    kind: Kind,
    at: &mut usize,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    req: &Req,
) -> Result<Bytes> {
    let mut tries = 0;
    loop {
        tries += 1;
        if tries > 200 {
            bail!("{kind:?}: no 2xx answer after 200 tries");
        }
        let t = Instant::now();
        let answer = tokio::time::timeout(TRY_TIMEOUT, send_once(&sh.addrs[*at], conn, req))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {TRY_TIMEOUT:?}")));
        let took = t.elapsed();
        if kind == Kind::Boot {
            // iPXE: one connection per fetch.
            *conn = None;
        }
        match answer {
            Ok((status, body)) if status.is_success() => {
                sh.stats
                    .lock()
                    .expect("stats")
                    .ok
                    .entry(kind)
                    .or_default()
                    .push(took);
                return Ok(body);
            }
            Ok((status, body)) => {
                *sh.stats
                    .lock()
                    .expect("stats")
                    .errors
                    .entry(kind)
                    .or_default() += 1;
                if !status.is_server_error() {
                    bail!("{kind:?}: {status}: {}", String::from_utf8_lossy(&body));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                *sh.stats
                    .lock()
                    .expect("stats")
                    .errors
                    .entry(kind)
                    .or_default() += 1;
                *conn = None;
                *at = (*at + 1) % sh.addrs.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Events stored per machine and the machines `installed`, through the
/// admin API (the detail of each machine).
struct ReadBack {
    stored: u64,
    installed: usize,
    /// Machines with fewer events stored than acked.
    short: Vec<String>,
}

async fn read_back(server: &Server, n: usize, report: &Report) -> Result<ReadBack> {
    let token =
        std::fs::read_to_string(server.data.join("admin.token")).context("reading admin.token")?;
    let client = reqwest::Client::new();
    let mut out = ReadBack {
        stored: 0,
        installed: 0,
        short: Vec::new(),
    };
    for i in 0..n {
        let r = client
            .get(format!("{}/api/v1/machines/{}", server.base, mac(i)))
            .bearer_auth(token.trim())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("admin API: machine {}: {}", mac(i), r.status());
        }
        let d: landfall_proto::admin::MachineDetail = r.json().await?;
        let stored: u64 = d.attempts.iter().map(|a| a.events.len() as u64).sum();
        out.stored += stored;
        if d.summary.state == landfall_proto::MachineState::Installed {
            out.installed += 1;
        }
        if stored < report.acked[i] {
            out.short.push(format!(
                "{}: {} acked, {stored} stored",
                mac(i),
                report.acked[i]
            ));
        }
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

impl Report {
    fn print(&self, n: usize, back: &ReadBack, _pids: &[u32]) {
        println!(
            "  {:<10} {:>8} {:>7} {:>9} {:>9} {:>9}",
            "kind", "requests", "errors", "p50 ms", "p99 ms", "max ms"
        );
        let mut worst: (f64, &str) = (0.0, "");
        let mut boot_p99 = 0.0;
        for (kind, name) in KINDS {
            let mut v = self.stats.ok.get(&kind).cloned().unwrap_or_default();
            v.sort();
            let p99 = ms(pct(&v, 0.99));
            if p99 > worst.0 {
                worst = (p99, name);
            }
            if kind == Kind::Boot {
                boot_p99 = p99;
            }
            println!(
                "  {:<10} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1}{}",
                name,
                v.len(),
                self.stats.errors.get(&kind).copied().unwrap_or(0),
                ms(pct(&v, 0.5)),
                p99,
                ms(v.last().copied().unwrap_or_default()),
                if kind == Kind::Boot {
                    "  (each on a new connection)"
                } else {
                    ""
                }
            );
        }
        if self.stats.holds > 0 {
            println!(
                "  boot.ipxe answered a hold {} times (asked again after the script's sleep)",
                self.stats.holds
            );
        }
        let acked: u64 = self.acked.iter().sum();
        let events_wall = match (self.stats.first_event, self.stats.last_event) {
            (Some(a), Some(b)) => b.duration_since(a),
            _ => self.wall,
        };
        let events_s = acked as f64 / events_wall.as_secs_f64().max(1e-9);
        let cpu_s = self.server_ticks as f64 / self.clk_tck;
        let cpu_ms_per_event = 1000.0 * cpu_s / acked.max(1) as f64;
        let own = self.own_ticks as f64 / self.clk_tck;
        let lost = acked.saturating_sub(back.stored);
        println!(
            "  storm {:.2} s; events {:.2} s: {acked} acked, {} stored, lost {lost}; \
             machines installed {}/{n}",
            self.wall.as_secs_f64(),
            events_wall.as_secs_f64(),
            back.stored,
            back.installed
        );
        println!(
            "  {events_s:.0} events/s, server CPU {cpu_s:.2} s = {cpu_ms_per_event:.3} ms per \
             event (all requests counted), peak RSS (VmHWM) {:.1} MiB; load generator CPU \
             {own:.2} s = {:.0}% of its core",
            self.peak_rss_kib as f64 / 1024.0,
            100.0 * own / self.wall.as_secs_f64()
        );
        println!(
            "  goal >= {GOAL_EVENTS_S:.0} events/s or <= {GOAL_CPU_MS} ms CPU/event: {}",
            verdict(events_s >= GOAL_EVENTS_S || cpu_ms_per_event <= GOAL_CPU_MS)
        );
        println!(
            "  goal p99 < {GOAL_P99_MS:.0} ms for every kind at {n} machines: {} (worst {} {:.1} ms)",
            verdict(worst.0 < GOAL_P99_MS),
            worst.1,
            worst.0
        );
        println!(
            "  goal boot.ipxe p99 < {GOAL_BOOT_P99_MS:.0} ms for {n} new connections: {} ({boot_p99:.1} ms)",
            verdict(boot_p99 < GOAL_BOOT_P99_MS)
        );
        println!(
            "  goal 0 lost and every machine installed: {}",
            verdict(lost == 0 && back.short.is_empty() && back.installed == n)
        );
        for s in back.short.iter().take(5) {
            println!("    short: {s}");
        }
        for f in self.failures.iter().take(5) {
            println!("    failed: {f}");
        }
        if self.failures.len() > 5 {
            println!("    ... {} machines failed in all", self.failures.len());
        }
    }
}

/// utime + stime of `pid` in clock ticks (all its threads).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// VmHWM of `pid`, KiB.
fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/PID/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_millis(50));
        assert_eq!(pct(&v, 0.99), Duration::from_millis(99));
        assert_eq!(pct(&v[..1], 0.99), Duration::from_millis(1));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn a_hold_is_slept_as_its_script_says() {
        let busy =
            "#!ipxe\necho landfall: server busy, asking again in 5 seconds\nsleep 5\nchain x\n";
        assert_eq!(hold_sleep(busy), 5);
        assert_eq!(hold_sleep("#!ipxe\nchain x\n"), 1);
    }

    #[test]
    fn macs_are_distinct_and_valid() {
        assert_eq!(mac(0), "52:54:01:00:00:00");
        assert_eq!(mac(0x1_02_03), "52:54:01:01:02:03");
        assert!(landfall_proto::names::normalize_mac(&mac(999)).is_some());
    }
}

//! `./x bench artifacts`: landfall's artifact downloads against nginx
//! (Debian `nginx-light`, a throwaway instance with its own config in a
//! tempdir on a loopback port) on the same 16 MiB and 256 MiB files, with 16
//! and 64 connections of `wrk`. Three servers take turns in each round:
//! nginx (sendfile on), landfall as it ships (sendfile on the plain
//! listener) and landfall with `[server.http] sendfile = false` (the file
//! read 1 MiB at a time and written through hyper, as on HTTPS). Then the
//! same over TLS, where neither can use sendfile (no kTLS).
//!
//! Printed per case: each server's throughput (median of the rounds), the
//! ratio to nginx (median of the per-round ratios: the machine's drift
//! cancels within a round), and each server's CPU seconds per GiB sent (from
//! /proc/PID/stat), which does not depend on how fast the client reads.
//! With two or more CPUs the servers run on CPU 0 and wrk on CPU 1.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, Cmd};

const ROUNDS: usize = 7;
const SECS: u32 = 3;
const FILES: [(&str, u64); 2] = [("f16", 16 << 20), ("f256", 256 << 20)];
const CONNS: [u32; 2] = [16, 64];
const GOAL: f64 = 0.95;

/// A server under test: where its artifacts are, whose CPU time counts.
struct Server {
    name: &'static str,
    /// The processes whose CPU time counts (nginx: its workers).
    pids: Vec<u32>,
    base: String,
}

/// The servers' processes, killed when the bench ends (or fails).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One wrk run against one server.
#[derive(Clone, Copy)]
struct Run {
    mib_s: f64,
    cpu_s_per_gib: f64,
}

pub fn run() -> Result<()> {
    for tool in ["nginx", "wrk", "taskset"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: apt install nginx-light wrk util-linux (./x installs them)");
        }
    }
    let landfall = build::server_release()?;
    let tmp = tempfile::tempdir().context("making a tempdir")?;
    let dir = tmp.path();
    let art = dir.join("artifacts");
    std::fs::create_dir_all(&art)?;
    for (name, size) in FILES {
        write_file(&art.join(name), size)?;
    }
    let pin = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let server_cpu: &[&str] = if pin { &["taskset", "-c", "0"] } else { &[] };
    let wrk_cpu: &[&str] = if pin { &["taskset", "-c", "1"] } else { &[] };
    let clk_tck: f64 = build::output(&["getconf", "CLK_TCK"])?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;

    let mut procs = Procs(Vec::new());
    let lf = start_landfall(&mut procs, &landfall, dir, "landfall", true, server_cpu)?;
    let lf_stream = start_landfall(
        &mut procs,
        &landfall,
        dir,
        "landfall-stream",
        false,
        server_cpu,
    )?;
    let tls_dir = dir.join("landfall/data/tls");
    let ng = start_nginx(&mut procs, dir, &art, &tls_dir, server_cpu)?;
    // Every file in the page cache before the first round.
    for (name, _) in FILES {
        std::fs::read(art.join(name))?;
    }

    println!(
        "bench artifacts: wrk -t1, {ROUNDS} rounds of {SECS} s per server and case, servers {}",
        if pin {
            "on CPU 0 and wrk on CPU 1 (taskset; steadier figures than sharing both)"
        } else {
            "and wrk unpinned (one CPU)"
        }
    );
    println!(
        "  {:<8} {:>5}  {:>12} {:>14} {:>6}  {:>14} {:>6}  CPU s/GiB nginx / landfall / stream",
        "file", "conns", "nginx MiB/s", "landfall MiB/s", "ratio", "stream MiB/s", "ratio"
    );
    let mut worst = f64::INFINITY;
    for (file, _) in FILES {
        for conns in CONNS {
            let servers = [&ng.0, &lf.0, &lf_stream.0];
            let runs = rounds(&servers, file, conns, wrk_cpu, clk_tck)?;
            let ratio_lf = median_ratio(&runs, 1, 0);
            let ratio_stream = median_ratio(&runs, 2, 0);
            worst = worst.min(ratio_lf);
            println!(
                "  {:<8} {:>5}  {:>12.0} {:>14.0} {:>5.2}x  {:>14.0} {:>5.2}x  {:.3} / {:.3} / {:.3}",
                format!("{} MiB", if file == "f16" { 16 } else { 256 }),
                conns,
                median(&runs, 0, |r| r.mib_s),
                median(&runs, 1, |r| r.mib_s),
                ratio_lf,
                median(&runs, 2, |r| r.mib_s),
                ratio_stream,
                median(&runs, 0, |r| r.cpu_s_per_gib),
                median(&runs, 1, |r| r.cpu_s_per_gib),
                median(&runs, 2, |r| r.cpu_s_per_gib),
            );
        }
    }
    // TLS: landfall's HTTPS listener serves artifacts too (rustls, the file
    // read and encrypted in user space); nginx with OpenSSL, kTLS off.
    let tls_servers = [&ng.1, &lf.1];
    let runs = rounds(&tls_servers, "f16", 16, wrk_cpu, clk_tck)?;
    println!(
        "  TLS, 16 MiB, 16 conns: nginx {:.0} MiB/s, landfall {:.0} MiB/s, ratio {:.2}x; \
         CPU s/GiB {:.3} / {:.3} (no sendfile on either side)",
        median(&runs, 0, |r| r.mib_s),
        median(&runs, 1, |r| r.mib_s),
        median_ratio(&runs, 1, 0),
        median(&runs, 0, |r| r.cpu_s_per_gib),
        median(&runs, 1, |r| r.cpu_s_per_gib),
    );
    println!(
        "  goal: landfall >= {GOAL:.2}x nginx on every plain-HTTP line: {} (lowest {worst:.2}x)",
        if worst >= GOAL { "met" } else { "NOT met" }
    );
    drop(procs);
    Ok(())
}

/// `ROUNDS` rounds; in each, every server once (the order turning by one
/// each round). `result[round][server]`.
fn rounds(
    servers: &[&Server],
    file: &str,
    conns: u32,
    wrk_cpu: &[&str],
    clk_tck: f64,
) -> Result<Vec<Vec<Run>>> {
    let mut out = vec![vec![None; servers.len()]; ROUNDS];
    for (r, row) in out.iter_mut().enumerate() {
        for k in 0..servers.len() {
            let i = (r + k) % servers.len();
            row[i] = Some(wrk(servers[i], file, conns, wrk_cpu, clk_tck)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|r| r.expect("every server ran"))
                .collect()
        })
        .collect())
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median(runs: &[Vec<Run>], server: usize, f: impl Fn(&Run) -> f64) -> f64 {
    median_of(runs.iter().map(|row| f(&row[server])).collect())
}

fn median_ratio(runs: &[Vec<Run>], a: usize, b: usize) -> f64 {
    median_of(runs.iter().map(|row| row[a].mib_s / row[b].mib_s).collect())
}

/// One `wrk` run: its throughput and the server's CPU per GiB meanwhile.
fn wrk(s: &Server, file: &str, conns: u32, wrk_cpu: &[&str], clk_tck: f64) -> Result<Run> {
    let cpu0 = cpu_ticks(&s.pids)?;
    let url = format!("{}/artifacts/{file}", s.base);
    let mut argv: Vec<String> = wrk_cpu.iter().map(|a| a.to_string()).collect();
    argv.extend(
        [
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{SECS}s"),
            "--timeout",
            "30s",
            &url,
        ]
        .map(str::to_owned),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = build::output(&argv).with_context(|| format!("wrk against {}", s.name))?;
    let cpu = (cpu_ticks(&s.pids)? - cpu0) as f64 / clk_tck;
    if out.contains("Non-2xx") {
        bail!("{}: wrk saw error answers:\n{out}", s.name);
    }
    let (secs, bytes) = parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))?;
    let gib = bytes / (1u64 << 30) as f64;
    Ok(Run {
        mib_s: bytes / secs / (1u64 << 20) as f64,
        cpu_s_per_gib: cpu / gib,
    })
}

/// (seconds, bytes) from wrk's `N requests in 5.00s, 2.34GB read` (units
/// of 1024).
fn parse_wrk(out: &str) -> Option<(f64, f64)> {
    let line = out.lines().find(|l| l.contains(" requests in "))?;
    let rest = line.split(" requests in ").nth(1)?;
    let (dur, read) = rest.split_once(", ")?;
    let secs = dur.trim().strip_suffix('s')?.parse::<f64>().ok()?;
    let amount = read.trim().strip_suffix(" read")?;
    let split = amount.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = amount.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((secs, n.parse::<f64>().ok()? * scale))
}

/// utime + stime of `pids`, in clock ticks (all their threads).
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut sum = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        sum += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    }
    Ok(sum)
}

/// `size` bytes that do not compress or repeat in a page (xorshift).
fn write_file(path: &Path, size: u64) -> Result<()> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size;
    let mut buf = Vec::with_capacity(size as usize);
    while (buf.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(size as usize);
    std::fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Wait until `port` accepts, or the process has died.
fn wait_listening(name: &str, child: &mut Child, port: u16, log: &Path) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{name} exited ({st}) before listening:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} does not listen on 127.0.0.1:{port} after 30 s")
}

fn spawn_logged(prefix: &[&str], argv: &[&str], log: &Path) -> Result<Child> {
    let all: Vec<&str> = prefix.iter().chain(argv).copied().collect();
    let f = std::fs::File::create(log)?;
    Ok(Cmd::new(all[0]).args(&all[1..]).spawn(Stdio::null(), f)?)
}

/// landfall on a plain and an HTTPS port, its own data dir, the artifacts
/// given; `sendfile` as `[server.http] sendfile`.
fn start_landfall(
    procs: &mut Procs,
    bin: &Path,
    dir: &Path,
    name: &'static str,
    sendfile: bool,
    cpu: &[&str],
) -> Result<(Server, Server)> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let (port, tls_port) = (free_port()?, free_port()?);
    let config = home.join("landfall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nartifacts = \"{}\"\nlisten_tls = \"127.0.0.1:{tls_port}\"\n\
             tls_sans = [\"127.0.0.1\"]\n\n[server.http]\nsendfile = {sendfile}\n",
            dir.join("artifacts").display()
        ),
    )?;
    let log = home.join("serve.log");
    let bin = bin.to_str().context("path")?;
    let config = config.to_str().context("path")?;
    let data = home.join("data");
    let data = data.to_str().context("path")?;
    let listen = format!("127.0.0.1:{port}");
    let child = spawn_logged(
        cpu,
        &[
            bin, "serve", "--config", config, "--data", data, "--listen", &listen,
        ],
        &log,
    )?;
    let pid = child.id();
    procs.0.push(child);
    let child = procs.0.last_mut().expect("pushed");
    wait_listening(name, child, port, &log)?;
    wait_listening(name, child, tls_port, &log)?;
    Ok((
        Server {
            name,
            pids: vec![pid],
            base: format!("http://{listen}"),
        },
        Server {
            name: "landfall (TLS)",
            pids: vec![pid],
            base: format!("https://127.0.0.1:{tls_port}"),
        },
    ))
}

/// nginx with one worker, sendfile on, on a plain and an HTTPS port (the
/// certificate landfall generated), `artifacts` under `/artifacts/`.
fn start_nginx(
    procs: &mut Procs,
    dir: &Path,
    art: &Path,
    tls: &Path,
    cpu: &[&str],
) -> Result<(Server, Server)> {
    let home = dir.join("nginx");
    std::fs::create_dir_all(home.join("tmp"))?;
    let (port, tls_port) = (free_port()?, free_port()?);
    let h = home.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {h}/nginx.pid;\nerror_log {h}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {h}/tmp;\n  proxy_temp_path {h}/tmp;\n  fastcgi_temp_path {h}/tmp;\n\
           uwsgi_temp_path {h}/tmp;\n  scgi_temp_path {h}/tmp;\n\
           server {{\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{tls_port} ssl;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             location /artifacts/ {{ alias {art}/; }}\n  }}\n}}\n",
        cert = tls.join("server.pem").display(),
        key = tls.join("server.key").display(),
        art = art.display(),
    );
    let conf_path = home.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = home.join("stderr.log");
    let (c, p) = (
        conf_path.to_str().context("path")?,
        home.to_str().context("path")?,
    );
    procs
        .0
        .push(spawn_logged(cpu, &["nginx", "-c", c, "-p", p], &log)?);
    let child = procs.0.last_mut().expect("pushed");
    wait_listening("nginx", child, port, &log)?;
    let master = child.id();
    let workers: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .context("reading nginx's worker pids")?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    if workers.is_empty() {
        bail!("nginx started no worker");
    }
    Ok((
        Server {
            name: "nginx",
            pids: workers.clone(),
            base: format!("http://127.0.0.1:{port}"),
        },
        Server {
            name: "nginx (TLS)",
            pids: workers,
            base: format!("https://127.0.0.1:{tls_port}"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out =
            "Running 5s test @ http://127.0.0.1:1/artifacts/f16\n  1 threads and 16 connections\n\
                   \x20 123 requests in 5.01s, 1.92GB read\nRequests/sec:     24.55\n";
        let (secs, bytes) = parse_wrk(out).unwrap();
        assert_eq!(secs, 5.01);
        assert!((bytes - 1.92 * (1u64 << 30) as f64).abs() < 1.0);
        assert!(parse_wrk("nothing").is_none());
    }
}

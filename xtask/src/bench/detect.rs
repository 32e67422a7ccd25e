//! `cargo xtask bench detect`: landfall-agent detect vs `lshw -json`.
//!
//! Both run as processes, N times each, in the same run on the same machine;
//! we print mean wall times and the ratio (goal: >= 20x faster), then check
//! that every disk and NIC lshw names is in our inventory.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, workspace_root};

const ITERATIONS: u32 = 20;

pub fn run() -> Result<()> {
    let agent = agent_command()?;
    // Warm both up (page cache, first-run costs), and keep the outputs.
    let ours = output(&agent)?;
    let lshw_cmd = vec!["lshw".to_string(), "-json".into(), "-quiet".into()];
    let theirs = output(&lshw_cmd).context("running lshw (apt install lshw)")?;

    let t_ours = mean(&agent)?;
    let t_lshw = mean(&lshw_cmd)?;
    // What any process costs here (fork+exec+exit): the floor under both.
    let t_spawn = mean(&["/bin/true".to_string()])?;
    // detect + JSON inside one process, without start-up.
    let example = workspace_root().join("target/release/examples/detect");
    let in_process_ns: f64 = output(&[
        example.to_string_lossy().into_owned(),
        "--bench".into(),
        (ITERATIONS * 10).to_string(),
    ])?
    .trim()
    .parse()
    .context("parsing the example's --bench output")?;
    let t_in = Duration::from_nanos(in_process_ns as u64);

    let raw = t_lshw.as_secs_f64() / t_ours.as_secs_f64().max(1e-9);
    let lshw_net = t_lshw.saturating_sub(t_spawn);
    let net = lshw_net.as_secs_f64() / t_in.as_secs_f64().max(1e-9);
    println!("bench detect ({ITERATIONS} runs each)");
    println!("  {:<48} {:>9.2} ms", agent.join(" "), ms(t_ours));
    println!("  {:<48} {:>9.2} ms", lshw_cmd.join(" "), ms(t_lshw));
    println!(
        "  {:<48} {:>9.2} ms",
        "/bin/true (process start-up floor)",
        ms(t_spawn)
    );
    println!("  {:<48} {:>9.3} ms", "detect_json in-process", ms(t_in));
    println!("  ratio, whole processes:              {raw:>6.1}x");
    println!(
        "  ratio, work done (lshw - floor) / in-process detect: {net:.1}x (goal >= 20x){}",
        if net >= 20.0 { "" } else { "  BELOW GOAL" }
    );

    // Coverage: lshw's disks and NICs must be in our output.
    let lshw = Json::parse(&theirs).context("parsing lshw -json")?;
    let mut names = Vec::new();
    collect_logical_names(&lshw, &mut names);
    let inventory = Json::parse(&ours).context("parsing our inventory")?;
    let mut missing = Vec::new();
    for (class, name) in &names {
        let found = match class.as_str() {
            "disk" => inventory
                .get("disks")
                .and_then(Json::as_array)
                .is_some_and(|ds| ds.iter().any(|d| d.get_str("path") == Some(name.as_str()))),
            _ => inventory
                .get("nics")
                .and_then(Json::as_array)
                .is_some_and(|ns| ns.iter().any(|n| n.get_str("name") == Some(name.as_str()))),
        };
        if !found {
            missing.push(format!("{class} {name}"));
        }
    }
    println!(
        "  lshw reports {} disk/network devices: {}",
        names.len(),
        names
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if missing.is_empty() {
        println!("  coverage: every lshw disk and NIC is in our inventory");
        Ok(())
    } else {
        for m in &missing {
            println!("  MISSING from our inventory: {m}");
        }
        bail!("{} lshw device(s) missing from detect", missing.len())
    }
}

/// `landfall-agent detect --json` when the CLI has it, else the library's
/// example binary. Release builds either way.
fn agent_command() -> Result<Vec<String>> {
    let root = workspace_root();
    let main_rs = std::fs::read_to_string(root.join("agent/src/main.rs")).unwrap_or_default();
    let (args, path): (&[&str], PathBuf) = if main_rs.contains("Detect") {
        (
            &[
                "build",
                "--release",
                "-p",
                "landfall-agent",
                "--bin",
                "landfall-agent",
            ],
            root.join("target/release/landfall-agent"),
        )
    } else {
        (
            &[
                "build",
                "--release",
                "-p",
                "landfall-agent",
                "--example",
                "detect",
            ],
            root.join("target/release/examples/detect"),
        )
    };
    eprintln!("xtask: cargo {}", args.join(" "));
    build::run(Command::new("cargo").args(args))?;
    // The example measures detect in-process (see `--bench`).
    build::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "landfall-agent",
        "--example",
        "detect",
    ]))?;
    let bin = path.to_string_lossy().into_owned();
    Ok(if path.ends_with("landfall-agent") {
        vec![bin, "detect".into(), "--json".into()]
    } else {
        vec![bin, "--json".into()]
    })
}

fn output(cmd: &[String]) -> Result<String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("starting {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", cmd.join(" ")))
}

fn mean(cmd: &[String]) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        output(cmd)?;
    }
    Ok(start.elapsed() / ITERATIONS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (class, logical name) of lshw's disk and network nodes; virtual and loop
/// devices are left out (they are not install targets or physical NICs), as
/// are optical drives (detect excludes sr*).
fn collect_logical_names(node: &Json, out: &mut Vec<(String, String)>) {
    if let Some(class @ ("disk" | "network")) = node.get_str("class") {
        let names: Vec<&str> = match node.get("logicalname") {
            Some(Json::Str(s)) => vec![s.as_str()],
            Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
            _ => Vec::new(),
        };
        for n in names {
            let keep = match class {
                "disk" => {
                    n.starts_with("/dev/") && {
                        let k = n.trim_start_matches("/dev/");
                        ![
                            "loop", "ram", "zram", "dm-", "md", "nbd", "sr", "cdrom", "fd",
                        ]
                        .iter()
                        .any(|p| k.starts_with(p))
                    }
                }
                _ => {
                    let sys = PathBuf::from("/sys/class/net").join(n);
                    sys.join("device").exists()
                }
            };
            if keep {
                out.push((class.to_string(), n.to_string()));
            }
        }
    }
    if let Some(children) = node.get("children").and_then(Json::as_array) {
        for c in children {
            collect_logical_names(c, out);
        }
    }
    if let Json::Array(items) = node {
        for c in items {
            collect_logical_names(c, out);
        }
    }
}

/// Just enough JSON for lshw's and our output (xtask takes no serde).
#[derive(Debug)]
enum Json {
    Null,
    /// true/false: the value is not needed here.
    Bool,
    /// Validated, value not needed here.
    Num,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            bail!("trailing data at byte {}", p.i);
        }
        Ok(v)
    }
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Json::as_str)
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, b: u8) -> Result<()> {
        self.ws();
        if self.s.get(self.i) != Some(&b) {
            bail!("expected '{}' at byte {}", b as char, self.i);
        }
        self.i += 1;
        Ok(())
    }
    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Object(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(kv));
                        }
                        _ => bail!("expected ',' or '}}' at byte {}", self.i),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => bail!("expected ',' or ']' at byte {}", self.i),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool)
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool)
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])?;
                text.parse::<f64>()
                    .with_context(|| format!("bad JSON value at byte {start}"))?;
                Ok(Json::Num)
            }
            None => bail!("unexpected end of JSON"),
        }
    }
    fn string(&mut self) -> Result<String> {
        if self.s.get(self.i) != Some(&b'"') {
            bail!("expected a string at byte {}", self.i);
        }
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            match b {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let e = *self.s.get(self.i).context("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).context("short \\u")?;
                            let c = u32::from_str_radix(std::str::from_utf8(hex)?, 16)?;
                            self.i += 4;
                            let ch = char::from_u32(c).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.to_string().as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                _ => out.push(b),
            }
        }
        bail!("unterminated string")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lshw_disks_and_physical_nics_are_collected() {
        let j = Json::parse(
            r#"{"class":"system","children":[{"class":"storage","children":[
                {"class":"disk","logicalname":["/dev/vda","/"]},
                {"class":"disk","logicalname":"/dev/loop0"},
                {"class":"disk","logicalname":"/dev/cdrom"}]},
                {"class":"network","logicalname":"no-such-nic0","size":1e3,"x":null,"y":true}]}"#,
        )
        .unwrap();
        let mut names = Vec::new();
        collect_logical_names(&j, &mut names);
        assert_eq!(names, vec![("disk".to_string(), "/dev/vda".to_string())]);
    }
}

//! `./x bench detect`: `landfall-agent detect --json` (the static binary the
//! image ships) against `lshw -json`, both as processes, N times each in the
//! same run; plus the in-process cost of detect and the process start-up
//! floor (`/bin/true`), so both ratios are visible. Then coverage: every disk
//! and NIC lshw reports must be in our inventory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::build::{self, output, Cmd};

const ITERATIONS: u32 = 20;

pub fn run(agent: &Path) -> Result<()> {
    let agent = agent.to_string_lossy().into_owned();
    let ours_cmd = [agent.as_str(), "detect", "--json"];
    let lshw_cmd = ["lshw", "-json", "-quiet"];
    // Warm both up (page cache, first-run costs), and keep the outputs.
    let ours = output(&ours_cmd)?;
    let theirs = output(&lshw_cmd).context("running lshw (apt install lshw)")?;

    let t_ours = mean(&ours_cmd)?;
    let t_lshw = mean(&lshw_cmd)?;
    let t_spawn = mean(&["/bin/true"])?;
    let example = example_binary()?;
    let n = (ITERATIONS * 10).to_string();
    let in_process_ns: u64 = output(&[example.to_str().context("path")?, "--bench", &n])?
        .trim()
        .parse()
        .context("parsing the example's --bench output")?;
    let t_in = Duration::from_nanos(in_process_ns);

    let whole = t_lshw.as_secs_f64() / t_ours.as_secs_f64();
    let work = t_lshw.saturating_sub(t_spawn).as_secs_f64() / t_in.as_secs_f64();
    println!("bench detect ({ITERATIONS} runs each, same machine, same run)");
    println!(
        "  {:<44} {:>8.2} ms",
        ours_cmd.join(" ").replace(&agent, "landfall-agent"),
        ms(t_ours)
    );
    println!("  {:<44} {:>8.2} ms", lshw_cmd.join(" "), ms(t_lshw));
    println!(
        "  {:<44} {:>8.2} ms",
        "/bin/true (process start-up floor)",
        ms(t_spawn)
    );
    println!("  {:<44} {:>8.3} ms", "detect + JSON in-process", ms(t_in));
    println!("  ratio lshw / landfall-agent, whole processes: {whole:.1}x");
    println!("  ratio lshw minus start-up / detect in-process: {work:.1}x (goal >= 20x)");

    let names = lshw_devices(&serde_json::from_str(&theirs).context("parsing lshw -json")?);
    let inv: Value = serde_json::from_str(&ours).context("parsing our inventory")?;
    let has = |list: &str, key: &str, v: &str| {
        inv[list]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x[key] == v))
    };
    let missing: Vec<String> = names
        .iter()
        .filter(|(class, name)| match class.as_str() {
            "disk" => !has("disks", "path", name),
            _ => !has("nics", "name", name),
        })
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let listed: Vec<String> = names.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    println!(
        "  lshw reports {} disk/network device(s): {}",
        names.len(),
        listed.join(", ")
    );
    if !missing.is_empty() {
        bail!("missing from our inventory: {}", missing.join(", "));
    }
    println!("  coverage: every lshw disk and NIC is in our inventory");
    Ok(())
}

/// The example that times detect in-process (`--bench N` prints mean ns).
fn example_binary() -> Result<PathBuf> {
    build::run(Cmd::new("cargo").args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "landfall-agent",
        "--example",
        "detect",
    ]))?;
    Ok(build::workspace_root().join("target/release/examples/detect"))
}

fn mean(cmd: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        output(cmd)?;
    }
    Ok(start.elapsed() / ITERATIONS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (class, logical name) of lshw's disk and network nodes that are install
/// targets or physical NICs: loop/ram/dm/md/nbd/optical/floppy disks and NICs
/// without a bus device are left out, as detect leaves them out.
fn lshw_devices(node: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect(node, &mut out);
    out
}

fn collect(node: &Value, out: &mut Vec<(String, String)>) {
    if let Some(class @ ("disk" | "network")) = node["class"].as_str() {
        let names: Vec<&str> = match &node["logicalname"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for n in names {
            let keep = match class {
                "disk" => n.strip_prefix("/dev/").is_some_and(|k| {
                    ![
                        "loop", "ram", "zram", "dm-", "md", "nbd", "sr", "cdrom", "fd",
                    ]
                    .iter()
                    .any(|p| k.starts_with(p))
                }),
                _ => Path::new("/sys/class/net").join(n).join("device").exists(),
            };
            if keep {
                out.push((class.to_owned(), n.to_owned()));
            }
        }
    }
    for child in node["children"].as_array().into_iter().flatten() {
        collect(child, out);
    }
    for item in node.as_array().into_iter().flatten() {
        collect(item, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lshw_disks_and_physical_nics_are_collected() {
        let j: Value = serde_json::from_str(
            r#"{"class":"system","children":[{"class":"storage","children":[
                {"class":"disk","logicalname":["/dev/vda","/"]},
                {"class":"disk","logicalname":"/dev/loop0"},
                {"class":"disk","logicalname":"/dev/cdrom"}]},
                {"class":"network","logicalname":"no-such-nic0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            lshw_devices(&j),
            vec![("disk".to_string(), "/dev/vda".to_string())]
        );
    }
}

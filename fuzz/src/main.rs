//! One fuzzing binary, one target per run: `LANDFALL_FUZZ_TARGET=NAME`
//! (`./x fuzz` sets it). Every target feeds afl's bytes to a parser of
//! untrusted input; a panic is a crash.

use landfall::api::artifacts::parse_range;
use landfall::boot::hold_script;
use landfall_proto::names::normalize_mac;

/// The targets `./x fuzz` runs, with a seed input each.
pub const TARGETS: &[&str] = &[
    "hello",
    "events",
    "range",
    "boot_query",
    "layout",
    "toml",
    "cmdline",
    "mountinfo",
    "bundle_tar",
];

fn run(target: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match target {
        "hello" => {
            let _ = serde_json::from_slice::<landfall_proto::HelloRequest>(data);
        }
        "events" => {
            let _ = serde_json::from_slice::<landfall_proto::EventsRequest>(data);
        }
        "range" => {
            // The first 8 bytes are the file's length, the rest the header.
            let (len, value) = data.split_at(data.len().min(8));
            let mut n = [0u8; 8];
            n[..len.len()].copy_from_slice(len);
            let len = u64::from_le_bytes(n);
            if let landfall::api::artifacts::RangeReq::Partial(a, b) =
                parse_range(&String::from_utf8_lossy(value), len)
            {
                assert!(a <= b && b < len, "range {a}-{b} outside a file of {len}");
            }
        }
        "boot_query" => {
            for pair in text.split('&') {
                let (_, v) = pair.split_once('=').unwrap_or((pair, ""));
                if let Some(mac) = normalize_mac(v) {
                    assert_eq!(normalize_mac(&mac).as_deref(), Some(mac.as_str()));
                }
                let s = hold_script("http://10.0.0.1:8080", v, Some(v));
                assert!(s
                    .lines()
                    .all(|l| !l.starts_with("echo") || !l.contains("${")));
            }
        }
        "layout" => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                let _ = landfall_disko::Layout::from_json(&v);
            }
        }
        "toml" => {
            if let Ok(c) = landfall::config::Config::parse(&text) {
                let _ = c.validate(std::path::Path::new("/nonexistent/landfall-fuzz"));
            }
        }
        "cmdline" => {
            let _ = landfall_agent::cmdline::AgentConfig::resolve(
                None,
                &text,
                landfall_agent::cmdline::Overrides::default(),
            );
        }
        "mountinfo" => {
            let _ = landfall_agent::hw::mountinfo::parse(&text);
        }
        "bundle_tar" => {
            let _ = landfall_agent::secrets::bundle::read_tar_bytes(data);
        }
        other => panic!("unknown LANDFALL_FUZZ_TARGET {other:?}; one of {TARGETS:?}"),
    }
}

fn main() {
    let target = std::env::var("LANDFALL_FUZZ_TARGET").unwrap_or_default();
    if !TARGETS.contains(&target.as_str()) {
        eprintln!("set LANDFALL_FUZZ_TARGET to one of {TARGETS:?}");
        std::process::exit(2);
    }
    afl::fuzz!(|data: &[u8]| {
        run(&target, data);
    });
}

//! One fuzzing binary, one target per run: `LANDFALL_FUZZ_TARGET=NAME`
//! (`./x fuzz` sets it). Every target feeds afl's bytes to a parser of
//! untrusted input; a panic is a crash.

use std::sync::OnceLock;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use landfall::api::artifacts::parse_range;
use landfall::boot::hold_script;
use landfall::netboot::{dhcp, tftp, Endpoints, IpxeFiles};
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
    "dhcp",
    "tftp",
];

/// The served iPXE binaries (names and tiny contents) and where this server is,
/// for the network boot targets.
fn netboot() -> &'static (IpxeFiles, Endpoints) {
    static N: OnceLock<(IpxeFiles, Endpoints)> = OnceLock::new();
    N.get_or_init(|| {
        let mut files = tftp::Files::new();
        for name in ["undionly.kpxe", "snponly.efi", "arm64/snp.efi"] {
            files.insert(name.to_owned(), name.as_bytes().into());
        }
        let ipxe = IpxeFiles {
            bios: Some("undionly.kpxe".into()),
            efi_x86_64: Some("snponly.efi".into()),
            efi_arm64: Some("arm64/snp.efi".into()),
            files,
        };
        (ipxe, Endpoints::new(None, [10, 77, 0, 1].into(), 8080))
    })
}

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
        "dhcp" => {
            // A packet off the wire, as the DHCP server reads it, and the
            // answers it would get: each must encode into a packet that
            // decodes again (a client must be able to read it).
            let Ok((msg, mac)) = dhcp::parse_request(data) else {
                return;
            };
            let (files, ep) = netboot();
            let boot = dhcp::classify(&msg)
                .ok()
                .and_then(|c| dhcp::boot_options(c, &mac, files, ep));
            let pool = landfall::config::PoolSettings {
                start: [10, 77, 0, 100].into(),
                end: [10, 77, 0, 200].into(),
                prefix_len: 24,
                router: Some([10, 77, 0, 1].into()),
                dns: vec![[10, 77, 0, 1].into()],
                lease_time: std::time::Duration::from_secs(3600),
            };
            for (ty, lease) in [
                (MessageType::Offer, None),
                (MessageType::Ack, Some(([10, 77, 0, 100].into(), &pool))),
                (MessageType::Nak, None),
            ] {
                let r = dhcp::build_reply(&msg, ty, ep.server_address, boot.as_ref(), lease, true);
                let mut out = Vec::new();
                if r.encode(&mut Encoder::new(&mut out)).is_ok() {
                    Message::decode(&mut Decoder::new(&out))
                        .expect("an answer this server encodes decodes again");
                }
            }
        }
        "tftp" => {
            // A request on the listening port: only a served name is found,
            // and the options are answered within RFC 2348/2349's bounds.
            let Some(tftp::Request::Read(r)) = tftp::parse_request(data) else {
                return;
            };
            let (files, _) = netboot();
            if let Some((name, _)) = tftp::lookup(&files.files, &r.name) {
                assert!(
                    files.files.contains_key(name),
                    "{:?} found as {name:?}",
                    r.name
                );
            }
            let n = tftp::negotiate(&r.options, 74_213);
            assert!((tftp::MIN_BLKSIZE..=tftp::MAX_BLKSIZE).contains(&n.blksize));
            assert!(n
                .timeout
                .is_none_or(|t| (1..=255).contains(&t.as_secs())));
            assert!(n.answered.len() <= r.options.len());
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

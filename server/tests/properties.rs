//! Property tests of the server's parsers of untrusted input (issue 12,
//! fuzzing): the `Range` header, the boot query (against the real server),
//! the text that goes into iPXE scripts, and the escaping of client text.

mod common;

use common::*;
use landfall::api::artifacts::{parse_range, RangeReq};
use landfall::boot::hold_script;
use landfall::text::{escape_controls, is_unsafe};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// An iPXE script as the server writes them: known commands only, and
/// iPXE's `${...}` expansion only in the `chain` line the server built.
fn check_script(script: &str) -> Result<(), TestCaseError> {
    let mut lines = script.lines();
    prop_assert_eq!(lines.next(), Some("#!ipxe"), "{}", script);
    for l in lines {
        let cmd = l.split(' ').next().unwrap_or("");
        prop_assert!(
            ["echo", "kernel", "initrd", "boot", "sleep", "chain", "exit", "dhcp"].contains(&cmd),
            "unexpected line {:?} in\n{}",
            l,
            script
        );
        if cmd != "chain" {
            prop_assert!(!l.contains("${"), "{:?}", l);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_range_is_inside_the_file_or_none(value in "\\PC{0,40}", len in any::<u64>()) {
        check_range(&value, len)?;
    }

    #[test]
    fn a_numeric_range_is_inside_the_file_or_none(
        a in proptest::option::of("[0-9]{1,22}"),
        b in proptest::option::of("[0-9]{1,22}"),
        sp in " {0,2}",
        len in prop_oneof![0u64..4, 0u64..100_000, any::<u64>()],
    ) {
        let value = format!("bytes={sp}{}{sp}-{sp}{}", a.unwrap_or_default(), b.unwrap_or_default());
        check_range(&value, len)?;
    }

    #[test]
    fn a_hold_script_is_safe_whatever_the_reason(why in "\\PC{0,600}", fix in proptest::option::of("\\PC{0,80}"), ctl in "[\\x00-\\x1f$\\{\\}]{0,8}") {
        let why = format!("{why}{ctl}");
        let s = hold_script("http://10.0.0.1:8080", &why, fix.as_deref());
        check_script(&s)?;
        prop_assert_eq!(s.lines().count(), if fix.is_some() { 6 } else { 5 });
    }

    #[test]
    fn escaped_text_has_no_control_left(s in "(\\PC|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}]){0,60}") {
        let e = escape_controls(&s);
        prop_assert!(!e.chars().any(is_unsafe), "{:?}", e);
        if !s.chars().any(is_unsafe) {
            prop_assert_eq!(e.as_ref(), s.as_str());
        }
    }
}

fn check_range(value: &str, len: u64) -> Result<(), TestCaseError> {
    match parse_range(value, len) {
        RangeReq::Partial(a, b) => {
            prop_assert!(a <= b, "{value:?} len {len}: {a}-{b}");
            prop_assert!(b < len, "{value:?} len {len}: {a}-{b}");
        }
        RangeReq::Unsatisfiable => {
            prop_assert!(value.trim().starts_with("bytes="), "{value:?}")
        }
        RangeReq::Full => {}
    }
    Ok(())
}

/// Query strings of the boot script's shape with any values, against the
/// real server: always a script (200, or 400 without a Host), always safe.
#[test]
fn any_boot_query_gets_a_safe_script() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Server::start(Some(CONFIG)));
    let key = prop_oneof![
        prop::sample::select(vec!["mac", "arch", "platform"]).prop_map(str::to_owned),
        "\\PC{0,6}",
    ];
    let value = prop_oneof![
        "\\PC{0,40}",
        "[0-9a-fA-F:.-]{0,20}",
        "52:54:00:00:00:0[12]",
        "[\\x00-\\x1f${}\"' ]{0,12}",
    ];
    let pairs = proptest::collection::vec((key, value), 0..5);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&pairs, |pairs| {
            let (status, body) = rt.block_on(async {
                let r = s
                    .http
                    .get(s.url("/boot.ipxe"))
                    .query(&pairs)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
            prop_assert_eq!(status, 200, "{:?}", pairs);
            check_script(&body)
        })
        .unwrap();
    rt.block_on(s.stop());
}

/// landfall.toml: lines of the known sections and keys with odd values,
/// parsed and validated: settings or an error, never a panic.
#[test]
fn any_config_text_is_settings_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("layouts/single-disk.json"),
        LAYOUT_JSON.as_bytes(),
    );
    let section = prop::sample::select(vec![
        "[server]",
        "[enroll]",
        "[roles.workstation]",
        "[roles.x]",
        "[[machines]]",
        "[vault]",
        "[[roles.workstation.checks]]",
        "[[roles.workstation.secret_files]]",
    ]);
    let key = prop::sample::select(vec![
        "public_url",
        "kernel_args",
        "boot_token_ttl",
        "max_discovered",
        "max_events_per_attempt",
        "unknown",
        "role",
        "layout",
        "wipe",
        "mac",
        "hostname",
        "address",
        "token_file",
        "kind",
        "port",
        "path",
        "mode",
        "system",
        "cache",
        "flake",
        "hostname_template",
    ]);
    let value = prop_oneof![
        "\"\\PC{0,20}\"",
        "-?[0-9]{1,21}",
        Just("true".to_owned()),
        Just("\"single-disk\"".to_owned()),
        Just("\"workstation\"".to_owned()),
        Just("\"52:54:00:00:00:01\"".to_owned()),
        "\\[\"[a-z ]{0,8}\"\\]",
    ];
    let line = prop_oneof![
        section.prop_map(str::to_owned),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        "\\PC{0,30}",
    ];
    let text = proptest::collection::vec(line, 0..16).prop_map(|l| l.join("\n"));
    let mut runner = TestRunner::new(Config {
        cases: 384,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&text, |text| {
            if let Ok(cfg) = landfall::config::Config::parse(&text) {
                let _ = cfg.validate(dir.path());
            }
            Ok(())
        })
        .unwrap();
}

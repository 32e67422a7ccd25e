//! Property tests of the wire types on untrusted bytes (issue 12, fuzzing):
//! the server reads `HelloRequest` and `EventsRequest` from anyone on the
//! LAN. Any bytes parse or fail, never panic; every value round-trips.

use landfall_proto::inventory::{Dmi, Nic};
use landfall_proto::names::{check_hostname, check_simple_name, normalize_mac};
use landfall_proto::{Event, EventKind, EventsRequest, HelloRequest, Inventory, Step};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, a few levels deep, with the wire types' keys among the
/// random ones so the parsers get past the first field.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "\\PC{0,8}",
                    prop::sample::select(vec![
                        "boot_token",
                        "agent_version",
                        "inventory",
                        "attempt_id",
                        "events",
                        "seq",
                        "nics",
                        "mac",
                        "step",
                        "kind",
                        "data",
                    ])
                    .prop_map(str::to_owned),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("\\PC{0,16}")
}

fn inventory() -> impl Strategy<Value = Inventory> {
    (
        opt_text(),
        (opt_text(), opt_text(), opt_text(), opt_text()),
        proptest::collection::vec(
            (
                "\\PC{0,8}",
                "\\PC{0,17}",
                any::<bool>(),
                proptest::option::of(any::<u32>()),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(hostname, (vendor, product, serial, uuid), nics)| Inventory {
                hostname,
                dmi: Dmi {
                    vendor,
                    product,
                    serial,
                    uuid,
                },
                nics: nics
                    .into_iter()
                    .map(|(name, mac, link_up, speed_mbps)| Nic {
                        name,
                        mac,
                        link_up,
                        speed_mbps,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        "\\PC{0,24}",
        prop::sample::select(vec![
            Step::Detect,
            Step::Register,
            Step::Disks,
            Step::Install,
            Step::Done,
        ]),
        prop::sample::select(vec![
            EventKind::Started,
            EventKind::Progress,
            EventKind::Log,
            EventKind::Finished,
            EventKind::Failed,
        ]),
        proptest::option::of(0.0f32..=1.0),
        "\\PC{0,40}",
        proptest::option::of(proptest::collection::btree_map(
            "\\PC{0,6}",
            "\\PC{0,6}",
            0..3,
        )),
    )
        .prop_map(|(seq, time, step, kind, progress, message, data)| Event {
            seq,
            time,
            step,
            kind,
            progress,
            message,
            data: data
                .map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect())),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<HelloRequest>(&bytes);
        let _ = serde_json::from_slice::<EventsRequest>(&bytes);
    }

    #[test]
    fn any_json_parses_or_fails(v in json()) {
        let _ = serde_json::from_value::<HelloRequest>(v.clone());
        let _ = serde_json::from_value::<EventsRequest>(v.clone());
        let _ = serde_json::from_value::<Event>(v);
    }

    #[test]
    fn a_hello_round_trips(
        boot_token in "\\PC{0,70}",
        agent_version in "\\PC{0,20}",
        protocol in any::<u32>(),
        inventory in inventory(),
    ) {
        let h = HelloRequest { boot_token, agent_version, protocol, inventory, nonce: None };
        let back: HelloRequest = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        prop_assert_eq!(&back.boot_token, &h.boot_token);
        prop_assert_eq!(&back.agent_version, &h.agent_version);
        prop_assert_eq!(back.protocol, h.protocol);
        prop_assert_eq!(&back.inventory, &h.inventory);
    }

    #[test]
    fn events_round_trip(attempt_id in "\\PC{0,40}", events in proptest::collection::vec(event(), 0..8)) {
        let r = EventsRequest { attempt_id, events };
        let back: EventsRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        prop_assert_eq!(&back.attempt_id, &r.attempt_id);
        prop_assert_eq!(&back.events, &r.events);
    }

    #[test]
    fn names_and_macs_are_checked_without_panicking(s in "\\PC{0,70}", b in proptest::collection::vec(any::<u8>(), 0..24)) {
        let _ = check_hostname(&s);
        let _ = check_simple_name("role", &s);
        if let Some(mac) = normalize_mac(&s) {
            // What comes out is canonical, and canonical stays canonical.
            prop_assert_eq!(mac.len(), 17);
            prop_assert_eq!(normalize_mac(&mac), Some(mac.clone()));
        }
        let _ = normalize_mac(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn every_mac_spelling_normalises_to_one(
        bytes in any::<[u8; 6]>(),
        sep in prop::sample::select(vec![":", "-"]),
        upper in any::<bool>(),
    ) {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut spelled = hex.join(sep);
        if upper {
            spelled = spelled.to_uppercase();
        }
        prop_assert_eq!(normalize_mac(&spelled), Some(hex.join(":")));
    }
}

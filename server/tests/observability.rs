//! Issue 15: `/metrics` read by a Prometheus text-format parser and checked
//! against the store, and webhook deliveries against a receiver that checks
//! the signature, through down receivers and server restarts. Installs are
//! simulated through the real agent API (boot, hello, events, verify).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use landfall_proto::notify::StateChange;
use landfall_proto::{
    DoneData, Event, EventKind, FailureClass, FailureData, MachineState, Step, StepTiming, Timing,
};
use serde_json::Value;
use sha2::Sha256;

/// The agent's Timing with these steps' wall times (ms).
fn timing(steps: &[(&str, u64)]) -> Timing {
    Timing {
        steps: steps
            .iter()
            .map(|(s, ms)| {
                let t = StepTiming {
                    wall_ms: *ms,
                    ..Default::default()
                };
                ((*s).to_owned(), t)
            })
            .collect(),
        ..Default::default()
    }
}

/// How a simulated install ends.
enum Outcome {
    Installed,
    FailedBuild,
}

/// One install through the agent API: boot, hello, the steps' events and
/// the terminal event with its Timing. Returns the verify token.
async fn install(s: &Server, mac: &str, outcome: Outcome) -> String {
    let (status, script) = s.boot(mac).await;
    assert_eq!(status, 200, "{script}");
    let boot = token_in(&script).expect("an install script");
    let r = s.hello(&boot, mac).await;
    assert_eq!(r.status(), 200);
    let hello: Value = r.json().await.unwrap();
    let attempt = hello["attempt_id"].as_str().unwrap();
    let agent = hello["agent_token"].as_str().unwrap();
    let events: Vec<Event> = [
        (Step::Detect, EventKind::Started),
        (Step::Detect, EventKind::Finished),
        (Step::Disks, EventKind::Started),
        (Step::Disks, EventKind::Progress),
        (Step::Disks, EventKind::Finished),
        (Step::Install, EventKind::Started),
    ]
    .iter()
    .enumerate()
    .map(|(i, (step, kind))| event(i as u64 + 1, *step, *kind, "…"))
    .collect();
    let done = match outcome {
        Outcome::Installed => {
            let mut e = event(7, Step::Done, EventKind::Finished, "installed");
            let data = DoneData {
                timing: timing(&[("detect", 800), ("disks", 12_500), ("install", 61_000)]),
            };
            e.data = Some(serde_json::to_value(data).unwrap());
            e
        }
        Outcome::FailedBuild => {
            let mut e = event(7, Step::Done, EventKind::Failed, "nixos-install failed");
            e.data = FailureData {
                step: Some("install".into()),
                class: Some(FailureClass::Build),
                timing: Some(timing(&[
                    ("detect", 700),
                    ("disks", 9_000),
                    ("install", 30_000),
                ])),
                ..Default::default()
            }
            .to_data();
            e
        }
    };
    // The terminal event comes in its own batch, as the agent sends it.
    assert_eq!(s.ack(agent, attempt, &events).await, 6);
    assert_eq!(s.ack(agent, attempt, &[done]).await, 7);
    hello["assignment"]["verify_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn verify(s: &Server, token: &str, hostname: &str) -> u16 {
    s.http
        .post(s.url("/api/v1/agent/verify"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "hostname": hostname, "checks": [
            {"name": "ssh", "ok": true, "detail": "", "millis": 3}
        ] }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A file in its own tempdir, by absolute path (the config names it).
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

// ---------------------------------------------------------------- metrics

/// `/metrics` parsed by `prometheus-parse`: (metric, sorted labels) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

async fn scrape(s: &Server, token: Option<&str>) -> Result<Samples, u16> {
    let mut req = s.http.get(s.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    if r.status() != 200 {
        return Err(r.status().as_u16());
    }
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut out = Samples::new();
    for sample in parsed.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // Buckets are checked through _count and _sum.
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert((sample.metric, labels), value);
    }
    Ok(out)
}

fn get(samples: &Samples, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    samples.get(&(metric.to_owned(), l)).copied()
}

/// Every sample of `metric`, by its labels.
fn family<'a>(samples: &'a Samples, metric: &str) -> BTreeMap<&'a [(String, String)], f64> {
    samples
        .iter()
        .filter(|((m, _), _)| m == metric)
        .map(|((_, l), v)| (l.as_slice(), *v))
        .collect()
}

#[tokio::test]
async fn metrics_agree_with_the_store_after_installs_through_the_agent_api() {
    let files = tempfile::tempdir().unwrap();
    let token = file(&files, "metrics.token", "scrape-me-please\n");
    let config = format!(
        "{CONFIG}\n[roles.server]\n\n[[machines]]\nmac = \"52:54:00:00:00:03\"\n\
         hostname = \"srv-01\"\nrole = \"server\"\n\n[metrics]\ntoken_file = \"{token}\"\n"
    );
    let s = Server::start(Some(&config)).await;

    let vt = install(&s, MAC1, Outcome::Installed).await;
    assert_eq!(verify(&s, &vt, "ws-01").await, 200);
    install(&s, MAC2, Outcome::FailedBuild).await;
    // Refused answers are counted too.
    assert_eq!(s.hello(&"0".repeat(64), MAC1).await.status(), 401);
    assert_eq!(verify(&s, "not-a-token", "x").await, 401);
    // An unknown machine boots and is held (discovered, no role).
    assert_eq!(s.boot("52:54:00:00:00:99").await.0, 200);

    assert_eq!(scrape(&s, None).await.unwrap_err(), 401);
    assert_eq!(scrape(&s, Some("wrong")).await.unwrap_err(), 401);
    let m = scrape(&s, Some("scrape-me-please")).await.unwrap();

    // Machines by state and role: what the admin API (the store) lists.
    let list = s.admin_get("/api/v1/machines").await;
    let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
    for machine in list.as_array().unwrap() {
        let key = (
            machine["role"].as_str().unwrap_or("").to_owned(),
            machine["state"].as_str().unwrap().to_owned(),
        );
        *want.entry(key).or_default() += 1.0;
    }
    let got: BTreeMap<(String, String), f64> = family(&m, "landfall_machines")
        .into_iter()
        .map(|(l, v)| {
            let label = |k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            (
                (label("role").unwrap_or_default(), label("state").unwrap()),
                v,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        want.keys().cloned().collect::<Vec<_>>(),
        [
            ("".to_owned(), "discovered".to_owned()),
            ("server".into(), "expected".into()),
            ("workstation".into(), "failed".into()),
            ("workstation".into(), "ready".into()),
        ]
    );

    // Installs and events against the machines' attempts and events.
    let mut attempts = 0.0;
    let mut events = 0.0;
    for mac in [MAC1, MAC2] {
        let d = s.admin_get(&format!("/api/v1/machines/{mac}")).await;
        for a in d["attempts"].as_array().unwrap() {
            attempts += 1.0;
            assert_eq!(a["more_events"], false);
            events += a["events"].as_array().unwrap().len() as f64;
        }
    }
    let ws = [("role", "workstation")];
    assert_eq!(
        get(&m, "landfall_installs_started_total", &ws),
        Some(attempts)
    );
    assert_eq!(attempts, 2.0);
    assert_eq!(get(&m, "landfall_events_stored_total", &[]), Some(events));
    assert_eq!(events, 14.0);
    assert_eq!(get(&m, "landfall_installs_finished_total", &ws), Some(1.0));
    assert_eq!(
        get(
            &m,
            "landfall_installs_failed_total",
            &[
                ("role", "workstation"),
                ("step", "install"),
                ("class", "build")
            ]
        ),
        Some(1.0)
    );
    // Step durations from both terminal events' Timing, and answers by status.
    for (metric, labels, want) in [
        (
            "landfall_step_duration_seconds_count",
            ("step", "install"),
            2.0,
        ),
        (
            "landfall_step_duration_seconds_sum",
            ("step", "install"),
            91.0,
        ),
        (
            "landfall_step_duration_seconds_sum",
            ("step", "disks"),
            21.5,
        ),
        ("landfall_hello_answers_total", ("status", "200"), 2.0),
        ("landfall_hello_answers_total", ("status", "401"), 1.0),
        ("landfall_verify_answers_total", ("status", "200"), 1.0),
        ("landfall_verify_answers_total", ("status", "401"), 1.0),
    ] {
        assert_eq!(
            get(&m, metric, &[labels]),
            Some(want),
            "{metric} {labels:?}"
        );
    }
    // Every store call is timed.
    let calls = get(&m, "landfall_store_call_seconds_count", &[]).unwrap();
    assert!(calls > 20.0, "{calls} store calls");
    assert!(get(&m, "landfall_store_call_seconds_sum", &[]).unwrap() > 0.0);
    // No netboot, no netboot counters.
    assert!(!m.keys().any(|(name, _)| name.starts_with("landfall_tftp")));
}

/// The TFTP server's counters, through a real TFTP client (tftp-hpa).
#[tokio::test]
async fn metrics_carry_the_tftp_servers_counters() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "{CONFIG}\n[netboot]\ntftp = true\ntftp_port = {port}\n\
         ipxe_bios = \"/usr/lib/ipxe/undionly.kpxe\"\n"
    );
    let s = Server::start(Some(&config)).await;
    let out = tempfile::tempdir().unwrap();
    let got = out.path().join("undionly.kpxe");
    let o = landfall_cmd::Cmd::new("tftp")
        .args(["-m", "binary", "127.0.0.1"])
        .arg(port.to_string())
        .args(["-c", "get", "undionly.kpxe"])
        .arg(&got)
        .run()
        .await
        .unwrap_or_else(|e| panic!("{e}: install Debian's tftp-hpa (./x does)"));
    let size = std::fs::metadata(&got)
        .unwrap_or_else(|e| panic!("tftp fetched nothing ({e}): {o:?}"))
        .len();
    assert_eq!(
        size,
        std::fs::metadata("/usr/lib/ipxe/undionly.kpxe")
            .unwrap()
            .len()
    );
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&[0, 9], ("127.0.0.1", port)).await.unwrap();
    udp.send_to(b"\0\x01../etc/passwd\0octet\0", ("127.0.0.1", port))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&s, None).await.unwrap();
        let c = |n: &str| get(&m, n, &[]).unwrap_or(-1.0);
        let now = [
            c("landfall_tftp_requests_total"),
            c("landfall_tftp_completed_total"),
            c("landfall_tftp_sent_bytes_total"),
            c("landfall_tftp_malformed_total"),
            c("landfall_tftp_refused_total"),
        ];
        if now == [1.0, 1.0, size as f64, 1.0, 1.0] {
            break;
        }
        assert!(Instant::now() < deadline, "tftp counters: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- webhooks

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// What the receiver saw: every request, with its delivery id, whether
/// the signature matched, the status it answered, and the body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>);

#[derive(Clone, Debug)]
struct Received {
    path: String,
    /// `X-Landfall-Delivery`.
    id: String,
    signed: bool,
    /// What the receiver answered.
    status: u16,
    body: String,
}

/// A webhook receiver on `port`: it checks the HMAC-SHA256 signature, and
/// answers 503 to its very first request (a receiver that is starting).
async fn receiver(port: u16, seen: Seen) -> tokio::task::JoinHandle<()> {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
        let seen = seen.clone();
        async move {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(body.as_bytes());
            let want = format!("sha256={}", hex(&mac.finalize().into_bytes()));
            let signed = h("x-landfall-signature") == want;
            let mut all = seen.0.lock().unwrap();
            let status = if !signed {
                StatusCode::UNAUTHORIZED
            } else if all.is_empty() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::NO_CONTENT
            };
            assert_eq!(h("x-landfall-event"), "machine.state_changed");
            assert_eq!(h("content-type"), "application/json");
            all.push(Received {
                path: uri.path().to_owned(),
                id: h("x-landfall-delivery"),
                signed,
                status: status.as_u16(),
                body,
            });
            status
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Poll the admin API until `done` holds for the deliveries (30 s at most).
async fn deliveries_until(s: &Server, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = s.admin_get("/api/v1/notifications").await;
        let list = list.as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn webhooks_arrive_signed_once_each_through_a_down_receiver_and_restarts() {
    // A port nobody listens on yet: the receiver is down at first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let files = tempfile::tempdir().unwrap();
    let secret = file(&files, "hook.key", &format!("{SECRET}\n"));
    let config = CONFIG.replace(
        "[server]\n",
        "[server]\npublic_url = \"http://landfall.lan:8080\"\n",
    ) + &format!(
        "\n[roles.server]\n\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{secret}\"\n\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/servers\"\nsecret_file = \"{secret}\"\n\
         states = [\"failed\"]\nroles = [\"server\"]\n"
    );
    let mut s = Server::start(Some(&config)).await;

    let vt = install(&s, MAC1, Outcome::Installed).await;
    assert_eq!(verify(&s, &vt, "ws-01").await, 200);
    install(&s, MAC2, Outcome::FailedBuild).await;

    // Each was tried, and failed: nobody listens.
    let list = deliveries_until(&s, "three tried deliveries", |l| {
        l.len() == 3
            && l.iter()
                .all(|d| d["status"] == "pending" && d["attempts"].as_u64() >= Some(1))
    })
    .await;
    for d in &list {
        let e = d["last_error"].as_str().unwrap();
        assert!(e.starts_with("cannot connect"), "{e}");
        assert_eq!(d["url"], format!("http://127.0.0.1:{port}/hook"));
    }
    let pending = s
        .admin_get("/api/v1/notifications?status=pending&limit=2")
        .await;
    assert_eq!(pending.as_array().unwrap().len(), 2);

    // The server restarts mid-retry; then the receiver comes up.
    s.restart().await;
    let seen = Seen::default();
    let rx = receiver(port, seen.clone()).await;

    let list = deliveries_until(&s, "all delivered", |l| {
        l.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(list.len(), 3);
    for d in &list {
        assert_eq!(d["last_status"], 204);
        assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
        assert_eq!(d["last_error"], Value::Null);
    }

    // `landfall notifications` (the real binary) says the same.
    let cli = |status: Option<&'static str>| {
        let mut c = landfall_cmd::Cmd::new(env!("CARGO_BIN_EXE_landfall"))
            .args(["notifications", "--server", s.base.as_str(), "--token-file"])
            .arg(s.data().join("admin.token"));
        if let Some(st) = status {
            c = c.args(["--status", st]);
        }
        c
    };
    let out = cli(None).run().await.unwrap().stdout;
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows.iter()
            .all(|r| r.contains("delivered 20") && r.contains("(204, ")),
        "{out}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("ws-02") && r.contains("failed")),
        "{out}"
    );
    let out = cli(Some("pending")).run().await.unwrap().stdout;
    assert_eq!(out, "no webhook deliveries\n");

    // Once more after a restart: nothing is sent again.
    s.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let all = seen.0.lock().unwrap().clone();
    assert!(all.iter().all(|r| r.signed), "every request is signed");
    assert!(
        all.iter().all(|r| r.path == "/hook"),
        "no role `server` machine changed"
    );
    assert_eq!(all[0].status, 503, "the first answer was 503");
    // Delivered once each: one 2xx answer per delivery id, none missing.
    let mut accepted: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in all.iter().filter(|r| r.status == 204) {
        accepted.entry(&r.id).or_default().push(&r.body);
    }
    let ids: Vec<String> = list.iter().map(|d| d["id"].to_string()).collect();
    let mut got: Vec<&str> = accepted.keys().copied().collect();
    got.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want);
    let mut bodies: Vec<StateChange> = accepted
        .values()
        .map(|b| {
            assert_eq!(b.len(), 1, "delivered once");
            serde_json::from_str(b[0]).unwrap()
        })
        .collect();
    bodies.sort_by_key(|b| b.id);
    let summary: Vec<(Option<&str>, MachineState, Option<MachineState>)> = bodies
        .iter()
        .map(|b| (b.machine.hostname.as_deref(), b.state, b.previous_state))
        .collect();
    assert_eq!(
        summary,
        [
            (
                Some("ws-01"),
                MachineState::Installed,
                Some(MachineState::Installing)
            ),
            (
                Some("ws-01"),
                MachineState::Ready,
                Some(MachineState::Installed)
            ),
            (
                Some("ws-02"),
                MachineState::Failed,
                Some(MachineState::Installing)
            ),
        ]
    );
    let failed = &bodies[2];
    assert_eq!(failed.machine.mac, MAC2);
    assert_eq!(failed.machine.role.as_deref(), Some("workstation"));
    assert_eq!(
        failed.error.as_deref(),
        Some("step install: nixos-install failed")
    );
    assert!(failed.attempt_id.is_some());
    assert_eq!(
        failed.dashboard_url.as_deref(),
        Some("http://landfall.lan:8080/ui/machines/ws-02")
    );

    // The metrics saw it too.
    let m = scrape(&s, None).await.unwrap();
    let st = |c: &'static str| [("status", c)];
    assert_eq!(
        get(&m, "landfall_webhook_deliveries", &st("delivered")),
        Some(3.0)
    );
    assert_eq!(get(&m, "landfall_webhook_deliveries", &st("pending")), None);
    s.stop().await;
    rx.abort();
}

/// With TLS on, `/metrics` is an HTTPS endpoint like the API; the
/// plain-HTTP listener serves it only with `[metrics] plain_http = true`.
#[tokio::test]
async fn with_tls_metrics_are_https_unless_plain_http_is_asked_for() {
    let tls = CONFIG.replace(
        "[server]\n",
        "[server]\nlisten_tls = \"127.0.0.1:0\"\ntls_sans = [\"127.0.0.1\"]\n",
    );
    for plain in [false, true] {
        let config = format!("{tls}\n[metrics]\nplain_http = {plain}\n");
        let s = Server::start(Some(&config)).await;
        let h = s.handle.as_ref().unwrap();
        let pem = std::fs::read(h.ca_file().unwrap()).unwrap();
        let https = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{}/metrics", h.tls_addr().unwrap().port());
        let r = https.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("landfall_machines"));
        let r = s.http.get(s.url("/metrics")).send().await.unwrap();
        if plain {
            assert_eq!(r.status(), 200);
        } else {
            assert_eq!(r.status(), 403);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "https_required");
        }
        s.stop().await;
    }
}

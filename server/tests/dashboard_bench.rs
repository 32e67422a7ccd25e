//! `./x bench ui` (`LANDFALL_BENCH=full`, release build, `--nocapture`):
//! 1. The fleet page of 10,000 machines (9,500 stored in every state the
//!    agent API leads to, 500 listed and never booted), rendered
//!    server-side over HTTPS: p50 and p99 of the default page (100 rows,
//!    what needs a person first), and of 1,000 rows sorted by time in
//!    state. Goal: p99 under 200 ms.
//! 2. 100 live viewers (SSE) of one machine during a storm of events posted
//!    by its agent: the ingestion rate with them against without them,
//!    rounds alternating. Goal: under 10% slower.
//!
//! In the normal suite it runs small (500 machines, 10 viewers, a short
//! storm) as a behaviour test: every page shows the fleet, every viewer
//! sees the storm's last line.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dash::{admin_session, https_server};
use common::{event, inventory, Server};
use landfall_proto::{EventKind, HelloRequest, Step};
use serde_json::Value;

struct Size {
    stored: usize,
    expected: usize,
    page_requests: usize,
    viewers: usize,
    /// Batches per storm round, events per batch, rounds each way.
    batches: u64,
    batch: u64,
    rounds: usize,
}

fn size() -> Size {
    match std::env::var("LANDFALL_BENCH").as_deref() {
        Ok("full") => Size {
            stored: 9_500,
            expected: 500,
            page_requests: 200,
            viewers: 100,
            batches: 1_000,
            batch: 20,
            rounds: 5,
        },
        _ => Size {
            stored: 450,
            expected: 50,
            page_requests: 5,
            viewers: 10,
            batches: 50,
            batch: 10,
            rounds: 1,
        },
    }
}

fn mac(i: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        i >> 16,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn config(expected: usize) -> String {
    let mut c = String::from(
        r#"
[server]
listen_tls = "127.0.0.1:0"
tls_sans = ["127.0.0.1"]
max_events_per_attempt = 10000000
max_event_bytes_per_attempt = 4000000000
max_discovered_per_minute = 100000

[enroll]
unknown = "install"
role = "ws"

[roles.ws]
layout = "single-disk"
"#,
    );
    for i in 0..expected {
        c.push_str(&format!(
            "\n[[machines]]\nmac = \"{}\"\nhostname = \"planned-{i:05}\"\nrole = \"ws\"\n",
            mac(0x80_0000 + i)
        ));
    }
    c
}

/// Boot + hello as the machine's agent: (attempt, agent token).
async fn hello(s: &Server, mac: &str) -> (String, String) {
    let boot = s.boot_token(mac).await;
    let r = s
        .http
        .post(s.url("/api/v1/agent/hello"))
        .json(&HelloRequest {
            boot_token: boot.clone(),
            agent_version: "bench".into(),
            protocol: 1,
            inventory: inventory(mac),
            nonce: Some(boot),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["attempt_id"].as_str().unwrap().into(),
        v["agent_token"].as_str().unwrap().into(),
    )
}

/// Machine `i` of the fleet: assigned (booted once), or installing at some
/// step, or failed, or installed, by `i`.
async fn machine(s: &Server, i: usize) {
    let m = mac(i);
    match i % 10 {
        0..=3 => {
            s.boot(&m).await;
        }
        k => {
            let (attempt, token) = hello(s, &m).await;
            let mut evs = vec![
                event(1, Step::Detect, EventKind::Finished, "detected"),
                event(2, Step::Register, EventKind::Finished, "registered"),
                event(3, Step::Disks, EventKind::Progress, "mkfs"),
            ];
            evs[2].progress = Some(0.4);
            match k {
                4..=6 => {}
                7 => evs.push(event(4, Step::Done, EventKind::Failed, "install failed")),
                _ => evs.push(event(4, Step::Done, EventKind::Finished, "installed")),
            }
            s.ack(&token, &attempt, &evs).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// GET `path` `n` times with the session: sorted durations, the last body.
async fn time_page(s: &Server, cookie: &str, path: &str, n: usize) -> (Vec<Duration>, String) {
    let mut times = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = s
            .http
            .get(s.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        body = r.text().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (times, body)
}

/// A live viewer: reads the stream, counts appended output, and notes
/// when `marker` arrives.
struct Viewer {
    seen_marker: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn viewer(
    s: &Server,
    cookie: &str,
    path: &str,
    marker: Arc<str>,
    ready: Arc<AtomicUsize>,
) -> Viewer {
    let mut r = s
        .http
        .get(s.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let seen_marker = Arc::new(AtomicUsize::new(0));
    let seen = seen_marker.clone();
    let task = tokio::spawn(async move {
        let mut tail = String::new();
        let mut counted_ready = false;
        while let Ok(Some(chunk)) = r.chunk().await {
            tail.push_str(&String::from_utf8_lossy(&chunk));
            if !counted_ready && tail.contains("event: output") {
                counted_ready = true;
                ready.fetch_add(1, Ordering::SeqCst);
            }
            if tail.contains(&*marker) {
                seen.fetch_add(1, Ordering::SeqCst);
                tail.clear();
            }
            // Keep only what a marker split across chunks needs.
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 256);
            }
        }
    });
    Viewer { seen_marker, task }
}

/// One storm: `batches` batches of `batch` log lines from `seq`, posted
/// back to back by the agent; the time it took. The last line is `marker`.
async fn storm(
    s: &Server,
    token: &str,
    attempt: &str,
    seq: &mut u64,
    z: &Size,
    marker: &str,
) -> Duration {
    let t = Instant::now();
    for b in 0..z.batches {
        let evs: Vec<_> = (0..z.batch)
            .map(|i| {
                *seq += 1;
                let last = b + 1 == z.batches && i + 1 == z.batch;
                let msg = if last {
                    marker.to_owned()
                } else {
                    format!("copying path '/nix/store/{:032x}-pkg-{}' from 'https://cache.nixos.org'...", *seq, *seq)
                };
                event(*seq, Step::Install, EventKind::Log, &msg)
            })
            .collect();
        let acked = s.ack(token, attempt, &evs).await;
        assert_eq!(acked, *seq);
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_fleet_page_and_live_viewers_under_an_event_storm() {
    let z = size();
    let s = https_server(&config(z.expected)).await;
    let cookie = admin_session(&s).await;

    // 1. The fleet page.
    let t = Instant::now();
    let s = Arc::new(s);
    let next = Arc::new(AtomicUsize::new(0));
    let mut fill = Vec::new();
    for _ in 0..8 {
        let (s, next, n) = (s.clone(), next.clone(), z.stored);
        fill.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                machine(&s, i).await;
            }
        }));
    }
    for f in fill {
        f.await.unwrap();
    }
    let total = z.stored + z.expected;
    eprintln!(
        "bench ui: {total} machines made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (times, body) = time_page(&s, &cookie, "/ui/", z.page_requests).await;
    assert!(
        body.contains(&format!(" of {total}</p>")),
        "the page counts the whole fleet"
    );
    assert!(body.contains("planned-00000") || z.expected == 0 || body.contains("failed"));
    println!(
        "bench ui: fleet page of {total} machines ({} stored, {} never booted), 100 rows: \
         p50 {:.1} ms, p99 {:.1} ms over {} requests (goal p99 < 200 ms), {} KiB",
        z.stored,
        z.expected,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        times.len(),
        body.len() / 1024
    );
    let (times, body) = time_page(
        &s,
        &cookie,
        "/ui/?sort=since&per=1000",
        z.page_requests.div_ceil(4),
    )
    .await;
    assert!(body.matches("<tr class=\"s-row-").count() >= 500.min(total));
    println!(
        "bench ui: fleet page, 1000 rows sorted by time in state: p50 {:.1} ms, p99 {:.1} ms over {} requests, {} KiB",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        times.len(),
        body.len() / 1024
    );

    // 2. Event ingestion with and without live viewers of the machine.
    let storm_mac = mac(0x40_0000);
    let (attempt, token) = hello(&s, &storm_mac).await;
    let mut seq = 0u64;
    let live = format!("/ui/machines/{storm_mac}/live");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..z.rounds {
        let marker = format!("storm-{round}-without-viewers-done");
        without.push(storm(&s, &token, &attempt, &mut seq, &z, &marker).await);

        let marker: Arc<str> = format!("storm-{round}-with-viewers-done").into();
        let ready = Arc::new(AtomicUsize::new(0));
        let mut viewers = Vec::new();
        for _ in 0..z.viewers {
            viewers.push(viewer(&s, &cookie, &live, marker.clone(), ready.clone()).await);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready.load(Ordering::SeqCst) < z.viewers {
            assert!(
                Instant::now() < deadline,
                "viewers did not all get the page's state"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        with.push(storm(&s, &token, &attempt, &mut seq, &z, &marker).await);
        // Every viewer sees the storm's last line.
        let deadline = Instant::now() + Duration::from_secs(30);
        while viewers
            .iter()
            .any(|v| v.seen_marker.load(Ordering::SeqCst) == 0)
        {
            assert!(
                Instant::now() < deadline,
                "{} of {} viewers never showed the storm's last line",
                viewers
                    .iter()
                    .filter(|v| v.seen_marker.load(Ordering::SeqCst) == 0)
                    .count(),
                z.viewers
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for v in viewers {
            v.task.abort();
        }
        // The server notices the closed streams before the next round.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let events = (z.batches * z.batch) as f64;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    let rate = |d: Duration| events / d.as_secs_f64();
    println!(
        "bench ui: event ingestion, {} events in batches of {} (median of {} rounds each): \
         no viewers {:.0} events/s, {} live viewers {:.0} events/s: {:+.1}% time \
         (goal < +10%)",
        z.batches * z.batch,
        z.batch,
        z.rounds,
        rate(a),
        z.viewers,
        rate(b),
        100.0 * (b.as_secs_f64() / a.as_secs_f64() - 1.0)
    );
    let s = Arc::try_unwrap(s).ok().expect("no task holds the server");
    s.stop().await;
}

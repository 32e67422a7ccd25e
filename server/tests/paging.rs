//! The machine list of the admin API paged and filtered (issue 14): pages
//! joined by `Link: <...>; rel="next"` cover the list once, in order,
//! stored and `expected` machines alike; filters by state, role and text;
//! bad parameters answer 400 naming the parameter; `landfall machines`
//! follows the pages. And `[server] event_retention`: the events of an
//! attempt that is over and old are deleted, the current attempt's kept.

mod common;

use common::{event, token_in, Server, BIN};
use landfall_proto::{EventKind, Step};
use serde_json::Value;

const CONFIG: &str = r#"
[server]
event_retention = "1h"

[enroll]
unknown = "hold"

[roles.ws]
layout = "single-disk"

[roles.kiosk]
layout = "single-disk"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:02"
hostname = "ws-02"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:03"
hostname = "ws-03"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:04"
hostname = "ws-04"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:05"
hostname = "kiosk-01"
role = "kiosk"

[[machines]]
mac = "52:54:00:00:00:06"
hostname = "kiosk-02"
role = "kiosk"
"#;

/// Unlisted MACs: stored as `discovered`, without a hostname.
const UNKNOWN: [&str; 2] = ["52:54:00:00:00:a1", "52:54:00:00:00:a2"];

/// ws-01, ws-03 and kiosk-02 booted (assigned); the other three never did
/// (expected); two unknown MACs booted (discovered).
async fn fleet() -> Server {
    let s = Server::start(Some(CONFIG)).await;
    for mac in [
        "52:54:00:00:00:01",
        "52:54:00:00:00:03",
        "52:54:00:00:00:06",
    ] {
        s.boot_token(mac).await;
    }
    for mac in UNKNOWN {
        s.boot(mac).await;
    }
    s
}

/// GET `path` with the admin token: (status, body, the Link header).
async fn get(s: &Server, path: &str) -> (u16, Value, Option<String>) {
    let r = s
        .http
        .get(s.url(path))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap(), link)
}

/// The `rel="next"` target of a Link header.
fn next_of(link: &str) -> String {
    let (target, rest) = link.split_once('>').unwrap();
    assert_eq!(rest, "; rel=\"next\"", "{link}");
    let target = target.strip_prefix('<').unwrap();
    assert!(target.starts_with("/api/v1/machines?"), "{link}");
    target.to_owned()
}

/// Every page from `path` on: the pages' names (hostname, else MAC).
async fn walk(s: &Server, path: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(p) = next.take() {
        let (status, body, link) = get(s, &p).await;
        assert_eq!(status, 200, "{p}: {body}");
        pages.push(
            body.as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    m["hostname"]
                        .as_str()
                        .or(m["mac"].as_str())
                        .unwrap()
                        .to_owned()
                })
                .collect(),
        );
        next = link.as_deref().map(next_of);
        assert!(pages.len() < 20, "the pages never end");
    }
    pages
}

fn flat(pages: &[Vec<String>]) -> Vec<String> {
    pages.concat()
}

#[tokio::test]
async fn the_machine_list_is_paged_in_order_with_link_headers() {
    let s = fleet().await;
    let all = [
        "kiosk-01", "kiosk-02", "ws-01", "ws-02", "ws-03", "ws-04", UNKNOWN[0], UNKNOWN[1],
    ];
    // One page (the default size holds them all): no Link.
    let (status, body, link) = get(&s, "/api/v1/machines").await;
    assert_eq!(status, 200);
    assert_eq!(link, None);
    assert_eq!(body.as_array().unwrap().len(), all.len());
    let states: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "expected",
            "assigned",
            "assigned",
            "expected",
            "assigned",
            "expected",
            "discovered",
            "discovered"
        ]
    );

    // Pages of 3, 2, 1: every machine once, in the same order; stored and
    // expected machines interleave, the unnamed ones come last.
    for limit in [3, 2, 1] {
        let pages = walk(&s, &format!("/api/v1/machines?limit={limit}")).await;
        assert_eq!(flat(&pages), all, "limit {limit}: {pages:?}");
        assert_eq!(pages.len(), all.len().div_ceil(limit), "{pages:?}");
        assert!(pages.iter().all(|p| p.len() <= limit && !p.is_empty()));
    }
    let pages = walk(&s, "/api/v1/machines?limit=3").await;
    assert_eq!(
        pages,
        [
            vec!["kiosk-01", "kiosk-02", "ws-01"],
            vec!["ws-02", "ws-03", "ws-04"],
            vec![UNKNOWN[0], UNKNOWN[1]],
        ]
    );
    // The Link carries the size and the filters on.
    let (_, _, link) = get(&s, "/api/v1/machines?limit=1&role=ws&q=ws").await;
    let next = next_of(&link.unwrap());
    assert!(
        next.contains("limit=1") && next.contains("role=ws") && next.contains("q=ws"),
        "{next}"
    );
}

#[tokio::test]
async fn the_machine_list_is_filtered_by_state_role_and_text_across_pages() {
    let s = fleet().await;
    let cases: [(&str, &[&str]); 9] = [
        ("role=ws", &["ws-01", "ws-02", "ws-03", "ws-04"]),
        ("state=expected", &["kiosk-01", "ws-02", "ws-04"]),
        ("state=assigned&role=ws", &["ws-01", "ws-03"]),
        ("state=discovered", &UNKNOWN),
        // Text: hostname, role or MAC, any case.
        ("q=KIOSK", &["kiosk-01", "kiosk-02"]),
        (
            "q=-0",
            &["kiosk-01", "kiosk-02", "ws-01", "ws-02", "ws-03", "ws-04"],
        ),
        (
            "q=00:00:00:0",
            &["kiosk-01", "kiosk-02", "ws-01", "ws-02", "ws-03", "ws-04"],
        ),
        ("q=00:a2", &[UNKNOWN[1]]),
        // LIKE's wildcards are plain text.
        ("q=%25", &[]),
    ];
    for (query, want) in cases {
        for limit in [1, 2, 100] {
            let pages = walk(&s, &format!("/api/v1/machines?{query}&limit={limit}")).await;
            assert_eq!(flat(&pages), *want, "{query} limit {limit}: {pages:?}");
        }
    }
    // Empty parameters (a form's blank fields) filter nothing.
    let pages = walk(&s, "/api/v1/machines?state=&role=&q=").await;
    assert_eq!(flat(&pages).len(), 8);
    // A state nobody is in: an empty page.
    let (status, body, link) = get(&s, "/api/v1/machines?state=failed").await;
    assert_eq!((status, body, link), (200, serde_json::json!([]), None));
}

#[tokio::test]
async fn bad_list_parameters_answer_400_naming_the_parameter_and_the_fix() {
    let s = fleet().await;
    for (query, words) in [
        ("limit=0", &["limit=0", "1 to 1000"][..]),
        ("limit=1001", &["limit=1001", "1 to 1000"]),
        ("limit=many", &["limit"]),
        (
            "state=bogus",
            &["state=\"bogus\"", "installing", "expected"],
        ),
        ("role=Web!", &["role=\"Web!\"", "a-z"]),
        ("cursor=nonsense", &["cursor=\"nonsense\"", "Link"]),
        ("cursor=ws-01/not-a-mac", &["cursor="]),
        ("colour=red", &["colour"]),
    ] {
        let (status, body, _) = get(&s, &format!("/api/v1/machines?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "bad_request", "{query}: {body}");
        let msg = body["error"].as_str().unwrap();
        for w in words {
            assert!(msg.contains(w), "{query}: {msg:?} should name {w:?}");
        }
    }
}

#[tokio::test]
async fn a_detail_event_page_without_its_attempt_answers_400() {
    let s = fleet().await;
    let (status, body, _) = get(&s, "/api/v1/machines/ws-01?events_after=5").await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("events_after=5") && msg.contains("attempt=ID"),
        "{msg}"
    );
    let (status, body, _) = get(&s, "/api/v1/machines/ws-01?events_after=0").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn landfall_machines_follows_the_pages_and_passes_the_filters() {
    let s = fleet().await;
    let tf = s.data().join("admin.token");
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(BIN)
            .args(&args)
            .env_remove("LANDFALL_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["mac"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let base = vec![
        "machines".to_owned(),
        "--server".into(),
        s.base.clone(),
        "--token-file".into(),
        tf.to_str().unwrap().into(),
        "--json".into(),
    ];
    assert_eq!(run(base.clone()).await.len(), 8);
    let mut ws = base.clone();
    ws.extend([
        "--role".into(),
        "ws".into(),
        "--state".into(),
        "expected".into(),
    ]);
    assert_eq!(run(ws).await, ["52:54:00:00:00:02", "52:54:00:00:00:04"]);
    let mut some = base.clone();
    some.extend([
        "--search".into(),
        "00:a".into(),
        "--limit".into(),
        "1".into(),
    ]);
    assert_eq!(run(some).await, [UNKNOWN[0]]);
}

/// The events stored for each attempt of `mac`: (attempt, events, pruned at).
async fn attempts(s: &Server, mac: &str) -> Vec<(String, usize, Option<String>)> {
    let d = s.admin_get(&format!("/api/v1/machines/{mac}")).await;
    d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt_id"].as_str().unwrap().to_owned(),
                a["events"].as_array().unwrap().len(),
                a["events_pruned_at"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn event_retention_prunes_old_attempts_that_are_over_and_keeps_current_ones() {
    let mut s = Server::start(Some(CONFIG)).await;
    // n events, the last one the terminal `done finished` when `over`.
    let evs = |n: u64, over: bool| -> Vec<landfall_proto::Event> {
        (1..=n)
            .map(|i| match i == n && over {
                true => event(i, Step::Done, EventKind::Finished, "installed"),
                false => event(i, Step::Install, EventKind::Progress, "copying"),
            })
            .collect()
    };
    // ws-01: an attempt with 3 events (installed), reinstalled: a second
    // attempt with 2, still installing.
    let (old, token) = s.start_attempt("52:54:00:00:00:01").await;
    assert_eq!(s.ack(&token, &old, &evs(3, true)).await, 3);
    let r = s
        .http
        .post(s.url("/api/v1/machines/ws-01/reinstall"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (new, token) = s.start_attempt("52:54:00:00:00:01").await;
    assert_eq!(s.ack(&token, &new, &evs(2, false)).await, 2);
    // ws-02: one attempt, current, as old as the other.
    let (only, token) = s.start_attempt("52:54:00:00:00:02").await;
    assert_eq!(s.ack(&token, &only, &evs(4, true)).await, 4);
    // ws-03: an attempt that is over but recent.
    let (recent, token) = s.start_attempt("52:54:00:00:00:03").await;
    assert_eq!(s.ack(&token, &recent, &evs(1, true)).await, 1);
    s.http
        .post(s.url("/api/v1/machines/ws-03/reinstall"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    let script = s.boot("52:54:00:00:00:03").await.1;
    assert!(token_in(&script).is_some());
    let (recent_new, _) = {
        let t = token_in(&script).unwrap();
        let r = s.hello(&t, "52:54:00:00:00:03").await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        (v["attempt_id"].as_str().unwrap().to_owned(), ())
    };
    assert_ne!(recent_new, recent);

    // Two hours pass for every attempt but ws-03's: the server is stopped,
    // the times moved back, the server started again (the retention task
    // runs at start).
    s.handle.take().unwrap().shutdown().await.unwrap();
    let back = "UPDATE attempts SET started_at = started_at - 7200,
                    last_seen_at = last_seen_at - 7200,
                    superseded_at = superseded_at - 7200
              WHERE id IN ";
    let ids = [old.clone(), new.clone(), only.clone()];
    let n = match s.database.clone() {
        None => {
            let db = rusqlite::Connection::open(s.data().join(landfall::DB_FILE)).unwrap();
            db.execute(&format!("{back} (?1, ?2, ?3)"), ids.clone())
                .unwrap() as u64
        }
        // The sync client runs its own runtime: not on this one.
        Some(url) => std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let [a, b, d] = &ids;
            c.execute(&format!("{back} ($1, $2, $3)"), &[a, b, d])
                .unwrap()
        })
        .join()
        .unwrap(),
    };
    assert_eq!(n, 3);
    s.restart().await;
    let mut pruned = Vec::new();
    for _ in 0..100 {
        pruned = attempts(&s, "ws-01").await;
        if pruned[0].2.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The old, superseded attempt: events gone, and it says when.
    assert_eq!(pruned[0].0, old);
    assert_eq!(pruned[0].1, 0);
    assert!(pruned[0].2.as_deref().unwrap().ends_with('Z'), "{pruned:?}");
    // The current attempt keeps its events, however old.
    assert_eq!(
        (pruned[1].0.as_str(), pruned[1].1, &pruned[1].2),
        (new.as_str(), 2, &None)
    );
    assert_eq!(attempts(&s, "ws-02").await, [(only.clone(), 4, None)]);
    // An attempt over for less than event_retention keeps its events.
    assert_eq!(attempts(&s, "ws-03").await[0], (recent.clone(), 1, None));
    // The CLI says so instead of an empty list.
    let tf = s.data().join("admin.token");
    let out = tokio::process::Command::new(BIN)
        .args(["machine", "ws-01", "--server", &s.base, "--token-file"])
        .arg(&tf)
        .env_remove("LANDFALL_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("its events were deleted at") && text.contains("server.event_retention"),
        "{text}"
    );
}

//! The store under a stalled database and beside another server (issue 14):
//! an outside connection holding the SQLite write lock delays only what
//! writes; two `landfall serve` processes on one SQLite file answer no 5xx.

mod common;

use std::time::{Duration, Instant};

use common::{event, inventory, token_in, write, ServeProcess, Server, CONFIG, MAC1, MAC2};
use landfall_proto::{EventKind, HelloRequest, Step};
use serde_json::Value;

/// How long the outside connection holds the write lock.
const LOCK_HELD: Duration = Duration::from_secs(8);

/// Hold the write lock for `held` from another connection (as another
/// process would): SQLite's `BEGIN EXCLUSIVE` on the file, or on PostgreSQL
/// the advisory lock every landfall write transaction takes first. Answers
/// when the lock is taken.
fn hold_write_lock(s: &Server, held: Duration) -> std::thread::JoinHandle<()> {
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let db = s.data().join("landfall.sqlite");
    let pg = s.database.clone();
    let t = std::thread::spawn(move || match pg {
        None => {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch("BEGIN EXCLUSIVE").unwrap();
            taken_tx.send(()).unwrap();
            std::thread::sleep(held);
            c.execute_batch("COMMIT").unwrap();
        }
        Some(url) => {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let key = landfall::store::postgres::WRITE_LOCK;
            c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
            taken_tx.send(()).unwrap();
            std::thread::sleep(held);
            c.execute("SELECT pg_advisory_unlock($1)", &[&key]).unwrap();
        }
    });
    taken_rx.recv().unwrap();
    t
}

#[tokio::test]
async fn an_outside_write_lock_delays_only_what_writes() {
    let s = Server::start(Some(CONFIG)).await;
    write(&s.artifacts().join("vmlinuz"), &vec![7u8; 1 << 20]);
    let (attempt, agent) = s.start_attempt(MAC1).await;

    let lock = hold_write_lock(&s, LOCK_HELD);
    let locked_at = Instant::now();

    // A write issued during the lock: it waits, then lands (no 5xx).
    let events = {
        let http = s.http.clone();
        let url = s.url("/api/v1/agent/events");
        let (agent, attempt) = (agent.clone(), attempt.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(agent)
                .json(&serde_json::json!({
                    "attempt_id": attempt,
                    "events": [event(1, Step::Disks, EventKind::Started, "during the lock")],
                }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };

    // boot.ipxe: the busy hold within 2 s instead of hanging.
    let t = Instant::now();
    let (status, script) = s.boot(MAC2).await;
    let boot_time = t.elapsed();
    assert_eq!(status, 200);
    assert!(script.contains("server busy"), "{script}");
    assert!(
        script.contains("sleep ") && script.contains("chain "),
        "{script}"
    );
    assert!(
        boot_time < Duration::from_secs(2),
        "boot.ipxe took {boot_time:?}"
    );

    // GET / and an artifact stay fast for the whole lock.
    let mut index_times = Vec::new();
    let mut artifact_times = Vec::new();
    while locked_at.elapsed() < LOCK_HELD - Duration::from_millis(500) {
        let t = Instant::now();
        let r = s.http.get(s.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        index_times.push(t.elapsed());
        let t = Instant::now();
        let r = s
            .http
            .get(s.url("/artifacts/vmlinuz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 1 << 20);
        artifact_times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!events.is_finished(), "the write waited for the lock");
    index_times.sort();
    artifact_times.sort();
    let max_index = *index_times.last().unwrap();
    let max_artifact = *artifact_times.last().unwrap();
    eprintln!(
        "during the lock: GET / {} requests, median {:?}, max {max_index:?}; \
         artifact (1 MiB) median {:?}, max {max_artifact:?}; boot.ipxe busy hold in {boot_time:?}",
        index_times.len(),
        index_times[index_times.len() / 2],
        artifact_times[artifact_times.len() / 2],
    );
    assert!(
        max_index < Duration::from_millis(500),
        "GET / took {max_index:?}"
    );
    assert!(
        max_artifact < Duration::from_millis(500),
        "artifact took {max_artifact:?}"
    );

    // Once the lock ends, everything completes.
    tokio::task::spawn_blocking(move || lock.join().unwrap())
        .await
        .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .expect("the write completes after the lock")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["acked_seq"], 1);
    assert!(
        token_in(&s.boot(MAC2).await.1).is_some(),
        "install script again"
    );
    s.stop().await;
}

/// `[[machines]]` entries for `n` machines (52:54:00:00:10:NN).
fn fleet_config(n: usize) -> (String, Vec<String>) {
    let mut c = String::from(
        "[enroll]\nunknown = \"hold\"\n\n[roles.workstation]\nlayout = \"single-disk\"\n",
    );
    let mut macs = Vec::new();
    for i in 0..n {
        let mac = format!("52:54:00:00:10:{i:02x}");
        c.push_str(&format!(
            "\n[[machines]]\nmac = \"{mac}\"\nhostname = \"ws-{i:02}\"\nrole = \"workstation\"\n"
        ));
        macs.push(mac);
    }
    (c, macs)
}

/// Two `landfall serve` on one SQLite file, a machine's requests spread
/// over both: no 5xx, no "server error" hold, every event stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_sqlite_file_answer_without_5xx() {
    const MACHINES: usize = 24;
    const EVENTS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let (config, macs) = fleet_config(MACHINES);
    let layouts = dir.path().join("layouts");
    std::fs::create_dir_all(&layouts).unwrap();
    std::fs::write(layouts.join("single-disk.json"), common::LAYOUT_JSON).unwrap();
    let config_path = dir.path().join("landfall.toml");
    std::fs::write(&config_path, config).unwrap();
    let data = dir.path().join("data");
    let a = ServeProcess::start(&config_path, &data);
    let b = ServeProcess::start(&config_path, &data);
    let bases = [a.base.clone(), b.base.clone()];
    let http = reqwest::Client::new();

    let mut machines = tokio::task::JoinSet::new();
    for (i, mac) in macs.iter().enumerate() {
        let (http, mac) = (http.clone(), mac.clone());
        let bases = bases.clone();
        machines.spawn(async move {
            let on = |k: usize| bases[(i + k) % 2].clone();
            let r = http
                .get(format!("{}/boot.ipxe", on(0)))
                .query(&[("mac", mac.as_str()), ("arch", "x86_64")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let script = r.text().await.unwrap();
            let token = token_in(&script).unwrap_or_else(|| panic!("{mac}: {script}"));
            let r = http
                .post(format!("{}/api/v1/agent/hello", on(1)))
                .json(&HelloRequest {
                    boot_token: token.clone(),
                    agent_version: "0.1.0-test".into(),
                    protocol: 1,
                    inventory: inventory(&mac),
                    nonce: Some(format!("nonce-{token}")),
                })
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{mac} hello: {}", r.text().await.unwrap());
            let v: Value = r.json().await.unwrap();
            let attempt = v["attempt_id"].as_str().unwrap().to_owned();
            let agent = v["agent_token"].as_str().unwrap().to_owned();
            for seq in 1..=EVENTS {
                let e = if seq == EVENTS {
                    event(seq, Step::Done, EventKind::Finished, "done")
                } else {
                    event(seq, Step::Install, EventKind::Progress, "building")
                };
                let r = http
                    .post(format!("{}/api/v1/agent/events", on(seq as usize)))
                    .bearer_auth(&agent)
                    .json(&serde_json::json!({ "attempt_id": attempt, "events": [e] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "{mac} event {seq}: {}",
                    r.text().await.unwrap()
                );
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["acked_seq"], seq);
            }
        });
    }
    while let Some(r) = machines.join_next().await {
        r.unwrap();
    }
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let list: Value = http
        .get(format!("{}/api/v1/machines", bases[1]))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), MACHINES);
    for m in list {
        assert_eq!(m["state"], "installed", "{m}");
    }
    let logs = [a.stop(), b.stop()].concat();
    assert!(
        !logs.iter().any(|l| l.contains("database is locked")),
        "{logs:#?}"
    );
}

/// Two servers on one PostgreSQL: the agent of a failed install waits on
/// server A; `landfall retry` through server B wakes it at once (NOTIFY),
/// not at A's 2 s fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_pass_the_retry_wait_flow() {
    let db = common::pg::new_database();
    let a = Server::start_with_database(Some(CONFIG), Some(db.clone())).await;
    let b = Server::start_with_database(Some(CONFIG), Some(db)).await;

    // Booted from B, installing through A.
    let token = b.boot_token(MAC1).await;
    let r = a.hello(&token, MAC1).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let attempt = v["attempt_id"].as_str().unwrap().to_owned();
    let agent = v["agent_token"].as_str().unwrap().to_owned();
    let mut failed = event(
        1,
        Step::Done,
        EventKind::Failed,
        "nixos-install exited with 1",
    );
    failed.data = Some(serde_json::json!({ "step": "install" }));
    assert_eq!(b.ack(&agent, &attempt, &[failed]).await, 1);
    assert_eq!(a.state_of(MAC1).await, "failed");

    // The agent waits on A.
    let pending = {
        let http = a.http.clone();
        let url = a.url("/api/v1/agent/wait");
        let (agent, attempt) = (agent.clone(), attempt.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(agent)
                .json(&serde_json::json!({ "attempt_id": attempt, "timeout_secs": 30 }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let w: landfall_proto::WaitResponse = r.json().await.unwrap();
            (w, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator asks B.
    let retried_at = Instant::now();
    let r = b
        .http
        .post(b.url("/api/v1/machines/ws-01/retry"))
        .bearer_auth(b.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["installer"]["waiting"], true,
        "B sees A's waiting agent: {v}"
    );
    let (w, answered_at) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    let took = answered_at.saturating_duration_since(retried_at);
    eprintln!("retry through B answered A's wait {took:?} later");
    assert_eq!(w.action, landfall_proto::WaitAction::Retry);
    assert!(w.assignment.is_some());
    assert!(
        took < Duration::from_millis(1000),
        "woken by the 2 s poll, not NOTIFY: {took:?}"
    );
    assert_eq!(b.state_of(MAC1).await, "installing");
    a.stop().await;
    b.stop().await;
}

/// Servers starting together on one new PostgreSQL database: each
/// migration is applied once (the advisory lock), and both open.
#[test]
fn servers_starting_together_on_postgres_migrate_once() {
    let url = common::pg::new_database();
    let db = landfall::store::Database::Postgres(url.clone());
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || landfall::store::Store::connect(&db).map(|_| ()))
        })
        .collect();
    for o in opened {
        o.join().unwrap().unwrap();
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = c.query("SELECT version FROM landfall_schema", &[]).unwrap();
    assert_eq!(rows.len(), 1, "one version row");
    let version: i64 = rows[0].get(0);
    assert_eq!(
        version as usize,
        landfall::store::postgres::MIGRATIONS.len()
    );
}

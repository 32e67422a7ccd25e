//! A failed install waits (`POST /api/v1/agent/wait`); `landfall retry` lets
//! it run again, `landfall reinstall` stops it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use landfall_proto::{Event, EventKind, Step, WaitAction, WaitResponse};
use serde_json::Value;

/// CONFIG with an install target and first-boot checks for the role.
fn config() -> String {
    CONFIG.replace(
        "wipe = \"always\"\n",
        "wipe = \"always\"\n\
         flake = \"git+https://git.lan/fleet#{hostname}\"\n\n\
         [[roles.workstation.checks]]\n\
         kind = \"ssh\"\n\n\
         [[roles.workstation.checks]]\n\
         name = \"home\"\n\
         kind = \"smb\"\n\
         mountpoint = \"/home/alice\"\n",
    )
}

struct Agent {
    attempt: String,
    token: String,
    hello: Value,
}

async fn hello(s: &Server, mac: &str) -> Agent {
    let boot = s.boot_token(mac).await;
    let r = s.hello(&boot, mac).await;
    assert_eq!(r.status(), 200);
    let hello: Value = r.json().await.unwrap();
    Agent {
        attempt: hello["attempt_id"].as_str().unwrap().to_owned(),
        token: hello["agent_token"].as_str().unwrap().to_owned(),
        hello,
    }
}

fn failed(seq: u64, step: &str, message: &str) -> Event {
    let mut e = event(seq, Step::Done, EventKind::Failed, message);
    e.data = Some(serde_json::json!({ "step": step }));
    e
}

async fn wait_raw(s: &Server, token: &str, attempt: &str, timeout_secs: u64) -> reqwest::Response {
    s.http
        .post(s.url("/api/v1/agent/wait"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "attempt_id": attempt, "timeout_secs": timeout_secs }))
        .send()
        .await
        .unwrap()
}

/// POST wait; (answer, how long it took).
async fn wait(s: &Server, a: &Agent, timeout_secs: u64) -> (WaitResponse, Duration) {
    let t = Instant::now();
    let r = wait_raw(s, &a.token, &a.attempt, timeout_secs).await;
    assert_eq!(r.status(), 200);
    (r.json().await.unwrap(), t.elapsed())
}

async fn admin_post(s: &Server, path: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url(path))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn verify(s: &Server, token: &str) -> u16 {
    s.http
        .post(s.url("/api/v1/agent/verify"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "hostname": "ws-01", "checks": [] }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn hello_carries_the_install_target_and_the_roles_checks() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    let asg = &a.hello["assignment"];
    assert_eq!(
        asg["install"],
        serde_json::json!({"kind": "flake", "flake": "git+https://git.lan/fleet#ws-01"})
    );
    assert_eq!(
        asg["checks"],
        serde_json::json!([
            {"name": "", "kind": "ssh", "host": "localhost", "port": 22},
            {"name": "home", "kind": "smb", "mountpoint": "/home/alice", "write_test": true}
        ])
    );
    // Without install keys and checks the assignment has neither.
    let s2 = Server::start(Some(CONFIG)).await;
    let b = hello(&s2, MAC1).await;
    assert!(b.hello["assignment"].get("install").is_none());
    assert!(b.hello["assignment"].get("checks").is_none());
    s.stop().await;
    s2.stop().await;
}

/// `landfall retry` says whether the failed installer is there to pick the
/// retry up: an agent that never asked (killed) is not; one that asks is.
#[tokio::test]
async fn retry_says_whether_an_installer_is_waiting() {
    let s = Server::start(Some(&config())).await;
    let gone = hello(&s, MAC1).await;
    s.ack(
        &gone.token,
        &gone.attempt,
        &[failed(1, "disks", "no disk matched")],
    )
    .await;
    let (status, r) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["state"], "retry_requested");
    assert_eq!(
        r["installer"],
        serde_json::json!({ "waiting": false, "last_wait_at": null })
    );

    let there = hello(&s, MAC2).await;
    s.ack(
        &there.token,
        &there.attempt,
        &[failed(1, "disks", "no disk matched")],
    )
    .await;
    let (w, _) = wait(&s, &there, 1).await;
    assert_eq!(w.action, WaitAction::Wait);
    let d = s.admin_get("/api/v1/machines/ws-02").await;
    let last = d["attempts"][0]["last_wait_at"]
        .as_str()
        .expect("recorded")
        .to_owned();
    let (status, r) = admin_post(&s, "/api/v1/machines/ws-02/retry").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["installer"]["waiting"], true, "{r}");
    assert_eq!(r["installer"]["last_wait_at"], last.as_str());
    // The waiting agent's next ask gets the retry.
    let (w, _) = wait(&s, &there, 5).await;
    assert_eq!(w.action, WaitAction::Retry);
    s.stop().await;
}

/// A long failure reason is cut on the console, but the fix (`landfall
/// reinstall ...`) after it never is.
#[tokio::test]
async fn a_failed_machine_holds_with_the_fix_after_a_long_reason() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    let reason = format!(
        "nixos-install exited with 1: {}",
        "error: builder failed ".repeat(40)
    );
    let evs = [failed(1, "install", &reason)];
    assert_eq!(s.ack(&a.token, &a.attempt, &evs).await, 1);
    let (status, script) = s.boot(MAC1).await;
    assert_eq!(status, 200);
    let echoed: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("echo landfall: "))
        .collect();
    assert!(echoed[0].starts_with("holding: install of "), "{script}");
    assert!(echoed[0].contains("error: builder failed"), "{script}");
    assert!(echoed[0].len() < 600, "{script}");
    assert!(
        echoed.contains(&format!("fix it, then run: landfall reinstall {MAC1}").as_str()),
        "{script}"
    );
    assert!(token_in(&script).is_none());
    s.stop().await;
}

#[tokio::test]
async fn failed_install_holds_waits_and_runs_again_after_retry() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    let first_verify = a.hello["assignment"]["verify_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let evs = [
        event(1, Step::Detect, EventKind::Finished, ""),
        event(
            2,
            Step::Install,
            EventKind::Failed,
            "nixos-install exited with 1",
        ),
        failed(3, "install", "nixos-install exited with 1"),
    ];
    assert_eq!(s.ack(&a.token, &a.attempt, &evs).await, 3);
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["error"], "step install: nixos-install exited with 1");
    let (_, script) = s.boot(MAC1).await;
    assert!(script.contains("holding: install of"), "{script}");
    assert!(token_in(&script).is_none());

    // Nobody decided: `wait` after the (short) timeout.
    let (w, took) = wait(&s, &a, 1).await;
    assert_eq!(w.action, WaitAction::Wait);
    assert!(w.assignment.is_none());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(s.state_of(MAC1).await, "failed");

    // A pending wait answers as soon as the operator asks for a retry (not at
    // the 2 s fallback poll).
    let pending = {
        let http = s.http.clone();
        let url = s.url("/api/v1/agent/wait");
        let (token, attempt) = (a.token.clone(), a.attempt.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "attempt_id": attempt, "timeout_secs": 30 }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            (r.json::<WaitResponse>().await.unwrap(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "wait answered before the retry");
    let (status, summary) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 200, "{summary}");
    let (w, took) = pending.await.unwrap();
    assert!(took < Duration::from_millis(1500), "retry took {took:?}");
    assert_eq!(w.action, WaitAction::Retry);
    let asg = w.assignment.expect("retry carries the assignment");
    assert_eq!(asg.hostname, "ws-01");
    assert_eq!(
        asg.install.as_ref().and_then(|t| t.flake()),
        Some("git+https://git.lan/fleet#ws-01")
    );
    assert_eq!(asg.checks.len(), 2);
    assert!(asg.disko.is_some(), "the layout is rendered again");
    let new_verify = asg
        .verify_token
        .expect("a verify token")
        .expose()
        .to_owned();
    assert_eq!(new_verify.len(), 64);
    assert_ne!(
        new_verify, first_verify,
        "the retry mints a new verify token"
    );
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["state"], "installing");
    assert!(d["error"].is_null(), "{d}");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "same attempt");

    // The same attempt goes on with higher seqs and ends with a second
    // terminal event, which counts.
    let evs = [
        event(4, Step::Install, EventKind::Started, "again"),
        event(5, Step::Install, EventKind::Finished, ""),
        event(6, Step::Done, EventKind::Finished, "installed"),
    ];
    assert_eq!(s.ack(&a.token, &a.attempt, &evs).await, 6);
    assert_eq!(s.state_of(MAC1).await, "installed");
    let (_, script) = s.boot(MAC1).await;
    assert!(
        script.ends_with("booting from local disk\nexit\n"),
        "{script}"
    );
    // Only the retry's verify token is valid now.
    assert_eq!(verify(&s, &first_verify).await, 401);
    assert_eq!(verify(&s, &new_verify).await, 200);
    assert_eq!(s.state_of(MAC1).await, "ready");
    s.stop().await;
}

#[tokio::test]
async fn a_failure_after_a_retry_fails_again_and_a_lost_retry_answer_is_repeated() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    s.ack(
        &a.token,
        &a.attempt,
        &[failed(1, "disks", "no disk matched")],
    )
    .await;
    let (status, _) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 200);
    assert_eq!(s.state_of(MAC1).await, "retry_requested");
    // While retry_requested a PXE boot holds and says why.
    let (_, script) = s.boot(MAC1).await;
    assert!(
        script.contains("no longer running") && script.contains("landfall reinstall"),
        "{script}"
    );
    let (w1, took) = wait(&s, &a, 5).await;
    assert_eq!(w1.action, WaitAction::Retry);
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The agent lost that answer and asks again: the retry is granted again,
    // with fresh tokens.
    let (w2, _) = wait(&s, &a, 5).await;
    assert_eq!(w2.action, WaitAction::Retry);
    let t1 = w1.assignment.unwrap().verify_token.unwrap();
    let t2 = w2.assignment.unwrap().verify_token.unwrap();
    assert_ne!(t1.expose(), t2.expose());
    assert_eq!(s.state_of(MAC1).await, "installing");
    // Once the agent reports again it is running: a wait now is no retry.
    assert_eq!(
        s.ack(
            &a.token,
            &a.attempt,
            &[event(2, Step::Disks, EventKind::Started, "")]
        )
        .await,
        2
    );
    assert_eq!(wait(&s, &a, 1).await.0.action, WaitAction::Wait);

    // It fails again: failed again, with the new error, and waits again.
    let evs = [failed(3, "disks", "still no disk")];
    assert_eq!(s.ack(&a.token, &a.attempt, &evs).await, 3);
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["error"], "step disks: still no disk");
    let (w, _) = wait(&s, &a, 1).await;
    assert_eq!(w.action, WaitAction::Wait);
    s.stop().await;
}

#[tokio::test]
async fn reinstall_while_waiting_stops_the_agent() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    s.ack(&a.token, &a.attempt, &[failed(1, "install", "boom")])
        .await;
    let pending = {
        let http = s.http.clone();
        let url = s.url("/api/v1/agent/wait");
        let (token, attempt) = (a.token.clone(), a.attempt.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "attempt_id": attempt, "timeout_secs": 30 }))
                .send()
                .await
                .unwrap();
            (r.json::<WaitResponse>().await.unwrap(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    let (status, _) = admin_post(&s, "/api/v1/machines/ws-01/reinstall").await;
    assert_eq!(status, 200);
    let (w, took) = pending.await.unwrap();
    assert_eq!(w.action, WaitAction::Stop);
    assert!(w.assignment.is_none());
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(s.state_of(MAC1).await, "reinstall_requested");
    // A retry of a reinstall_requested machine is refused; asking again still says stop.
    let (status, body) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("reinstall_requested"),
        "{body}"
    );
    assert_eq!(wait(&s, &a, 5).await.0.action, WaitAction::Stop);
    s.stop().await;
}

#[tokio::test]
async fn a_superseded_attempt_waiting_during_the_newer_install_is_an_alarm() {
    let cfg = config().replace("[server]\n", "[server]\nagent_alive_secs = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let old = hello(&s, MAC1).await;
    // A newer attempt (a reboot, as far as the server can tell) ...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _new = hello(&s, MAC1).await;
    // ... yet the old agent is alive and asks: no reboot, an alarm (issue 12).
    let r = wait_raw(&s, &old.token, &old.attempt, 5).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "attempt_alive", "{v}");
    assert_eq!(s.state_of(MAC1).await, "compromised");
    s.stop().await;
}

#[tokio::test]
async fn retry_is_allowed_only_from_failed() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    // installing
    let (status, body) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 409);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("ws-01 is installing") && msg.contains("only to a failed install"),
        "{msg}"
    );
    assert_eq!(s.state_of(MAC1).await, "installing");
    // compromised
    let mut alarm = failed(1, "secrets", "security alarm: wrap token already used");
    alarm.data = Some(serde_json::json!({"step": "secrets", "security": true}));
    s.ack(&a.token, &a.attempt, &[alarm]).await;
    assert_eq!(s.state_of(MAC1).await, "compromised");
    let (status, body) = admin_post(&s, "/api/v1/machines/ws-01/retry").await;
    assert_eq!(status, 409);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("compromised")
            && msg.contains("investigate")
            && msg.contains("landfall reinstall ws-01"),
        "{msg}"
    );
    assert_eq!(s.state_of(MAC1).await, "compromised");
    // The compromised agent keeps waiting: no retry for it.
    assert_eq!(wait(&s, &a, 1).await.0.action, WaitAction::Wait);
    // failed: allowed, by MAC too.
    let b = hello(&s, MAC2).await;
    s.ack(&b.token, &b.attempt, &[failed(1, "disks", "x")])
        .await;
    let (status, body) = admin_post(&s, "/api/v1/machines/52-54-00-00-00-02/retry").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "retry_requested");
    assert_eq!(body["hostname"], "ws-02");
    assert_eq!(
        body["error"], "step disks: x",
        "the error stays until the retry runs"
    );
    // Unknown machine, no admin token.
    let (status, _) = admin_post(&s, "/api/v1/machines/nobody/retry").await;
    assert_eq!(status, 404);
    let r = s
        .http
        .post(s.url("/api/v1/machines/ws-02/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn wait_is_authenticated_like_events() {
    let s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    let b = hello(&s, MAC2).await;
    let r = wait_raw(&s, "not-a-token", &a.attempt, 1).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = s
        .http
        .post(s.url("/api/v1/agent/wait"))
        .json(&serde_json::json!({ "attempt_id": a.attempt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The admin token and a verify token are no agent tokens.
    let r = wait_raw(&s, &s.admin_token(), &a.attempt, 1).await;
    assert_eq!(r.status(), 401);
    let vt = a.hello["assignment"]["verify_token"].as_str().unwrap();
    assert_eq!(wait_raw(&s, vt, &a.attempt, 1).await.status(), 401);
    // Another attempt's id with this token.
    let r = wait_raw(&s, &a.token, &b.attempt, 1).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains(&a.attempt), "{v}");
    // A malformed body.
    let r = s
        .http
        .post(s.url("/api/v1/agent/wait"))
        .bearer_auth(&a.token)
        .header("content-type", "application/json")
        .body("{\"timeout_secs\": 1}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // Installing, nothing failed: no retry, and timeout_secs 0 answers at once.
    let (w, took) = wait(&s, &a, 0).await;
    assert_eq!(w.action, WaitAction::Wait);
    assert!(took < Duration::from_millis(500), "{took:?}");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_answers_pending_waits_at_once() {
    let mut s = Server::start(Some(&config())).await;
    let a = hello(&s, MAC1).await;
    s.ack(&a.token, &a.attempt, &[failed(1, "install", "boom")])
        .await;
    let pending = {
        let http = s.http.clone();
        let url = s.url("/api/v1/agent/wait");
        let (token, attempt) = (a.token.clone(), a.attempt.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "attempt_id": attempt, "timeout_secs": 60 }))
                .send()
                .await
                .unwrap();
            r.json::<WaitResponse>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    s.handle.take().unwrap().shutdown().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(pending.await.unwrap().action, WaitAction::Wait);
}

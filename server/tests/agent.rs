//! POST /api/v1/agent/hello and /api/v1/agent/events.

mod common;

use common::*;
use landfall_proto::{EventKind, Step};
use serde_json::Value;

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error body is not JSON"
    );
    let v: Value = r.json().await.unwrap();
    // Every error body names its code beside the message (issue 11 item 2).
    let code = v["code"].as_str().expect("code field");
    assert_ne!(code, "unknown", "{v}");
    (status, v["error"].as_str().expect("error field").to_owned())
}

/// The status and the body's `code`.
async fn code_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["code"].as_str().expect("code field").to_owned())
}

/// Each refusal an agent branches on has its own code; the statuses are
/// those of before the codes.
#[tokio::test]
async fn errors_carry_a_stable_code_beside_the_message() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let code = |status: u16, code: &str| (status, code.to_owned());
    assert_eq!(
        code_of(s.hello(&"0".repeat(64), MAC1).await).await,
        code(401, "boot_token_invalid")
    );
    assert_eq!(
        code_of(s.hello(&token, MAC2).await).await,
        code(403, "boot_token_mac_mismatch")
    );
    let (attempt1, agent1) = s.start_attempt(MAC1).await;
    let (attempt2, _) = s.start_attempt(MAC2).await;
    let e = [event(1, Step::Detect, EventKind::Started, "")];
    assert_eq!(
        code_of(s.events("not-a-token", &attempt1, &e).await).await,
        code(401, "agent_token_invalid")
    );
    let r = s
        .http
        .post(s.url("/api/v1/agent/events"))
        .json(&serde_json::json!({"attempt_id": attempt1, "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, code(401, "agent_token_missing"));
    assert_eq!(
        code_of(s.events(&agent1, &attempt2, &e).await).await,
        code(403, "attempt_mismatch")
    );
    let zero = [event(0, Step::Detect, EventKind::Started, "")];
    assert_eq!(
        code_of(s.events(&agent1, &attempt1, &zero).await).await,
        code(400, "bad_request")
    );
    let r = s.http.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(code_of(r).await, code(404, "not_found"));
    let r = s
        .http
        .get(s.url("/api/v1/machines"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, code(401, "admin_token_invalid"));
    s.stop().await;
}

#[tokio::test]
async fn boot_token_from_the_script_works_for_hello() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let r = s.hello(&token, MAC1).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["assignment"]["hostname"], "ws-01");
    assert_eq!(v["assignment"]["role"], "workstation");
    assert_eq!(v["assignment"]["layout"], "single-disk");
    assert_eq!(v["assignment"]["wipe"], "always");
    assert_eq!(v["agent_token"].as_str().unwrap().len(), 64);
    assert_eq!(s.state_of(MAC1).await, "installing");
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["inventory"]["nics"][0]["mac"], MAC1);
    assert_eq!(d["attempts"][0]["attempt_id"], v["attempt_id"]);
    s.stop().await;
}

#[tokio::test]
async fn bad_token_is_401() {
    let s = Server::start(Some(CONFIG)).await;
    let _ = s.boot_token(MAC1).await;
    let (status, msg) = error_of(s.hello(&"0".repeat(64), MAC1).await).await;
    assert_eq!(status, 401);
    assert!(msg.contains("boot token unknown or expired"), "{msg}");
    let (status, _) = error_of(s.hello("", MAC1).await).await;
    assert_eq!(status, 401);
    s.stop().await;
}

#[tokio::test]
async fn token_bound_to_mac_not_in_inventory_is_403() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let (status, msg) = error_of(s.hello(&token, MAC2).await).await;
    assert_eq!(status, 403);
    assert!(msg.contains(MAC1), "{msg}");
    // The refusal did not consume the token.
    assert_eq!(s.hello(&token, MAC1).await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn hello_retry_is_idempotent_and_revokes_the_old_agent_token() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let first: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    let second: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    assert_eq!(first["attempt_id"], second["attempt_id"]);
    assert_ne!(first["agent_token"], second["agent_token"]);
    let attempt = first["attempt_id"].as_str().unwrap();
    let e = [event(1, Step::Detect, EventKind::Started, "")];
    let (status, _) = error_of(
        s.events(first["agent_token"].as_str().unwrap(), attempt, &e)
            .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        s.ack(second["agent_token"].as_str().unwrap(), attempt, &e)
            .await,
        1
    );
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn boot_token_expires_after_ttl() {
    let cfg = CONFIG.replace("[server]\n", "[server]\nboot_token_ttl = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let token = s.boot_token(MAC1).await;
    assert_eq!(s.hello(&token, MAC1).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, _) = error_of(s.hello(&token, MAC1).await).await;
    assert_eq!(status, 401, "retry after the TTL must be refused");
    // An unexchanged token expires too.
    let token2 = s.boot_token(MAC2).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(s.hello(&token2, MAC2).await.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn a_newer_boot_script_revokes_the_unused_older_token() {
    let s = Server::start(Some(CONFIG)).await;
    let old = s.boot_token(MAC1).await;
    let new = s.boot_token(MAC1).await;
    assert_eq!(s.hello(&old, MAC1).await.status(), 401);
    assert_eq!(s.hello(&new, MAC1).await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn duplicate_seq_is_stored_once_first_wins() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let e1 = event(1, Step::Detect, EventKind::Started, "first");
    let e1b = event(1, Step::Detect, EventKind::Started, "second copy");
    assert_eq!(s.ack(&agent, &attempt, &[e1.clone(), e1b]).await, 1);
    assert_eq!(s.ack(&agent, &attempt, &[e1]).await, 1);
    let d = s.admin_get(&format!("/api/v1/machines/{MAC1}")).await;
    let events = d["attempts"][0]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["message"], "first");
    s.stop().await;
}

#[tokio::test]
async fn gap_is_not_acked_until_filled() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let ev = |n| event(n, Step::Disks, EventKind::Progress, "p");
    assert_eq!(s.ack(&agent, &attempt, &[ev(1), ev(2)]).await, 2);
    assert_eq!(
        s.ack(&agent, &attempt, &[ev(4), ev(5)]).await,
        2,
        "gap at 3 acked"
    );
    assert_eq!(s.ack(&agent, &attempt, &[]).await, 2);
    // Resending everything fills the gap and acks all.
    assert_eq!(
        s.ack(&agent, &attempt, &[ev(1), ev(2), ev(3), ev(4), ev(5)])
            .await,
        5
    );
    let d = s.admin_get(&format!("/api/v1/machines/{MAC1}")).await;
    assert_eq!(d["attempts"][0]["acked_seq"], 5);
    assert_eq!(d["attempts"][0]["events"].as_array().unwrap().len(), 5);
    assert_eq!(d["last_event"]["seq"], 5);
    s.stop().await;
}

#[tokio::test]
async fn events_auth_is_checked() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt1, agent1) = s.start_attempt(MAC1).await;
    let (attempt2, _agent2) = s.start_attempt(MAC2).await;
    let e = [event(1, Step::Detect, EventKind::Started, "")];

    let (status, msg) = error_of(s.events("not-a-token", &attempt1, &e).await).await;
    assert_eq!(status, 401, "{msg}");
    let r = s
        .http
        .post(s.url("/api/v1/agent/events"))
        .json(&serde_json::json!({"attempt_id": attempt1, "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (status, msg) = error_of(r).await;
    assert_eq!(status, 401);
    assert!(msg.contains("missing agent token"), "{msg}");

    // A valid token for another attempt.
    let (status, msg) = error_of(s.events(&agent1, &attempt2, &e).await).await;
    assert_eq!(status, 403, "{msg}");
    // An attempt that does not exist.
    let (status, _) = error_of(s.events(&agent1, "nonexistent", &e).await).await;
    assert_eq!(status, 403);
    // The admin token is no agent token.
    let (status, _) = error_of(s.events(&s.admin_token(), &attempt1, &e).await).await;
    assert_eq!(status, 401);
    s.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_4xx_with_json_bodies() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let post = |path: &'static str, body: &'static str, ct: &'static str| {
        let req = s
            .http
            .post(s.url(path))
            .bearer_auth(&agent)
            .header("content-type", ct)
            .body(body);
        async move { req.send().await.unwrap() }
    };
    for (path, body, ct) in [
        ("/api/v1/agent/events", "{not json", "application/json"),
        (
            "/api/v1/agent/events",
            r#"{"attempt_id": 5}"#,
            "application/json",
        ),
        (
            "/api/v1/agent/events",
            r#"{"attempt_id":"x","events":[]}"#,
            "text/plain",
        ),
        ("/api/v1/agent/hello", "[]", "application/json"),
        (
            "/api/v1/agent/hello",
            r#"{"boot_token":"x"}"#,
            "application/json",
        ),
        ("/api/v1/agent/hello", "", "application/json"),
    ] {
        let r = post(path, body, ct).await;
        let (status, msg) = error_of(r).await;
        assert!((400..500).contains(&status), "{path} {body}: {status}");
        assert!(!msg.is_empty());
    }
    // seq 0 is refused.
    let (status, msg) = error_of(
        s.events(
            &agent,
            &attempt,
            &[event(0, Step::Detect, EventKind::Started, "")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(msg.contains("seq"), "{msg}");
    // Unknown steps/kinds from a newer agent are accepted.
    let r = s
        .http
        .post(s.url("/api/v1/agent/events"))
        .bearer_auth(&agent)
        .json(&serde_json::json!({"attempt_id": attempt, "future": 1, "events": [
            {"seq": 1, "time": "t", "step": "firmware", "kind": "paused", "message": "", "extra": true}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Wrong method and unknown paths answer JSON too.
    let (status, _) = error_of(
        s.http
            .get(s.url("/api/v1/agent/hello"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = error_of(s.http.get(s.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test]
async fn oversized_batches_are_refused() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let many: Vec<_> = (1..=1001)
        .map(|n| event(n, Step::Install, EventKind::Log, "x"))
        .collect();
    let (status, msg) = error_of(s.events(&agent, &attempt, &many).await).await;
    assert_eq!(status, 413);
    assert!(msg.contains("1000"), "{msg}");
    // 1000 is fine.
    assert_eq!(s.ack(&agent, &attempt, &many[..1000]).await, 1000);
    // More than 1 MiB of body.
    let big = vec![event(
        1001,
        Step::Install,
        EventKind::Log,
        &"y".repeat(1100 * 1024),
    )];
    let (status, _) = error_of(s.events(&agent, &attempt, &big).await).await;
    assert_eq!(status, 413);
    s.stop().await;
}

#[tokio::test]
async fn terminal_event_installs_and_next_boot_is_local() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let evs = [
        event(1, Step::Detect, EventKind::Started, ""),
        event(2, Step::Detect, EventKind::Finished, ""),
        event(3, Step::Done, EventKind::Finished, "all done"),
    ];
    assert_eq!(s.ack(&agent, &attempt, &evs).await, 3);
    assert_eq!(s.state_of(MAC1).await, "installed");
    let (_, script) = s.boot(MAC1).await;
    assert!(
        script.ends_with("booting from local disk\nexit\n"),
        "{script}"
    );
    s.stop().await;
}

#[tokio::test]
async fn admin_api_requires_the_admin_token() {
    let s = Server::start(Some(CONFIG)).await;
    let _ = s.boot(MAC1).await;
    for path in ["/api/v1/machines", "/api/v1/machines/ws-01"] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(error_of(r).await.0, 401, "{path}");
        let r = s
            .http
            .get(s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await.0, 401, "{path}");
    }
    let r = s
        .http
        .post(s.url("/api/v1/machines/ws-01/reinstall"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);
    // ws-01 booted; ws-02 is listed in the config and shown as expected.
    let list = s.admin_get("/api/v1/machines").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["hostname"], "ws-01");
    assert_eq!(list[1]["state"], "expected");
    let r = s
        .http
        .get(s.url("/api/v1/machines/nobody"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);
    s.stop().await;
}

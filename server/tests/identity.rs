//! Install identity (issue 12 items 1 and 2): the first claimant of a boot
//! token wins; every second claimant is an alarm, never served. Each test
//! is an attack that main before issue 12 served with 200.

mod common;

use std::time::Duration;

use common::*;
use landfall_proto::{EventKind, Step};
use serde_json::Value;

/// The status and the body's `code` (and the message).
async fn refusal(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The machine's detail; asserts it is `compromised` with the alarm in its
/// error and as the last event of each attempt in `attempts` (by index), both
/// clients' addresses recorded.
async fn assert_compromised(s: &Server, mac: &str, attempts: &[usize]) -> Value {
    let d = s.admin_get(&format!("/api/v1/machines/{mac}")).await;
    assert_eq!(d["state"], "compromised", "{d:#}");
    let error = d["error"].as_str().unwrap();
    assert!(error.starts_with("security alarm: "), "{error}");
    assert!(
        error.contains("127.0.0.1:"),
        "the clients' addresses: {error}"
    );
    for &i in attempts {
        let events = d["attempts"][i]["events"].as_array().unwrap();
        let last = events.last().expect("the alarm event");
        assert_eq!(last["kind"], "failed", "{last:#}");
        assert_eq!(last["data"]["security"], true, "{last:#}");
        assert_eq!(last["data"]["recorded_by"], "server");
        for side in ["first_client", "second_client"] {
            let addr = last["data"][side].as_str().unwrap_or_default();
            assert!(addr.starts_with("127.0.0.1:"), "{side}: {last:#}");
        }
    }
    d
}

/// A compromised machine is held at its next PXE boot, never installed.
async fn assert_held(s: &Server, mac: &str) {
    let (_, script) = s.boot(mac).await;
    assert!(token_in(&script).is_none(), "{script}");
    assert!(script.contains("security alarm"), "{script}");
}

#[tokio::test]
async fn a_replayed_boot_token_is_an_alarm_never_a_second_attempt() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let first: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    let attempt = first["attempt_id"].as_str().unwrap();
    let agent = first["agent_token"].as_str().unwrap();

    // The token, seen on the wire, replayed with another nonce.
    let (status, code, msg) = refusal(s.hello_as(&token, MAC1, Some("thief")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "boot_token_claimed"),
        "{msg}"
    );
    assert!(msg.contains("compromised"), "{msg}");
    let d = assert_compromised(&s, MAC1, &[0]).await;
    assert_eq!(
        d["attempts"].as_array().unwrap().len(),
        1,
        "no second attempt"
    );

    // Every token of the attempt is dead: the real agent's events, and its
    // own retried hello (the exchanged token died with the alarm).
    let e = [event(1, Step::Done, EventKind::Finished, "done")];
    assert_eq!(s.events(agent, attempt, &e).await.status(), 401);
    assert_eq!(s.hello(&token, MAC1).await.status(), 401);
    assert_eq!(s.state_of(MAC1).await, "compromised");
    assert_held(&s, MAC1).await;
    s.stop().await;
}

#[tokio::test]
async fn a_replay_without_a_nonce_is_an_alarm_too() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    assert_eq!(s.hello(&token, MAC1).await.status(), 200);
    let (status, code, _) = refusal(s.hello_as(&token, MAC1, None).await).await;
    assert_eq!((status, code.as_str()), (409, "boot_token_claimed"));
    assert_compromised(&s, MAC1, &[0]).await;
    s.stop().await;
}

/// A stolen token used first: the thief is the first claimant (it cannot be
/// told apart yet), but the real agent's hello finds the token used, gets
/// its own code, and the thief's attempt dies before it can finish.
#[tokio::test]
async fn the_real_agent_finding_its_token_used_raises_the_alarm() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let thief: Value = s
        .hello_as(&token, MAC1, Some("thief"))
        .await
        .json()
        .await
        .unwrap();
    let (status, code, msg) = refusal(s.hello(&token, MAC1).await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "boot_token_claimed"),
        "{msg}"
    );
    assert_compromised(&s, MAC1, &[0]).await;
    // The thief's `done finished` changes nothing: its token is dead.
    let e = [event(
        1,
        Step::Done,
        EventKind::Finished,
        "installed, honest",
    )];
    let r = s
        .events(
            thief["agent_token"].as_str().unwrap(),
            thief["attempt_id"].as_str().unwrap(),
            &e,
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(s.state_of(MAC1).await, "compromised");
    s.stop().await;
}

/// Item 2 of the issue: an old token, replayed after the install ended,
/// answered 200 and minted fresh tokens. Now it is dead for its own client
/// and an alarm for any other.
#[tokio::test]
async fn an_exchanged_token_dies_when_its_attempt_ends() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let first: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    let done = [event(1, Step::Done, EventKind::Finished, "done")];
    s.ack(
        first["agent_token"].as_str().unwrap(),
        first["attempt_id"].as_str().unwrap(),
        &done,
    )
    .await;
    assert_eq!(s.state_of(MAC1).await, "installed");
    // Its own client (the same nonce) is refused without an alarm.
    let (status, code, _) = refusal(s.hello(&token, MAC1).await).await;
    assert_eq!((status, code.as_str()), (401, "boot_token_invalid"));
    assert_eq!(s.state_of(MAC1).await, "installed");
    // Anybody else: an alarm, never a new verify token or install.
    let (status, code, _) = refusal(s.hello_as(&token, MAC1, Some("replayer")).await).await;
    assert_eq!((status, code.as_str()), (409, "boot_token_claimed"));
    assert_compromised(&s, MAC1, &[0]).await;
    s.stop().await;
}

/// Item 1 of the issue: `boot.ipxe?mac=M` (no auth) and a hello listing M
/// took a live install over. Now the hello is an alarm and nothing is served.
#[tokio::test]
async fn a_takeover_by_mac_of_a_live_install_is_an_alarm() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let e = [event(1, Step::Detect, EventKind::Started, "")];
    assert_eq!(s.ack(&agent, &attempt, &e).await, 1);

    let stolen = s.boot_token(MAC1).await;
    let (status, code, msg) = refusal(s.hello_as(&stolen, MAC1, Some("attacker")).await).await;
    assert_eq!((status, code.as_str()), (409, "attempt_alive"), "{msg}");
    let d = assert_compromised(&s, MAC1, &[0]).await;
    assert_eq!(
        d["attempts"].as_array().unwrap().len(),
        1,
        "no second attempt"
    );
    // The attacker's token is spent; the real agent's tokens are dead too
    // (the operator decides what to trust).
    assert_eq!(s.hello(&stolen, MAC1).await.status(), 401);
    let e2 = [event(2, Step::Done, EventKind::Finished, "")];
    assert_eq!(s.events(&agent, &attempt, &e2).await.status(), 401);
    assert_held(&s, MAC1).await;
    s.stop().await;
}

/// A reboot mid-install (the agent silent for `agent_alive_secs`) starts a
/// new attempt. Should the old agent still be alive after all and say hello
/// with its own nonce, the machine was taken over: an alarm on both attempts.
#[tokio::test]
async fn a_takeover_after_the_alive_window_is_caught_by_the_live_first_claimant() {
    let cfg = CONFIG.replace("[server]\n", "[server]\nagent_alive_secs = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let token = s.boot_token(MAC1).await;
    let real: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let new_token = s.boot_token(MAC1).await;
    let taker: Value = s.hello(&new_token, MAC1).await.json().await.unwrap();
    assert_ne!(real["attempt_id"], taker["attempt_id"]);
    assert_eq!(
        s.state_of(MAC1).await,
        "installing",
        "a reboot is legitimate"
    );

    // The real agent lost its connection and says hello again: alive.
    let (status, code, msg) = refusal(s.hello(&token, MAC1).await).await;
    assert_eq!((status, code.as_str()), (409, "attempt_alive"), "{msg}");
    assert_compromised(&s, MAC1, &[0, 1]).await;
    let e = [event(1, Step::Done, EventKind::Finished, "")];
    let r = s
        .events(
            taker["agent_token"].as_str().unwrap(),
            taker["attempt_id"].as_str().unwrap(),
            &e,
        )
        .await;
    assert_eq!(r.status(), 401, "the newer attempt's tokens die too");
    s.stop().await;
}

/// The lost answer: the same client (same nonce) gets the same attempt while
/// it is current and installing.
#[tokio::test]
async fn the_first_claimant_may_repeat_its_hello() {
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    let a: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    let b: Value = s.hello(&token, MAC1).await.json().await.unwrap();
    assert_eq!(a["attempt_id"], b["attempt_id"]);
    assert_eq!(s.state_of(MAC1).await, "installing");
    s.stop().await;
}

/// Item 3: the superseded attempt's agent token is dead. Used while the
/// newer attempt installs, its agent is alive, so that was no reboot: an
/// alarm over both attempts.
#[tokio::test]
async fn a_superseded_agent_speaking_during_the_newer_install_is_an_alarm() {
    let cfg = CONFIG.replace("[server]\n", "[server]\nagent_alive_secs = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let (old_attempt, old_agent) = s.start_attempt(MAC1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (new_attempt, new_agent) = s.start_attempt(MAC1).await;
    let e = [event(1, Step::Detect, EventKind::Started, "")];
    let (status, code, msg) = refusal(s.events(&old_agent, &old_attempt, &e).await).await;
    assert_eq!((status, code.as_str()), (409, "attempt_alive"), "{msg}");
    assert_compromised(&s, MAC1, &[0, 1]).await;
    assert_eq!(s.events(&new_agent, &new_attempt, &e).await.status(), 401);
    s.stop().await;
}

/// Item 3: after a reboot that finished, the old agent token is refused
/// (not an alarm: the machine is no longer installing) and stores nothing.
#[tokio::test]
async fn a_superseded_agent_token_is_refused_after_the_newer_install() {
    let cfg = CONFIG.replace("[server]\n", "[server]\nagent_alive_secs = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let (old_attempt, old_agent) = s.start_attempt(MAC1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (new_attempt, new_agent) = s.start_attempt(MAC1).await;
    let done = [event(1, Step::Done, EventKind::Finished, "")];
    assert_eq!(s.ack(&new_agent, &new_attempt, &done).await, 1);
    assert_eq!(s.state_of(MAC1).await, "installed");
    let (status, code, msg) = refusal(s.events(&old_agent, &old_attempt, &done).await).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "agent_token_invalid"),
        "{msg}"
    );
    assert!(msg.contains("newer install attempt"), "{msg}");
    let d = s.admin_get(&format!("/api/v1/machines/{MAC1}")).await;
    assert!(d["attempts"][0]["events"].as_array().unwrap().is_empty());
    assert_eq!(s.state_of(MAC1).await, "installed");
    s.stop().await;
}

/// Item 3: an agent token unused for `agent_token_idle_secs` expires.
#[tokio::test]
async fn an_unused_agent_token_expires() {
    let cfg = CONFIG.replace("[server]\n", "[server]\nagent_token_idle_secs = 1\n");
    let s = Server::start(Some(&cfg)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let e = [event(1, Step::Detect, EventKind::Started, "")];
    assert_eq!(s.ack(&agent, &attempt, &e).await, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = [event(2, Step::Detect, EventKind::Finished, "")];
    let (status, code, msg) = refusal(s.events(&agent, &attempt, &e).await).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "agent_token_invalid"),
        "{msg}"
    );
    assert!(msg.contains("agent_token_idle_secs"), "{msg}");
    s.stop().await;
}

/// Everything this test binary's in-process servers log.
fn logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The operator sees the alarm: `landfall machine HOST` prints it with both
/// clients' addresses, and the server log has it; every minted boot token and
/// every hello is logged with the client's address.
#[tokio::test]
async fn the_operator_sees_the_alarm_and_the_log_has_both_addresses() {
    let logs = logs();
    let s = Server::start(Some(CONFIG)).await;
    let token = s.boot_token(MAC1).await;
    assert_eq!(s.hello(&token, MAC1).await.status(), 200);
    assert_eq!(s.hello_as(&token, MAC1, Some("thief")).await.status(), 409);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["machine", "ws-01", "--server", &s.base, "--token-file"])
        .arg(s.data().join("admin.token"))
        .env_remove("LANDFALL_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("state:   compromised"), "{text}");
    let error = text.lines().find(|l| l.contains("error:")).unwrap();
    assert!(error.contains("security alarm"), "{text}");
    assert_eq!(
        error.matches("127.0.0.1:").count(),
        2,
        "both clients: {error}"
    );

    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let minted = log
        .lines()
        .find(|l| l.contains("boot token minted"))
        .unwrap();
    assert!(minted.contains("client=127.0.0.1:"), "{minted}");
    let hello = log.lines().find(|l| l.contains("agent hello")).unwrap();
    assert!(hello.contains("client=127.0.0.1:"), "{hello}");
    // A refused hello is logged with its client too.
    assert_eq!(s.hello(&"0".repeat(64), MAC1).await.status(), 401);
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let refused = log
        .lines()
        .find(|l| l.contains("agent hello refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("client=127.0.0.1:"), "{refused}");
    let alarm = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("security alarm"))
        .unwrap_or_else(|| panic!("no alarm in the log:\n{log}"));
    assert!(
        alarm.contains("first_client=127.0.0.1:") && alarm.contains("client=127.0.0.1:"),
        "{alarm}"
    );
    s.stop().await;
}

/// A hello as the agent of a machine with DMI `uuid` (a nonce of its own).
async fn hello_with_uuid(s: &Server, token: &str, uuid: &str) -> reqwest::Response {
    let mut inventory = inventory(MAC1);
    inventory.dmi.uuid = Some(uuid.into());
    inventory.dmi.serial = Some("SERIAL-1".into());
    s.http
        .post(s.url("/api/v1/agent/hello"))
        .json(&landfall_proto::HelloRequest {
            boot_token: token.into(),
            agent_version: "0.1.0-test".into(),
            protocol: 1,
            inventory,
            nonce: Some(format!("nonce-of-{token}")),
        })
        .send()
        .await
        .unwrap()
}

async fn admin_post(s: &Server, path: &str) -> reqwest::Response {
    s.http
        .post(s.url(path))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap()
}

/// Install ws-01 as the machine with DMI UUID `u-1`, then reinstall it.
async fn installed_then_reinstall(s: &Server) {
    let token = s.boot_token(MAC1).await;
    let h: Value = hello_with_uuid(s, &token, "U-1")
        .await
        .json()
        .await
        .unwrap();
    let done = [event(1, Step::Done, EventKind::Finished, "")];
    s.ack(
        h["agent_token"].as_str().unwrap(),
        h["attempt_id"].as_str().unwrap(),
        &done,
    )
    .await;
    assert_eq!(s.state_of(MAC1).await, "installed");
    assert_eq!(
        admin_post(s, "/api/v1/machines/ws-01/reinstall")
            .await
            .status(),
        200
    );
}

/// Item 4: the identity pinned at the first install; a hello from another
/// machine with the same MAC is held for approval, with both identities
/// shown; `approve` pins the new one.
#[tokio::test]
async fn another_identity_is_held_until_approved() {
    let s = Server::start(Some(CONFIG)).await;
    installed_then_reinstall(&s).await;
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["identity"]["pinned"]["system_uuid"], "u-1", "{d:#}");

    let token = s.boot_token(MAC1).await;
    let (status, code, msg) = refusal(hello_with_uuid(&s, &token, "u-2").await).await;
    assert_eq!((status, code.as_str()), (409, "identity_held"), "{msg}");
    assert!(msg.contains("system UUID u-1 -> u-2"), "{msg}");
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["state"], "identity_held");
    assert_eq!(d["identity"]["pinned"]["system_uuid"], "u-1");
    assert_eq!(d["identity"]["presented"]["system_uuid"], "u-2");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("landfall approve ws-01"),
        "{d:#}"
    );
    let (_, script) = s.boot(MAC1).await;
    assert!(token_in(&script).is_none(), "{script}");
    assert!(script.contains("landfall approve"), "{script}");
    let list = s.admin_get("/api/v1/machines").await;
    assert!(
        list[0]["error"]
            .as_str()
            .unwrap()
            .contains("identity differs"),
        "machines shows why it is held: {list:#}"
    );

    // `landfall approve ws-01` (the CLI, through the admin API).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["approve", "ws-01", "--server", &s.base, "--token-file"])
        .arg(s.data().join("admin.token"))
        .env_remove("LANDFALL_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.state_of(MAC1).await, "reinstall_requested");
    let d = s.admin_get("/api/v1/machines/ws-01").await;
    assert_eq!(d["identity"]["pinned"]["system_uuid"], "u-2", "re-pinned");
    let token = s.boot_token(MAC1).await;
    assert_eq!(hello_with_uuid(&s, &token, "u-2").await.status(), 200);
    // Approve applies only to a held machine.
    assert_eq!(
        admin_post(&s, "/api/v1/machines/ws-01/approve")
            .await
            .status(),
        409
    );
    s.stop().await;
}

/// Item 4: `[roles.NAME] pin_identity = false` turns the hold off.
#[tokio::test]
async fn a_role_without_pinning_installs_another_identity() {
    let cfg = CONFIG.replace(
        "[roles.workstation]\n",
        "[roles.workstation]\npin_identity = false\n",
    );
    let s = Server::start(Some(&cfg)).await;
    installed_then_reinstall(&s).await;
    let token = s.boot_token(MAC1).await;
    assert_eq!(hello_with_uuid(&s, &token, "u-2").await.status(), 200);
    assert_eq!(s.state_of(MAC1).await, "installing");
    s.stop().await;
}

//! The dashboard (issue 15) in a real headless Chromium driven through
//! chromedriver (WebDriver, fantoccini), against a real server over HTTPS:
//! log in, watch a simulated install (events posted through the agent API)
//! advance live, retry the failed machine from its page, a viewer who cannot
//! act, a POST without its CSRF token refused, log out. The screenshots of
//! docs/operator-guide.md come from here (`LANDFALL_SCREENSHOTS=docs`).
//! Without a browser: the read-only pages without JavaScript, the login
//! limit, and the plain-HTTP listener's redirect.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::dash::{https_server, post_login};
use common::{event, inventory, Server};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use landfall_proto::{Event, EventKind, FailureClass, FailureData, HelloRequest, Step};
use serde_json::{json, Value};

const MAC1: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";
const MAC3: &str = "52:54:00:00:00:03";
const MAC5: &str = "52:54:00:00:00:05";

const VIEWER_PW: &str = "viewer-password";
const OPERATOR_PW: &str = "operator-password";

fn config() -> String {
    let h = |pw| landfall::dashboard::auth::hash_password(pw).unwrap();
    format!(
        r#"
[server]
listen_tls = "127.0.0.1:0"
tls_sans = ["127.0.0.1"]

[enroll]
unknown = "hold"

[roles.workstation]
description = "desk PCs"
layout = "single-disk"
wipe = "always"

[roles.server]
description = "rack servers"
layout = "single-disk"

[[machines]]
mac = "{MAC1}"
hostname = "ws-01"
role = "workstation"

[[machines]]
mac = "{MAC2}"
hostname = "ws-02"
role = "workstation"

[[machines]]
mac = "{MAC3}"
hostname = "ws-03"
role = "workstation"

[[machines]]
mac = "52:54:00:00:00:04"
hostname = "ws-04"
role = "workstation"

[[machines]]
mac = "{MAC5}"
hostname = "srv-01"
role = "server"

[dashboard]
session_ttl = "1h"
max_failed_logins = 3

[[dashboard.users]]
name = "vera"
role = "viewer"
password_hash = "{}"

[[dashboard.users]]
name = "olga"
role = "operator"
password_hash = "{}"
"#,
        h(VIEWER_PW),
        h(OPERATOR_PW)
    )
}

/// The server over HTTPS, with an HTTPS client that trusts its CA.
async fn start() -> Server {
    https_server(&config()).await
}

fn ev(seq: u64, step: Step, kind: EventKind, progress: Option<f32>, msg: &str) -> Event {
    Event {
        progress,
        ..event(seq, step, kind, msg)
    }
}

/// An install from detect to the middle of nixos-install's output.
fn install_events(from: u64) -> Vec<Event> {
    let mut v = vec![
        ev(
            1,
            Step::Detect,
            EventKind::Started,
            None,
            "detecting hardware",
        ),
        ev(
            2,
            Step::Detect,
            EventKind::Finished,
            None,
            "1 disk, 1 NIC, 4 threads, 8 GiB",
        ),
        ev(
            3,
            Step::Register,
            EventKind::Finished,
            None,
            "registered as ws-01 (workstation)",
        ),
        ev(
            4,
            Step::Secrets,
            EventKind::Finished,
            None,
            "no secrets for this role",
        ),
        ev(
            5,
            Step::Disks,
            EventKind::Started,
            None,
            "1 disk to partition",
        ),
        ev(
            6,
            Step::Disks,
            EventKind::Progress,
            Some(0.5),
            "mkfs.ext4 /dev/vda2",
        ),
        ev(
            7,
            Step::Disks,
            EventKind::Finished,
            None,
            "partitioned and mounted /dev/vda",
        ),
        ev(
            8,
            Step::Configure,
            EventKind::Finished,
            None,
            "wrote hardware-configuration.nix and flake.nix",
        ),
        ev(
            9,
            Step::Install,
            EventKind::Started,
            None,
            "nixos-install --root /mnt --flake /mnt/etc/nixos#ws-01",
        ),
    ];
    for i in 0..12u64 {
        let path = format!(
            "copying path '/nix/store/{i:02}abcd-glibc-2.39' from 'https://cache.nixos.org'..."
        );
        v.push(if i % 4 == 3 {
            ev(
                10 + i,
                Step::Install,
                EventKind::Progress,
                Some(0.1 * (i + 1) as f32 / 3.0),
                &path,
            )
        } else {
            ev(10 + i, Step::Install, EventKind::Log, None, &path)
        });
    }
    v.retain(|e| e.seq >= from);
    v
}

/// nixos-install failing, as the agent reports it: the step's event with
/// the class, hint and last lines, then the terminal one.
fn failure_events(seq: u64) -> Vec<Event> {
    let step = FailureData {
        class: Some(FailureClass::Build),
        hint: Some(FailureClass::Build.hint().to_owned()),
        command: Some("nixos-install --root /mnt --flake /mnt/etc/nixos#ws-01".into()),
        exit_code: Some(1),
        last_lines: vec![
            "error: builder for '/nix/store/x1-hello-2.12.drv' failed with exit code 2".into(),
            "error: 1 dependencies of derivation '/nix/store/x2-system.drv' failed to build".into(),
        ],
        ..Default::default()
    };
    let done = FailureData {
        step: Some("install".into()),
        error: Some("nixos-install exited with code 1".into()),
        ..Default::default()
    };
    let mut a = ev(
        seq,
        Step::Install,
        EventKind::Failed,
        None,
        "nixos-install failed: a derivation failed to build",
    );
    a.data = step.to_data();
    let mut b = ev(
        seq + 1,
        Step::Done,
        EventKind::Failed,
        None,
        "install failed at step install",
    );
    b.data = done.to_data();
    vec![a, b]
}

struct Agent {
    attempt: String,
    token: String,
    verify_token: Option<String>,
}

async fn hello(s: &Server, mac: &str) -> Agent {
    let boot = s.boot_token(mac).await;
    let r = s
        .http
        .post(s.url("/api/v1/agent/hello"))
        .json(&HelloRequest {
            boot_token: boot.clone(),
            agent_version: "0.1.0-test".into(),
            protocol: 1,
            inventory: inventory(mac),
            nonce: Some(format!("nonce-of-{boot}")),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    Agent {
        attempt: v["attempt_id"].as_str().unwrap().into(),
        token: v["agent_token"].as_str().unwrap().into(),
        verify_token: v["assignment"]["verify_token"].as_str().map(str::to_owned),
    }
}

/// Fill the fleet for the screenshots: one ready with its checks, one
/// installing, one failed, one never booted, one unknown machine held.
async fn fleet(s: &Server) {
    let ws3 = hello(s, MAC3).await;
    let mut evs = install_events(1);
    evs.push(ev(
        40,
        Step::Install,
        EventKind::Finished,
        None,
        "installed",
    ));
    evs.push(ev(41, Step::Finish, EventKind::Finished, None, "unmounted"));
    evs.push(ev(
        42,
        Step::Done,
        EventKind::Finished,
        None,
        "install finished",
    ));
    s.ack(&ws3.token, &ws3.attempt, &evs).await;
    let r = s
        .http
        .post(s.url("/api/v1/agent/verify"))
        .bearer_auth(ws3.verify_token.unwrap())
        .json(&json!({"hostname": "ws-03", "checks": [
            {"name": "ssh", "ok": true, "detail": "SSH-2.0-OpenSSH_9.6", "millis": 12},
            {"name": "rdp", "ok": true, "detail": "xrdp answered X.224", "millis": 30}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let srv = hello(s, MAC5).await;
    s.ack(&srv.token, &srv.attempt, &install_events(1)[..6])
        .await;
    let ws2 = hello(s, MAC2).await;
    let mut evs = install_events(1);
    evs.extend(failure_events(30));
    s.ack(&ws2.token, &ws2.attempt, &evs).await;
    // An unknown MAC: held as discovered.
    let (status, _) = s.boot("52:54:00:99:00:01").await;
    assert_eq!(status, 200);
}

/// chromedriver and a headless Chromium session (Debian's packages).
struct Browser {
    driver: std::process::Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(spki: &str) -> Self {
        for (bin, pkg) in [
            ("/usr/bin/chromium", "chromium"),
            ("/usr/bin/chromedriver", "chromium-driver"),
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's {pkg} (`./x test` installs it)"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = landfall_cmd::Cmd::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .spawn(Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--hide-scrollbars", "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                    // Trust exactly the server's key (the generated CA is not in the system store).
                    format!("--ignore-certificate-errors-spki-list={spki}"),
                ]
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session through chromedriver");
        Self {
            driver,
            client,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the server's key: what
/// `--ignore-certificate-errors-spki-list` takes.
fn server_spki(data: &Path) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let pem =
        std::fs::read_to_string(data.join("tls").join(landfall::tls::SERVER_KEY_FILE)).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&key),
    ))
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Wait until the element's text contains `needle`.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = text(c, css).await;
        if t.contains(needle) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {needle:?}; it shows:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn login(c: &Client, base: &str, user: &str, pw: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/ui/login"));
    c.find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(pw)
        .await
        .unwrap();
    c.find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "header.top", &format!("{user} (")).await;
}

/// POST a form from the page's own origin with `fetch`: the status.
async fn post_from_page(c: &Client, path: &str, body: &str) -> u64 {
    c.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch(arguments[0], {method: 'POST', redirect: 'manual',
             headers: {'content-type': 'application/x-www-form-urlencoded'}, body: arguments[1]})
           .then(r => done(r.status), e => done(String(e)));",
        vec![json!(path), json!(body)],
    )
    .await
    .unwrap()
    .as_u64()
    .unwrap_or_else(|| panic!("fetch of {path} failed"))
}

/// Where the screenshots go: `LANDFALL_SCREENSHOTS=docs` writes those of
/// the operator guide; otherwise a temporary directory.
fn shots_dir(tmp: &Path) -> PathBuf {
    match std::env::var("LANDFALL_SCREENSHOTS") {
        Ok(d) if !d.is_empty() => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d),
        _ => tmp.to_owned(),
    }
}

/// Press and release one key in the focused element.
async fn press(c: &Client, key: Key) {
    let k: char = key.into();
    c.perform_actions(
        KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k }),
    )
    .await
    .unwrap();
}

async fn screenshot(c: &Client, path: &Path) {
    let png = c.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} is no picture",
        path.display()
    );
    std::fs::write(path, png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_login_live_install_retry_viewer_csrf_logout() {
    let s = start().await;
    let b = Browser::start(&server_spki(&s.data())).await;
    let c = &b.client;
    let base = s.base.clone();
    let shots = shots_dir(s.dir.path());
    fleet(&s).await;

    // Log in as the operator: a session cookie HttpOnly, Secure, SameSite=Strict.
    login(c, &base, "olga", OPERATOR_PW).await;
    let cookie = c
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name() == "landfall_session")
        .expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let old_session = cookie.value().to_owned();

    // The fleet: what needs a person first, the never-booted one as expected.
    let counts = wait_text(c, "ul.counts", "failed").await;
    let first = counts.find("failed").unwrap();
    assert!(first < counts.find("ready").unwrap(), "{counts}");
    let table = text(c, "table.fleet").await;
    for host in ["ws-02", "ws-03", "ws-04", "srv-01"] {
        assert!(table.contains(host), "{table}");
    }
    assert!(table.contains("never booted"), "{table}");
    let rows = c
        .find_all(Locator::Css("table.fleet tbody tr"))
        .await
        .unwrap();
    assert!(
        rows[0].text().await.unwrap().contains("ws-02"),
        "failed first"
    );

    // ws-01 starts installing; its page follows without a reload.
    let ws1 = hello(&s, MAC1).await;
    s.ack(&ws1.token, &ws1.attempt, &install_events(1)[..4])
        .await;
    c.goto(&format!("{base}/ui/machines/{MAC1}")).await.unwrap();
    wait_text(c, "#live-status", "live").await;
    c.execute("window.__not_reloaded = true;", vec![])
        .await
        .unwrap();
    s.ack(&ws1.token, &ws1.attempt, &install_events(5)).await;
    wait_text(c, "#panel", "Install NixOS (nixos-install) (running)").await;
    wait_text(c, "#output-lines", "11abcd-glibc").await;
    let panel = text(c, "#panel").await;
    assert!(
        panel.contains("Partition, format and mount disks (done)"),
        "{panel}"
    );

    // nixos-install fails: the class, hint and last lines, and the retry button.
    s.ack(&ws1.token, &ws1.attempt, &failure_events(22)).await;
    let summary = wait_text(c, "#summary", "Retry ws-01").await;
    for want in [
        "failed",
        "build failure",
        "fix the package or pin",
        "builder for '/nix/store/x1-hello-2.12.drv' failed",
    ] {
        assert!(summary.contains(want), "{want:?} in:\n{summary}");
    }
    let v = c
        .execute("return window.__not_reloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(v, json!(true), "the page was reloaded");
    c.set_window_size(1280, 1700).await.unwrap();
    screenshot(c, &shots.join("dashboard-machine.png")).await;
    c.set_window_size(1280, 900).await.unwrap();

    // Retry from the page; the waiting installer picks it up.
    let waiting = {
        let http = s.http.clone();
        let url = s.url("/api/v1/agent/wait");
        let (token, attempt) = (ws1.token.clone(), ws1.attempt.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"attempt_id": attempt, "timeout_secs": 30}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.find(Locator::LinkText("Retry ws-01…"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let h1 = wait_text(c, "h1", "Retry ws-01?").await;
    assert_eq!(h1, "Retry ws-01?");
    let what = text(c, "main p").await;
    assert!(
        what.contains(MAC1) && what.contains("runs again from the failed step"),
        "{what}"
    );
    c.find(Locator::Css("main form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = wait_text(c, "p.flash", "ws-01").await;
    // The CLI's words; the waiting installer may have taken the retry
    // before the answer read the machine back.
    let words = |state: &str| {
        format!("ws-01 ({MAC1}): {state}; the waiting installer runs again from the failed step")
    };
    assert!(
        flash == words("retry_requested") || flash == words("installing"),
        "{flash}"
    );
    let answer = waiting.await.unwrap();
    assert_eq!(answer["action"], "retry", "{answer}");
    wait_text(c, "#summary", "installing").await;
    assert_eq!(s.state_of(MAC1).await, "installing");

    // A POST without its CSRF token (or with a wrong one) is refused.
    assert_eq!(
        post_from_page(c, &format!("/ui/machines/{MAC2}/reinstall"), "").await,
        403
    );
    assert_eq!(
        post_from_page(c, &format!("/ui/machines/{MAC2}/reinstall"), "csrf=00").await,
        403
    );
    assert_eq!(s.state_of(MAC2).await, "failed");

    // The fleet for the guide.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    wait_text(c, "table.fleet", "ws-01").await;
    screenshot(c, &shots.join("dashboard-fleet.png")).await;
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/ui/machines/{MAC2}")).await.unwrap();
    wait_text(c, "#summary", "Retry ws-02").await;
    screenshot(c, &shots.join("dashboard-phone.png")).await;
    // Readable on a phone: the page is no wider than the screen (wide
    // tables scroll inside their own box).
    let widths = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (page_w, screen_w) = (widths[0].as_i64().unwrap(), widths[1].as_i64().unwrap());
    assert!(
        page_w <= screen_w,
        "the machine page is {page_w} px wide on a {screen_w} px phone"
    );
    // Nothing is fetched from elsewhere: every resource the page loaded
    // (style, script, the live stream) is the server's own.
    let loaded = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .unwrap();
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        loaded.iter().any(|u| u.ends_with("/ui/static/style.css")),
        "{loaded:?}"
    );
    for u in &loaded {
        assert!(
            u.starts_with(&format!("{base}/ui/")),
            "{u} is not the server's"
        );
    }
    c.set_window_size(1280, 900).await.unwrap();

    // Keyboard: the first Tab reaches the skip link, Enter follows it; Tabs
    // then reach the actions, and Enter on one opens its confirmation.
    press(c, Key::Tab).await;
    let focused = c.active_element().await.unwrap().text().await.unwrap();
    assert_eq!(focused, "Skip to content");
    press(c, Key::Enter).await;
    assert_eq!(c.current_url().await.unwrap().fragment(), Some("main"));
    let mut reached = false;
    for _ in 0..20 {
        press(c, Key::Tab).await;
        let t = c.active_element().await.unwrap().text().await.unwrap();
        if t.starts_with("Reinstall ws-02") {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Reinstall action");
    press(c, Key::Enter).await;
    wait_text(c, "h1", "Reinstall ws-02?").await;
    assert_eq!(s.state_of(MAC2).await, "failed", "a confirmation only asks");

    // Log out: the login page, and the old cookie is worth nothing.
    c.find(Locator::Css("form.logout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "h1", "Log in").await;
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/ui/login"));
    let r = s
        .http
        .get(s.url("/ui/"))
        .header("cookie", format!("landfall_session={old_session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/login"));

    // A viewer sees everything and can act on nothing.
    login(c, &base, "vera", VIEWER_PW).await;
    c.goto(&format!("{base}/ui/machines/{MAC2}")).await.unwrap();
    let summary = wait_text(c, "#summary", "viewer").await;
    assert!(summary.contains("build failure"), "{summary}");
    assert!(c
        .find_all(Locator::Css("nav.actions"))
        .await
        .unwrap()
        .is_empty());
    let csrf = c
        .find(Locator::Css("form.logout input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        post_from_page(
            c,
            &format!("/ui/machines/{MAC2}/reinstall"),
            &format!("csrf={csrf}")
        )
        .await,
        403
    );
    c.goto(&format!("{base}/ui/machines/{MAC2}/retry"))
        .await
        .unwrap();
    wait_text(c, "main", "need an operator").await;
    assert_eq!(s.state_of(MAC2).await, "failed");

    b.client.clone().close().await.unwrap();
    drop(b);
    s.stop().await;
}

#[tokio::test]
async fn pages_work_without_javascript_and_logins_are_limited() {
    let s = start().await;
    fleet(&s).await;

    // The admin token logs in (as an operator); the pages are whole without a script.
    let r = post_login(&s, &[("token", &s.admin_token()), ("next", "/ui/")]).await;
    assert_eq!(r.status(), 303);
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let session = set
        .iter()
        .find(|c| c.starts_with("landfall_session="))
        .unwrap();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/ui",
        "Max-Age=3600",
    ] {
        assert!(session.contains(flag), "{session}");
    }
    let cookie = session.split(';').next().unwrap().to_owned();
    let page = |path: &str| {
        let (http, url, cookie) = (s.http.clone(), s.url(path), cookie.clone());
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            let status = r.status().as_u16();
            let csp = r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(csp.contains("script-src 'self'"), "{csp}");
            (status, r.text().await.unwrap())
        }
    };
    let (st, fleet_page) = page("/ui/?state=failed").await;
    assert_eq!(st, 200);
    assert!(
        fleet_page.contains("ws-02") && !fleet_page.contains("ws-03"),
        "filtered"
    );
    let (_, by_text) = page("/ui/?q=srv").await;
    assert!(by_text.contains("srv-01") && !by_text.contains(">ws-02<"));
    let (st, m) = page(&format!("/ui/machines/{MAC2}")).await;
    assert_eq!(st, 200);
    for want in [
        "Install NixOS (nixos-install)",
        "build failure",
        "x1-hello-2.12.drv",
        "Reinstall ws-02",
        "Retry ws-02",
        "copying path",
        "Events of attempt",
    ] {
        assert!(m.contains(want), "{want:?} not in the machine page");
    }
    let (_, ready) = page(&format!("/ui/machines/{MAC3}")).await;
    assert!(ready.contains("First-boot checks") && ready.contains("SSH-2.0-OpenSSH_9.6"));
    let (_, expected) = page("/ui/machines/ws-04").await;
    assert!(expected.contains("expected"));
    let (st, _) = page("/ui/machines/nope").await;
    assert_eq!(st, 404);
    // Events paged: 100 per page at most, a link to the next.
    let (_, paged) = page(&format!("/ui/machines/{MAC2}?after=20")).await;
    assert!(paged.contains("after #20"));

    // A login form without its cookie's token is refused.
    let r = s
        .http
        .post(s.url("/ui/login"))
        .form(&[("csrf", "x"), ("token", &s.admin_token())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Failed logins: after 3 (max_failed_logins), even the right password waits.
    for _ in 0..3 {
        let r = post_login(&s, &[("user", "olga"), ("password", "wrong")]).await;
        assert_eq!(r.status(), 401);
    }
    let r = post_login(&s, &[("user", "olga"), ("password", OPERATOR_PW)]).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("too many failed logins"));

    // The plain-HTTP listener sends browsers to HTTPS.
    let plain = format!("http://{}", s.handle.as_ref().unwrap().local_addr());
    let r = s
        .http
        .get(format!("{plain}/ui/machines/ws-02"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    let to = r.headers()["location"].to_str().unwrap();
    assert_eq!(to, format!("{}/ui/machines/ws-02", s.base));
    s.stop().await;
}

//! GET /boot.ipxe decisions for every machine state, /chain.ipxe and /.

mod common;

use common::*;
use landfall_proto::{EventKind, Step};

#[tokio::test]
async fn listed_machine_gets_the_exact_install_script() {
    let s = Server::start(Some(CONFIG)).await;
    let (status, script) = s.boot("52-54-00-00-00-01").await;
    assert_eq!(status, 200);
    let token = token_in(&script).expect("token");
    assert_eq!(token.len(), 64);
    let b = &s.base;
    assert_eq!(
        script,
        format!(
            "#!ipxe\n\
             echo landfall: installing ws-01 (role workstation)\n\
             kernel {b}/artifacts/vmlinuz initrd=initrd landfall.server={b} landfall.token={token} console=ttyS0,115200\n\
             initrd {b}/artifacts/initrd\n\
             boot\n"
        )
    );
    assert_eq!(s.state_of(MAC1).await, "assigned");
    // Each boot mints a fresh token.
    let again = s.boot_token(MAC1).await;
    assert_ne!(again, token);
    s.stop().await;
}

#[tokio::test]
async fn the_images_own_cmdline_file_goes_before_kernel_args() {
    let s = Server::start(Some(CONFIG)).await;
    let cmdline = s.artifacts().join("cmdline");
    std::fs::create_dir_all(s.artifacts()).unwrap();
    std::fs::write(
        &cmdline,
        "init=/nix/store/abc-nixos-system/init loglevel=4\n",
    )
    .unwrap();
    let (_, script) = s.boot(MAC1).await;
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel.ends_with(" init=/nix/store/abc-nixos-system/init loglevel=4 console=ttyS0,115200"),
        "{kernel}"
    );
    // Read at each boot: a new image needs no restart; a broken file holds.
    std::fs::write(&cmdline, "init=/x\nchain http://evil").unwrap();
    let (status, script) = s.boot(MAC1).await;
    assert_eq!(status, 200);
    assert!(script.contains("landfall: holding:"), "{script}");
    assert!(!script.contains("evil"), "{script}");
    assert!(!script.contains("landfall.token="), "{script}");
    s.stop().await;
}

#[tokio::test]
async fn unknown_mac_with_enroll_hold_is_held_and_recorded() {
    let s = Server::start(Some(CONFIG)).await;
    let (status, script) = s.boot("52:54:00:aa:bb:cc").await;
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("unknown machine 52:54:00:aa:bb:cc"),
        "{script}"
    );
    assert!(script.contains("\nsleep 30\n"), "{script}");
    assert!(
        script.ends_with(&format!(
            "chain {}/boot.ipxe?mac=${{net0/mac}}&arch=${{buildarch}}&platform=${{platform}}\n",
            s.base
        )),
        "{script}"
    );
    assert!(token_in(&script).is_none());
    let d = s.admin_get("/api/v1/machines/52:54:00:aa:bb:cc").await;
    assert_eq!(d["state"], "discovered");
    assert!(d["hostname"].is_null());
    s.stop().await;
}

#[tokio::test]
async fn invalid_or_missing_mac_is_held_never_5xx() {
    let s = Server::start(Some(CONFIG)).await;
    // The plain bootfile URL a DHCP server hands out: chain back at once with
    // iPXE's MAC (no pause: the next request carries `mac=`, valid or not).
    let t = s.http.get(s.url("/boot.ipxe")).send().await.unwrap();
    assert_eq!(t.status(), 200);
    let t = t.text().await.unwrap();
    assert_eq!(
        t,
        format!(
            "#!ipxe\nchain {}/boot.ipxe?mac=${{net0/mac}}&arch=${{buildarch}}&platform=${{platform}}\n",
            s.base
        )
    );
    for q in [
        "/boot.ipxe?mac=",
        "/boot.ipxe?mac=zz",
        "/boot.ipxe?mac=%00%0a",
        "/boot.ipxe?mac=52:54:00:00:00:01:02",
    ] {
        let r = s.http.get(s.url(q)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{q}");
        let t = r.text().await.unwrap();
        assert!(
            t.starts_with("#!ipxe\n") && t.contains("no valid MAC"),
            "{q}: {t}"
        );
        assert!(t.contains("sleep 30"));
    }
    // A hostile Host header is not echoed into a script.
    let r = s
        .http
        .get(s.url("/boot.ipxe?mac=52:54:00:00:00:01"))
        .header("host", "evil/host;chain")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert!(!r.text().await.unwrap().contains("evil"));
    s.stop().await;
}

#[tokio::test]
async fn demo_mode_installs_any_machine_as_demo() {
    let s = Server::start(None).await;
    let (_, script) = s.boot("52:54:00:12:34:56").await;
    assert!(
        script.contains("echo landfall: installing demo-123456 (role demo)\n"),
        "{script}"
    );
    assert!(token_in(&script).is_some());
    s.stop().await;
}

/// Two new machines whose MACs end alike get different auto-enrolled names;
/// each keeps its own at later boots.
#[tokio::test]
async fn auto_enrolled_hostnames_are_unique() {
    let s = Server::start(None).await;
    let (_, a) = s.boot("52:54:00:ab:cd:ef").await;
    assert!(a.contains("installing demo-abcdef (role demo)"), "{a}");
    let (_, b) = s.boot("52:54:01:ab:cd:ef").await;
    assert!(b.contains("installing demo-01abcdef (role demo)"), "{b}");
    let (_, c) = s.boot("02:54:01:ab:cd:ef").await;
    assert!(c.contains("installing demo-5401abcdef (role demo)"), "{c}");
    let (_, a2) = s.boot("52:54:00:ab:cd:ef").await;
    assert!(a2.contains("installing demo-abcdef (role demo)"), "{a2}");
    assert_eq!(s.state_of("demo-01abcdef").await, "assigned");
    let list = s.admin_get("/api/v1/machines").await;
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["hostname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["demo-01abcdef", "demo-5401abcdef", "demo-abcdef"]);
    s.stop().await;
}

/// `[[machines]]` entries are visible before their first PXE boot, as
/// `expected`; reinstall and retry say there is nothing to change yet.
#[tokio::test]
async fn listed_machines_are_expected_until_they_boot() {
    let s = Server::start(Some(CONFIG)).await;
    let list = s.admin_get("/api/v1/machines").await;
    let rows: Vec<(&str, &str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mac"].as_str().unwrap(),
                m["hostname"].as_str().unwrap(),
                m["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(MAC1, "ws-01", "expected"), (MAC2, "ws-02", "expected")]
    );
    let d = s.admin_get("/api/v1/machines/ws-02").await;
    assert_eq!(d["state"], "expected");
    assert_eq!(d["role"], "workstation");
    assert_eq!(d["attempts"], serde_json::json!([]));
    assert_eq!(s.state_of(MAC2).await, "expected");
    let r = s
        .http
        .post(s.url("/api/v1/machines/ws-02/reinstall"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap();
    assert!(body.contains("has not PXE-booted yet"), "{body}");

    // Its first boot installs; from then on the database has it.
    let (_, script) = s.boot(MAC2).await;
    assert!(token_in(&script).is_some(), "{script}");
    assert_eq!(s.state_of("ws-02").await, "assigned");
    let list = s.admin_get("/api/v1/machines").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["state"], "expected");
    assert_eq!(list[1]["hostname"], "ws-02");
    let r = s
        .http
        .get(s.url("/api/v1/machines/ws-09"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn installed_boots_local_and_never_loops() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    assert_eq!(s.state_of(MAC1).await, "installing");
    // A reboot mid-install restarts the install.
    let (_, script) = s.boot(MAC1).await;
    assert!(token_in(&script).is_some(), "{script}");

    s.ack(
        &agent,
        &attempt,
        &[event(1, Step::Done, EventKind::Finished, "installed")],
    )
    .await;
    assert_eq!(s.state_of("ws-01").await, "installed");
    for _ in 0..3 {
        let (status, script) = s.boot(MAC1).await;
        assert_eq!(status, 200);
        assert_eq!(
            script,
            "#!ipxe\necho landfall: ws-01 is installed, booting from local disk\nexit\n"
        );
    }
    assert_eq!(s.state_of(MAC1).await, "installed");
    s.stop().await;
}

#[tokio::test]
async fn failed_holds_with_the_error_until_reinstall() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC2).await;
    let mut failed = event(1, Step::Done, EventKind::Failed, "no disk matched");
    failed.data = Some(serde_json::json!({"step": "disks"}));
    s.ack(&agent, &attempt, &[failed]).await;
    let d = s.admin_get("/api/v1/machines/ws-02").await;
    assert_eq!(d["state"], "failed");
    assert_eq!(d["error"], "step disks: no disk matched");

    let (_, script) = s.boot(MAC2).await;
    assert!(
        script.contains("install of 52:54:00:00:00:02 failed: step disks: no disk matched"),
        "{script}"
    );
    assert!(
        script.contains("sleep 30") && script.contains("chain "),
        "{script}"
    );
    assert!(token_in(&script).is_none());

    // Admin asks for a reinstall: next boot installs again.
    let r = s
        .http
        .post(s.url("/api/v1/machines/ws-02/reinstall"))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.state_of(MAC2).await, "reinstall_requested");
    let (_, script) = s.boot(MAC2).await;
    assert!(script.contains("installing ws-02"), "{script}");
    s.stop().await;
}

#[tokio::test]
async fn chain_script_and_index() {
    let s = Server::start(Some(CONFIG)).await;
    let r = s.http.get(s.url("/chain.ipxe")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        r.text().await.unwrap(),
        format!(
            "#!ipxe\ndhcp\nchain {}/boot.ipxe?mac=${{net0/mac}}&arch=${{buildarch}}&platform=${{platform}}\n",
            s.base
        )
    );
    let t = s
        .http
        .get(s.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(t.starts_with("landfall "), "{t}");
    s.stop().await;
}

#[tokio::test]
async fn public_url_overrides_the_host_header() {
    let cfg = CONFIG.replace(
        "[server]\n",
        "[server]\npublic_url = \"http://pxe.example:9000/\"\n",
    );
    let s = Server::start(Some(&cfg)).await;
    let (_, script) = s.boot(MAC1).await;
    assert!(
        script.contains("kernel http://pxe.example:9000/artifacts/vmlinuz initrd=initrd landfall.server=http://pxe.example:9000 "),
        "{script}"
    );
    s.stop().await;
}

//! Persistence across restarts, the admin token file, and the `landfall` binary itself.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use landfall_proto::{EventKind, Step};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_landfall");

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_dir() {
    let mut s = Server::start(Some(CONFIG)).await;
    let token_before = s.admin_token();
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let evs = [
        event(1, Step::Detect, EventKind::Started, "a"),
        event(2, Step::Detect, EventKind::Finished, "b"),
    ];
    assert_eq!(s.ack(&agent, &attempt, &evs).await, 2);
    let _ = s.boot("52:54:00:aa:bb:cc").await;

    s.restart().await;
    assert_eq!(s.admin_token(), token_before, "admin token regenerated");
    assert_eq!(s.state_of(MAC1).await, "installing");
    assert_eq!(s.state_of("52:54:00:aa:bb:cc").await, "discovered");
    // The agent token and the acked position survive.
    assert_eq!(
        s.ack(
            &agent,
            &attempt,
            &[event(4, Step::Disks, EventKind::Started, "")]
        )
        .await,
        2
    );
    assert_eq!(
        s.ack(
            &agent,
            &attempt,
            &[event(3, Step::Done, EventKind::Finished, "")]
        )
        .await,
        4
    );
    s.restart().await;
    assert_eq!(s.state_of(MAC1).await, "installed");
    let (_, script) = s.boot(MAC1).await;
    assert!(script.ends_with("exit\n"), "{script}");
    let d = s.admin_get(&format!("/api/v1/machines/{MAC1}")).await;
    assert_eq!(d["attempts"][0]["events"].as_array().unwrap().len(), 4);
    s.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn admin_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(None).await;
    let meta = std::fs::metadata(s.data().join("admin.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(s.admin_token().len(), 64);
    s.stop().await;
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("LANDFALL_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn binary_serves_logs_its_address_and_the_admin_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("LANDFALL_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("landfall listening on http://").nth(1) {
                return rest.trim().to_owned();
            }
        }
        panic!("server exited:\n{log}")
    })
    .await
    .expect("no listening line");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let base = format!("http://{addr}");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert!(log.contains("admin.token"), "{log}");
    assert!(!log.contains(token.trim()), "the admin token was logged");

    let http = reqwest::Client::new();
    let t = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(t.starts_with("landfall "));
    let s = http
        .get(format!("{base}/boot.ipxe?mac=52:54:00:ab:cd:ef"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(s.contains("installing demo-abcdef (role demo)"), "{s}");

    let token_file = data.join("admin.token");
    let tf = token_file.to_str().unwrap();
    let (code, out, err) = run(&["machines", "--server", &base, "--token-file", tf]).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    for col in ["MAC", "HOSTNAME", "ROLE", "STATE", "LAST EVENT", "UPDATED"] {
        assert!(header.contains(col), "{out}");
    }
    assert!(
        out.contains("52:54:00:ab:cd:ef")
            && out.contains("demo-abcdef")
            && out.contains("assigned"),
        "{out}"
    );

    let (code, out, err) =
        run(&["machines", "--server", &base, "--token-file", tf, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["hostname"], "demo-abcdef");

    let (code, out, err) = run(&[
        "machine",
        "demo-abcdef",
        "--server",
        &base,
        "--token-file",
        tf,
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mac"], "52:54:00:ab:cd:ef");
    assert!(v["attempts"].is_array());

    let (code, out, err) = run(&[
        "reinstall",
        "52-54-00-AB-CD-EF",
        "--server",
        &base,
        "--token-file",
        tf,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reinstall_requested"), "{out}");

    // A wrong token: non-zero exit and the server's message.
    let bad = dir.path().join("bad.token");
    std::fs::write(&bad, "nope\n").unwrap();
    let (code, _, err) = run(&[
        "machines",
        "--server",
        &base,
        "--token-file",
        bad.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("wrong admin token"),
        "{err}"
    );

    // `--server HOST:PORT` (no scheme) is http://HOST:PORT; a URL of another
    // scheme is refused naming the option and the form to use.
    let (code, out, err) = run(&["machines", "--server", &addr, "--token-file", tf]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("52:54:00:ab:cd:ef"), "{out}");
    let (code, _, err) = run(&["machines", "--server", "ftp://x", "--token-file", tf]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("--server \"ftp://x\"") && err.contains("http://10.0.0.1:8080"),
        "{err}"
    );

    child.kill().await.unwrap();
}

#[tokio::test]
async fn bad_config_is_refused_at_start_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("landfall.toml");
    std::fs::write(
        &cfg,
        "[roles.r]\n[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\nrole = \"r\"\n\
         [[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"b\"\nrole = \"r\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (code, _, err) = run(&[
        "serve",
        "--config",
        c,
        "--data",
        d,
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("machines[1].mac") && err.contains("listed twice"),
        "{err}"
    );
    let (code, _, err) = run(&["serve", "--config", c, "--check-config"]).await;
    assert_eq!(code, 1, "{err}");

    std::fs::write(&cfg, CONFIG).unwrap();
    // CONFIG's role names a layout that is not there yet.
    let (code, _, err) = run(&["serve", "--config", c, "--check-config"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("roles.workstation.layout = \"single-disk\""),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("layouts")).unwrap();
    std::fs::write(dir.path().join("layouts/single-disk.json"), LAYOUT_JSON).unwrap();
    let (code, out, err) = run(&["serve", "--config", c, "--check-config"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config OK"), "{out}");
    assert!(
        !data.exists(),
        "--check-config must not create the data dir"
    );
}

/// A missing iPXE binary (or a directory where one should be) is refused when
/// `landfall serve` starts, with the key, the path and the fix, and nothing is
/// served (issue 13); the same config with the binary in place starts.
#[tokio::test]
async fn missing_ipxe_binary_is_refused_at_start_with_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("landfall.toml");
    let c = cfg.to_str().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let missing = dir.path().join("ipxe/undionly.kpxe");
    std::fs::create_dir(dir.path().join("ipxe")).unwrap();
    let serve = [
        "serve",
        "--config",
        c,
        "--data",
        d,
        "--listen",
        "127.0.0.1:0",
    ];
    for (key, path) in [
        ("ipxe_bios", missing.display().to_string()),
        // A directory is not a binary either.
        (
            "ipxe_efi_x86_64",
            dir.path().join("ipxe").display().to_string(),
        ),
    ] {
        std::fs::write(
            &cfg,
            format!("[netboot]\ntftp = true\ntftp_port = 0\n{key} = \"{path}\"\n"),
        )
        .unwrap();
        let (code, out, err) = run(&serve).await;
        assert_eq!(code, 1, "{key} = {path} was accepted: {out}{err}");
        assert!(
            err.contains(&format!("netboot.{key}: {path} is not a file"))
                && err.contains("Debian's `ipxe` package")
                && err.contains("nixpkgs' `ipxe`"),
            "{err}"
        );
        assert!(!out.contains("TFTP serving") && !err.contains("TFTP serving"));
    }
    // The binary in place: the same config starts (and is only checked here).
    std::fs::write(&missing, b"ipxe").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[netboot]\ntftp = true\nipxe_bios = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(&["serve", "--config", c, "--check-config"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

/// `serve --check-config` refuses what the agent would refuse later: a layout
/// from disko-layouts/broken/ (read with the agent's parser, the field's path in
/// the message), a `disks` key the layout does not have, and a configured
/// artifacts directory that does not exist; the good config still passes.
#[tokio::test]
async fn check_config_refuses_layouts_disk_keys_and_artifacts_the_agent_would_refuse() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    std::fs::create_dir(&layouts).unwrap();
    std::fs::create_dir(dir.path().join("netboot")).unwrap();
    std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON).unwrap();
    let cfg = dir.path().join("landfall.toml");
    let c = cfg.to_str().unwrap();
    let good = CONFIG.replace("[server]\n", "[server]\nartifacts = \"netboot\"\n");
    let check = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        async move { run(&["serve", "--config", c, "--check-config"]).await }
    };

    let (code, out, err) = check(good.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config OK"), "{out}");

    // The agent's refusals, with the broken layouts' own `# expect:` lines.
    for name in ["bad-size", "misspelt-option", "zpool"] {
        let src = repo.join(format!("disko-layouts/broken/{name}.nix"));
        std::fs::copy(&src, layouts.join(format!("{name}.nix"))).unwrap();
        let (code, out, err) =
            check(good.replace("layout = \"single-disk\"", &format!("layout = \"{name}\""))).await;
        assert_eq!(code, 1, "{name} was accepted: {out}");
        assert!(
            err.contains(&format!("roles.workstation.layout = \"{name}\""))
                && err.contains(&format!("{name}.nix")),
            "{name}: {err}"
        );
        let text = std::fs::read_to_string(&src).unwrap();
        let want: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!want.is_empty(), "{name} has no `# expect:` line");
        for w in want {
            assert!(err.contains(w), "{name}: {err} does not contain {w:?}");
        }
    }

    // A disks key that is not a disk of the layout.
    let (code, _, err) = check(format!(
        "{good}\n[roles.workstation.disks]\nsystem = \"auto\"\n"
    ))
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("roles.workstation.disks.system")
            && err.contains("has no disk \"system\" (its disks: main)"),
        "{err}"
    );

    // A configured artifacts directory that is not there.
    let (code, _, err) = check(good.replace("\"netboot\"", "\"no-such-dir\"")).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.artifacts") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[tokio::test]
async fn retry_command_moves_a_failed_machine_and_refuses_others() {
    let s = Server::start(Some(CONFIG)).await;
    let (attempt, agent) = s.start_attempt(MAC1).await;
    let token_file = s.data().join("admin.token");
    let tf = token_file.to_str().unwrap();
    let base = s.base.clone();

    // installing: refused, exit 1, the state named.
    let (code, _, err) = run(&["retry", "ws-01", "--server", &base, "--token-file", tf]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("ws-01 is installing"),
        "{err}"
    );

    let mut done = event(1, Step::Done, EventKind::Failed, "no disk matched");
    done.data = Some(serde_json::json!({"step": "disks"}));
    s.ack(&agent, &attempt, &[done]).await;
    let (code, out, err) = run(&["retry", "ws-01", "--server", &base, "--token-file", tf]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ws-01 (52:54:00:00:00:01): retry_requested"),
        "{out}"
    );
    assert_eq!(s.state_of(MAC1).await, "retry_requested");
    s.stop().await;
}

//! The FIRST-BOOT STAND-IN by itself, on a root filesystem made here (no install before it):
//! the test image boots directly (`-kernel/-initrd`) in firstboot mode, mounts the root,
//! takes its hostname, mounts a real Samba share over cifs with the credentials file from
//! that root, and runs the real `landfall-agent verify`, whose checks reach real sshd, xrdp,
//! Xvnc and smbd on this machine. A recording HTTP server stands in for landfall's verify
//! endpoint. `install.rs` runs the same stand-in after a real install against the real server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{HostServices, SMB_CREDENTIALS, SMB_PASSWORD};
use landfall_vm_tests::{agent, image, DiskSpec, Firmware, Image, ImageSpec, TestServer};
use serde_json::Value;

const HOSTNAME: &str = "fb-stand-in";
const TOKEN: &str = "verify-token-canary-77c1";

#[test]
fn first_boot_stand_in_mounts_the_share_and_verifies_real_services() {
    let t0 = Instant::now();
    let services = HostServices::start();
    let agent = agent::static_agent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ImageSpec::new(&agent, dir.path().join("artifacts"));
    spec.modules
        .extend(image::CIFS_MODULES.iter().map(|m| m.to_string()));
    spec.host_programs = image::DISK_PROGRAMS.iter().map(|p| p.to_string()).collect();
    let image = Image::build(spec).unwrap();

    let srv = TestServer::start(dir.path()).unwrap();
    srv.route_text("/api/v1/agent/verify", r#"{"state":"ready"}"#);

    // The installed root as the agent and nixos-install leave it (the parts the stand-in reads).
    let root = dir.path().join("root");
    let write = |path: &str, text: &str, mode: u32| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("/etc/NIXOS", "", 0o644);
    write("/etc/hostname", &format!("{HOSTNAME}\n"), 0o644);
    write(SMB_CREDENTIALS, &common::smb_credentials(), 0o400);
    let config = serde_json::json!({
        "server": format!("http://10.0.2.2:{}", srv.port()),
        "attempt_id": "a1",
        "token": TOKEN,
        "hostname": HOSTNAME,
        "checks": services.checks_json(HOSTNAME),
        "timeout": 20,
        // The test HTTP server: plain HTTP, as the installer was told.
        "insecure_http": true,
    });
    write("/etc/landfall/verify.json", &config.to_string(), 0o600);
    std::fs::set_permissions(
        root.join("etc/landfall"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    // The disk is the filesystem itself (no partition table): /dev/vda.
    let disk = dir.path().join("disk0.raw");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-d"])
        .arg(&root)
        .arg(&disk)
        .arg("64M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mke2fs: {out:?}");
    let prepared = t0.elapsed();

    let (log, vm_time) = common::first_boot(
        &image,
        Firmware::Bios,
        "52:54:00:4c:46:f1",
        &dir.path().join("vm"),
        DiskSpec {
            path: disk.clone(),
            serial: "LFFIRSTBOOT1".into(),
            size_bytes: 0,
        },
        services.firstboot_append("landfall_test.root=/dev/vda"),
        Vec::new(),
    );
    assert!(
        log.contains(&format!("{} 0", image::FIRSTBOOT_EXITED)),
        "verify failed:\n{log}\n{}",
        services.logs()
    );
    assert!(
        log.contains("landfall-test-firstboot: SMB share //10.0.2.2/share"),
        "{log}"
    );
    for canary in [SMB_PASSWORD, TOKEN] {
        assert!(
            !log.contains(canary),
            "a secret reached the console:\n{log}"
        );
    }

    // The real verify reported every check passed, with the hostname from the root.
    let r = srv
        .wait_for("/api/v1/agent/verify", Duration::from_secs(1))
        .unwrap();
    assert_eq!(r.method, "POST");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["hostname"], HOSTNAME, "{body:#}");
    assert_eq!(body["attempt_id"], "a1");
    let checks = body["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["hostname", "ssh", "rdp", "vnc", "share"],
        "{body:#}"
    );
    for c in checks {
        assert_eq!(c["ok"], true, "{c}\n{log}\n{}", services.logs());
    }
    let share = checks.iter().find(|c| c["name"] == "share").unwrap();
    assert!(
        share["detail"]
            .as_str()
            .unwrap()
            .contains("written, read back, removed"),
        "{share}"
    );
    // Its test file is gone from the share again.
    let left: Vec<_> = std::fs::read_dir(services.share_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left on the share: {left:?}");

    // After `ready` the token left the disk.
    let fs = common::Ext4::open(&disk, 0, std::fs::metadata(&disk).unwrap().len());
    assert_eq!(fs.mode("/etc/landfall/verify.json"), None);
    assert_eq!(fs.file(SMB_CREDENTIALS).0, "0400");
    eprintln!(
        "first-boot stand-in ({}): services+image+root {:.1}s, VM {:.1}s",
        landfall_vm_tests::qemu::detect_accel().0.as_str(),
        prepared.as_secs_f64(),
        vm_time.as_secs_f64()
    );
}

//! Per-architecture installer images: `ARTIFACTS/x86_64/` and
//! `ARTIFACTS/arm64/`, chosen from iPXE's `${buildarch}`; an architecture
//! without an image holds with that reason (issue 13, per-architecture images).

mod common;

use common::*;

async fn boot_as(s: &Server, mac: &str, arch: &str) -> String {
    s.http
        .get(s.url("/boot.ipxe"))
        .query(&[("mac", mac), ("arch", arch), ("platform", "efi")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_architecture_boots_its_own_image_or_holds_saying_why() {
    let s = Server::start(None).await;
    let a = s.artifacts();
    std::fs::create_dir_all(a.join("x86_64")).unwrap();
    std::fs::write(a.join("x86_64/vmlinuz"), b"x86 kernel").unwrap();
    std::fs::write(a.join("x86_64/initrd"), b"x86 initrd").unwrap();
    std::fs::write(
        a.join("x86_64/cmdline"),
        "init=/nix/store/x86-system/init\n",
    )
    .unwrap();
    let b = &s.base;

    let script = boot_as(&s, MAC1, "x86_64").await;
    assert!(
        script.contains(&format!(
            "kernel {b}/artifacts/x86_64/vmlinuz initrd=initrd "
        )),
        "{script}"
    );
    assert!(
        script.contains("init=/nix/store/x86-system/init"),
        "{script}"
    );
    assert!(
        script.contains(&format!("initrd {b}/artifacts/x86_64/initrd\n")),
        "{script}"
    );
    // undionly.kpxe is a 32-bit iPXE: the x86_64 image too.
    assert!(boot_as(&s, MAC2, "i386")
        .await
        .contains("/artifacts/x86_64/vmlinuz"));

    // No arm64 image: hold, saying so and what to do.
    let script = boot_as(&s, "52:54:00:00:00:03", "arm64").await;
    assert!(
        script.contains("landfall: holding: no installer image for architecture arm64"),
        "{script}"
    );
    assert!(script.contains("ARTIFACTS/arm64/"), "{script}");
    assert!(!script.contains("landfall.token="), "{script}");

    // Once there is one, the same machine installs it.
    std::fs::create_dir_all(a.join("arm64")).unwrap();
    std::fs::write(a.join("arm64/vmlinuz"), b"arm kernel").unwrap();
    let script = boot_as(&s, "52:54:00:00:00:03", "arm64").await;
    assert!(
        script.contains(&format!("kernel {b}/artifacts/arm64/vmlinuz")),
        "{script}"
    );

    // The files are served per architecture; nothing outside them.
    let get = |p: &str| s.http.get(s.url(p)).send();
    let r = get("/artifacts/arm64/vmlinuz").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"arm kernel");
    assert_eq!(
        get("/artifacts/x86_64/initrd")
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"x86 initrd"
    );
    for bad in [
        "/artifacts/riscv64/vmlinuz",
        "/artifacts/x86_64/..%2Fadmin.token",
        "/artifacts/../admin.token",
    ] {
        assert_ne!(get(bad).await.unwrap().status(), 200, "{bad}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_flat_artifacts_directory_still_boots_any_architecture() {
    let s = Server::start(None).await;
    std::fs::create_dir_all(s.artifacts()).unwrap();
    std::fs::write(s.artifacts().join("vmlinuz"), b"k").unwrap();
    for arch in ["x86_64", "arm64"] {
        let script = boot_as(&s, MAC1, arch).await;
        assert!(
            script.contains(&format!("kernel {}/artifacts/vmlinuz ", s.base)),
            "{arch}: {script}"
        );
    }
    s.stop().await;
}

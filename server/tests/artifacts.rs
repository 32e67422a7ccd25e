//! GET/HEAD /artifacts/{name} with Range support.

mod common;

use common::*;

fn content() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

async fn setup() -> Server {
    let s = Server::start(Some(CONFIG)).await;
    write(&s.artifacts().join("vmlinuz"), &content());
    write(&s.artifacts().join(".secret"), b"hidden");
    s
}

#[tokio::test]
async fn full_get_and_head() {
    let s = setup().await;
    let r = s
        .http
        .get(s.url("/artifacts/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), content().as_slice());

    let r = s
        .http
        .head(s.url("/artifacts/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(r.bytes().await.unwrap().is_empty());
    s.stop().await;
}

async fn range(s: &Server, spec: &str) -> reqwest::Response {
    s.http
        .get(s.url("/artifacts/vmlinuz"))
        .header("range", spec)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn byte_ranges() {
    let s = setup().await;
    let c = content();
    for (spec, a, b) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=99000-200000", 99_000, 99_999),
        ("bytes=0-0", 0, 0),
    ] {
        let r = range(&s, spec).await;
        assert_eq!(r.status(), 206, "{spec}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {a}-{b}/100000").as_str(),
            "{spec}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (b - a + 1).to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &c[a..=b], "{spec}");
    }
    // HEAD with a range reports the partial length.
    let r = s
        .http
        .head(s.url("/artifacts/vmlinuz"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-length"], "10");
    s.stop().await;
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let s = setup().await;
    for spec in ["bytes=100000-", "bytes=200000-300000", "bytes=-0"] {
        let r = range(&s, spec).await;
        assert_eq!(r.status(), 416, "{spec}");
        assert_eq!(r.headers()["content-range"], "bytes */100000");
    }
    // Malformed ranges are ignored: the whole file.
    let r = range(&s, "bytes=abc").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    s.stop().await;
}

#[tokio::test]
async fn names_are_validated() {
    let s = setup().await;
    std::fs::write(s.data().join("outside"), b"x").unwrap();
    for (path, status) in [
        ("/artifacts/.secret", 400),
        ("/artifacts/%2e%2e%2foutside", 400),
        ("/artifacts/..%2Foutside", 400),
        ("/artifacts/a..b", 400),
        ("/artifacts/initrd", 404),
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].is_string(), "{path}");
    }
    s.stop().await;
}

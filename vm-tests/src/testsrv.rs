//! A tiny HTTP/1.x server for VM tests: serves files from a directory plus fixed text routes,
//! and records every request (with when it arrived and when its response was fully sent).
//! One thread per connection; every response closes the connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-decoding not applied.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub body: Vec<u8>,
    pub status: u16,
    pub bytes_sent: u64,
    pub received: Instant,
    pub completed: Instant,
}

impl Request {
    /// The value of `key` in the query string (`+` and `%XX` decoded).
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

struct State {
    root: PathBuf,
    routes: Mutex<HashMap<String, String>>,
    log: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Listens on 127.0.0.1 (an ephemeral port); QEMU user networking guests reach it as
    /// 10.0.2.2:PORT. Files under `root` are served as `/NAME`.
    pub fn start(root: impl Into<PathBuf>) -> Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the test HTTP server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            root: root.into(),
            routes: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = serve(&st, stream) {
                                eprintln!("testsrv: {e:#}");
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => eprintln!("testsrv: accept: {e}"),
                }
            }
        });
        Ok(TestServer {
            addr,
            state,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `body` as text/plain at `path` (any query), before looking at files.
    pub fn route_text(&self, path: &str, body: impl Into<String>) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), body.into());
    }

    /// All requests whose responses were sent, in completion order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Waits for the first completed request on `path` (any query).
    pub fn wait_for(&self, path: &str, timeout: Duration) -> Result<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| r.path == path) {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!(
                    "no request for {path} within {timeout:?}; saw {:?}",
                    self.paths()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn paths(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(st: &State, stream: TcpStream) -> Result<()> {
    let received = Instant::now();
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, target) = match (words.next(), words.next()) {
        (Some(m), Some(t)) => (m.to_string(), t.to_string()),
        _ => bail!("bad request line {line:?}"),
    };
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().context("Content-Length")?;
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));

    let route = st.routes.lock().unwrap().get(path).cloned();
    let (status, data) = match route {
        Some(text) => (200, text.into_bytes()),
        None => match file_under(&st.root, path).and_then(|p| std::fs::read(p).ok()) {
            Some(d) => (200, d),
            None => (404, b"not found\n".to_vec()),
        },
    };
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let mut w = stream;
    write!(w, "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n", data.len())?;
    if method != "HEAD" {
        w.write_all(&data)?;
    }
    w.flush()?;
    st.log.lock().unwrap().push(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        body,
        status,
        bytes_sent: data.len() as u64,
        received,
        completed: Instant::now(),
    });
    Ok(())
}

/// `/a/b` -> root/a/b when it names a file and does not climb out of root.
fn file_under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let p = root.join(rel);
    p.is_file().then_some(p)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_files_routes_and_records() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
        let srv = TestServer::start(dir.path()).unwrap();
        srv.route_text("/boot.ipxe", "#!ipxe\n");
        let get = |p: &str| {
            reqwest::blocking::get(format!("http://127.0.0.1:{}{p}", srv.port())).unwrap()
        };
        assert_eq!(get("/vmlinuz").bytes().unwrap().as_ref(), b"kernel");
        assert_eq!(
            get("/boot.ipxe?mac=52%3A54%3a00").text().unwrap(),
            "#!ipxe\n"
        );
        assert_eq!(get("/../etc/passwd").status(), 404);
        let r = srv.wait_for("/boot.ipxe", Duration::from_secs(5)).unwrap();
        assert_eq!(r.query_param("mac").as_deref(), Some("52:54:00"));
        assert_eq!(srv.requests().len(), 3);
    }
}

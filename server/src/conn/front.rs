//! The plain-HTTP listener's own request reader (`[server.http] sendfile`,
//! on by default), so that artifacts go out by sendfile(2): the kernel
//! copies the page cache to the socket, no byte passes through the server.
//!
//! It reads each request head itself (httparse) and calls the same router
//! hyper would. A response that carries a [`FileRange`] (an artifact GET)
//! is sent with sendfile; any other is written from its body: with
//! `content-length` when its size is known, chunked when not. A request
//! with a body (`content-length` > 0, `transfer-encoding`), `Expect` or
//! `Upgrade` hands the connection, its bytes read so far included, to hyper
//! for the rest of its life. iPXE keeps one connection for `boot.ipxe`,
//! the kernel and the initrd, so all three are read here.
//!
//! Timeouts: the first head within `header_timeout` of the accept, each
//! later one within `idle_timeout` of the response before; a write (or a
//! sendfile) that makes no progress for `send_timeout` ends the connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version,
};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::io::Rewind;
use crate::api::artifacts::FileRange;
use crate::api::ApiError;
use crate::app::PeerAddr;
use crate::config::HttpSettings;

/// Largest request head read (request line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a request head.
const MAX_HEADERS: usize = 100;

/// A request head, parsed; `len` bytes of the buffer.
struct Head {
    method: Method,
    uri: axum::http::Uri,
    version: Version,
    headers: HeaderMap,
    len: usize,
}

/// Why no head could be read.
enum HeadError {
    /// The client closed before sending a byte of a next request.
    Closed,
    Io(io::Error),
    /// Answered with this status, then the connection closes.
    Bad(StatusCode, &'static str),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

pub(super) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: &HttpSettings,
    stop: &CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        let limit = if first {
            http.header_timeout
        } else {
            http.idle_timeout
        };
        let between = buf.is_empty();
        let read = tokio::select! {
            // Nothing of a next request yet: a stop closes it now.
            _ = stop.cancelled(), if between => return,
            r = tokio::time::timeout(limit, read_head(&mut stream, &mut buf)) => r,
        };
        let head = match read {
            Err(_) => {
                tracing::debug!(%peer, "no request head within {}s: closed", limit.as_secs());
                return;
            }
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Io(e))) => {
                tracing::debug!(%peer, "reading a request: {e}");
                return;
            }
            Ok(Err(HeadError::Bad(status, why))) => {
                // The API's error body (ErrorBody), then the connection closes.
                let resp = ApiError::new(status, why).into_response();
                let _ = write_response(
                    &stream,
                    resp,
                    false,
                    Version::HTTP_11,
                    false,
                    http.send_timeout,
                )
                .await;
                return;
            }
            Ok(Ok(h)) => h,
        };
        first = false;
        if has_body_or_upgrade(&head) {
            // hyper reads this request again from the start, and every one after it.
            let io = Rewind::new(std::mem::take(&mut buf), stream);
            return super::hyper_conn::serve(io, peer, router, http, stop, false).await;
        }
        buf.drain(..head.len);
        let mut keep = wants_keep_alive(&head);
        let head_only = head.method == Method::HEAD;
        let version = head.version;
        let mut req = Request::new(Body::empty());
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        let Ok(resp) = router.clone().call(req).await;
        keep &= !stop.is_cancelled();
        match write_response(&stream, resp, head_only, version, keep, http.send_timeout).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, "writing a response: {e}");
                return;
            }
        }
    }
}

/// Read until `buf` holds a whole request head. Bytes after it (a
/// pipelined request) stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(h) = parse_head(buf)? {
                return Ok(h);
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the request head is larger than 64 KiB",
                ));
            }
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
    }
}

/// A whole head at the start of `buf`, `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let bad = |why| HeadError::Bad(StatusCode::BAD_REQUEST, why);
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has more than 100 header fields",
            ))
        }
        Err(_) => return Err(bad("the request head is not HTTP/1.x")),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("the request method is not a token"))?;
    let uri = req
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad("the request target is not a URI"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| bad("a header name is not a token"))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| bad("a header value has control bytes"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        len,
    }))
}

/// What the front leaves to hyper: a request body to read (whatever its
/// framing), `Expect: 100-continue`, a protocol upgrade.
fn has_body_or_upgrade(h: &Head) -> bool {
    h.headers.contains_key(header::TRANSFER_ENCODING)
        || h.headers.contains_key(header::EXPECT)
        || h.headers.contains_key(header::UPGRADE)
        || h.method == Method::CONNECT
        || h.headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// HTTP/1.1 keeps the connection unless the client says `close`; HTTP/1.0
/// only when it says `keep-alive`.
fn wants_keep_alive(h: &Head) -> bool {
    let has = |token: &str| {
        h.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    match h.version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

/// How a response body is delimited on the wire.
enum Framing {
    None,
    Length,
    Chunked,
    /// HTTP/1.0 without a length: the end of the connection.
    Close,
}

/// Write `resp`; `Ok(true)` when the connection stays open for another
/// request.
async fn write_response(
    stream: &TcpStream,
    resp: Response,
    head_only: bool,
    version: Version,
    mut keep: bool,
    send_timeout: Duration,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == "keep-alive" {
            continue;
        }
        push_field(&mut out, name.as_str(), value.as_bytes());
    }
    let framing = if no_body {
        Framing::None
    } else if parts.headers.contains_key(header::CONTENT_LENGTH) {
        Framing::Length
    } else if let Some(n) = body.size_hint().exact() {
        push_field(&mut out, "content-length", n.to_string().as_bytes());
        Framing::Length
    } else if version == Version::HTTP_11 {
        push_field(&mut out, "transfer-encoding", b"chunked");
        Framing::Chunked
    } else {
        keep = false;
        Framing::Close
    };
    if !keep {
        push_field(&mut out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        push_field(&mut out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");

    if matches!(framing, Framing::None) {
        write_all(stream, &out, send_timeout).await?;
        return Ok(keep);
    }
    if let Some(range) = parts.extensions.get::<FileRange>() {
        // Corked (as nginx's tcp_nopush): the head and the file leave in
        // full segments, not one per partial sendfile; uncorking sends the
        // rest at once.
        let sock = socket2::SockRef::from(stream);
        let _ = sock.set_tcp_cork(true);
        write_all(stream, &out, send_timeout).await?;
        send_file(stream, range, send_timeout).await?;
        let _ = sock.set_tcp_cork(false);
        return Ok(keep);
    }
    let chunked = matches!(framing, Framing::Chunked);
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not sent
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        out.extend_from_slice(&data);
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        // Each frame goes out as it comes (server-sent events); the head
        // goes with the first one.
        write_all(stream, &out, send_timeout).await?;
        out.clear();
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_all(stream, &out, send_timeout).await?;
    Ok(keep)
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn timed_out(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client read nothing for {}s (server.http.send_timeout_secs)",
            limit.as_secs()
        ),
    )
}

/// Write all of `bytes`, each wait for the socket bounded by `limit`.
async fn write_all(stream: &TcpStream, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        tokio::time::timeout(limit, stream.writable())
            .await
            .map_err(|_| timed_out(limit))??;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Most bytes one sendfile(2) call is asked for (nginx's
/// `sendfile_max_chunk`, 2 MiB by default): after that many the connection
/// goes to the back of the queue, so that one fast reader does not keep the
/// worker from every other connection.
const SENDFILE_CHUNK: u64 = 2 << 20;

/// sendfile(2) the range to the socket. A page-cache miss makes the call
/// read the disk on this worker thread (as nginx without `aio` does); boot
/// artifacts are read by every machine and stay cached.
///
/// One timer for the whole range, not one per call: when it fires, the
/// send ends if nothing was sent for `limit`, else it is set again to
/// `limit` after the last progress (`send_timeout`'s meaning is kept).
async fn send_file(stream: &TcpStream, range: &FileRange, limit: Duration) -> io::Result<()> {
    let (mut at, mut left) = (range.start, range.len);
    let mut progress = tokio::time::Instant::now();
    let deadline = tokio::time::sleep_until(progress + limit);
    tokio::pin!(deadline);
    while left > 0 {
        let want = left.min(SENDFILE_CHUNK) as usize;
        // Tried at once while the socket is known writable; a wait for
        // readiness only after it answered EAGAIN.
        let call = stream.async_io(Interest::WRITABLE, || {
            let mut off = at as i64;
            nix::sys::sendfile::sendfile64(stream.as_fd(), range.file.as_fd(), Some(&mut off), want)
                .map_err(io::Error::from)
        });
        let sent = tokio::select! {
            biased;
            r = call => r?,
            () = &mut deadline => {
                let by = progress + limit;
                if tokio::time::Instant::now() >= by {
                    return Err(timed_out(limit));
                }
                deadline.as_mut().reset(by);
                continue;
            }
        };
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the artifact shrank while it was being sent",
            ));
        }
        at += sent as u64;
        left -= sent as u64;
        progress = tokio::time::Instant::now();
        if sent == want && left > 0 {
            // A whole chunk went: the others' turn (nginx posts the write
            // event to its next loop the same way).
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::Bytes;
    use axum::routing::{get, post};

    use super::*;

    /// A server of `router` through the front, on 127.0.0.1.
    async fn start(router: Router) -> SocketAddr {
        start_with(router, HttpSettings::default()).await
    }

    async fn start_with(router: Router, http: HttpSettings) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, peer) = l.accept().await.unwrap();
                let r = router.clone();
                tokio::spawn(
                    async move { serve(s, peer, r, &http, &CancellationToken::new()).await },
                );
            }
        });
        addr
    }

    /// Send `req` as is and read until the server closes (at most 5 s):
    /// (what came back, whether the server closed).
    async fn exchange(addr: SocketAddr, req: &[u8]) -> (String, bool) {
        let (out, closed) = exchange_bytes(addr, req).await;
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }

    async fn exchange_bytes(addr: SocketAddr, req: &[u8]) -> (Vec<u8>, bool) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .is_ok();
        (out, closed)
    }

    /// Each of `parts` in `text`, in that order.
    fn in_order(text: &str, parts: &[&str]) {
        let mut at = 0;
        for p in parts {
            match text[at..].find(p) {
                Some(i) => at += i + p.len(),
                None => panic!("{p:?} missing (or out of order) after byte {at} of:\n{text}"),
            }
        }
    }

    /// A body of three frames whose size is not known in advance (what
    /// server-sent events look like).
    struct Frames(VecDeque<&'static str>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|s| Ok(http_body::Frame::data(Bytes::from_static(s.as_bytes())))),
            )
        }
    }

    fn router(dir: PathBuf) -> Router {
        Router::new()
            .route("/small", get(|| async { "hello" }))
            .route(
                "/stream",
                get(|| async { Body::new(Frames(["one,", "two,", "three"].into())) }),
            )
            .route(
                "/echo",
                post(|body: String| async move { format!("echo:{body}") }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(p): ConnectInfo<PeerAddr>| async move { format!("peer:{p}") }),
            )
            .route(
                "/artifacts/f",
                get(move |m: Method, h: HeaderMap| async move {
                    crate::api::artifacts::serve_file(&dir, "f", &m, &h).await
                }),
            )
    }

    #[tokio::test]
    async fn one_connection_carries_every_kind_of_request_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than a sendfile chunk: several calls, each from where the last ended.
        let file: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &file).unwrap();
        let addr = start(router(dir.path().to_owned())).await;
        // Pipelined: all sent at once, answered in order on one connection;
        // the POST hands the connection to hyper, which answers the rest.
        let (out, closed) = exchange(
            addr,
            b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /stream HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /artifacts/f HTTP/1.1\r\nHost: x\r\nRange: bytes=4999990-\r\n\r\n\
              GET /peer HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
              GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            closed,
            "the server kept the connection after `Connection: close`"
        );
        let tail: String = file[4_999_990..].iter().map(|&b| b as char).collect();
        in_order(
            &out,
            &[
                "HTTP/1.1 200 OK\r\n",
                "content-length: 5\r\n\r\nhello",
                "HTTP/1.1 200 OK\r\n",
                "transfer-encoding: chunked\r\n",
                "\r\n4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\n",
                "content-length: 5\r\n",
                "HTTP/1.1 206 Partial Content\r\n",
                "content-range: bytes 4999990-4999999/5000000\r\n",
                &format!("\r\n{tail}"),
                "peer:127.0.0.1:",
                "echo:abc",
                "connection: close\r\n",
                "\r\n\r\nhello",
            ],
        );
        // The HEAD answer had no body: "hello" comes twice only (GETs).
        assert_eq!(out.matches("hello").count(), 2, "{out}");
        // A whole file by sendfile, byte for byte.
        let (out, _) = exchange_bytes(
            addr,
            b"GET /artifacts/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            out[body_at..] == file[..],
            "the file came back different ({} bytes)",
            out.len() - body_at
        );
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_asked_and_gets_no_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let addr = start(router(dir.path().to_owned())).await;
        let (out, closed) = exchange(addr, b"GET /small HTTP/1.0\r\n\r\n").await;
        assert!(closed);
        in_order(
            &out,
            &["HTTP/1.1 200 OK\r\n", "connection: close\r\n", "hello"],
        );
        let (out, closed) = exchange(addr, b"GET /stream HTTP/1.0\r\n\r\n").await;
        assert!(closed);
        assert!(!out.contains("chunked"), "{out}");
        assert!(out.ends_with("\r\n\r\none,two,three"), "{out}");
        // Kept alive when asked: the second request is answered too.
        let (out, _) = exchange(
            addr,
            b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /small HTTP/1.0\r\n\r\n",
        )
        .await;
        in_order(
            &out,
            &[
                "connection: keep-alive\r\n",
                "hello",
                "connection: close\r\n",
                "hello",
            ],
        );
    }

    #[tokio::test]
    async fn bad_heads_are_answered_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let addr = start(router(dir.path().to_owned())).await;
        let (out, closed) = exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
        assert!(closed);
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        // The API's error body, as every 4xx has.
        assert!(
            out.contains(r#""error":"the request head is not HTTP/1.x""#)
                && out.contains(r#""code":"#),
            "{out}"
        );
        let mut huge = b"GET /small HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
        let (out, closed) = exchange(addr, &huge).await;
        assert!(closed);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        // A body framed by chunks goes to hyper, which reads it.
        let (out, _) = exchange(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .await;
        assert!(out.contains("echo:hi"), "{out}");
    }

    #[tokio::test]
    async fn send_timeout_ends_a_stalled_sendfile_not_a_slow_one() {
        let dir = tempfile::tempdir().unwrap();
        let file: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("f"), &file).unwrap();
        // The stalled client asks for a file larger than what the kernel can
        // hold in flight (the send buffer autotunes up to tcp_wmem's 4 MiB
        // on loopback): otherwise sendfile can finish before it stalls.
        const BIG: u64 = 32 << 20;
        std::fs::File::create(dir.path().join("big"))
            .unwrap()
            .set_len(BIG)
            .unwrap();
        let http = HttpSettings {
            send_timeout: Duration::from_secs(1),
            ..HttpSettings::default()
        };
        let addr = start_with(router(dir.path().to_owned()), http).await;
        // A small receive buffer, so that the server waits on the client.
        let connect = |name: &'static str| async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(64 * 1024).unwrap();
            let mut s = sock.connect(addr).await.unwrap();
            let req =
                format!("GET /artifacts/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            s
        };
        // Slow but steady: 2.4 s in all, more than the send timeout, never
        // 1 s without reading. It gets the whole file.
        let mut s = connect("f").await;
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 512 * 1024];
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = 0;
            while got < buf.len() {
                match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf[got..])).await
                {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => got += n,
                    Ok(Err(e)) => panic!("reading: {e}"),
                }
            }
            out.extend_from_slice(&buf[..got]);
            if got == 0 && out.len() > file.len() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "still reading");
        }
        assert!(
            started.elapsed() > Duration::from_secs(2),
            "the client read too fast to test anything ({:?})",
            started.elapsed()
        );
        let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            out[body_at..] == file[..],
            "the slow client got {} bytes of {}",
            out.len() - body_at,
            file.len()
        );
        // Stalled: nothing read for more than the send timeout. The server
        // closes; the client then finds less than the file, then the end.
        let mut s = connect("big").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "the stalled connection is still open");
        assert!(
            (out.len() as u64) < BIG,
            "a stalled client got the whole file ({} bytes)",
            out.len()
        );
    }
}

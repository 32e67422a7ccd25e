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
use axum::response::Response;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::io::Rewind;
use crate::api::artifacts::FileRange;
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
                let body = format!("{{\"error\":\"{why}\"}}");
                let answer = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or(""),
                    body.len()
                );
                let _ =
                    tokio::time::timeout(http.send_timeout, stream.write_all(answer.as_bytes()))
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
        write_all(stream, &out, send_timeout).await?;
        send_file(stream, range, send_timeout).await?;
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

/// sendfile(2) the range to the socket. A page-cache miss makes the call
/// read the disk on this worker thread (as nginx without `aio` does); boot
/// artifacts are read by every machine and stay cached.
async fn send_file(stream: &TcpStream, range: &FileRange, limit: Duration) -> io::Result<()> {
    let (mut at, mut left) = (range.start, range.len);
    while left > 0 {
        // At most 1 GiB a call (Linux sends at most 2 GiB - 4 KiB anyway).
        let want = left.min(1 << 30) as usize;
        let sent = tokio::time::timeout(
            limit,
            stream.async_io(Interest::WRITABLE, || {
                let mut off = at as i64;
                nix::sys::sendfile::sendfile64(
                    stream.as_fd(),
                    range.file.as_fd(),
                    Some(&mut off),
                    want,
                )
                .map_err(io::Error::from)
            }),
        )
        .await
        .map_err(|_| timed_out(limit))??;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the artifact shrank while it was being sent",
            ));
        }
        at += sent as u64;
        left -= sent as u64;
    }
    Ok(())
}

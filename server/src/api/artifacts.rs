//! `GET|HEAD /artifacts/{name}`: boot files with single-range support.

use std::path::Path;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// A file name, not a path: no `/`, `\`, `..`, leading dot or control characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains("..")
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_control())
}

/// The byte range a `Range` header asks for, inclusive.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No (usable) Range header: the whole file.
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parse `bytes=a-b`, `bytes=a-`, `bytes=-n` against a file of `len` bytes.
/// Syntax errors and multiple ranges are ignored (whole file), as RFC 9110 allows.
pub fn parse_range(value: &str, len: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Full;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Partial(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return RangeReq::Full,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Partial(start, end)
}

/// A response's body is this range of this file: what the plain-HTTP
/// listener sends with sendfile(2) instead of polling the body
/// (`crate::conn::front`). The body carries the same bytes for any other
/// writer (HTTPS, `[server.http] sendfile = false`).
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Arc<std::fs::File>,
    pub start: u64,
    pub len: u64,
}

/// Bytes read per blocking read of a [`FileBody`]; one such read runs ahead
/// of the writer.
const READ_CHUNK: usize = 1 << 20;

/// A file range as a body: positional reads of [`READ_CHUNK`] on the
/// blocking pool, started at the first poll (a writer that sends the
/// [`FileRange`] itself reads nothing here); once a chunk is handed out the
/// next read starts, so the disk read overlaps the socket write.
struct FileBody {
    /// What is left to hand out, the chunk being read included.
    range: FileRange,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Bytes>>>,
}

impl FileBody {
    fn start_read(&mut self) {
        let r = &self.range;
        if r.len == 0 {
            return;
        }
        let (file, at, n) = (r.file.clone(), r.start, r.len.min(READ_CHUNK as u64));
        self.reading = Some(tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            // The body is the only user of the file's offset (sendfile
            // passes its own), and its reads run one at a time.
            let mut f = &*file;
            f.seek(std::io::SeekFrom::Start(at))?;
            let mut buf = Vec::with_capacity(n as usize);
            f.take(n).read_to_end(&mut buf)?;
            if (buf.len() as u64) < n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the artifact shrank while it was being sent",
                ));
            }
            Ok(Bytes::from(buf))
        }));
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.reading.is_none() {
            self.start_read();
        }
        let Some(reading) = self.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let read = ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        let chunk = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
        };
        let n = chunk.len() as u64;
        self.range.start += n;
        self.range.len -= n;
        self.start_read();
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.range.len == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.range.len)
    }
}

pub async fn serve_file(
    dir: &Path,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("artifact name {name:?} is not a plain file name"),
        ));
    }
    let path = dir.join(name);
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no artifact named {name:?}"));
    let (file, len) = match crate::artifact_dir::open_regular(dir, name) {
        Ok(Some(f)) => f,
        Ok(None) => return Err(not_found()),
        Err(e) => {
            return Err(ApiError::internal(format!(
                "opening {}: {e}",
                path.display()
            )))
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len))
        .unwrap_or(RangeReq::Full);

    let (status, start, count) = match range {
        RangeReq::Full => (StatusCode::OK, 0, len),
        RangeReq::Partial(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeReq::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable for {name:?} ({len} bytes)"),
            )
            .into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return Ok(r);
        }
    };

    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, count);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let range = FileRange {
            file: Arc::new(file),
            start,
            len: count,
        };
        builder = builder.extension(range.clone());
        Body::new(FileBody {
            range,
            reading: None,
        })
    };
    builder
        .body(body)
        .map_err(|e| ApiError::internal(format!("building response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact_dir::image_dir;

    #[test]
    fn the_image_directory_follows_the_architecture() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // Flat: one architecture, whatever iPXE says.
        for b in [Some("x86_64"), Some("arm64"), None] {
            assert_eq!(image_dir(root, b), Ok(""));
        }
        std::fs::create_dir(root.join("x86_64")).unwrap();
        std::fs::write(root.join("x86_64/vmlinuz"), b"k").unwrap();
        assert_eq!(image_dir(root, Some("x86_64")), Ok("x86_64/"));
        assert_eq!(image_dir(root, Some("i386")), Ok("x86_64/"));
        assert_eq!(image_dir(root, None), Ok("x86_64/"));
        let (why, fix) = image_dir(root, Some("arm64")).unwrap_err();
        assert!(
            why.contains("no installer image for architecture arm64"),
            "{why}"
        );
        assert!(fix.contains("ARTIFACTS/arm64/"), "{fix}");
        assert!(image_dir(root, Some("riscv64"))
            .unwrap_err()
            .0
            .contains("riscv64"));
        std::fs::create_dir(root.join("arm64")).unwrap();
        std::fs::write(root.join("arm64/vmlinuz"), b"k").unwrap();
        assert_eq!(image_dir(root, Some("arm64")), Ok("arm64/"));
        assert!(
            image_dir(root, None).is_err(),
            "two architectures, none asked"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("vmlinuz"));
        assert!(valid_name("initrd"));
        assert!(valid_name("nixos-25.05.iso"));
        for bad in ["", ".hidden", "..", "a/b", "../etc", "a..b", "a\\b", "a\nb"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_are_followed_into_the_directory_and_the_store_only() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (dir, store, data) = (
            t.path().join("a"),
            t.path().join("store"),
            t.path().join("d"),
        );
        for d in [&dir, &store, &data] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(store.join("bzImage"), b"kernel").unwrap();
        std::fs::write(data.join("admin.token"), b"secret").unwrap();
        std::fs::write(dir.join("real"), b"inside").unwrap();
        symlink(store.join("bzImage"), dir.join("vmlinuz")).unwrap();
        symlink("real", dir.join("alias")).unwrap();
        symlink(data.join("admin.token"), dir.join("leak")).unwrap();
        symlink("../d/admin.token", dir.join("leak2")).unwrap();
        symlink(store.join("gone"), dir.join("dangling")).unwrap();
        let read = |name: &str| {
            crate::artifact_dir::open_regular_with_store(&dir, name, &store)
                .unwrap()
                .map(|(f, _)| std::io::read_to_string(f).unwrap())
        };
        assert_eq!(read("vmlinuz").as_deref(), Some("kernel"));
        assert_eq!(read("alias").as_deref(), Some("inside"));
        assert_eq!(read("leak"), None);
        assert_eq!(read("leak2"), None);
        assert_eq!(read("dangling"), None);
        assert_eq!(read("missing"), None);
        // A symlink to a directory in the store is still not a file.
        symlink(&store, dir.join("storedir")).unwrap();
        assert_eq!(read("storedir"), None);
    }

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Partial(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Partial(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Partial(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-", 100), Full);
    }
}

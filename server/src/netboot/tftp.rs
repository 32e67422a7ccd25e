//! A read-only TFTP server (RFC 1350, with the blksize, tsize and timeout
//! options of RFC 2347/2348/2349) that serves only the configured iPXE
//! binaries, by name, from memory: no request ever reaches the filesystem,
//! so no path can lead outside them.
//!
//! Sessions are bounded (a maximum count, a retransmit limit and a timeout
//! per block); malformed packets are dropped and counted; every refusal is
//! counted and logged, and the server keeps serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// RFC 2348's bounds on `blksize`.
const MIN_BLKSIZE: usize = 8;
const MAX_BLKSIZE: usize = 65464;
const DEFAULT_BLKSIZE: usize = 512;

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transfers at once; more requests get ERROR "busy".
    pub max_sessions: usize,
    /// Sends of one block (the first and the retransmits) before giving up.
    pub max_sends: u32,
    /// Wait for an ACK before retransmitting (the client's `timeout` option
    /// may ask for another, 1..=255 s).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_sends: 5,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What the server did, for metrics, logs and tests.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Read requests for a served file.
    pub requests: AtomicU64,
    /// Transfers that ended with the last block acknowledged.
    pub completed: AtomicU64,
    /// Data bytes sent (first sends only).
    pub bytes: AtomicU64,
    /// Requests for a name that is not served (paths, other files).
    pub refused: AtomicU64,
    /// Packets that are not TFTP (too short, bad opcode, unterminated strings),
    /// and write requests.
    pub malformed: AtomicU64,
    /// Transfers abandoned after `max_sends` sends of one block.
    pub timeouts: AtomicU64,
    /// Requests refused because `max_sessions` transfers were running.
    pub busy: AtomicU64,
    /// Retransmitted blocks.
    pub retransmits: AtomicU64,
    /// Well-formed DATA/ACK/ERROR/OACK on the listening port, which belong to
    /// no transfer (tftp-hpa acknowledges an ERROR there): dropped.
    pub stray: AtomicU64,
}

impl TftpStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The files served: name (as requested, without a leading `/`) -> content.
pub type Files = BTreeMap<String, Arc<[u8]>>;

/// A running TFTP server.
pub struct TftpServer {
    addr: SocketAddr,
    stats: Arc<TftpStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TftpServer {
    /// Bind `listen` and serve `files` in a background task.
    pub async fn start(listen: SocketAddr, files: Files, limits: Limits) -> Result<Self> {
        let sock = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("TFTP: binding UDP {listen}"))?;
        let addr = sock.local_addr()?;
        let stats = Arc::new(TftpStats::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(sock, Arc::new(files), limits, stats.clone(), stopped));
        tracing::info!("TFTP serving the iPXE binaries on udp {addr}");
        Ok(Self {
            addr,
            stats,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Arc<TftpStats> {
        self.stats.clone()
    }

    /// Stop listening and end the running transfers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A parsed read request.
#[derive(Debug, PartialEq, Eq)]
struct ReadRequest {
    name: String,
    mode: String,
    /// Options as sent, names lower-cased.
    options: Vec<(String, String)>,
}

/// What a packet on the listening port is.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Read(ReadRequest),
    Write,
    /// DATA, ACK, ERROR or OACK: not a request.
    Stray,
}

/// Parse a request on the listening port; `None` for anything malformed.
fn parse_request(p: &[u8]) -> Option<Request> {
    if p.len() < 4 {
        return None;
    }
    let op = u16::from_be_bytes([p[0], p[1]]);
    if matches!(op, DATA | ACK | ERROR | OACK) {
        return Some(Request::Stray);
    }
    if op != RRQ && op != WRQ {
        return None;
    }
    // NUL-terminated strings: name, mode, then option/value pairs.
    let body = &p[2..];
    if *body.last()? != 0 {
        return None;
    }
    let mut fields = body[..body.len() - 1].split(|b| *b == 0).map(|f| {
        std::str::from_utf8(f)
            .ok()
            .filter(|s| s.chars().all(|c| !c.is_control()))
    });
    let name = fields.next()??.to_owned();
    let mode = fields.next()??.to_ascii_lowercase();
    if name.is_empty() || mode.is_empty() {
        return None;
    }
    if op == WRQ {
        return Some(Request::Write);
    }
    let rest: Vec<&str> = fields.collect::<Option<Vec<_>>>()?;
    if !rest.len().is_multiple_of(2) {
        return None;
    }
    let options = rest
        .chunks(2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].to_owned()))
        .collect();
    Some(Request::Read(ReadRequest {
        name,
        mode,
        options,
    }))
}

/// The served name a request asks for: a leading `/` is allowed (PXE ROMs
/// send both forms); anything else must match a served name exactly.
fn lookup<'a>(files: &'a Files, name: &str) -> Option<(&'a str, &'a Arc<[u8]>)> {
    let name = name.strip_prefix('/').unwrap_or(name);
    files.get_key_value(name).map(|(k, v)| (k.as_str(), v))
}

/// The options this server accepts, as it answers them in the OACK.
#[derive(Debug, PartialEq, Eq)]
struct Negotiated {
    blksize: usize,
    timeout: Option<Duration>,
    /// The answered options, in the client's order.
    answered: Vec<(String, String)>,
}

fn negotiate(options: &[(String, String)], size: usize) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        timeout: None,
        answered: Vec::new(),
    };
    for (k, v) in options {
        match k.as_str() {
            "blksize" => {
                if let Ok(b) = v.parse::<usize>() {
                    if b >= MIN_BLKSIZE {
                        n.blksize = b.min(MAX_BLKSIZE);
                        n.answered.push((k.clone(), n.blksize.to_string()));
                    }
                }
            }
            "tsize" => n.answered.push((k.clone(), size.to_string())),
            "timeout" => {
                if let Ok(t) = v.parse::<u64>() {
                    if (1..=255).contains(&t) {
                        n.timeout = Some(Duration::from_secs(t));
                        n.answered.push((k.clone(), t.to_string()));
                    }
                }
            }
            // Unknown options (windowsize, ...) are left out of the OACK,
            // which RFC 2347 says means "not accepted".
            _ => {}
        }
    }
    n
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

async fn serve(
    sock: UdpSocket,
    files: Arc<Files>,
    limits: Limits,
    stats: Arc<TftpStats>,
    mut stop: watch::Receiver<bool>,
) {
    let sessions = Arc::new(AtomicUsize::new(0));
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("TFTP: receiving: {e}");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let req = match parse_request(&buf[..len]) {
            Some(Request::Read(r)) => r,
            Some(Request::Write) => {
                bump(&stats.malformed);
                tracing::warn!("TFTP: write request from {peer} refused (read-only server)");
                let _ = sock
                    .send_to(&error_packet(2, "read-only server"), peer)
                    .await;
                continue;
            }
            Some(Request::Stray) => {
                bump(&stats.stray);
                tracing::debug!("TFTP: a packet of no transfer ({len} bytes) from {peer} dropped");
                continue;
            }
            None => {
                bump(&stats.malformed);
                tracing::warn!("TFTP: malformed packet ({len} bytes) from {peer} dropped");
                continue;
            }
        };
        let Some((name, data)) = lookup(&files, &req.name) else {
            bump(&stats.refused);
            tracing::warn!(
                "TFTP: {peer} asked for {:?}, which is not served (only {:?})",
                req.name.escape_debug().to_string(),
                files.keys().collect::<Vec<_>>()
            );
            let _ = sock.send_to(&error_packet(1, "file not found"), peer).await;
            continue;
        };
        if req.mode != "octet" {
            bump(&stats.refused);
            tracing::warn!(
                "TFTP: {peer} asked for {name} in mode {:?}; only octet is served",
                req.mode
            );
            let _ = sock
                .send_to(&error_packet(0, "only octet mode is served"), peer)
                .await;
            continue;
        }
        if sessions.load(Ordering::Relaxed) >= limits.max_sessions {
            bump(&stats.busy);
            tracing::warn!(
                "TFTP: {peer} asked for {name} while {} transfers run; refused as busy",
                limits.max_sessions
            );
            let _ = sock.send_to(&error_packet(0, "server busy"), peer).await;
            continue;
        }
        bump(&stats.requests);
        // The transfer runs from its own port (its TID), bound on the
        // listening address so replies leave from it.
        let local = SocketAddr::new(sock.local_addr().map(|a| a.ip()).unwrap_or(peer.ip()), 0);
        let tsock = match UdpSocket::bind(local).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("TFTP: binding a transfer port on {local}: {e}");
                continue;
            }
        };
        if let Err(e) = tsock.connect(peer).await {
            tracing::warn!("TFTP: connecting to {peer}: {e}");
            continue;
        }
        sessions.fetch_add(1, Ordering::Relaxed);
        let (sessions, stats, data, name) = (
            sessions.clone(),
            stats.clone(),
            data.clone(),
            name.to_owned(),
        );
        let neg = negotiate(&req.options, data.len());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = transfer(&tsock, &data, &neg, limits, &stats) => match r {
                    Ok(Done::Complete) => {
                        bump(&stats.completed);
                        tracing::info!(
                            "TFTP: sent {name} ({} bytes, blksize {}) to {peer}",
                            data.len(),
                            neg.blksize
                        );
                    }
                    Ok(Done::ClientEnded(why)) => {
                        tracing::info!("TFTP: {peer} ended the transfer of {name}: {why}");
                    }
                    Err(e) => tracing::warn!("TFTP: sending {name} to {peer}: {e:#}"),
                },
                _ = stop.changed() => {}
            }
            sessions.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

enum Done {
    Complete,
    /// The client sent an ERROR (e.g. after learning the size from the OACK).
    ClientEnded(String),
}

/// Send `data` to the connected peer: the OACK when options were accepted,
/// then each block until it is acknowledged.
async fn transfer(
    sock: &UdpSocket,
    data: &[u8],
    neg: &Negotiated,
    limits: Limits,
    stats: &TftpStats,
) -> Result<Done> {
    let timeout = neg.timeout.unwrap_or(limits.timeout);
    let mut buf = vec![0u8; 1024];
    let mut packet = Vec::with_capacity(4 + neg.blksize);
    if !neg.answered.is_empty() {
        packet.extend_from_slice(&OACK.to_be_bytes());
        for (k, v) in &neg.answered {
            packet.extend_from_slice(k.as_bytes());
            packet.push(0);
            packet.extend_from_slice(v.as_bytes());
            packet.push(0);
        }
        if let Some(d) =
            send_until_acked(sock, &packet, 0, timeout, limits, stats, &mut buf).await?
        {
            return Ok(d);
        }
    }
    // Blocks 1..=n; the last one is shorter than blksize (empty when the
    // size is a multiple of it).
    let blocks = data.len() / neg.blksize + 1;
    for i in 0..blocks {
        let block = ((i + 1) % 65536) as u16;
        let chunk =
            &data[(i * neg.blksize).min(data.len())..((i + 1) * neg.blksize).min(data.len())];
        packet.clear();
        packet.extend_from_slice(&DATA.to_be_bytes());
        packet.extend_from_slice(&block.to_be_bytes());
        packet.extend_from_slice(chunk);
        stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if let Some(d) =
            send_until_acked(sock, &packet, block, timeout, limits, stats, &mut buf).await?
        {
            return Ok(d);
        }
    }
    Ok(Done::Complete)
}

/// Send `packet` and wait for ACK `block`, resending on timeout up to
/// `max_sends` times. Duplicate (older) ACKs are ignored, never answered, so
/// there is no Sorcerer's Apprentice. `Some` when the client ended it.
async fn send_until_acked(
    sock: &UdpSocket,
    packet: &[u8],
    block: u16,
    timeout: Duration,
    limits: Limits,
    stats: &TftpStats,
    buf: &mut [u8],
) -> Result<Option<Done>> {
    for send in 0..limits.max_sends {
        if send > 0 {
            bump(&stats.retransmits);
        }
        sock.send(packet).await.context("sending")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
                Err(_) => break, // resend
                // ICMP port unreachable: the client is gone.
                Ok(Err(e)) => return Err(e).context("receiving an ACK"),
                Ok(Ok(n)) => n,
            };
            let p = &buf[..n];
            if n >= 4 && u16::from_be_bytes([p[0], p[1]]) == ACK {
                if u16::from_be_bytes([p[2], p[3]]) == block {
                    return Ok(None);
                }
                continue; // an old ACK: wait on
            }
            if n >= 4 && u16::from_be_bytes([p[0], p[1]]) == ERROR {
                let msg = String::from_utf8_lossy(&p[4..]);
                return Ok(Some(Done::ClientEnded(
                    msg.trim_end_matches('\0').escape_debug().to_string(),
                )));
            }
            bump(&stats.malformed);
            tracing::warn!("TFTP: malformed packet ({n} bytes) in a transfer dropped");
        }
    }
    bump(&stats.timeouts);
    anyhow::bail!(
        "no ACK for block {block} after {} sends {timeout:?} apart; transfer abandoned",
        limits.max_sends
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = RRQ.to_be_bytes().to_vec();
        for s in [name, mode]
            .into_iter()
            .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
        {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn requests_parse_and_malformed_ones_do_not() {
        assert_eq!(
            parse_request(&rrq(
                "snponly.efi",
                "OCTET",
                &[("BLKSIZE", "1468"), ("tsize", "0")]
            )),
            Some(Request::Read(ReadRequest {
                name: "snponly.efi".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            }))
        );
        let mut wrq = rrq("x", "octet", &[]);
        wrq[1] = 2;
        assert_eq!(parse_request(&wrq), Some(Request::Write));
        let mut unterminated = rrq("x", "octet", &[]);
        unterminated.pop();
        let mut odd = rrq("x", "octet", &[("blksize", "1468")]);
        odd.extend_from_slice(b"tsize\0");
        let mut bad_op = rrq("x", "octet", &[]);
        bad_op[1] = 9;
        for bad in [
            &b""[..],
            b"\x00\x01",
            b"\x00\x01\x00\x00",
            &unterminated,
            &odd,
            &bad_op,
            b"\x00\x01a\x01b\x00octet\x00",
            b"\x00\x01\xff\xfe\x00octet\x00",
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_served_names_are_found() {
        let mut files = Files::new();
        files.insert("undionly.kpxe".into(), Arc::from(&b"x"[..]));
        assert!(lookup(&files, "undionly.kpxe").is_some());
        assert!(lookup(&files, "/undionly.kpxe").is_some());
        for bad in [
            "../undionly.kpxe",
            "//undionly.kpxe",
            "x/undionly.kpxe",
            "/etc/passwd",
            "undionly.kpxe/",
            "UNDIONLY.KPXE",
            "",
        ] {
            assert!(lookup(&files, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn options_are_bounded() {
        let o = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let n = negotiate(
            &[o("blksize", "100000"), o("tsize", "0"), o("timeout", "3")],
            1234,
        );
        assert_eq!(n.blksize, MAX_BLKSIZE);
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            n.answered,
            vec![o("blksize", "65464"), o("tsize", "1234"), o("timeout", "3")]
        );
        let n = negotiate(
            &[o("blksize", "4"), o("timeout", "0"), o("windowsize", "8")],
            1,
        );
        assert_eq!(n.blksize, DEFAULT_BLKSIZE);
        assert!(n.answered.is_empty());
    }
}

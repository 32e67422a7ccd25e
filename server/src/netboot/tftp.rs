//! A read-only TFTP server (RFC 1350, with the blksize, tsize and timeout
//! options of RFC 2347/2348/2349) that serves only the configured iPXE
//! binaries, by name, from memory: no request ever reaches the filesystem,
//! so no path can lead outside them.
//!
//! Sessions are bounded (a maximum count, a retransmit limit and a timeout
//! per block); malformed packets are dropped and counted; every refusal is
//! counted and logged, and the server keeps serving.
//!
//! The listener is a task on the runtime; each transfer is a blocking loop
//! on a pooled thread (`spawn_blocking`), one `send` and one `recv` per
//! block, the ACK wait being the socket's receive timeout: no reactor round
//! trip and no timer per block, which is what makes it as fast as dnsmasq's
//! single-threaded TFTP (`./x bench netboot`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
pub const MIN_BLKSIZE: usize = 8;
pub const MAX_BLKSIZE: usize = 65464;
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
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(
            sock,
            Arc::new(files),
            limits,
            shared.clone(),
            stopped,
        ));
        tracing::info!("TFTP serving the iPXE binaries on udp {addr}");
        Ok(Self {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Arc<TftpStats> {
        self.shared.stats.clone()
    }

    /// Stop listening and end the running transfers (each sees the stop
    /// within [`STOP_POLL`]).
    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let end = tokio::time::Instant::now() + 2 * STOP_POLL + Duration::from_secs(1);
        while self.shared.sessions.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A parsed read request.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub name: String,
    /// Lower-cased.
    pub mode: String,
    /// Options as sent, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// What a packet on the listening port is.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Read(ReadRequest),
    Write,
    /// DATA, ACK, ERROR or OACK: not a request.
    Stray,
}

/// Parse a request on the listening port (untrusted bytes); `None` for
/// anything malformed.
pub fn parse_request(p: &[u8]) -> Option<Request> {
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
pub fn lookup<'a>(files: &'a Files, name: &str) -> Option<(&'a str, &'a Arc<[u8]>)> {
    let name = name.strip_prefix('/').unwrap_or(name);
    files.get_key_value(name).map(|(k, v)| (k.as_str(), v))
}

/// The options this server accepts, as it answers them in the OACK.
#[derive(Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub timeout: Option<Duration>,
    /// The answered options, in the client's order.
    pub answered: Vec<(String, String)>,
}

/// The client's options as this server accepts them for a file of `size` bytes.
pub fn negotiate(options: &[(String, String)], size: usize) -> Negotiated {
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

/// How often a transfer waiting for an ACK looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

async fn serve(
    sock: UdpSocket,
    files: Arc<Files>,
    limits: Limits,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Transfers reply from this address (the wildcard: the route decides).
    let local_ip = sock
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let stats = &shared.stats;
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
        let Some(session) = Session::claim(&shared, limits.max_sessions) else {
            bump(&stats.busy);
            tracing::warn!(
                "TFTP: {peer} asked for {name} while {} transfers run; refused as busy",
                limits.max_sessions
            );
            let _ = sock.send_to(&error_packet(0, "server busy"), peer).await;
            continue;
        };
        bump(&stats.requests);
        let t = Transfer {
            peer,
            name: name.to_owned(),
            neg: negotiate(&req.options, data.len()),
            data: data.clone(),
            limits,
            session,
        };
        // The first packet leaves from here, at once; the rest of the
        // transfer is a plain blocking loop on a pooled thread: one send and
        // one recv per block (the ACK wait is the socket's receive timeout),
        // no reactor round trip and no timer per block.
        match t.start(SocketAddr::new(local_ip, 0)) {
            Ok(running) => {
                tokio::task::spawn_blocking(move || running.run());
            }
            Err(e) => tracing::warn!("TFTP: starting the transfer of {name} to {peer}: {e:#}"),
        }
    }
}

/// State shared by the listener and its transfers.
#[derive(Default)]
struct Shared {
    stats: Arc<TftpStats>,
    /// Running transfers.
    sessions: AtomicUsize,
    /// Set at shutdown; transfers look at it while they wait.
    stopping: AtomicBool,
}

/// One claimed transfer slot, given back on drop (a transfer that panics too).
struct Session(Arc<Shared>);

impl Session {
    fn claim(shared: &Arc<Shared>, max: usize) -> Option<Self> {
        shared
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One read transfer.
struct Transfer {
    peer: SocketAddr,
    name: String,
    neg: Negotiated,
    data: Arc<[u8]>,
    limits: Limits,
    session: Session,
}

/// A transfer whose first packet is sent, to be run to its end.
struct Running {
    t: Transfer,
    sock: std::net::UdpSocket,
    packet: Vec<u8>,
}

impl Transfer {
    /// Packets of the transfer: the OACK when options were accepted, then
    /// blocks 1..=n, the last one shorter than blksize (empty when the size
    /// is a multiple of it).
    fn packets(&self) -> usize {
        usize::from(!self.neg.answered.is_empty()) + self.data.len() / self.neg.blksize + 1
    }

    /// Write packet `i` into `p`; the block number its ACK carries.
    fn fill(&self, i: usize, p: &mut Vec<u8>) -> u16 {
        p.clear();
        let neg = &self.neg;
        if !neg.answered.is_empty() && i == 0 {
            p.extend_from_slice(&OACK.to_be_bytes());
            for (k, v) in &neg.answered {
                p.extend_from_slice(k.as_bytes());
                p.push(0);
                p.extend_from_slice(v.as_bytes());
                p.push(0);
            }
            return 0;
        }
        let n = i + usize::from(neg.answered.is_empty()); // 1-based block
        let len = self.data.len();
        let chunk = &self.data[((n - 1) * neg.blksize).min(len)..(n * neg.blksize).min(len)];
        let block = (n % 65536) as u16;
        p.extend_from_slice(&DATA.to_be_bytes());
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(chunk);
        self.session
            .0
            .stats
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        block
    }

    /// The transfer's own port (its TID), connected to the client so that
    /// only the client's packets reach it, and its first packet sent.
    fn start(self, local: SocketAddr) -> Result<Running> {
        let sock = std::net::UdpSocket::bind(local)
            .with_context(|| format!("binding a transfer port on {local}"))?;
        sock.connect(self.peer)
            .with_context(|| format!("connecting to {}", self.peer))?;
        let mut packet = Vec::with_capacity(4 + self.neg.blksize);
        self.fill(0, &mut packet);
        sock.send(&packet).context("sending")?;
        Ok(Running {
            t: self,
            sock,
            packet,
        })
    }
}

impl Running {
    /// Run the transfer to its end and log how it ended (blocking).
    fn run(mut self) {
        let (peer, name) = (self.t.peer, self.t.name.clone());
        let r = self.send_all();
        let t = &self.t;
        match r {
            Ok(Done::Complete) => {
                bump(&t.session.0.stats.completed);
                tracing::info!(
                    "TFTP: sent {name} ({} bytes, blksize {}) to {peer}",
                    t.data.len(),
                    t.neg.blksize
                );
            }
            Ok(Done::ClientEnded(why)) => {
                tracing::info!("TFTP: {peer} ended the transfer of {name}: {why}");
            }
            Ok(Done::Stopped) => {
                tracing::debug!("TFTP: the transfer of {name} to {peer} ended by shutdown");
            }
            Err(e) => tracing::warn!("TFTP: sending {name} to {peer}: {e:#}"),
        }
    }

    /// Each packet until it is acknowledged (the first one is sent already).
    fn send_all(&mut self) -> Result<Done> {
        let t = &self.t;
        let mut w = AckWait {
            sock: &self.sock,
            timeout: t.neg.timeout.unwrap_or(t.limits.timeout),
            max_sends: t.limits.max_sends,
            shared: &t.session.0,
            buf: [0u8; 1024],
            shortened: false,
        };
        w.reset_wait()?;
        for i in 0..t.packets() {
            // Packet 0 went out with `start`; its block number is 0 (OACK)
            // or 1.
            let (block, sent) = if i == 0 {
                (u16::from(t.neg.answered.is_empty()), true)
            } else {
                (t.fill(i, &mut self.packet), false)
            };
            if let Some(d) = w.send_until_acked(&self.packet, block, sent)? {
                return Ok(d);
            }
        }
        Ok(Done::Complete)
    }
}

enum Done {
    Complete,
    /// The client sent an ERROR (e.g. after learning the size from the OACK).
    ClientEnded(String),
    /// The server is shutting down.
    Stopped,
}

/// Sending a packet and waiting for its ACK on a transfer's socket.
struct AckWait<'a> {
    sock: &'a std::net::UdpSocket,
    timeout: Duration,
    max_sends: u32,
    shared: &'a Shared,
    buf: [u8; 1024],
    /// The receive timeout is a remainder of a wait, not a fresh one.
    shortened: bool,
}

impl AckWait<'_> {
    /// The receive timeout of a fresh wait: the ACK timeout, or less so
    /// that the stop flag is seen soon.
    fn reset_wait(&mut self) -> Result<()> {
        self.shortened = false;
        self.sock
            .set_read_timeout(Some(self.timeout.min(STOP_POLL)))
            .context("setting the receive timeout")
    }

    /// Send `packet` (unless `sent` already) and wait for ACK `block`,
    /// resending on timeout up to `max_sends` sends in all. Duplicate (older) ACKs are ignored, never
    /// answered, so there is no Sorcerer's Apprentice. `Some` when the
    /// client or the server ended it.
    fn send_until_acked(&mut self, packet: &[u8], block: u16, sent: bool) -> Result<Option<Done>> {
        let stats = &self.shared.stats;
        for send in 0..self.max_sends {
            if send > 0 {
                bump(&stats.retransmits);
            }
            if self.shortened {
                self.reset_wait()?;
            }
            if send > 0 || !sent {
                self.sock.send(packet).context("sending")?;
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                let n = match self.sock.recv(&mut self.buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        if self.shared.stopping.load(Ordering::Acquire) {
                            return Ok(Some(Done::Stopped));
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break; // resend
                        }
                        if left < STOP_POLL {
                            self.shortened = true;
                            self.sock
                                .set_read_timeout(Some(left))
                                .context("setting the receive timeout")?;
                        }
                        continue;
                    }
                    // ICMP port unreachable: the client is gone.
                    Err(e) => return Err(e).context("receiving an ACK"),
                };
                let p = &self.buf[..n];
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
            "no ACK for block {block} after {} sends {:?} apart; transfer abandoned",
            self.max_sends,
            self.timeout
        )
    }
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
    fn packets_are_the_oack_then_blocks_ending_short() {
        let shared = Arc::new(Shared::default());
        let transfer = |len: usize, options: &[(String, String)]| Transfer {
            peer: "127.0.0.1:1".parse().unwrap(),
            name: "x".into(),
            neg: negotiate(options, len),
            data: Arc::from(vec![7u8; len]),
            limits: Limits::default(),
            session: Session::claim(&shared, 8).unwrap(),
        };
        let mut p = Vec::new();
        // 1024 bytes in 512-byte blocks: two full blocks and an empty one.
        let t = transfer(1024, &[]);
        assert_eq!(t.packets(), 3);
        let sizes: Vec<(u16, usize)> = (0..3).map(|i| (t.fill(i, &mut p), p.len())).collect();
        assert_eq!(sizes, [(1, 516), (2, 516), (3, 4)]);
        assert_eq!(&p[..4], &[0, 3, 0, 3]);
        // With options: the OACK (ACKed as block 0) first.
        let t = transfer(1000, &[("blksize".into(), "600".into())]);
        assert_eq!(t.packets(), 3);
        assert_eq!(t.fill(0, &mut p), 0);
        assert_eq!(p, b"\x00\x06blksize\x00600\x00");
        assert_eq!((t.fill(1, &mut p), p.len()), (1, 604));
        assert_eq!((t.fill(2, &mut p), p.len()), (2, 404));
        assert_eq!(TftpStats::get(&shared.stats.bytes), 1024 + 1000);
        // The slots: two claimed above, given back on drop.
        assert_eq!(shared.sessions.load(Ordering::Acquire), 2);
        drop(t);
        assert_eq!(shared.sessions.load(Ordering::Acquire), 1);
        assert!(Session::claim(&shared, 1).is_none(), "bounded");
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

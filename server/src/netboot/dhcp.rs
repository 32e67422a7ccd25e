//! The built-in DHCP, packets parsed and built with `dhcproto`.
//!
//! - proxy: answers only PXE and HTTP Boot clients, with boot options and
//!   never an address, on port 67 (DISCOVER -> OFFER) and on the PXE boot
//!   server port 4011 (REQUEST -> ACK); the site's DHCP gives the addresses
//!   (the pixiecore/smee model).
//! - full: an address pool for an isolated provisioning network (leases in
//!   the store), with the same boot options for netboot clients.
//!
//! Answers by client ([`classify`]): BIOS PXE (arch 0) -> the BIOS iPXE over
//! TFTP; x86-64 UEFI PXE (7, 9) -> the EFI iPXE over TFTP; arm64 UEFI PXE
//! (11) -> the arm64 iPXE; UEFI HTTP Boot (16, 19) -> the http URL of the EFI
//! iPXE, echoing `HTTPClient`; iPXE itself (user class `iPXE` or option 175)
//! -> the `boot.ipxe` URL, so there is never a loop.
//!
//! Malformed packets are dropped and counted; answers per MAC are limited.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Endpoints, IpxeFiles, IpxeKind};
use crate::config::{DhcpMode, PoolSettings};
use crate::store::Store;

/// Answers to one MAC within [`RATE_WINDOW`].
pub const RATE_LIMIT: u32 = 10;
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How long an offered address is held before the client's REQUEST.
const OFFER_HOLD_SECS: i64 = 60;

/// What firmware asked, and so what it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// iPXE (user class `iPXE` or option 175): the boot.ipxe URL.
    Ipxe,
    /// PXE firmware: an iPXE binary over TFTP.
    Pxe(IpxeKind),
    /// UEFI HTTP Boot: an iPXE binary by http URL.
    HttpBoot(IpxeKind),
}

/// Why a packet gets no boot options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotBoot {
    /// No `PXEClient`/`HTTPClient` vendor class: not a netboot client.
    NotNetboot,
    /// A netboot client of an architecture landfall has no iPXE for.
    Arch(u16),
}

/// The client architecture of option 93, else of the vendor class
/// (`PXEClient:Arch:00007:...`).
fn arch_of(msg: &Message, class: &str) -> Option<u16> {
    if let Some(DhcpOption::ClientSystemArchitecture(a)) =
        msg.opts().get(OptionCode::ClientSystemArchitecture)
    {
        return Some(u16::from(*a));
    }
    let rest = class.split("Arch:").nth(1)?;
    rest.get(..5)?.parse().ok()
}

fn vendor_class(msg: &Message) -> String {
    match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => String::from_utf8_lossy(c).into_owned(),
        _ => String::new(),
    }
}

fn is_ipxe(msg: &Message) -> bool {
    let user_class = match msg.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => u.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    user_class || msg.opts().get(OptionCode::from(175)).is_some()
}

/// What `msg` is asking for.
pub fn classify(msg: &Message) -> Result<Client, NotBoot> {
    let class = vendor_class(msg);
    let pxe = class.starts_with("PXEClient");
    let http = class.starts_with("HTTPClient");
    if is_ipxe(msg) {
        return Ok(Client::Ipxe);
    }
    if !pxe && !http {
        return Err(NotBoot::NotNetboot);
    }
    let arch = arch_of(msg, &class).unwrap_or(0);
    // RFC 4578 and the IANA registry of processor architecture types.
    match arch {
        0 => Ok(Client::Pxe(IpxeKind::Bios)),
        7 | 9 => Ok(Client::Pxe(IpxeKind::EfiX86_64)),
        11 => Ok(Client::Pxe(IpxeKind::EfiArm64)),
        16 => Ok(Client::HttpBoot(IpxeKind::EfiX86_64)),
        19 => Ok(Client::HttpBoot(IpxeKind::EfiArm64)),
        a => Err(NotBoot::Arch(a)),
    }
}

/// Why a packet is not a request this server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not DHCP (dhcproto cannot decode it), a reply, or no message type.
    NotRequest,
    /// Not an Ethernet client (`hlen` other than 6).
    NoEthernet,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::NotRequest => "malformed packet",
            Malformed::NoEthernet => "packet without an Ethernet address",
        })
    }
}

/// A request off the wire (untrusted bytes): decoded by dhcproto, a
/// BOOTREQUEST with a message type from an Ethernet client, with its MAC.
pub fn parse_request(bytes: &[u8]) -> Result<(Message, String), Malformed> {
    if !option_lengths_ok(bytes) {
        return Err(Malformed::NotRequest);
    }
    let msg = match Message::decode(&mut Decoder::new(bytes)) {
        Ok(m) if m.opcode() == Opcode::BootRequest && m.opts().msg_type().is_some() => m,
        _ => return Err(Malformed::NotRequest),
    };
    let mac = mac_of(&msg).ok_or(Malformed::NoEthernet)?;
    Ok((msg, mac))
}

/// dhcproto 0.15 asserts (debug builds) and subtracts (overflow checks) on
/// the lengths of a few options (`decode_inner`: Rapid Commit, Client Network
/// Interface, Client FQDN, the bulk lease query ones): a packet with such an
/// option of another length is malformed, and dropped before it is decoded.
/// The walk is dhcproto's: after the 240-byte header and cookie, Pad (0) and
/// End (255) without a length, consecutive options of one code concatenated
/// (RFC 3396). Found by `./x fuzz dhcp`.
fn option_lengths_ok(p: &[u8]) -> bool {
    let ok = |(code, len): (u8, usize)| match code {
        80 => len == 0,
        94 => len == 3,
        81 => len >= 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    let mut i = 240;
    let mut last: Option<(u8, usize)> = None;
    while let Some(&code) = p.get(i) {
        if code == 0 || code == 255 {
            if !last.take().is_none_or(ok) {
                return false;
            }
            if code == 255 {
                return true;
            }
            i += 1;
            continue;
        }
        let Some(len) = p.get(i + 1).map(|l| usize::from(*l)) else {
            break;
        };
        if i + 2 + len > p.len() {
            break;
        }
        last = match last {
            Some((c, l)) if c == code => Some((c, l + len)),
            Some(prev) if !ok(prev) => return false,
            _ => Some((code, len)),
        };
        i += 2 + len;
    }
    last.is_none_or(ok)
}

/// The MAC of a message, `aa:bb:...`; `None` unless Ethernet (6 bytes).
/// `hlen` first: dhcproto's `chaddr()` slices 16 bytes by it (a packet with
/// `hlen` over 16 would panic, found by `./x fuzz dhcp`).
fn mac_of(msg: &Message) -> Option<String> {
    if msg.hlen() != 6 {
        return None;
    }
    let c = msg.chaddr();
    (c.len() >= 6).then(|| {
        c[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// The boot options of an answer: file name (or URL) and the vendor class echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub file: String,
    pub class: &'static str,
    /// PXE vendor options (43): boot server discovery off, use the file.
    pub pxe_vendor: bool,
}

/// The boot file for `client`; `None` when its iPXE is not configured.
pub fn boot_options(
    client: Client,
    mac: &str,
    files: &IpxeFiles,
    ep: &Endpoints,
) -> Option<BootOptions> {
    Some(match client {
        Client::Ipxe => BootOptions {
            file: ep.boot_url(mac),
            class: "PXEClient",
            pxe_vendor: false,
        },
        Client::Pxe(kind) => BootOptions {
            file: files.name(kind)?.to_owned(),
            class: "PXEClient",
            // BIOS PXE ROMs take the file from the offer when told so; UEFI
            // firmware (EDK2) asks the boot server port (4011) for it instead
            // (a "BINL" offer), as some ignore the discovery control.
            pxe_vendor: kind == IpxeKind::Bios,
        },
        Client::HttpBoot(kind) => BootOptions {
            file: ep.binary_url(files.name(kind)?),
            class: "HTTPClient",
            pxe_vendor: false,
        },
    })
}

/// Counters, for metrics, logs and tests.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    /// Not DHCP, or no message type, or not Ethernet.
    pub malformed: AtomicU64,
    /// Dropped over the per-MAC limit.
    pub rate_limited: AtomicU64,
    /// Netboot clients of an architecture without an iPXE configured.
    pub unsupported: AtomicU64,
    /// Full mode: no free address.
    pub pool_exhausted: AtomicU64,
    /// Full mode: REQUESTs for an address not held for that MAC.
    pub naks: AtomicU64,
}

impl DhcpStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Answers per MAC in a fixed window.
struct RateLimiter {
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, mac: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            seen.retain(|_, (t, _)| now.duration_since(*t) < RATE_WINDOW);
        }
        let e = seen.entry(mac.to_owned()).or_insert((now, 0));
        if now.duration_since(e.0) >= RATE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= RATE_LIMIT
    }
}

/// What the DHCP server needs.
pub struct DhcpOptions {
    pub mode: DhcpMode,
    pub interface: String,
    pub endpoints: Endpoints,
    pub files: Arc<IpxeFiles>,
    pub pool: Option<PoolSettings>,
    pub dhcp_port: u16,
    pub pxe_port: u16,
    pub store: Store,
}

struct Shared {
    o: DhcpOptions,
    stats: Arc<DhcpStats>,
    limiter: RateLimiter,
}

/// A running DHCP server.
pub struct DhcpServer {
    stats: Arc<DhcpStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A UDP socket on `0.0.0.0:port` bound to `iface`, broadcast allowed.
fn bind_udp(iface: &str, port: u16) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    // A burst of DISCOVERs (a rack powering on) queues here, not dropped
    // (the kernel caps it at net.core.rmem_max).
    s.set_recv_buffer_size(1 << 20)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| {
        format!("binding to interface {iface} (SO_BINDTODEVICE): does [netboot] interface exist? (before Linux 5.7 this needs CAP_NET_RAW)")
    })?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    s.bind(&addr.into()).with_context(|| {
        format!("binding UDP {addr} on {iface} (a port under 1024 needs CAP_NET_BIND_SERVICE; is another DHCP server running there?)")
    })?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into())?)
}

impl DhcpServer {
    pub async fn start(o: DhcpOptions) -> Result<Self> {
        let main = bind_udp(&o.interface, o.dhcp_port)?;
        let pxe = if o.mode == DhcpMode::Proxy {
            Some(bind_udp(&o.interface, o.pxe_port)?)
        } else {
            None
        };
        tracing::info!(
            "DHCP ({}) on {} udp {}{}, boot URL base {}",
            o.mode,
            o.interface,
            o.dhcp_port,
            if pxe.is_some() {
                format!(" and {}", o.pxe_port)
            } else {
                String::new()
            },
            o.endpoints.http_base
        );
        let stats = Arc::new(DhcpStats::default());
        let shared = Arc::new(Shared {
            o,
            stats: stats.clone(),
            limiter: RateLimiter::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(run(
            main,
            Port::Dhcp,
            shared.clone(),
            stopped.clone(),
        ))];
        if let Some(p) = pxe {
            tasks.push(tokio::spawn(run(p, Port::Pxe, shared, stopped)));
        }
        Ok(Self { stats, stop, tasks })
    }

    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// 67: DISCOVER/REQUEST from clients without an address.
    Dhcp,
    /// 4011: PXE boot server REQUESTs (unicast, the client has an address).
    Pxe,
}

async fn run(sock: UdpSocket, port: Port, s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("DHCP: receiving: {e}");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        bump(&s.stats.received);
        let (msg, mac) = match parse_request(&buf[..len]) {
            Ok(x) => x,
            Err(why) => {
                bump(&s.stats.malformed);
                tracing::warn!("DHCP: {why} ({len} bytes) from {peer} dropped");
                continue;
            }
        };
        // Full mode reads and writes leases in the store: off the runtime.
        // Proxy mode touches nothing but memory: answered here.
        let reply = if s.o.mode == DhcpMode::Full {
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || answer(&s2, port, &msg, &mac))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("answering panicked: {e}")))
        } else {
            answer(&s, port, &msg, &mac)
        };
        let (reply, dest) = match reply {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("DHCP: answering {peer}: {e:#}");
                continue;
            }
        };
        let dest = match (port, dest) {
            (Port::Pxe, _) => peer,
            (Port::Dhcp, Dest::Relay(g)) => SocketAddr::new(g.into(), s.o.dhcp_port),
            (Port::Dhcp, Dest::Broadcast) => {
                SocketAddr::new(Ipv4Addr::BROADCAST.into(), s.o.dhcp_port.wrapping_add(1))
            }
        };
        let mut out = Vec::with_capacity(512);
        if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
            tracing::warn!("DHCP: encoding the answer: {e}");
            continue;
        }
        match sock.send_to(&out, dest).await {
            Ok(_) => bump(&s.stats.answered),
            Err(e) => tracing::warn!("DHCP: sending to {dest}: {e}"),
        }
    }
}

enum Dest {
    Broadcast,
    Relay(Ipv4Addr),
}

/// The answer to one request, if any (blocking: full mode uses the store).
fn answer(s: &Shared, port: Port, msg: &Message, mac: &str) -> Result<Option<(Message, Dest)>> {
    let o = &s.o;
    let ty = msg.opts().msg_type().unwrap_or(MessageType::Unknown(0));
    let boot = match classify(msg) {
        Ok(c) => match boot_options(c, mac, &o.files, &o.endpoints) {
            Some(b) => Some((c, b)),
            None => {
                bump(&s.stats.unsupported);
                tracing::warn!(
                    "DHCP: {mac} is {c:?} and no iPXE for it is configured in [netboot]"
                );
                None
            }
        },
        Err(NotBoot::NotNetboot) => None,
        Err(NotBoot::Arch(a)) => {
            bump(&s.stats.unsupported);
            tracing::warn!("DHCP: {mac} is a netboot client of architecture {a}, which landfall has no iPXE for");
            None
        }
    };
    // Proxy mode answers netboot clients only.
    if o.mode == DhcpMode::Proxy && boot.is_none() {
        return Ok(None);
    }
    let ours = o.endpoints.server_address;
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    };
    let (reply_ty, yiaddr) = match (o.mode, port, ty) {
        (DhcpMode::Proxy, Port::Dhcp, MessageType::Discover) => (MessageType::Offer, None),
        // A REQUEST to the proxy itself (some ROMs) or to the boot server port.
        (DhcpMode::Proxy, Port::Dhcp, MessageType::Request) if server_id == Some(ours) => {
            (MessageType::Ack, None)
        }
        (DhcpMode::Proxy, Port::Pxe, MessageType::Request | MessageType::Inform) => {
            (MessageType::Ack, None)
        }
        (DhcpMode::Full, _, MessageType::Discover) => {
            let Some(ip) = full_offer(s, mac)? else {
                return Ok(None);
            };
            (MessageType::Offer, Some(ip))
        }
        (DhcpMode::Full, _, MessageType::Request) => {
            if server_id.is_some_and(|id| id != ours) {
                // It chose another server: our offer is free again.
                let m = mac.to_owned();
                o.store.write_blocking(move |tx| tx.lease_release(&m))?;
                return Ok(None);
            }
            let wanted = match msg.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(a)) => *a,
                _ => msg.ciaddr(),
            };
            let pool = o.pool.as_ref().context("full mode without a pool")?;
            let until = crate::store::now() + pool.lease_time.as_secs() as i64;
            let m = mac.to_owned();
            if o.store
                .write_blocking(move |tx| tx.lease_ack(&m, wanted, until))?
            {
                (MessageType::Ack, Some(wanted))
            } else {
                bump(&s.stats.naks);
                tracing::info!("DHCP: {mac} asked for {wanted}, which is not its lease: NAK");
                (MessageType::Nak, None)
            }
        }
        (DhcpMode::Full, _, MessageType::Release | MessageType::Decline) => {
            let m = mac.to_owned();
            o.store.write_blocking(move |tx| tx.lease_release(&m))?;
            return Ok(None);
        }
        _ => return Ok(None),
    };
    if !s.limiter.allow(mac, Instant::now()) {
        bump(&s.stats.rate_limited);
        tracing::warn!("DHCP: {mac} over {RATE_LIMIT} answers in {RATE_WINDOW:?}: dropped");
        return Ok(None);
    }
    let lease = match yiaddr {
        Some(ip) => Some((ip, o.pool.as_ref().context("full mode without a pool")?)),
        None => None,
    };
    let r = build_reply(
        msg,
        reply_ty,
        ours,
        boot.as_ref().map(|(_, b)| b),
        lease,
        port == Port::Pxe,
    );
    if let Some((client, b)) = &boot {
        if reply_ty != MessageType::Nak {
            tracing::info!("DHCP: {reply_ty:?} to {mac} ({client:?}): {}", b.file);
        }
    } else if let Some(ip) = yiaddr {
        tracing::info!("DHCP: {reply_ty:?} {ip} to {mac}");
    }
    Ok(Some((r, dest_of(msg))))
}

fn dest_of(msg: &Message) -> Dest {
    if msg.giaddr().is_unspecified() {
        Dest::Broadcast
    } else {
        Dest::Relay(msg.giaddr())
    }
}

/// The answer of type `ty` to `msg` from this server (`ours`): the boot
/// options of `boot`, and in full mode the `lease` (address and pool) it
/// offers or acknowledges; `boot_port` for an ACK on the PXE boot server port.
pub fn build_reply(
    msg: &Message,
    ty: MessageType,
    ours: Ipv4Addr,
    boot: Option<&BootOptions>,
    lease: Option<(Ipv4Addr, &PoolSettings)>,
    boot_port: bool,
) -> Message {
    let mut r = Message::default();
    r.set_opcode(Opcode::BootReply)
        .set_xid(msg.xid())
        .set_flags(msg.flags())
        .set_giaddr(msg.giaddr())
        .set_chaddr(msg.chaddr())
        .set_siaddr(ours);
    if ty == MessageType::Ack && boot_port {
        r.set_ciaddr(msg.ciaddr());
    }
    r.opts_mut().insert(DhcpOption::MessageType(ty));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(ours));
    if ty == MessageType::Nak {
        r.set_siaddr(Ipv4Addr::UNSPECIFIED);
        return r;
    }
    if let Some((ip, pool)) = lease {
        r.set_yiaddr(ip);
        let mask = u32::MAX << (32 - u32::from(pool.prefix_len));
        r.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
        if let Some(gw) = pool.router {
            r.opts_mut().insert(DhcpOption::Router(vec![gw]));
        }
        if !pool.dns.is_empty() {
            r.opts_mut()
                .insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        let secs = u32::try_from(pool.lease_time.as_secs()).unwrap_or(u32::MAX);
        r.opts_mut().insert(DhcpOption::AddressLeaseTime(secs));
    }
    if let Some(b) = boot {
        r.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b.class.as_bytes().to_vec()));
        if let Some(guid) = msg.opts().get(OptionCode::ClientMachineIdentifier) {
            r.opts_mut().insert(guid.clone());
        }
        if b.pxe_vendor {
            // PXE_DISCOVERY_CONTROL (6) = 8: no boot server discovery, use
            // the boot file of this answer.
            r.opts_mut()
                .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            r.set_sname_str(ours.to_string());
        }
        // The `file` field holds 127 bytes; option 67 carries any length.
        if b.file.len() < 128 {
            r.set_fname_str(&b.file);
        }
        r.opts_mut()
            .insert(DhcpOption::BootfileName(b.file.as_bytes().to_vec()));
    }
    r
}

fn full_offer(s: &Shared, mac: &str) -> Result<Option<Ipv4Addr>> {
    let pool = s.o.pool.as_ref().context("full mode without a pool")?;
    let now = crate::store::now();
    let (m, range) = (mac.to_owned(), (pool.start, pool.end));
    let ip =
        s.o.store
            .write_blocking(move |tx| tx.lease_offer(&m, range, now, now + OFFER_HOLD_SECS))?;
    if ip.is_none() {
        bump(&s.stats.pool_exhausted);
        tracing::warn!(
            "DHCP: no free address in {}..{} for {mac}; widen [netboot.pool] or shorten lease_time",
            pool.start,
            pool.end
        );
    }
    Ok(ip)
}

/// A DISCOVER as firmware sends it, for tests and the benchmark.
pub fn discover(mac: [u8; 6], class: Option<&str>, arch: Option<u16>, ipxe: bool) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]))
        .set_flags(v4::Flags::default().set_broadcast())
        .set_chaddr(&mac);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    if let Some(c) = class {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(c.as_bytes().to_vec()));
    }
    if let Some(a) = arch {
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(a.into()));
    }
    if ipxe {
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::netboot::test_files as files;

    fn ep() -> Endpoints {
        Endpoints::new(None, "10.77.0.1".parse().unwrap(), 8080)
    }

    /// Encode and decode, as on the wire.
    fn wire(m: &Message) -> Message {
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        Message::decode(&mut Decoder::new(&b)).unwrap()
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn each_client_gets_its_boot_file() {
        let f = files();
        // (vendor class, option 93, iPXE user class, the boot file answered)
        type Case<'a> = (Option<&'a str>, Option<u16>, bool, Option<&'a str>);
        let cases: &[Case] = &[
            (Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), false, Some("undionly.kpxe")),
            (Some("PXEClient:Arch:00007:UNDI:003000"), Some(7), false, Some("snponly.efi")),
            (Some("PXEClient:Arch:00009:UNDI:003000"), Some(9), false, Some("snponly.efi")),
            // The arch from the class when option 93 is missing.
            (Some("PXEClient:Arch:00007:UNDI:003000"), None, false, Some("snponly.efi")),
            (
                Some("HTTPClient:Arch:00016:UNDI:003001"),
                Some(16),
                false,
                Some("http://10.77.0.1:8080/netboot/snponly.efi"),
            ),
            (
                Some("PXEClient:Arch:00007:UNDI:003000"),
                Some(7),
                true,
                Some("http://10.77.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56&arch=${buildarch}&platform=${platform}"),
            ),
            // arm64 PXE: no arm64 iPXE configured here.
            (Some("PXEClient:Arch:00011:UNDI:003000"), Some(11), false, None),
            (None, None, false, None),
            (Some("MSFT 5.0"), None, false, None),
        ];
        for (class, arch, ipxe, want) in cases {
            let m = wire(&discover(MAC, *class, *arch, *ipxe));
            let got = classify(&m)
                .ok()
                .and_then(|c| boot_options(c, "52:54:00:12:34:56", &f, &ep()))
                .map(|b| b.file);
            assert_eq!(got.as_deref(), *want, "{class:?} {arch:?} ipxe={ipxe}");
        }
        let m = wire(&discover(
            MAC,
            Some("HTTPClient:Arch:00016"),
            Some(16),
            false,
        ));
        let b = boot_options(classify(&m).unwrap(), "x", &f, &ep()).unwrap();
        assert_eq!(b.class, "HTTPClient");
        assert!(!b.pxe_vendor);
        let m = wire(&discover(MAC, Some("PXEClient:Arch:00006"), Some(6), false));
        assert_eq!(classify(&m), Err(NotBoot::Arch(6)));
        // iPXE with option 175 and no user class.
        let mut m = discover(MAC, Some("PXEClient:Arch:00000"), Some(0), false);
        m.opts_mut()
            .insert(DhcpOption::Unknown(v4::UnknownOption::new(
                175.into(),
                vec![1, 1, 1],
            )));
        assert_eq!(classify(&wire(&m)), Ok(Client::Ipxe));
    }

    #[test]
    fn packets_that_would_make_dhcproto_panic_are_malformed() {
        let mut good = Vec::new();
        discover(MAC, Some("PXEClient:Arch:00007"), Some(7), false)
            .encode(&mut Encoder::new(&mut good))
            .unwrap();
        assert!(parse_request(&good).is_ok());
        // hlen over 16: dhcproto's chaddr() would slice out of bounds.
        let mut p = good.clone();
        p[2] = 200;
        assert_eq!(parse_request(&p).err(), Some(Malformed::NoEthernet));
        // Options whose length dhcproto asserts on, alone and concatenated.
        let end = good.len() - 1; // before End
        for (opt, ok) in [
            (&[80, 1, 0][..], false),
            (&[80, 0], true),
            (&[94, 2, 1, 2], false),
            (&[94, 3, 1, 2, 3], true),
            (&[81, 1, 0], false),
            (&[81, 2, 0, 0, 81, 1, 0], true),
            (&[151, 0], false),
            (&[152, 3, 0, 0, 0], false),
            (&[155, 4, 0, 0, 0, 0], true),
        ] {
            let mut p = good[..end].to_vec();
            p.extend_from_slice(opt);
            p.push(255);
            assert_eq!(parse_request(&p).is_ok(), ok, "{opt:?}");
            // Without the End option, too.
            p.pop();
            assert_eq!(parse_request(&p).is_ok(), ok, "{opt:?} unterminated");
        }
    }

    #[test]
    fn rate_limit_is_per_mac_and_resets() {
        let r = RateLimiter::new();
        let t = Instant::now();
        for _ in 0..RATE_LIMIT {
            assert!(r.allow("a", t));
        }
        assert!(!r.allow("a", t));
        assert!(r.allow("b", t));
        assert!(r.allow("a", t + RATE_WINDOW));
    }
}

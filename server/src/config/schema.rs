//! `landfall.toml` as written by the operator: the serde types, strict
//! (`deny_unknown_fields`). What the values may be is `validate`'s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use landfall_proto::{LuksUnlock, SecretFile, WipePolicy};
use serde::Deserialize;

/// Default lifetime of a boot token, in seconds.
pub const DEFAULT_BOOT_TOKEN_TTL: u64 = 3600;

/// Default seconds since an install attempt's agent was last heard from
/// during which the attempt counts as alive (a second hello for its MAC is
/// an alarm, not a reboot).
pub const DEFAULT_AGENT_ALIVE_SECS: u64 = 60;

/// Default seconds an agent token may go unused before it expires.
pub const DEFAULT_AGENT_TOKEN_IDLE_SECS: u64 = 86_400;

/// The file as written by the operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub enroll: EnrollSection,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
    /// Vault/OpenBao as trusted orchestrator (see docs/security.md).
    #[serde(default)]
    pub vault: Option<VaultSection>,
    /// `[netboot]`: the built-in DHCP (proxy or full) and TFTP for firmware
    /// that speaks plain PXE or UEFI HTTP Boot (docs/operator-guide.md).
    #[serde(default)]
    pub netboot: NetbootSection,
    /// `[metrics]`: who may read `/metrics` (docs/operator-guide.md).
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[[webhooks]]`: who is told of machine state changes.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// `[dashboard]`: the web dashboard's users and sessions.
    #[serde(default)]
    pub dashboard: super::dashboard::DashboardSection,
}

/// `[metrics]`: the Prometheus endpoint `GET /metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// File holding a bearer token `/metrics` requires (relative to the
    /// config file); unset: `/metrics` is open.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// With `server.listen_tls`: serve `/metrics` on the plain-HTTP listener
    /// too (a Prometheus on this host that cannot trust the generated CA).
    #[serde(default)]
    pub plain_http: bool,
}

/// `[[webhooks]]`: a URL told of machines entering some states.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://...` (or `http://...`) receiving a JSON POST per change.
    pub url: String,
    /// Machine states to tell about. Default: failed, compromised,
    /// installed, ready, degraded, identity_held.
    #[serde(default)]
    pub states: Option<Vec<String>>,
    /// Roles to tell about; empty or unset: every machine.
    #[serde(default)]
    pub roles: Vec<String>,
    /// File holding the HMAC-SHA256 key of the signature header (relative
    /// to the config file).
    pub secret_file: PathBuf,
    /// PEM CA to trust for an https `url` instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[vault]`: where the server mints wrapped AppRole `secret_id`s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSection {
    /// `https://vault.lan:8200` (plain `http://` only with `insecure_http = true`).
    pub address: String,
    /// The address the machines use, when it differs from the server's view
    /// (another network segment, a load balancer, 10.0.2.2 from a QEMU guest).
    /// Default: `address`. The same scheme rules apply.
    #[serde(default)]
    pub agent_address: Option<String>,
    /// PEM file of the CA that signs Vault's certificate; the only root trusted
    /// (by the server, and sent to the agent). Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File holding the server's own Vault token (it needs `update` on
    /// `auth/APPROLE_MOUNT/role/*/secret-id`). Relative to the config file;
    /// read at every mint, so a token agent may rotate it.
    pub token_file: PathBuf,
    /// Allow an `http://` address (development only: tokens travel in clear).
    #[serde(default)]
    pub insecure_http: bool,
    /// Lifetime of the wrap token around each `secret_id`, e.g. "120s".
    #[serde(default = "default_wrap_ttl")]
    pub wrap_ttl: String,
    /// Mount of the KV v2 engine holding the secrets.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// Mount of the AppRole auth method.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
}

fn default_wrap_ttl() -> String {
    "120s".to_owned()
}

fn default_kv_mount() -> String {
    "landfall".to_owned()
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

/// `[roles.NAME.vault]`: the AppRole this role's machines log in with and
/// the KV v2 paths (under `vault.kv_mount`) they read. `{hostname}` and
/// `{role}` are replaced per machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleVault {
    pub approle: String,
    #[serde(default)]
    pub reads: Vec<String>,
}

/// `[[roles.NAME.secret_files]]`: a file written into the target from a
/// secret: the wire's [`SecretFile`] (its defaults: mode 0600, owner and
/// group root), read strictly (an unknown key is refused). `from` is
/// `kv:PATH#KEY`, PATH one of the role's `vault.reads` (as written), or
/// `bundle:PATH`, a file in the installer's age bundle
/// (`/etc/landfall/secrets.age`; docs/security.md). One kind per role.
#[derive(Debug, Clone)]
pub struct SecretFileConfig(pub SecretFile);

impl std::ops::Deref for SecretFileConfig {
    type Target = SecretFile;
    fn deref(&self) -> &SecretFile {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretFileConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            path: String,
            from: String,
            mode: Option<String>,
            owner: Option<String>,
            group: Option<String>,
        }
        let s = Strict::deserialize(d)?;
        let mut f = SecretFile::new(s.path, s.from);
        f.mode = s.mode.unwrap_or(f.mode);
        f.owner = s.owner.unwrap_or(f.owner);
        f.group = s.group.unwrap_or(f.group);
        Ok(Self(f))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Base URL machines use to reach this server, e.g. "http://10.0.0.1:8080".
    /// Default: `http://` + the Host header of the boot.ipxe request.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Directory holding vmlinuz, initrd, ...; relative to the config file.
    #[serde(default)]
    pub artifacts: Option<PathBuf>,
    /// Directory of disko layouts (`NAME.nix` or `NAME.json`); relative to the
    /// config file. Default: `layouts` beside the config file.
    #[serde(default)]
    pub layouts: Option<PathBuf>,
    /// Extra kernel arguments appended to the install kernel line.
    #[serde(default)]
    pub kernel_args: String,
    /// Lifetime of a boot token in seconds.
    #[serde(default = "default_ttl")]
    pub boot_token_ttl: u64,
    /// Seconds since its agent was last heard from (hello, events, wait)
    /// that an installing attempt counts as alive: a hello for the same MAC
    /// with a fresh boot token within it is a security alarm; after it, a
    /// reboot that starts a new attempt (docs/security.md).
    #[serde(default = "default_alive")]
    pub agent_alive_secs: u64,
    /// Seconds an agent token may go unused (no hello, events or wait of
    /// its attempt) before it expires; the agent then says hello again.
    #[serde(default = "default_idle")]
    pub agent_token_idle_secs: u64,
    /// Plain-HTTP address, e.g. "0.0.0.0:8080" (`serve --listen` wins). With
    /// TLS on it serves only what iPXE fetches: boot scripts and artifacts.
    #[serde(default)]
    pub listen: Option<String>,
    /// PostgreSQL URL (`postgres://user:password@host:port/db`) of the state
    /// several servers share; unset: embedded SQLite in the data directory.
    /// `serve --database` / `LANDFALL_DATABASE` win.
    #[serde(default)]
    pub database: Option<String>,
    /// HTTPS address, e.g. "0.0.0.0:8443": setting it turns TLS on (the
    /// agent and admin API are then served there only).
    #[serde(default)]
    pub listen_tls: Option<String>,
    /// The operator's PEM certificate chain (leaf first); with `tls_key`.
    /// Unset: a CA and a certificate are made in `DATA/tls/` at first start.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Extra names (DNS names or IP addresses) of the generated certificate,
    /// besides the hosts of `public_url` and `public_tls_url`.
    #[serde(default)]
    pub tls_sans: Vec<String>,
    /// The https base URL agents use, e.g. "https://10.0.0.1:8443". Default:
    /// `https://` + the host machines boot from + `:` + the port of `listen_tls`.
    #[serde(default)]
    pub public_tls_url: Option<String>,
    /// Most `discovered` machines kept (unknown MACs held); past it the
    /// least recently seen are forgotten.
    #[serde(default = "default_max_discovered")]
    pub max_discovered: u64,
    /// Most new `discovered` machines recorded per minute; more unknown MACs
    /// in that minute are held without being recorded.
    #[serde(default = "default_max_discovered_per_minute")]
    pub max_discovered_per_minute: u64,
    /// Most events stored for one install attempt.
    #[serde(default = "default_max_events_per_attempt")]
    pub max_events_per_attempt: u64,
    /// Most bytes of events (as stored, JSON) for one install attempt.
    #[serde(default = "default_max_event_bytes_per_attempt")]
    pub max_event_bytes_per_attempt: u64,
    /// How long the events of an attempt are kept once it is over (not its
    /// machine's current attempt, and its agent silent this long): a
    /// duration such as "30d", "12h", "90d" (the default), or "forever".
    #[serde(default)]
    pub event_retention: Option<String>,
    /// `[server.http]`: connection timeouts and caps, sendfile.
    #[serde(default)]
    pub http: HttpSection,
}

/// `[server.http]`: how the listeners treat connections (docs/operator-guide.md,
/// "Connections"). Every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Seconds a new connection has to send its first request's head (on the
    /// HTTPS listener: after the handshake).
    pub header_timeout_secs: u64,
    /// Seconds a kept-alive connection waits for its next request's head
    /// after a response; a connection that sends nothing more is closed then.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to finish its TLS handshake.
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a response may wait on a client that reads nothing.
    pub send_timeout_secs: u64,
    /// Most open connections, both listeners together. Unset: what the
    /// descriptor limit allows (RLIMIT_NOFILE); more than that is lowered to it.
    pub max_connections: Option<u64>,
    /// Seconds a shutdown waits for requests in flight before dropping them.
    pub shutdown_grace_secs: u64,
    /// Artifacts on the plain-HTTP listener by sendfile(2) (zero-copy); off:
    /// read and written like any response.
    pub sendfile: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = HttpSettings::default();
        Self {
            header_timeout_secs: d.header_timeout.as_secs(),
            idle_timeout_secs: d.idle_timeout.as_secs(),
            tls_handshake_timeout_secs: d.tls_handshake_timeout.as_secs(),
            send_timeout_secs: d.send_timeout.as_secs(),
            max_connections: None,
            shutdown_grace_secs: d.shutdown_grace.as_secs(),
            sendfile: d.sendfile,
        }
    }
}

/// `[server.http]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: Option<u64>,
    pub shutdown_grace: Duration,
    pub sendfile: bool,
}

impl Default for HttpSettings {
    /// A slow iPXE on a busy LAN sends its request within a second; iPXE
    /// itself drops a pooled connection after 10 s idle.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_connections: None,
            shutdown_grace: Duration::from_secs(10),
            sendfile: true,
        }
    }
}

fn default_max_discovered() -> u64 {
    Limits::default().max_discovered
}
fn default_max_discovered_per_minute() -> u64 {
    Limits::default().max_discovered_per_minute
}
fn default_max_events_per_attempt() -> u64 {
    Limits::default().max_events_per_attempt
}
fn default_max_event_bytes_per_attempt() -> u64 {
    Limits::default().max_event_bytes_per_attempt
}

/// The caps on what clients can make the server store (`[server] max_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_discovered: u64,
    pub max_discovered_per_minute: u64,
    pub max_events_per_attempt: u64,
    pub max_event_bytes_per_attempt: u64,
}

impl Default for Limits {
    /// Far above a real install (a few thousand events, a few MB) and a
    /// real LAN's unknown machines; low enough that a flood is a few MB.
    fn default() -> Self {
        Self {
            max_discovered: 1000,
            max_discovered_per_minute: 60,
            max_events_per_attempt: 100_000,
            max_event_bytes_per_attempt: 64 * 1024 * 1024,
        }
    }
}

fn default_ttl() -> u64 {
    DEFAULT_BOOT_TOKEN_TTL
}

fn default_alive() -> u64 {
    DEFAULT_AGENT_ALIVE_SECS
}

fn default_idle() -> u64 {
    DEFAULT_AGENT_TOKEN_IDLE_SECS
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            public_url: None,
            artifacts: None,
            layouts: None,
            kernel_args: String::new(),
            boot_token_ttl: DEFAULT_BOOT_TOKEN_TTL,
            agent_alive_secs: DEFAULT_AGENT_ALIVE_SECS,
            agent_token_idle_secs: DEFAULT_AGENT_TOKEN_IDLE_SECS,
            listen: None,
            database: None,
            listen_tls: None,
            tls_cert: None,
            tls_key: None,
            tls_sans: Vec::new(),
            public_tls_url: None,
            max_discovered: Limits::default().max_discovered,
            max_discovered_per_minute: Limits::default().max_discovered_per_minute,
            max_events_per_attempt: Limits::default().max_events_per_attempt,
            max_event_bytes_per_attempt: Limits::default().max_event_bytes_per_attempt,
            event_retention: None,
            http: HttpSection::default(),
        }
    }
}

/// What happens to a MAC that is not listed in `[[machines]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Record it as discovered and hold it until an operator lists it.
    #[default]
    Hold,
    /// Give it `enroll.role` and a hostname `ROLE-XXXXXX` and install it.
    Install,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollSection {
    #[serde(default)]
    pub unknown: Unknown,
    /// Role of auto-enrolled machines; required when `unknown = "install"`.
    #[serde(default)]
    pub role: Option<String>,
}

/// Wipe policy as written in the config (strict: no unknown values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wipe {
    #[default]
    Never,
    Always,
}

impl From<Wipe> for WipePolicy {
    fn from(w: Wipe) -> Self {
        match w {
            Wipe::Never => WipePolicy::Never,
            Wipe::Always => WipePolicy::Always,
        }
    }
}

/// `[roles.NAME] luks_unlock`: the values an operator may write (the wire
/// type also has `Unknown`, for readers older than the writer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LuksUnlockConfig {
    #[default]
    InitrdKey,
    Prompt,
    Tpm2,
}

impl From<LuksUnlockConfig> for LuksUnlock {
    fn from(u: LuksUnlockConfig) -> Self {
        match u {
            LuksUnlockConfig::InitrdKey => LuksUnlock::InitrdKey,
            LuksUnlockConfig::Prompt => LuksUnlock::Prompt,
            LuksUnlockConfig::Tpm2 => LuksUnlock::Tpm2,
        }
    }
}

/// Declares a table that carries the layered keys, the ones a `[[machines]]`
/// entry sets over its `[roles.NAME]` (one merge, `resolve.rs` `Layer`):
/// `layout`, `disks`, `flake`, `system`, `cache`, declared once here for both
/// tables. A macro rather than `#[serde(flatten)]`: serde cannot combine
/// flatten with `deny_unknown_fields`, which refuses a misspelt key.
macro_rules! with_layer_keys {
    ($(#[$attr:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$attr])*
        pub struct $name {
            $($fields)*
            /// Name of the disko layout in `server.layouts` (a machine's wins).
            #[serde(default)]
            pub layout: Option<String>,
            /// Layout disk name -> device (`/dev/disk/by-id/...`) or "auto"; a
            /// machine's entries override its role's entry by entry.
            #[serde(default)]
            pub disks: BTreeMap<String, String>,
            /// What `nixos-install` installs: a flake `REF#ATTR` (`{hostname}`
            /// and `{role}` are replaced per machine). Beside `system`, the
            /// source written into the target's generated `/etc/nixos/flake.nix`.
            /// A machine's `flake`, `system` and `cache` override its role's
            /// key by key (e.g. its own `system` closure from the role's `cache`).
            #[serde(default)]
            pub flake: Option<String>,
            /// A prebuilt system closure (`/nix/store/...-nixos-system-...`),
            /// copied from `cache`; needs `cache`.
            #[serde(default)]
            pub system: Option<String>,
            /// The binary cache holding `system`, e.g. `http://cache.lan:5000`.
            #[serde(default)]
            pub cache: Option<String>,
        }
    };
}

with_layer_keys! {
    /// `[roles.NAME]`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RoleConfig {
        #[serde(default)]
        pub description: String,
        #[serde(default)]
        pub wipe: Wipe,
        /// How the installed system opens the layout's LUKS volumes at boot:
        /// `"initrd_key"` (default, unattended), `"prompt"` or `"tpm2"` (docs/disks.md).
        #[serde(default)]
        pub luks_unlock: LuksUnlockConfig,
        /// With `luks_unlock = "tpm2"`: the PCRs the key is sealed to (default `[7]`).
        #[serde(default)]
        pub tpm2_pcrs: Option<Vec<i64>>,
        /// The AppRole and KV paths of this role (needs `[vault]`).
        #[serde(default)]
        pub vault: Option<RoleVault>,
        #[serde(default)]
        pub secret_files: Vec<SecretFileConfig>,
        /// `[[roles.NAME.checks]]`: first-boot checks, in the form of
        /// [`NamedCheck`](landfall_proto::NamedCheck) (`kind` = ssh | rdp | vnc |
        /// smb | tcp | unit | path | hostname with its fields). Kept as written
        /// here; [`Config::validate`] parses them strictly into
        /// [`Settings::checks`](super::Settings::checks).
        #[serde(default)]
        pub checks: Vec<toml::Table>,
        /// Hold a hello whose identifying facts (DMI UUID and serial, disk
        /// serials, NIC MACs) differ from those pinned at the machine's first
        /// install until `landfall approve` (docs/security.md). Default: on.
        #[serde(default)]
        pub pin_identity: Option<bool>,
    }
}

with_layer_keys! {
    /// `[[machines]]`: a machine by MAC, its hostname and role, and the
    /// layered keys it sets over the role.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MachineConfig {
        pub mac: String,
        pub hostname: String,
        pub role: String,
    }
}

/// `[netboot] dhcp` (and `landfall serve --dhcp`): what the built-in DHCP does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP from landfall: the site's DHCP server hands out the boot options
    /// (`landfall dhcp-config` prints them).
    #[default]
    Off,
    /// proxyDHCP (ports 67 and 4011): boot options to PXE and HTTP Boot clients
    /// only, never an address; the site's DHCP keeps giving addresses.
    Proxy,
    /// A full DHCP server with an address pool, for an isolated provisioning
    /// network; leases are kept in the store.
    Full,
}

impl std::fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DhcpMode::Off => "off",
            DhcpMode::Proxy => "proxy",
            DhcpMode::Full => "full",
        })
    }
}

/// `[netboot]`: network boot of firmware without iPXE (PXE, UEFI HTTP Boot).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootSection {
    #[serde(default)]
    pub dhcp: DhcpMode,
    /// The interface DHCP answers on (required with `dhcp = "proxy"|"full"`).
    #[serde(default)]
    pub interface: Option<String>,
    /// This server's IPv4 address on that network: the TFTP server (`next-server`),
    /// the DHCP server identifier and, without `server.public_url`, the host of
    /// the boot URL.
    #[serde(default)]
    pub server_address: Option<Ipv4Addr>,
    /// Serve the iPXE binaries over TFTP. Default: on when `dhcp` is not off.
    #[serde(default)]
    pub tftp: Option<bool>,
    /// UDP port of the TFTP server (69; another only for tests).
    #[serde(default = "default_tftp_port")]
    pub tftp_port: u16,
    /// UDP port of the DHCP server (67; another only for tests).
    #[serde(default = "default_dhcp_port")]
    pub dhcp_port: u16,
    /// UDP port of the PXE boot server that proxyDHCP clients ask (4011).
    #[serde(default = "default_pxe_port")]
    pub pxe_port: u16,
    /// iPXE for BIOS PXE clients (arch 0), e.g. `/usr/lib/ipxe/undionly.kpxe`.
    #[serde(default)]
    pub ipxe_bios: Option<PathBuf>,
    /// iPXE for x86-64 UEFI (arch 7, 9, 16), e.g. `/usr/lib/ipxe/snponly.efi`.
    #[serde(default)]
    pub ipxe_efi_x86_64: Option<PathBuf>,
    /// iPXE for arm64 UEFI (arch 11, 19), e.g. nixpkgs' `ipxe` built for aarch64.
    #[serde(default)]
    pub ipxe_efi_arm64: Option<PathBuf>,
    /// `[netboot.pool]`: the addresses `dhcp = "full"` hands out.
    #[serde(default)]
    pub pool: Option<PoolSection>,
}

fn default_tftp_port() -> u16 {
    69
}

fn default_dhcp_port() -> u16 {
    67
}

fn default_pxe_port() -> u16 {
    4011
}

impl Default for NetbootSection {
    fn default() -> Self {
        Self {
            dhcp: DhcpMode::Off,
            interface: None,
            server_address: None,
            tftp: None,
            tftp_port: default_tftp_port(),
            dhcp_port: default_dhcp_port(),
            pxe_port: default_pxe_port(),
            ipxe_bios: None,
            ipxe_efi_x86_64: None,
            ipxe_efi_arm64: None,
            pool: None,
        }
    }
}

/// `[netboot.pool]`: the address pool of `dhcp = "full"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// First address handed out, e.g. "10.77.0.100".
    pub start: Ipv4Addr,
    /// Last address handed out (inclusive).
    pub end: Ipv4Addr,
    /// Prefix length of the network, e.g. 24.
    pub prefix_len: u8,
    /// Default gateway for the clients, if any.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DNS servers for the clients.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Lease lifetime, e.g. "1h".
    #[serde(default = "default_lease_time")]
    pub lease_time: String,
}

fn default_lease_time() -> String {
    "1h".to_owned()
}

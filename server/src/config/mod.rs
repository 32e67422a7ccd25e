//! `landfall.toml`: server settings, enrolment policy, roles and machines.
//!
//! Parsing is strict (`deny_unknown_fields`) and [`Config::validate`] refuses
//! anything that would later reach an iPXE script, a path or a Nix file
//! unchecked. Every refusal names the field and says how to fix it.
//!
//! The module splits by what happens to the file: [`schema`] is the file as
//! written (the serde types), `validate` refuses what must not be served
//! (reading files only through the loaders `layouts` and `files`),
//! `layouts` loads the disko layouts it names, and `resolve` turns a role and
//! a machine into an [`Assignment`](landfall_proto::Assignment), the one
//! place where a machine's keys are layered over its role's ([`Mergeable`]).

mod dashboard;
mod files;
mod layouts;
mod observe;
mod resolve;
pub mod schema;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use landfall_proto::NamedCheck;

pub use dashboard::{
    DashboardSection, DashboardSettings, DashboardUser, DashboardUserSection, Role,
};
pub use observe::{MetricsSettings, WebhookSettings, DEFAULT_WEBHOOK_STATES};
pub use resolve::{auto_hostname, expand_template, InstallKeys, Layer, Mergeable};
pub use schema::*;
pub(crate) use validate::url_host;

/// `[vault]` after validation.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// Without a trailing slash.
    pub address: String,
    /// What the assignment tells the agent (`agent_address`, else `address`).
    pub agent_address: String,
    /// The CA PEM from `ca_file`, if any.
    pub ca_pem: Option<String>,
    pub token_file: PathBuf,
    pub insecure_http: bool,
    pub wrap_ttl: Duration,
    pub kv_mount: String,
    pub approle_mount: String,
}

/// `[netboot]` after validation: every iPXE path named is a file.
#[derive(Debug, Clone, Default)]
pub struct NetbootSettings {
    pub dhcp: DhcpMode,
    pub interface: Option<String>,
    pub server_address: Option<Ipv4Addr>,
    /// Serve the iPXE binaries over TFTP.
    pub tftp: bool,
    pub tftp_port: u16,
    pub dhcp_port: u16,
    pub pxe_port: u16,
    pub ipxe_bios: Option<PathBuf>,
    pub ipxe_efi_x86_64: Option<PathBuf>,
    pub ipxe_efi_arm64: Option<PathBuf>,
    pub pool: Option<PoolSettings>,
}

/// `[netboot.pool]` after validation.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
}

/// A validated configuration, ready to answer "what is this MAC?".
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing slash, when configured.
    pub public_url: Option<String>,
    /// Artifacts directory from the config (already resolved against the config's directory).
    pub artifacts: Option<PathBuf>,
    pub kernel_args: String,
    pub boot_token_ttl: u64,
    pub agent_alive_secs: u64,
    pub agent_token_idle_secs: u64,
    pub unknown: Unknown,
    pub enroll_role: Option<String>,
    pub roles: BTreeMap<String, RoleConfig>,
    /// Normalised MAC -> machine.
    pub machines: HashMap<String, MachineConfig>,
    /// Layout name -> the disko layout rendered to JSON, loaded at start.
    pub layouts: BTreeMap<String, serde_json::Value>,
    /// `[vault]`, validated; `None` when not configured.
    pub vault: Option<VaultSettings>,
    /// Role name -> its `[[roles.NAME.checks]]`, parsed and checked.
    pub checks: BTreeMap<String, Vec<NamedCheck>>,
    /// `[netboot]`, validated.
    pub netboot: NetbootSettings,
    /// `[server] max_*`: caps on what clients can make the server store.
    pub limits: Limits,
    /// `server.listen`, when set.
    pub listen: Option<std::net::SocketAddr>,
    /// `server.database`, when set (else SQLite in the data directory).
    pub database: Option<crate::store::Database>,
    /// HTTPS, when `server.listen_tls` is set.
    pub tls: Option<TlsSettings>,
    /// `[metrics]` and `[[webhooks]]`, validated.
    pub metrics: MetricsSettings,
    pub webhooks: Vec<WebhookSettings>,
    /// `[dashboard]`, validated.
    pub dashboard: DashboardSettings,
    /// `[server.http]`: connection timeouts and caps.
    pub http: HttpSettings,
    /// `[server] event_retention`: how long an ended attempt's events are
    /// kept; `None`: forever.
    pub event_retention: Option<Duration>,
}

/// `[server] listen_tls` and its certificate, validated.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: std::net::SocketAddr,
    pub cert: crate::tls::CertSource,
    /// `public_tls_url` without a trailing slash, when set.
    pub public_url: Option<String>,
}
impl Config {
    /// The configuration used when `serve` gets no `--config`: every machine that
    /// PXE-boots is installed with role `demo`.
    pub fn demo() -> Self {
        let mut roles = BTreeMap::new();
        roles.insert(
            "demo".to_owned(),
            // Everything else as written nowhere: no layout, never wiped,
            // the initrd key, nothing to install but the default.
            RoleConfig {
                description: "demo install (no --config given)".into(),
                ..RoleConfig::default()
            },
        );
        Self {
            server: ServerSection {
                // The installer's progress on the screen and on the first serial port.
                // The demo serves plain HTTP and tells its agent so.
                kernel_args: "console=tty0 console=ttyS0,115200 landfall.insecure_http=1".into(),
                ..ServerSection::default()
            },
            enroll: EnrollSection {
                unknown: Unknown::Install,
                role: Some("demo".into()),
            },
            roles,
            machines: Vec::new(),
            vault: None,
            netboot: NetbootSection::default(),
            metrics: MetricsSection::default(),
            webhooks: Vec::new(),
            dashboard: DashboardSection::default(),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Read, parse and validate `path`. Relative paths in it are resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let cfg = Self::parse(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.validate(base)
            .with_context(|| format!("invalid config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests;

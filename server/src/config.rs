//! `landfall.toml`: server settings, enrolment policy, roles and machines.
//!
//! Parsing is strict (`deny_unknown_fields`) and [`Config::validate`] refuses
//! anything that would later reach an iPXE script, a path or a Nix file
//! unchecked. Every refusal names the field and says how to fix it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use landfall_proto::names::{check_hostname, check_simple_name, normalize_mac};
use landfall_proto::{
    Assignment, Check, InstallTarget, LuksUnlock, NamedCheck, SecretFile, WipePolicy,
};
use serde::Deserialize;

/// Default lifetime of a boot token, in seconds.
pub const DEFAULT_BOOT_TOKEN_TTL: u64 = 3600;

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

/// `[[roles.NAME.secret_files]]`: a file written into the target from a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFileConfig {
    /// Absolute path in the installed system.
    pub path: String,
    /// `kv:PATH#KEY`, PATH one of the role's `vault.reads` (as written), or
    /// `bundle:PATH`, a file in the installer's age bundle
    /// (`/etc/landfall/secrets.age`; docs/security.md). One kind per role.
    pub from: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_root")]
    pub owner: String,
    #[serde(default = "default_root")]
    pub group: String,
}

fn default_mode() -> String {
    "0600".to_owned()
}

fn default_root() -> String {
    "root".to_owned()
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
}

fn default_ttl() -> u64 {
    DEFAULT_BOOT_TOKEN_TTL
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            public_url: None,
            artifacts: None,
            layouts: None,
            kernel_args: String::new(),
            boot_token_ttl: DEFAULT_BOOT_TOKEN_TTL,
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

/// `[roles.NAME] tpm2_pcrs`: PCR numbers 0..=23, only with `luks_unlock = "tpm2"`.
fn check_tpm2_pcrs(at: &str, role: &RoleConfig) -> Result<()> {
    let Some(pcrs) = &role.tpm2_pcrs else {
        return Ok(());
    };
    if role.luks_unlock != LuksUnlockConfig::Tpm2 {
        bail!(
            "{at}.tpm2_pcrs is only used with luks_unlock = \"tpm2\"; set {at}.luks_unlock = \"tpm2\" \
             or remove tpm2_pcrs"
        );
    }
    if let Some(bad) = pcrs.iter().find(|p| !(0..=23).contains(*p)) {
        bail!(
            "{at}.tpm2_pcrs: {bad} is not a PCR number; a TPM2 has PCRs 0 to 23, e.g. \
             tpm2_pcrs = [7] (Secure Boot state, the default) or [] (the TPM alone)"
        );
    }
    Ok(())
}

/// The PCRs a role's TPM2 key is sealed to (validated by [`check_tpm2_pcrs`]).
fn tpm2_pcrs(role: Option<&RoleConfig>) -> Vec<u8> {
    match role.and_then(|r| r.tpm2_pcrs.as_ref()) {
        Some(p) => p.iter().map(|n| *n as u8).collect(),
        None => landfall_proto::agent::DEFAULT_TPM2_PCRS.to_vec(),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub wipe: Wipe,
    /// How the installed system opens the layout's LUKS volumes at boot:
    /// `"initrd_key"` (default, unattended), `"prompt"` or `"tpm2"` (docs/disks.md).
    #[serde(default)]
    pub luks_unlock: LuksUnlockConfig,
    /// With `luks_unlock = "tpm2"`: the PCRs the key is sealed to (default `[7]`).
    #[serde(default)]
    pub tpm2_pcrs: Option<Vec<i64>>,
    /// Layout disk name -> device (`/dev/disk/by-id/...`) or "auto".
    #[serde(default)]
    pub disks: BTreeMap<String, String>,
    /// The AppRole and KV paths of this role (needs `[vault]`).
    #[serde(default)]
    pub vault: Option<RoleVault>,
    #[serde(default)]
    pub secret_files: Vec<SecretFileConfig>,
    /// What `nixos-install` installs: a flake `REF#ATTR` (`{hostname}` and
    /// `{role}` are replaced per machine). Beside `system`, the source written
    /// into the target's generated `/etc/nixos/flake.nix`.
    #[serde(default)]
    pub flake: Option<String>,
    /// A prebuilt system closure (`/nix/store/...-nixos-system-...`), copied
    /// from `cache`; needs `cache`.
    #[serde(default)]
    pub system: Option<String>,
    /// The binary cache holding `system`, e.g. `http://cache.lan:5000`.
    #[serde(default)]
    pub cache: Option<String>,
    /// `[[roles.NAME.checks]]`: first-boot checks, in the form of
    /// [`NamedCheck`] (`kind` = ssh | rdp | vnc | smb | tcp | unit | path |
    /// hostname with its fields). Kept as written here; [`Config::validate`]
    /// parses them strictly into [`Settings::checks`].
    #[serde(default)]
    pub checks: Vec<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub mac: String,
    pub hostname: String,
    pub role: String,
    #[serde(default)]
    pub layout: Option<String>,
    /// Overrides the role's `disks` entry by entry.
    #[serde(default)]
    pub disks: BTreeMap<String, String>,
    /// Override the role's `flake`, `system` and `cache`, key by key (e.g. a
    /// machine's own `system` closure from the role's `cache`).
    #[serde(default)]
    pub flake: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub cache: Option<String>,
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
}

impl Config {
    /// The configuration used when `serve` gets no `--config`: every machine that
    /// PXE-boots is installed with role `demo`.
    pub fn demo() -> Self {
        let mut roles = BTreeMap::new();
        roles.insert(
            "demo".to_owned(),
            RoleConfig {
                description: "demo install (no --config given)".into(),
                layout: None,
                wipe: Wipe::Never,
                luks_unlock: LuksUnlockConfig::InitrdKey,
                tpm2_pcrs: None,
                disks: BTreeMap::new(),
                vault: None,
                secret_files: Vec::new(),
                flake: None,
                system: None,
                cache: None,
                checks: Vec::new(),
            },
        );
        Self {
            server: ServerSection {
                // The installer's progress on the screen and on the first serial port.
                kernel_args: "console=tty0 console=ttyS0,115200".into(),
                ..ServerSection::default()
            },
            enroll: EnrollSection {
                unknown: Unknown::Install,
                role: Some("demo".into()),
            },
            roles,
            machines: Vec::new(),
            vault: None,
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

    /// Check every rule and build the lookup tables.
    pub fn validate(self, base_dir: &Path) -> Result<Settings> {
        let public_url = match &self.server.public_url {
            None => None,
            Some(u) => Some(check_public_url(u)?),
        };
        if let Some(c) = self.server.kernel_args.chars().find(|c| c.is_control()) {
            bail!(
                "server.kernel_args contains the control character {c:?}; \
                 write the arguments on one line separated by spaces"
            );
        }
        if self.server.boot_token_ttl == 0 {
            bail!("server.boot_token_ttl must be at least 1 (seconds); the default is {DEFAULT_BOOT_TOKEN_TTL}");
        }
        for (name, role) in &self.roles {
            check_simple_name("role", name).map_err(|e| {
                anyhow::anyhow!("[roles.{name}]: {e}; rename the section, e.g. [roles.workstation]")
            })?;
            if let Some(l) = &role.layout {
                check_simple_name("layout", l).map_err(|e| {
                    anyhow::anyhow!(
                        "roles.{name}.layout: {e}; use the layout's file name without .nix"
                    )
                })?;
            }
            let at = format!("roles.{name}");
            check_tpm2_pcrs(&at, role)?;
            check_install_keys(&at, &role.flake, &role.system, &role.cache)?;
            if role.system.is_some() && role.cache.is_none() {
                bail!(
                    "{at}.system needs {at}.cache: the binary cache the agent copies the closure from, \
                     e.g. cache = \"http://cache.lan:5000\""
                );
            }
        }
        let mut checks = BTreeMap::new();
        for (name, role) in &self.roles {
            checks.insert(name.clone(), parse_checks(name, &role.checks)?);
        }
        let enroll_role = match (self.enroll.unknown, &self.enroll.role) {
            (_, Some(r)) => {
                if !self.roles.contains_key(r) {
                    bail!(
                        "enroll.role = {r:?} names no role; define [roles.{r}] or pick one of: {}",
                        role_list(&self.roles)
                    );
                }
                Some(r.clone())
            }
            (Unknown::Install, None) => bail!(
                "enroll.unknown = \"install\" needs enroll.role: the role auto-enrolled machines get"
            ),
            (Unknown::Hold, None) => None,
        };

        let mut machines: HashMap<String, MachineConfig> = HashMap::new();
        let mut hostnames: HashMap<String, String> = HashMap::new();
        for (i, m) in self.machines.into_iter().enumerate() {
            let at = format!("machines[{i}]");
            let mac = normalize_mac(&m.mac).ok_or_else(|| {
                anyhow::anyhow!(
                    "{at}.mac = {:?} is not a MAC address; write it as aa:bb:cc:dd:ee:ff",
                    m.mac
                )
            })?;
            check_hostname(&m.hostname).map_err(|e| {
                anyhow::anyhow!(
                    "{at}.hostname: {e}; use a lower-case RFC 1123 name like \"web-01\""
                )
            })?;
            check_simple_name("role", &m.role).map_err(|e| anyhow::anyhow!("{at}.role: {e}"))?;
            if !self.roles.contains_key(&m.role) {
                bail!(
                    "{at}.role = {:?} names no role; define [roles.{}] or pick one of: {}",
                    m.role,
                    m.role,
                    role_list(&self.roles)
                );
            }
            if let Some(l) = &m.layout {
                check_simple_name("layout", l).map_err(|e| {
                    anyhow::anyhow!("{at}.layout: {e}; use the layout's file name without .nix")
                })?;
            }
            check_install_keys(&at, &m.flake, &m.system, &m.cache)?;
            let role = &self.roles[&m.role];
            if m.system.is_some() && m.cache.is_none() && role.cache.is_none() {
                bail!(
                    "{at}.system needs a binary cache to copy the closure from: set cache in this \
                     [[machines]] entry or in [roles.{}]",
                    m.role
                );
            }
            if let Some(prev) = hostnames.insert(m.hostname.clone(), mac.clone()) {
                bail!(
                    "{at}.hostname = {:?} is already used by the machine with MAC {prev}; \
                     give each machine its own hostname",
                    m.hostname
                );
            }
            if machines.contains_key(&mac) {
                bail!(
                    "{at}.mac = {:?}: MAC {mac} is listed twice; keep one [[machines]] entry per MAC",
                    m.mac
                );
            }
            machines.insert(mac, m);
        }

        let layouts_dir = base_dir.join(
            self.server
                .layouts
                .clone()
                .unwrap_or_else(|| PathBuf::from("layouts")),
        );
        let mut layouts = BTreeMap::new();
        let wanted = self
            .roles
            .iter()
            .filter_map(|(n, r)| Some((format!("roles.{n}.layout"), r.layout.clone()?)))
            .chain(machines.values().filter_map(|m| {
                Some((format!("machine {}.layout", m.hostname), m.layout.clone()?))
            }));
        for (at, name) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = layouts.entry(name) {
                let loaded = load_layout(&layouts_dir, slot.key())
                    .with_context(|| format!("{at} = {:?}", slot.key()))?;
                slot.insert(loaded);
            }
        }
        for (at, disks) in self
            .roles
            .iter()
            .map(|(n, r)| (format!("roles.{n}.disks"), &r.disks))
            .chain(
                machines
                    .values()
                    .map(|m| (format!("machine {}.disks", m.hostname), &m.disks)),
            )
        {
            for (disk, dev) in disks {
                check_disk_entry(disk, dev).with_context(|| format!("{at}.{disk}"))?;
            }
        }
        // Every `disks` key names a disk of the layout it applies to: the role's
        // keys against the role's layout, and for each machine the role's and its
        // own keys (merged, as the assignment carries them) against its layout.
        for (name, role) in &self.roles {
            if let Some(l) = &role.layout {
                check_disk_keys(
                    &format!("roles.{name}.disks"),
                    &role.disks,
                    l,
                    &layouts[l].1,
                )?;
            }
        }
        for m in machines.values() {
            let role = &self.roles[&m.role];
            let Some(l) = m.layout.as_ref().or(role.layout.as_ref()) else {
                continue;
            };
            let layout = &layouts[l].1;
            check_disk_keys(
                &format!("machine {}.disks", m.hostname),
                &m.disks,
                l,
                layout,
            )?;
            if m.layout.is_some() {
                check_disk_keys(
                    &format!("roles.{}.disks (for machine {})", m.role, m.hostname),
                    &role.disks,
                    l,
                    layout,
                )?;
            }
        }
        let layouts = layouts.into_iter().map(|(n, (v, _))| (n, v)).collect();

        let artifacts = self.server.artifacts.map(|p| base_dir.join(p));
        if let Some(a) = &artifacts {
            if !a.is_dir() {
                bail!(
                    "server.artifacts: {} is not a directory; create it and put the netboot \
                     build's vmlinuz and initrd there, or fix the path (relative paths are \
                     resolved against the config file's directory)",
                    a.display()
                );
            }
        }

        let vault = match &self.vault {
            Some(v) => Some(check_vault(v, base_dir).context("[vault]")?),
            None => None,
        };
        for (name, role) in &self.roles {
            check_role_secrets(name, role, vault.is_some())?;
        }

        Ok(Settings {
            checks,
            vault,
            layouts,
            public_url,
            artifacts,
            kernel_args: self.server.kernel_args.trim().to_owned(),
            boot_token_ttl: self.server.boot_token_ttl,
            unknown: self.enroll.unknown,
            enroll_role,
            roles: self.roles,
            machines,
        })
    }
}

/// `scheme://host[:port]`, https unless `insecure_http`; without a trailing slash.
fn check_vault_address(field: &str, value: &str, insecure_http: bool) -> Result<String> {
    let address = value.trim_end_matches('/').to_owned();
    let rest = if let Some(r) = address.strip_prefix("https://") {
        r
    } else if let Some(r) = address.strip_prefix("http://") {
        if !insecure_http {
            bail!(
                "{field} = {:?} is plain http: tokens and secrets would travel in clear; \
                 use https:// with ca_file, or set insecure_http = true (development only)",
                value
            );
        }
        r
    } else {
        bail!(
            "{field} = {:?} must start with https:// (or http:// with insecure_http = true)",
            value
        );
    };
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    {
        bail!(
            "{field} = {:?} must be scheme://host[:port] with no path, e.g. \"https://vault.lan:8200\"",
            value
        );
    }
    Ok(address)
}

/// Check `[vault]`: the address scheme against `insecure_http`, the CA file
/// (read and parsed now), the token file (readable now), the wrap TTL.
fn check_vault(v: &VaultSection, base_dir: &Path) -> Result<VaultSettings> {
    let address = check_vault_address("address", &v.address, v.insecure_http)?;
    let agent_address = match &v.agent_address {
        Some(a) => check_vault_address("agent_address", a, v.insecure_http)?,
        None => address.clone(),
    };
    let ca_pem = match &v.ca_file {

        Some(f) => {
            let p = base_dir.join(f);
            let pem = std::fs::read_to_string(&p)
                .with_context(|| format!("ca_file: reading {}", p.display()))?;
            reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "ca_file {}: no PEM certificate in it; give the CA that signed Vault's certificate",
                        p.display()
                    )
                })?;
            Some(pem)
        }
        None if address.starts_with("https://") => bail!(
            "ca_file is required with an https address: the server and the agents trust only that CA \
             (the system roots are not used)"
        ),
        None => None,
    };
    let token_file = base_dir.join(&v.token_file);
    let token = std::fs::read_to_string(&token_file).with_context(|| {
        format!(
            "token_file: reading {} (the server's own Vault token)",
            token_file.display()
        )
    })?;
    if token.trim().is_empty() {
        bail!(
            "token_file {} is empty; write the server's Vault token into it",
            token_file.display()
        );
    }
    let wrap_ttl = humantime::parse_duration(&v.wrap_ttl).map_err(|e| {
        anyhow::anyhow!(
            "wrap_ttl = {:?}: {e}; write e.g. \"120s\" or \"5m\"",
            v.wrap_ttl
        )
    })?;
    if wrap_ttl < Duration::from_secs(1) || wrap_ttl > Duration::from_secs(3600) {
        bail!(
            "wrap_ttl = {:?} must be between 1s and 1h: the wrap token only has to live until the agent unwraps it",
            v.wrap_ttl
        );
    }
    for (key, m) in [
        ("kv_mount", &v.kv_mount),
        ("approle_mount", &v.approle_mount),
    ] {
        check_vault_segment(m).with_context(|| format!("{key} = {m:?}"))?;
    }
    Ok(VaultSettings {
        address,
        agent_address,
        ca_pem,
        token_file,
        insecure_http: v.insecure_http,
        wrap_ttl,
        kv_mount: v.kv_mount.clone(),
        approle_mount: v.approle_mount.clone(),
    })
}

/// One path segment of a Vault API path: `[A-Za-z0-9_.-]`, not `.` or `..`.
fn check_vault_segment(s: &str) -> Result<()> {
    if s.is_empty()
        || s == "."
        || s == ".."
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        bail!("must be a plain name of letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// A KV read template: segments of [`check_vault_segment`] or `{hostname}` / `{role}`.
fn check_read_template(t: &str) -> Result<()> {
    if t.is_empty() || t.starts_with('/') || t.ends_with('/') {
        bail!("{t:?} must be a relative KV path like \"hosts/{{hostname}}\"");
    }
    for seg in t.split('/') {
        if seg == "{hostname}" || seg == "{role}" {
            continue;
        }
        check_vault_segment(seg).with_context(|| format!("{t:?}: segment {seg:?}"))?;
    }
    Ok(())
}

/// Check a role's `vault` and `secret_files`.
fn check_role_secrets(name: &str, role: &RoleConfig, have_vault: bool) -> Result<()> {
    if let Some(rv) = &role.vault {
        if !have_vault {
            bail!("roles.{name}.vault needs a [vault] section (address, ca_file, token_file)");
        }
        check_vault_segment(&rv.approle)
            .with_context(|| format!("roles.{name}.vault.approle = {:?}", rv.approle))?;
        for (i, r) in rv.reads.iter().enumerate() {
            check_read_template(r).with_context(|| format!("roles.{name}.vault.reads[{i}]"))?;
        }
    }
    let from_bundle = role
        .secret_files
        .iter()
        .filter(|f| f.from.starts_with("bundle:"))
        .count();
    if from_bundle > 0 && from_bundle < role.secret_files.len() {
        bail!(
            "roles.{name}.secret_files mixes \"bundle:\" and \"kv:\" sources; a role takes its \
             secret files from Vault or from the installer's age bundle, not both"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in role.secret_files.iter().enumerate() {
        let at = format!("roles.{name}.secret_files[{i}]");
        let reads = if f.from.starts_with("bundle:") {
            &[][..]
        } else {
            let Some(rv) = &role.vault else {
                bail!(
                    "{at}: secret files from kv: need roles.{name}.vault (the AppRole and the KV \
                     paths to read); or take them from the installer's age bundle \
                     (from = \"bundle:PATH\")"
                );
            };
            &rv.reads[..]
        };
        check_secret_file(f, reads).with_context(|| at.clone())?;
        if !seen.insert(f.path.as_str()) {
            bail!(
                "{at}.path = {:?} is listed twice; keep one entry per file",
                f.path
            );
        }
    }
    Ok(())
}

fn check_secret_file(f: &SecretFileConfig, reads: &[String]) -> Result<()> {
    let p = &f.path;
    if !p.starts_with('/')
        || p.ends_with('/')
        || p.split('/').any(|c| c == ".." || c == ".")
        || p.contains("//")
        || p.chars().any(|c| c.is_control())
    {
        bail!(
            "path = {p:?} must be an absolute file path in the installed system without . or .. \
             components, e.g. \"/var/lib/sops-nix/key.txt\""
        );
    }
    let mode = u32::from_str_radix(&f.mode, 8)
        .ok()
        .filter(|m| *m <= 0o777 && !f.mode.is_empty());
    if mode.is_none() {
        bail!(
            "mode = {:?} must be octal permission bits up to 0777, e.g. \"0600\"",
            f.mode
        );
    }
    if let Some(path) = f.from.strip_prefix("bundle:") {
        check_bundle_path(path).with_context(|| format!("from = {:?}", f.from))?;
        return check_owners(f);
    }
    let Some((path, key)) = f.from.strip_prefix("kv:").and_then(|r| r.split_once('#')) else {
        bail!(
            "from = {:?} must be \"kv:PATH#KEY\" (e.g. \"kv:hosts/{{hostname}}#age_key\") or \
             \"bundle:PATH\" (e.g. \"bundle:hosts/{{hostname}}/ssh_host_ed25519_key\")",
            f.from
        );
    };
    check_vault_segment(key).with_context(|| format!("from = {:?}: key {key:?}", f.from))?;
    if !reads.iter().any(|r| r == path) {
        bail!(
            "from = {:?}: {path:?} is not among the role's vault.reads ({}); add it there",
            f.from,
            reads.join(", ")
        );
    }
    check_owners(f)
}

/// A path inside the age bundle (its tar): relative, no empty, `.` or `..`
/// segments; `{hostname}`/`{role}` allowed, else `[A-Za-z0-9._+@-]`.
fn check_bundle_path(p: &str) -> Result<()> {
    let bare = p.replace("{hostname}", "h").replace("{role}", "r");
    let ok = !bare.is_empty()
        && bare
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+@-".contains(&b));
    if !ok {
        bail!(
            "{p:?} must be a relative path inside the bundle without empty, . or .. segments \
             ([A-Za-z0-9._+@-], {{hostname}} and {{role}} allowed), e.g. \
             \"hosts/{{hostname}}/ssh_host_ed25519_key\""
        );
    }
    Ok(())
}

fn check_owners(f: &SecretFileConfig) -> Result<()> {
    for (k, v) in [("owner", &f.owner), ("group", &f.group)] {
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !ok {
            bail!("{k} = {v:?} must be a user/group name like \"root\" or \"sshd\"");
        }
    }
    Ok(())
}

/// The install keys of a role or machine (`at` is `roles.NAME` or
/// `machines[i]`): each checked on its own; whether `system` has a `cache`
/// is the caller's (a machine may take the role's).
fn check_install_keys(
    at: &str,
    flake: &Option<String>,
    system: &Option<String>,
    cache: &Option<String>,
) -> Result<()> {
    if let Some(f) = flake {
        check_flake(f).with_context(|| format!("{at}.flake = {f:?}"))?;
    }
    if let Some(p) = system {
        check_system_path(p).with_context(|| format!("{at}.system = {p:?}"))?;
    }
    if let Some(c) = cache {
        check_http_url(&format!("{at}.cache"), c, "http://cache.lan:5000")?;
    }
    Ok(())
}

/// `REF#ATTR`: a flake reference and the attribute after `#`. It ends up in
/// the agent's command line and in the target's generated flake.nix, so only
/// URL characters (no quotes, `$`, spaces); `{hostname}` and `{role}` are the
/// only templates.
fn check_flake(f: &str) -> Result<()> {
    let bare = f.replace("{hostname}", "h").replace("{role}", "r");
    if let Some(c) = bare
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":/._~+%@=?&,-#".contains(*c)))
    {
        bail!(
            "the character {c:?} is not allowed (a flake reference is letters, digits and \
             : / . _ ~ + % @ = ? & , - #; templates are {{hostname}} and {{role}})"
        );
    }
    let Some((reference, attr)) = bare.split_once('#') else {
        bail!(
            "must be REF#ATTR with the configuration's attribute after '#', \
             e.g. \"git+https://git.lan/fleet#{{hostname}}\""
        );
    };
    if reference.is_empty() || attr.is_empty() {
        bail!(
            "must be REF#ATTR with a flake reference before '#' and a non-empty attribute after it, \
             e.g. \"git+https://git.lan/fleet#{{hostname}}\""
        );
    }
    if !attr
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!(
            "the attribute after '#' ({attr:?} with templates filled) must be letters, digits, \
             '.', '_' and '-', e.g. \"#{{hostname}}\""
        );
    }
    Ok(())
}

/// `/nix/store/HASH-NAME`: the top of one store path, nothing below it.
fn check_system_path(p: &str) -> Result<()> {
    const BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    let ok = p.strip_prefix("/nix/store/").is_some_and(|name| {
        name.len() > 33
            && name[..32].chars().all(|c| BASE32.contains(c))
            && name.as_bytes()[32] == b'-'
            && name[33..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+._?=-".contains(&b))
    });
    if !ok {
        bail!(
            "must start with /nix/store/ and be one store path, the system closure \
             (/nix/store/HASH-nixos-system-HOST-VERSION, e.g. from \
             `nix build .#nixosConfigurations.HOST.config.system.build.toplevel`)"
        );
    }
    Ok(())
}

/// The check kinds this server accepts in `[[roles.NAME.checks]]`.
const CHECK_KINDS: &str = "ssh, rdp, vnc, smb, tcp, unit, path, hostname";

/// Parse `[[roles.NAME.checks]]` into [`NamedCheck`]s: unknown kinds and
/// unknown keys are refused (the wire type itself tolerates both, for old
/// agents), and the values the agent acts on are checked.
fn parse_checks(role: &str, raw: &[toml::Table]) -> Result<Vec<NamedCheck>> {
    let mut out: Vec<NamedCheck> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let at = format!("roles.{role}.checks[{i}]");
        let kind = match t.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(v) => bail!("{at}.kind = {v} must be a string, one of: {CHECK_KINDS}"),
            None => bail!("{at}.kind is missing; give the check's kind, one of: {CHECK_KINDS}"),
        };
        let check: NamedCheck = toml::Value::Table(t.clone())
            .try_into()
            .map_err(|e| anyhow::anyhow!("{at} (kind {kind:?}): {e}"))?;
        if check.check == Check::Unknown {
            bail!("{at}.kind = {kind:?} is not a check kind; use one of: {CHECK_KINDS}");
        }
        // Every key written must be one the check has (serde's flatten
        // ignores the others silently).
        let known = serde_json::to_value(&check)?;
        for key in t.keys() {
            if known.get(key).is_none() {
                let fields: Vec<&str> = known
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                bail!(
                    "{at}.{key}: unknown field for a {kind} check; its fields are: {}",
                    fields.join(", ")
                );
            }
        }
        check_check(&check.check).with_context(|| at.clone())?;
        let name = check.display_name();
        if name.len() > 100 || name.chars().any(|c| c.is_control()) {
            bail!("{at}.name = {name:?} must be one line of at most 100 characters");
        }
        if let Some(j) = out.iter().position(|c| c.display_name() == name) {
            bail!(
                "{at}: the name {name:?} is already used by roles.{role}.checks[{j}]; checks are \
                 reported by name, so give each its own name = \"...\""
            );
        }
        out.push(check);
    }
    Ok(out)
}

/// The values of one check: hosts and ports to connect to, absolute paths,
/// a unit name `systemctl` cannot take for an option.
fn check_check(c: &Check) -> Result<()> {
    let host_port = |host: &str, port: u16| -> Result<()> {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-_[]".contains(&b))
        {
            bail!("host = {host:?} must be a host name or IP address, e.g. \"localhost\"");
        }
        if port == 0 {
            bail!("port = 0 is not a port");
        }
        Ok(())
    };
    let absolute = |key: &str, p: &str| -> Result<()> {
        if !p.starts_with('/') || p.chars().any(|c| c.is_control()) {
            bail!("{key} = {p:?} must be an absolute path in the installed system");
        }
        Ok(())
    };
    match c {
        Check::Ssh { host, port }
        | Check::Rdp { host, port }
        | Check::Vnc { host, port }
        | Check::Tcp { host, port } => host_port(host, *port),
        Check::Smb { mountpoint, .. } => absolute("mountpoint", mountpoint),
        Check::Path { path } => absolute("path", path),
        Check::Hostname { expected } => {
            check_hostname(expected).map_err(|e| anyhow::anyhow!("expected = {expected:?}: {e}"))
        }
        Check::Unit { unit } => {
            if unit.is_empty()
                || unit.starts_with('-')
                || !unit
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@._:\\-".contains(&b))
            {
                bail!("unit = {unit:?} must be a systemd unit name, e.g. \"sshd.service\"");
            }
            Ok(())
        }
        Check::Unknown => bail!("unknown check kind; use one of: {CHECK_KINDS}"),
    }
}

/// Replace `{hostname}` and `{role}` in a validated template (both are
/// validated names, so the result stays a plain path).
pub fn expand_template(t: &str, hostname: &str, role: &str) -> String {
    t.replace("{hostname}", hostname).replace("{role}", role)
}

/// `DIR/NAME.json`, or `DIR/NAME.nix` rendered with `nix-instantiate --eval --strict --json`,
/// parsed and validated by landfall-disko, the parser the agent uses: a layout the agent
/// would refuse is refused here, with the file and the field's path.
fn load_layout(dir: &Path, name: &str) -> Result<(serde_json::Value, landfall_disko::Layout)> {
    let json = dir.join(format!("{name}.json"));
    let nix = dir.join(format!("{name}.nix"));
    let (file, text) = if json.is_file() {
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        (json, text)
    } else if nix.is_file() {
        let text = render_nix(&nix)?;
        (nix, text)
    } else {
        bail!(
            "no layout {name}.nix or {name}.json in {}; put the disko layout there or set server.layouts",
            dir.display()
        );
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("layout {name} is not valid JSON"))?;
    let layout = landfall_disko::Layout::from_json(&value).map_err(|e| {
        anyhow::anyhow!(
            "layout {}: {e}; fix the layout (docs/disks.md lists what the agent supports)",
            file.display()
        )
    })?;
    Ok((value, layout))
}

fn render_nix(path: &Path) -> Result<String> {
    let out = std::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(path)
        .output()
        .with_context(|| {
            format!(
                "rendering {} needs nix-instantiate (Debian: nix-bin); or render it to .json yourself",
                path.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "nix-instantiate --eval --strict --json {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("nix-instantiate printed non-UTF-8")
}

/// `disks` keys must be disks of `layout` (the agent refuses any other key).
fn check_disk_keys(
    at: &str,
    disks: &BTreeMap<String, String>,
    layout_name: &str,
    layout: &landfall_disko::Layout,
) -> Result<()> {
    for key in disks.keys() {
        if !layout.disks.contains_key(key) {
            bail!(
                "{at}.{key}: layout {layout_name:?} has no disk {key:?} (its disks: {}); \
                 rename the key to one of them or remove it",
                layout.disks.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}

/// A `disks` entry: a disko disk name and "auto" or a plain device path.
fn check_disk_entry(disk: &str, dev: &str) -> Result<()> {
    check_simple_name("disk", disk).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plain = dev.starts_with("/dev/")
        && !dev.contains("..")
        && dev
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.:+@".contains(&b));
    if dev != "auto" && !plain {
        bail!("{dev:?} must be \"auto\" or a device path such as /dev/disk/by-id/nvme-...");
    }
    Ok(())
}

fn role_list(roles: &BTreeMap<String, RoleConfig>) -> String {
    if roles.is_empty() {
        "(no roles defined)".to_owned()
    } else {
        roles.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `http(s)://host[:port][/path]` with nothing that could break an iPXE script line.
fn check_public_url(u: &str) -> Result<String> {
    check_http_url("server.public_url", u, "http://10.0.0.1:8080")
}

/// `http(s)://host[:port][/path]` of plain characters, without a trailing slash.
fn check_http_url(field: &str, u: &str, example: &str) -> Result<String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_~:/[]%@".contains(&b))
    });
    if !ok {
        bail!(
            "{field} = {u:?} is not a plain http(s) URL; write e.g. \"{example}\" \
             (letters, digits and . - _ ~ : / [ ] % @ only)"
        );
    }
    Ok(u.trim_end_matches('/').to_owned())
}

impl Settings {
    /// The assignment for a MAC (normalised), from `[[machines]]` or auto-enrolment.
    /// `None` means: hold it as discovered.
    pub fn assignment_for(&self, mac: &str) -> Option<Assignment> {
        if let Some(m) = self.machines.get(mac) {
            let role = self.roles.get(&m.role);
            let mut a = Assignment {
                hostname: m.hostname.clone(),
                role: m.role.clone(),
                layout: m
                    .layout
                    .clone()
                    .or_else(|| role.and_then(|r| r.layout.clone())),
                wipe: role.map(|r| r.wipe.into()).unwrap_or_default(),
                luks_unlock: LuksUnlock::default(),
                tpm2_pcrs: Vec::new(),
                disko: None,
                disks: Default::default(),
                vault: None,
                secret_files: Vec::new(),
                verify_token: None,
                install: None,
                checks: Vec::new(),
            };
            self.complete(&mut a, mac);
            return Some(a);
        }
        self.enrolment_for(mac, &|_| false)
    }

    /// The assignment of `mac`: its `[[machines]]` entry, else (with
    /// `enroll.unknown = "install"`) the enrol role with a hostname no other
    /// machine has: not a configured one's, nor one `taken` says is in use.
    pub fn enrolment_for(&self, mac: &str, taken: &dyn Fn(&str) -> bool) -> Option<Assignment> {
        if self.machines.contains_key(mac) {
            return self.assignment_for(mac);
        }
        if self.unknown != Unknown::Install {
            return None;
        }
        let role_name = self.enroll_role.as_ref()?;
        let hostname = auto_hostname(role_name, mac, &|name| {
            taken(name) || self.machines.values().any(|m| m.hostname == name)
        });
        Some(self.role_assignment(role_name, hostname))
    }

    /// The assignment of a machine the database knows as `hostname`/`role`
    /// (e.g. auto-enrolled earlier); `None` if that role no longer exists.
    pub fn role_assignment_checked(&self, role: &str, hostname: &str) -> Option<Assignment> {
        if !self.roles.contains_key(role) || check_hostname(hostname).is_err() {
            return None;
        }
        Some(self.role_assignment(role, hostname.to_owned()))
    }

    /// Fill what the database does not keep: the rendered layout, the disk
    /// map (role entries, then the machine's own over them), the secret files,
    /// the install target (the machine's keys over the role's) and the role's
    /// first-boot checks.
    pub fn complete(&self, a: &mut Assignment, mac: &str) {
        a.install = self.install_target(&a.role, mac, &a.hostname);
        a.checks = self.checks.get(&a.role).cloned().unwrap_or_default();
        a.luks_unlock = self
            .roles
            .get(&a.role)
            .map(|r| r.luks_unlock.into())
            .unwrap_or_default();
        a.tpm2_pcrs = tpm2_pcrs(self.roles.get(&a.role));
        a.disko = a.layout.as_ref().and_then(|l| self.layouts.get(l).cloned());
        let mut disks = self
            .roles
            .get(&a.role)
            .map(|r| r.disks.clone())
            .unwrap_or_default();
        if let Some(m) = self.machines.get(mac) {
            disks.extend(m.disks.clone());
        }
        a.disks = disks;
        a.secret_files = self
            .roles
            .get(&a.role)
            .map(|r| {
                r.secret_files
                    .iter()
                    .map(|f| SecretFile {
                        path: f.path.clone(),
                        from: expand_template(&f.from, &a.hostname, &a.role),
                        mode: f.mode.clone(),
                        owner: f.owner.clone(),
                        group: f.group.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    /// `flake`, `system` and `cache`: a `[[machines]]` entry's over its role's,
    /// key by key; `{hostname}`/`{role}` replaced in `flake`. `None` when
    /// neither gives a flake or a system.
    fn install_target(&self, role: &str, mac: &str, hostname: &str) -> Option<InstallTarget> {
        let r = self.roles.get(role);
        let m = self.machines.get(mac).filter(|m| m.role == role);
        let pick = |mk: fn(&MachineConfig) -> &Option<String>,
                    rk: fn(&RoleConfig) -> &Option<String>| {
            m.and_then(|m| mk(m).clone())
                .or_else(|| r.and_then(|r| rk(r).clone()))
        };
        let flake = pick(|m| &m.flake, |r| &r.flake).map(|f| expand_template(&f, hostname, role));
        let system = pick(|m| &m.system, |r| &r.system);
        let cache = pick(|m| &m.cache, |r| &r.cache);
        match (system, cache) {
            (Some(path), Some(cache)) => Some(InstallTarget::System { path, cache, flake }),
            // Refused at load; nothing to install from.
            (Some(_), None) => None,
            (None, _) => flake.map(|flake| InstallTarget::Flake { flake }),
        }
    }

    fn role_assignment(&self, role_name: &str, hostname: String) -> Assignment {
        let role = self.roles.get(role_name);
        Assignment {
            hostname,
            role: role_name.to_owned(),
            layout: role.and_then(|r| r.layout.clone()),
            wipe: role.map(|r| r.wipe.into()).unwrap_or_default(),
            luks_unlock: LuksUnlock::default(),
            tpm2_pcrs: Vec::new(),
            disko: None,
            disks: Default::default(),
            vault: None,
            secret_files: Vec::new(),
            verify_token: None,
            install: None,
            checks: Vec::new(),
        }
    }
}

/// `ROLE-XXXXXX` from the last three bytes of the MAC; when `taken` says
/// that name is in use, more of the MAC (four, five, then all six bytes:
/// unique among MACs), then a `-N` suffix.
pub fn auto_hostname(role: &str, mac: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let bytes: Vec<&str> = mac.split(':').collect();
    (3..=bytes.len())
        .map(|n| format!("{role}-{}", bytes[bytes.len() - n..].concat()))
        .chain((2..).map(|n| format!("{role}-{}-{n}", bytes.concat())))
        .find(|name| !taken(name))
        .expect("an unbounded list of names has a free one")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disko layout as `nix-instantiate --eval --strict --json` renders one.
    /// Two disks, `main` and `extra`, so a role's `disks` can name both.
    pub(crate) const LAYOUT_JSON: &str = r#"{"disko":{"devices":{"disk":{"main":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}},"extra":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"srv":{"size":"100%","content":{"type":"filesystem","format":"xfs","mountpoint":"/srv"}}}}}}}}}"#;

    /// Validate against a config directory holding `layouts/single-disk.json`
    /// and `layouts/raid1.nix` (rendered by the real nix-instantiate).
    fn check_in(text: &str) -> (Result<Settings>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let layouts = dir.path().join("layouts");
        std::fs::create_dir(&layouts).unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON).unwrap();
        std::fs::write(
            layouts.join("raid1.nix"),
            r#"{ disko.devices.disk.a = { type = "disk"; device = "/dev/sda"; content = { type = "gpt"; partitions.root = { size = "100%"; content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; }; }; }; }; }"#,
        )
        .unwrap();
        let r = Config::parse(text).and_then(|c| c.validate(dir.path()));
        (r, dir)
    }

    fn check(text: &str) -> Result<Settings> {
        check_in(text).0
    }

    fn err(text: &str) -> String {
        format!("{:#}", check(text).unwrap_err())
    }

    const GOOD: &str = r#"
[server]
public_url = "http://10.0.0.1:8080/"
artifacts = "artifacts"
kernel_args = "console=ttyS0,115200"
boot_token_ttl = 600

[enroll]
unknown = "hold"

[roles.workstation]
description = "desk"
layout = "single-disk"
wipe = "always"

[roles.server]

[[machines]]
mac = "52-54-00-AB-CD-01"
hostname = "ws-01"
role = "workstation"

[[machines]]
mac = "52:54:00:ab:cd:02"
hostname = "srv-01"
role = "server"
layout = "raid1"
"#;

    #[test]
    fn good_config_is_accepted_and_resolved() {
        let s = check(GOOD).unwrap();
        assert_eq!(s.public_url.as_deref(), Some("http://10.0.0.1:8080"));
        assert!(s.artifacts.as_ref().unwrap().ends_with("artifacts"));
        assert_eq!(s.boot_token_ttl, 600);
        let a = s.assignment_for("52:54:00:ab:cd:01").unwrap();
        assert_eq!(a.hostname, "ws-01");
        assert_eq!(a.layout.as_deref(), Some("single-disk"));
        assert_eq!(a.wipe, WipePolicy::Always);
        let b = s.assignment_for("52:54:00:ab:cd:02").unwrap();
        assert_eq!(b.layout.as_deref(), Some("raid1"));
        assert_eq!(b.wipe, WipePolicy::Never);
        assert!(s.assignment_for("52:54:00:00:00:09").is_none());
    }

    #[test]
    fn luks_unlock_comes_from_the_role_and_defaults_to_the_initrd_key() {
        let text = GOOD.replace(
            "[roles.server]\n",
            "[roles.server]\nluks_unlock = \"prompt\"\n",
        );
        let s = check(&text).unwrap();
        let ws = s.assignment_for("52:54:00:ab:cd:01").unwrap();
        assert_eq!(ws.luks_unlock, LuksUnlock::InitrdKey);
        let srv = s.assignment_for("52:54:00:ab:cd:02").unwrap();
        assert_eq!(srv.luks_unlock, LuksUnlock::Prompt);
        let e = err(&GOOD.replace(
            "[roles.server]\n",
            "[roles.server]\nluks_unlock = \"tpm3\"\n",
        ));
        assert!(e.contains("luks_unlock") && e.contains("initrd_key"), "{e}");
    }

    #[test]
    fn tpm2_unlock_takes_its_pcrs_from_the_role_checked_and_defaults_to_pcr_7() {
        let role = |extra: &str| {
            GOOD.replace(
                "[roles.server]\n",
                &format!("[roles.server]\nluks_unlock = \"tpm2\"\n{extra}"),
            )
        };
        let srv = |text: &str| {
            check(text)
                .unwrap()
                .assignment_for("52:54:00:ab:cd:02")
                .unwrap()
        };
        let a = srv(&role(""));
        assert_eq!((a.luks_unlock, a.tpm2_pcrs), (LuksUnlock::Tpm2, vec![7]));
        assert_eq!(srv(&role("tpm2_pcrs = [0, 7, 23]\n")).tpm2_pcrs, [0, 7, 23]);
        assert!(srv(&role("tpm2_pcrs = []\n")).tpm2_pcrs.is_empty());
        for bad in ["[24]", "[-1]", "[7, 99]"] {
            let e = err(&role(&format!("tpm2_pcrs = {bad}\n")));
            assert!(
                e.contains("roles.server.tpm2_pcrs") && e.contains("0 to 23"),
                "{bad}: {e}"
            );
        }
        let e = err(&GOOD.replace("[roles.server]\n", "[roles.server]\ntpm2_pcrs = [7]\n"));
        assert!(
            e.contains("roles.server.tpm2_pcrs") && e.contains("luks_unlock = \"tpm2\""),
            "{e}"
        );
    }

    #[test]
    fn layouts_are_loaded_and_disks_merged_into_the_assignment() {
        let text = format!(
            "{GOOD}\n[roles.workstation.disks]\nmain = \"auto\"\nextra = \"/dev/sdb\"\n"
        )
        .replace(
            "hostname = \"ws-01\"\nrole = \"workstation\"\n",
            "hostname = \"ws-01\"\nrole = \"workstation\"\ndisks = { main = \"/dev/disk/by-id/nvme-X_1\" }\n",
        );
        let s = check(&text).unwrap();
        let a = s.assignment_for("52:54:00:ab:cd:01").unwrap();
        let want: serde_json::Value = serde_json::from_str(LAYOUT_JSON).unwrap();
        assert_eq!(a.disko.as_ref(), Some(&want));
        assert_eq!(
            a.disks["main"], "/dev/disk/by-id/nvme-X_1",
            "the machine's entry wins"
        );
        assert_eq!(a.disks["extra"], "/dev/sdb", "the role's entry stays");
        // raid1.nix went through nix-instantiate.
        let b = s.assignment_for("52:54:00:ab:cd:02").unwrap();
        assert_eq!(
            b.disko.unwrap()["disko"]["devices"]["disk"]["a"]["device"],
            "/dev/sda"
        );
    }

    #[test]
    fn a_missing_or_broken_layout_or_disk_entry_is_refused_at_start() {
        let e = err(&GOOD.replace("layout = \"raid1\"", "layout = \"nope\""));
        assert!(e.contains("machine srv-01.layout = \"nope\""), "{e}");
        assert!(e.contains("no layout nope.nix or nope.json"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[roles.workstation.disks]\nmain = \"/etc/passwd\"\n"
        ));
        assert!(e.contains("roles.workstation.disks.main"), "{e}");
        assert!(e.contains("must be \"auto\" or a device path"), "{e}");
        let (r, dir) = check_in(GOOD);
        assert!(r.is_ok());
        std::fs::write(dir.path().join("layouts/raid1.nix"), "{ disko = ").unwrap();
        let e = format!(
            "{:#}",
            Config::parse(GOOD)
                .unwrap()
                .validate(dir.path())
                .unwrap_err()
        );
        assert!(
            e.contains("nix-instantiate") && e.contains("raid1.nix"),
            "{e}"
        );
        std::fs::write(dir.path().join("layouts/raid1.nix"), "{ x = 1; }").unwrap();
        let e = format!(
            "{:#}",
            Config::parse(GOOD)
                .unwrap()
                .validate(dir.path())
                .unwrap_err()
        );
        assert!(e.contains("raid1.nix: (layout): no `disko.devices`"), "{e}");
        // The agent's parser refuses what the agent would refuse, with the field's path.
        std::fs::write(
            dir.path().join("layouts/raid1.nix"),
            r#"{ disko.devices.disk.a = { type = "disk"; content = { type = "gpt"; partitions.root = { size = "12X"; }; }; }; }"#,
        )
        .unwrap();
        let e = format!(
            "{:#}",
            Config::parse(GOOD)
                .unwrap()
                .validate(dir.path())
                .unwrap_err()
        );
        assert!(
            e.contains("machine srv-01.layout = \"raid1\"")
                && e.contains("disko.devices.disk.a.content.partitions.root.size")
                && e.contains("is not a size"),
            "{e}"
        );
        // A `disks` key the layout does not have.
        let e = err(&format!(
            "{GOOD}\n[roles.workstation.disks]\nmian = \"auto\"\n"
        ));
        assert!(
            e.contains("roles.workstation.disks.mian")
                && e.contains("its disks: extra, main")
                && e.contains("rename the key"),
            "{e}"
        );
        // The role's keys are checked against a machine's own layout too.
        let e = err(&format!("{GOOD}\n[roles.server.disks]\nmain = \"auto\"\n"));
        assert!(
            e.contains("roles.server.disks (for machine srv-01).main")
                && e.contains("layout \"raid1\" has no disk \"main\""),
            "{e}"
        );
        // A configured artifacts directory that does not exist.
        let e = err(&GOOD.replace("artifacts = \"artifacts\"", "artifacts = \"netboot\""));
        assert!(
            e.contains("server.artifacts") && e.contains("is not a directory"),
            "{e}"
        );
    }

    #[test]
    fn demo_installs_everyone() {
        let s = Config::demo().validate(Path::new(".")).unwrap();
        let a = s.assignment_for("52:54:00:12:34:56").unwrap();
        assert_eq!(a.hostname, "demo-123456");
        assert_eq!(a.role, "demo");
    }

    #[test]
    fn duplicate_mac_is_refused() {
        let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "r"
[[machines]]
mac = "52-54-00-00-00-01"
hostname = "b"
role = "r"
"#);
        assert!(
            e.contains("machines[1].mac") && e.contains("listed twice"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_hostname_is_refused() {
        let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "r"
[[machines]]
mac = "52:54:00:00:00:02"
hostname = "a"
role = "r"
"#);
        assert!(
            e.contains("machines[1].hostname") && e.contains("already used"),
            "{e}"
        );
    }

    #[test]
    fn bad_hostname_is_refused() {
        let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "Bad_Name;reboot"
role = "r"
"#);
        assert!(e.contains("machines[0].hostname"), "{e}");
    }

    #[test]
    fn bad_mac_is_refused() {
        let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:01"
hostname = "a"
role = "r"
"#);
        assert!(
            e.contains("machines[0].mac") && e.contains("aa:bb:cc:dd:ee:ff"),
            "{e}"
        );
    }

    #[test]
    fn unknown_role_is_refused() {
        let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "nope"
"#);
        assert!(
            e.contains("machines[0].role") && e.contains("[roles.nope]"),
            "{e}"
        );
        let e = err("[enroll]\nunknown = \"install\"\nrole = \"ghost\"\n");
        assert!(e.contains("enroll.role"), "{e}");
        let e = err("[enroll]\nunknown = \"install\"\n");
        assert!(e.contains("needs enroll.role"), "{e}");
    }

    #[test]
    fn bad_role_name_is_refused() {
        let e = err("[roles.\"Web Server\"]\n");
        assert!(
            e.contains("[roles.Web Server]") && e.contains("role name"),
            "{e}"
        );
        let e = err("[roles.r]\nlayout = \"../etc/passwd\"\n");
        assert!(e.contains("roles.r.layout"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for (text, key) in [
            ("[server]\npublic_ur = \"http://x\"\n", "public_ur"),
            ("colour = 1\n", "colour"),
            ("[roles.r]\nwipe_disks = true\n", "wipe_disks"),
            (
                "[roles.r]\n[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\nrole = \"r\"\nhost = \"x\"\n",
                "host",
            ),
        ] {
            let e = err(text);
            assert!(e.contains("unknown field") && e.contains(key), "{e}");
        }
        let e = err("[enroll]\nunknown = \"maybe\"\n");
        assert!(e.contains("unknown variant"), "{e}");
        let e = err("[roles.r]\nwipe = \"sometimes\"\n");
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn kernel_args_and_public_url_are_checked() {
        let e = err("[server]\nkernel_args = \"quiet\\nchain http://evil\"\n");
        assert!(e.contains("server.kernel_args"), "{e}");
        let e = err("[server]\npublic_url = \"http://x y\"\n");
        assert!(e.contains("server.public_url"), "{e}");
        let e = err("[server]\npublic_url = \"ftp://x\"\n");
        assert!(e.contains("server.public_url"), "{e}");
        let e = err("[server]\nboot_token_ttl = 0\n");
        assert!(e.contains("server.boot_token_ttl"), "{e}");
    }

    /// `[vault]` with a token file beside the config.
    fn vault_cfg(extra: &str) -> String {
        format!(
            r#"
[vault]
address = "http://127.0.0.1:8200"
token_file = "vault.token"
insecure_http = true
{extra}
[roles.ws.vault]
approle = "workstation"
reads = ["hosts/{{hostname}}", "roles/{{role}}"]

[[roles.ws.secret_files]]
path = "/var/lib/sops-nix/key.txt"
from = "kv:hosts/{{hostname}}#age_key"

[[roles.ws.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "kv:hosts/{{hostname}}#ssh_host_ed25519_key"
mode = "0400"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"
"#
        )
    }

    fn vault_check(text: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vault.token"), "s.servertoken\n").unwrap();
        Config::parse(text).and_then(|c| c.validate(dir.path()))
    }

    fn vault_err(text: &str) -> String {
        format!("{:#}", vault_check(text).unwrap_err())
    }

    #[test]
    fn vault_section_and_secret_files_are_validated_and_expanded() {
        let s = vault_check(&vault_cfg("wrap_ttl = \"30s\"")).unwrap();
        let v = s.vault.as_ref().unwrap();
        assert_eq!(v.wrap_ttl, Duration::from_secs(30));
        assert_eq!(
            (v.kv_mount.as_str(), v.approle_mount.as_str()),
            ("landfall", "approle")
        );
        let a = s.assignment_for("52:54:00:00:00:01").unwrap();
        assert_eq!(a.secret_files.len(), 2);
        assert_eq!(a.secret_files[0].from, "kv:hosts/ws-01#age_key");
        assert_eq!(a.secret_files[0].mode, "0600");
        assert_eq!(a.secret_files[1].mode, "0400");
        assert!(
            a.vault.is_none(),
            "the wrap token is minted at hello, not here"
        );
        assert_eq!(expand_template("roles/{role}", "ws-01", "ws"), "roles/ws");
    }

    #[test]
    fn vault_agent_address_defaults_to_address_and_is_checked_alike() {
        let s = vault_check(&vault_cfg("")).unwrap();
        let v = s.vault.as_ref().unwrap();
        assert_eq!(v.agent_address, "http://127.0.0.1:8200");
        let s = vault_check(&vault_cfg("agent_address = \"http://10.0.2.2:8200/\"")).unwrap();
        let v = s.vault.as_ref().unwrap();
        assert_eq!(v.address, "http://127.0.0.1:8200");
        assert_eq!(v.agent_address, "http://10.0.2.2:8200");
        let e = vault_err(&vault_cfg("agent_address = \"ftp://x\""));
        assert!(
            e.contains("agent_address = \"ftp://x\" must start with https://"),
            "{e}"
        );
    }

    #[test]
    fn vault_refusals_name_the_key_and_the_fix() {
        let base = vault_cfg("");
        let e = vault_err(&base.replace("insecure_http = true\n", ""));
        assert!(
            e.contains("plain http") && e.contains("insecure_http"),
            "{e}"
        );
        let e = vault_err(&base.replace("http://127.0.0.1:8200", "https://vault:8200"));
        assert!(e.contains("ca_file is required"), "{e}");
        let e = vault_err(&format!(
            "{}\nca_file = \"vault.token\"\n",
            base.replace("http://127.0.0.1:8200", "https://vault:8200")
                .replace("insecure_http = true\n", "")
                .split("\n[roles")
                .next()
                .unwrap()
        ));
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = vault_err(&vault_cfg("wrap_ttl = \"2h\""));
        assert!(e.contains("wrap_ttl"), "{e}");
        let e = vault_err(&base.replace("vault.token", "missing.token"));
        assert!(
            e.contains("token_file") && e.contains("missing.token"),
            "{e}"
        );
        for (from, to, want) in [
            ("/var/lib/sops-nix/key.txt", "var/lib/key", "absolute"),
            (
                "/var/lib/sops-nix/key.txt",
                "/var/../etc/shadow",
                "absolute",
            ),
            ("mode = \"0400\"", "mode = \"0999\"", "octal"),
            ("mode = \"0400\"", "mode = \"01777\"", "octal"),
            (
                "kv:hosts/{hostname}#age_key",
                "vault:hosts/x#k",
                "kv:PATH#KEY",
            ),
            (
                "kv:hosts/{hostname}#age_key",
                "kv:other/{hostname}#k",
                "not among",
            ),
            ("\"hosts/{hostname}\", ", "\"../{hostname}\", ", "segment"),
            ("approle = \"workstation\"", "approle = \"a/b\"", "approle"),
        ] {
            let e = vault_err(&base.replace(from, to));
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        let e = vault_err(&base.replace(
            "path = \"/etc/ssh/ssh_host_ed25519_key\"",
            "path = \"/var/lib/sops-nix/key.txt\"",
        ));
        assert!(e.contains("listed twice"), "{e}");
        let no_vault = base.split("[roles.ws.vault]").nth(1).unwrap();
        let e = vault_err(&format!("[roles.ws.vault]{no_vault}"));
        assert!(e.contains("needs a [vault] section"), "{e}");
    }

    #[test]
    fn bundle_secret_files_need_no_vault_and_do_not_mix() {
        let bundle_role = r#"
[[roles.ws.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "bundle:hosts/{hostname}/ssh_host_ed25519_key"
mode = "0400"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"
"#;
        let s = vault_check(bundle_role).unwrap();
        assert!(s.vault.is_none());
        let a = s.assignment_for("52:54:00:00:00:01").unwrap();
        assert_eq!(
            a.secret_files[0].from,
            "bundle:hosts/ws-01/ssh_host_ed25519_key"
        );
        for bad in [
            "bundle:",
            "bundle:/etc/x",
            "bundle:a/../b",
            "bundle:a//b",
            "bundle:a b",
        ] {
            let e = vault_err(
                &bundle_role.replace("bundle:hosts/{hostname}/ssh_host_ed25519_key", bad),
            );
            assert!(e.contains("relative path inside the bundle"), "{bad}: {e}");
        }
        let mixed = vault_cfg("").replace(
            "kv:hosts/{hostname}#age_key",
            "bundle:hosts/{hostname}/age_key",
        );
        assert!(vault_err(&mixed).contains("mixes"), "{}", vault_err(&mixed));
        let kv_without_vault = bundle_role.replace(
            "bundle:hosts/{hostname}/ssh_host_ed25519_key",
            "kv:hosts/{hostname}#k",
        );
        let e = vault_err(&kv_without_vault);
        assert!(
            e.contains("need roles.ws.vault") && e.contains("bundle:PATH"),
            "{e}"
        );
    }

    const INSTALL: &str = r#"
[roles.ws]
flake = "git+https://git.lan/fleet?ref=main#{hostname}"

[[roles.ws.checks]]
kind = "ssh"

[[roles.ws.checks]]
name = "rdp"
kind = "rdp"
port = 3390

[[roles.ws.checks]]
name = "home"
kind = "smb"
mountpoint = "/home/alice"

[roles.srv]
flake = "git+https://git.lan/fleet#{role}-{hostname}"
cache = "http://cache.lan:5000"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:02"
hostname = "srv-01"
role = "srv"
system = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-srv-01-26.05"

[[machines]]
mac = "52:54:00:00:00:03"
hostname = "srv-02"
role = "srv"
flake = "path:/srv/fleet#srv-02"
"#;

    #[test]
    fn install_target_and_checks_reach_the_assignment() {
        let s = check(INSTALL).unwrap();
        let a = s.assignment_for("52:54:00:00:00:01").unwrap();
        assert_eq!(
            a.install,
            Some(InstallTarget::Flake {
                flake: "git+https://git.lan/fleet?ref=main#ws-01".into()
            })
        );
        assert_eq!(a.checks.len(), 3);
        assert_eq!(
            a.checks[0].check,
            Check::Ssh {
                host: "localhost".into(),
                port: 22
            }
        );
        assert_eq!(a.checks[0].display_name(), "ssh");
        assert_eq!(
            a.checks[1].check,
            Check::Rdp {
                host: "localhost".into(),
                port: 3390
            }
        );
        assert_eq!(
            a.checks[2].check,
            Check::Smb {
                mountpoint: "/home/alice".into(),
                write_test: true
            }
        );
        // The machine's system with the role's cache and (expanded) flake.
        let b = s.assignment_for("52:54:00:00:00:02").unwrap();
        assert_eq!(
            b.install,
            Some(InstallTarget::System {
                path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-srv-01-26.05"
                    .into(),
                cache: "http://cache.lan:5000".into(),
                flake: Some("git+https://git.lan/fleet#srv-srv-01".into()),
            })
        );
        assert!(b.checks.is_empty());
        // The machine's own flake over the role's; no system: a flake install.
        let c = s.assignment_for("52:54:00:00:00:03").unwrap();
        assert_eq!(
            c.install,
            Some(InstallTarget::Flake {
                flake: "path:/srv/fleet#srv-02".into()
            })
        );
        // complete() fills a bare (database) assignment the same way.
        let mut bare = s.role_assignment_checked("ws", "ws-09").unwrap();
        assert!(bare.install.is_none() && bare.checks.is_empty());
        s.complete(&mut bare, "52:54:00:00:00:09");
        assert_eq!(
            bare.install.as_ref().and_then(|t| t.flake()),
            Some("git+https://git.lan/fleet?ref=main#ws-09")
        );
        assert_eq!(bare.checks, a.checks);
        // No install keys: no target (the agent stops after configuring).
        let d = check(GOOD).unwrap();
        assert!(d
            .assignment_for("52:54:00:ab:cd:01")
            .unwrap()
            .install
            .is_none());
    }

    #[test]
    fn install_keys_are_validated_with_the_field_named() {
        for (from, to, want) in [
            (
                "?ref=main#{hostname}\"",
                "?ref=main\"",
                "roles.ws.flake = \"git+https://git.lan/fleet?ref=main\": must be REF#ATTR",
            ),
            (
                "?ref=main#{hostname}\"",
                "?ref=main#\"",
                "non-empty attribute",
            ),
            (
                "\"git+https://git.lan/fleet?ref=main#",
                "\"#",
                "non-empty attribute",
            ),
            (
                "?ref=main#{hostname}\"",
                "?ref=main#{host}\"",
                "not allowed",
            ),
            ("?ref=main#{hostname}\"", "?ref=main#${x}\"", "not allowed"),
            ("?ref=main#{hostname}\"", "?ref=main#a b\"", "not allowed"),
            (
                "?ref=main#{hostname}\"",
                "?ref=main#a/b\"",
                "attribute after '#'",
            ),
            (
                "system = \"/nix/store/",
                "system = \"/usr/",
                "machines[1].system = \"/usr/",
            ),
            (
                "-nixos-system-srv-01-26.05",
                "",
                "must start with /nix/store/",
            ),
            (
                "-nixos-system-srv-01-26.05",
                "-nixos-system-srv-01/bin",
                "one store path",
            ),
            (
                "http://cache.lan:5000",
                "cache.lan:5000",
                "roles.srv.cache = \"cache.lan:5000\" is not a plain http(s) URL",
            ),
            ("http://cache.lan:5000", "ftp://cache", "roles.srv.cache"),
            (
                "cache = \"http://cache.lan:5000\"\n",
                "",
                "machines[1].system needs a binary cache",
            ),
            (
                "flake = \"path:/srv/fleet#srv-02\"",
                "flake = \"path:/srv/fleet#srv-02\"\ncache = \"x\"",
                "machines[2].cache",
            ),
        ] {
            assert!(INSTALL.contains(from), "{from}");
            let e = err(&INSTALL.replacen(from, to, 1));
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        let e = err(
            "[roles.r]\nsystem = \"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a\"\n",
        );
        assert!(e.contains("roles.r.system needs roles.r.cache"), "{e}");
        // A machine's system with its own cache is complete.
        let ok = INSTALL
            .replace("cache = \"http://cache.lan:5000\"\n", "")
            .replace(
                "26.05\"\n",
                "26.05\"\ncache = \"https://cache.example.org/\"\n",
            );
        let s = check(&ok).unwrap();
        assert!(matches!(
            s.assignment_for("52:54:00:00:00:02").unwrap().install,
            Some(InstallTarget::System { ref cache, .. }) if cache == "https://cache.example.org/"
        ));
    }

    #[test]
    fn checks_are_parsed_strictly() {
        let role = |checks: &str| format!("[roles.ws]\n{checks}");
        let e = err(&role(
            "[[roles.ws.checks]]\nkind = \"ssh\"\n[[roles.ws.checks]]\nkind = \"teleport\"\n",
        ));
        assert!(
            e.contains("roles.ws.checks[1].kind = \"teleport\" is not a check kind")
                && e.contains("ssh, rdp, vnc, smb, tcp, unit, path, hostname"),
            "{e}"
        );
        let e = err(&role("[[roles.ws.checks]]\nname = \"x\"\n"));
        assert!(e.contains("roles.ws.checks[0].kind is missing"), "{e}");
        let e = err(&role("[[roles.ws.checks]]\nkind = 3\n"));
        assert!(
            e.contains("roles.ws.checks[0].kind = 3 must be a string"),
            "{e}"
        );
        let e = err(&role("[[roles.ws.checks]]\nkind = \"ssh\"\nprot = 22\n"));
        assert!(
            e.contains("roles.ws.checks[0].prot: unknown field for a ssh check")
                && e.contains("host")
                && e.contains("port"),
            "{e}"
        );
        let e = err(&role("[[roles.ws.checks]]\nkind = \"smb\"\n"));
        assert!(
            e.contains("roles.ws.checks[0]") && e.contains("mountpoint"),
            "{e}"
        );
        let e = err(&role(
            "[[roles.ws.checks]]\nkind = \"tcp\"\nport = \"ssh\"\n",
        ));
        assert!(e.contains("roles.ws.checks[0]"), "{e}");
        let e = err(&role("[[roles.ws.checks]]\nkind = \"ssh\"\n[[roles.ws.checks]]\nkind = \"ssh\"\nport = 2222\n"));
        assert!(
            e.contains("roles.ws.checks[1]") && e.contains("already used by roles.ws.checks[0]"),
            "{e}"
        );
        for (check, want) in [
            ("kind = \"tcp\"\nport = 0", "port = 0"),
            ("kind = \"ssh\"\nhost = \"a b\"", "host = \"a b\""),
            ("kind = \"unit\"\nunit = \"--help\"", "unit = \"--help\""),
            ("kind = \"path\"\npath = \"etc/x\"", "absolute path"),
            (
                "kind = \"smb\"\nmountpoint = \"home\"",
                "mountpoint = \"home\"",
            ),
            (
                "kind = \"hostname\"\nexpected = \"Bad_Name\"",
                "expected = \"Bad_Name\"",
            ),
        ] {
            let e = err(&role(&format!("[[roles.ws.checks]]\n{check}\n")));
            assert!(
                e.contains("roles.ws.checks[0]") && e.contains(want),
                "{check}: {e}"
            );
        }
        let s = check(&role(
            "[[roles.ws.checks]]\nkind = \"unit\"\nunit = \"sshd.service\"\n\
             [[roles.ws.checks]]\nkind = \"tcp\"\nhost = \"10.0.0.5\"\nport = 445\n\
             [[roles.ws.checks]]\nkind = \"path\"\npath = \"/srv\"\n\
             [[roles.ws.checks]]\nkind = \"hostname\"\nexpected = \"ws-01\"\n\
             [[roles.ws.checks]]\nkind = \"vnc\"\n\
             [[roles.ws.checks]]\nname = \"smb-home\"\nkind = \"smb\"\nmountpoint = \"/home/a\"\nwrite_test = false\n",
        ))
        .unwrap();
        let kinds: Vec<&str> = s.checks["ws"].iter().map(|c| c.check.kind()).collect();
        assert_eq!(kinds, ["unit", "tcp", "path", "hostname", "vnc", "smb"]);
        assert_eq!(
            s.checks["ws"][5].check,
            Check::Smb {
                mountpoint: "/home/a".into(),
                write_test: false
            }
        );
    }
}

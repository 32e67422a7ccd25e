//! Validation of a parsed [`Config`] into [`Settings`]: every refusal names
//! the field and says how to fix it. No I/O of its own: files are read
//! through the loaders (`layouts`, and `files` for `[vault]`'s CA and token
//! files and the artifacts directory).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use landfall_proto::names::{check_hostname, check_simple_name, normalize_mac};
use landfall_proto::{Check, NamedCheck};

use super::resolve::{layered, InstallKeys};
use super::{files, layouts, TlsSettings};
use super::{
    Config, DhcpMode, Limits, LuksUnlockConfig, MachineConfig, NetbootSection, NetbootSettings,
    PoolSettings, RoleConfig, SecretFileConfig, Settings, Unknown, VaultSection, VaultSettings,
    DEFAULT_BOOT_TOKEN_TTL,
};
use crate::tls::CertSource;

impl Config {
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
        if self.server.agent_token_idle_secs == 0 {
            bail!(
                "server.agent_token_idle_secs must be at least 1 (seconds); the default is {}",
                super::schema::DEFAULT_AGENT_TOKEN_IDLE_SECS
            );
        }
        let (listen, tls) = check_listen_and_tls(&self.server, public_url.as_deref(), base_dir)?;
        let database = self
            .server
            .database
            .as_deref()
            .map(|u| crate::store::Database::parse("server.database", u))
            .transpose()?;
        let s = &self.server;
        for (field, v) in [
            ("max_discovered", s.max_discovered),
            ("max_discovered_per_minute", s.max_discovered_per_minute),
            ("max_events_per_attempt", s.max_events_per_attempt),
            ("max_event_bytes_per_attempt", s.max_event_bytes_per_attempt),
        ] {
            if v == 0 || v > i64::MAX as u64 {
                bail!("server.{field} = {v} is out of range; give a number from 1 (or leave it out for the default)");
            }
        }
        let limits = Limits {
            max_discovered: s.max_discovered,
            max_discovered_per_minute: s.max_discovered_per_minute,
            max_events_per_attempt: s.max_events_per_attempt,
            max_event_bytes_per_attempt: s.max_event_bytes_per_attempt,
        };
        let event_retention = check_event_retention(self.server.event_retention.as_deref())?;
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
            check_install_keys(&at, &role.layer().install)?;
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
            let own = m.layer();
            check_install_keys(&at, &own.install)?;
            if own.install.system.is_some()
                && layered(self.roles.get(&m.role), Some(&m))
                    .install
                    .cache
                    .is_none()
            {
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
        let wanted = self
            .roles
            .iter()
            .filter_map(|(n, r)| Some((format!("roles.{n}.layout"), r.layout.clone()?)))
            .chain(machines.values().filter_map(|m| {
                Some((format!("machine {}.layout", m.hostname), m.layout.clone()?))
            }));
        let layouts = layouts::load_all(&layouts_dir, wanted)?;
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
            let Some(l) = layered(Some(role), Some(m)).layout else {
                continue;
            };
            let l = &l;
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
            if !files::is_dir(a) {
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
        let netboot = check_netboot(&self.netboot, base_dir)?;
        let (metrics, webhooks) =
            super::observe::check(&self.metrics, &self.webhooks, &self.roles, base_dir)?;

        let dashboard = self.dashboard.check(base_dir)?;

        let http = check_http(&self.server.http)?;

        Ok(Settings {
            database,
            metrics,
            webhooks,
            dashboard,
            listen,
            tls,
            http,
            limits,
            event_retention,
            netboot,
            checks,
            vault,
            layouts,
            public_url,
            artifacts,
            kernel_args: self.server.kernel_args.trim().to_owned(),
            boot_token_ttl: self.server.boot_token_ttl,
            agent_alive_secs: self.server.agent_alive_secs,
            agent_token_idle_secs: self.server.agent_token_idle_secs,
            unknown: self.enroll.unknown,
            enroll_role,
            roles: self.roles,
            machines,
        })
    }
}

/// The default `[server] event_retention`.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// `[server] event_retention`: a duration of at least an hour, or "forever".
fn check_event_retention(v: Option<&str>) -> Result<Option<Duration>> {
    let Some(v) = v.map(str::trim) else {
        return Ok(Some(DEFAULT_EVENT_RETENTION));
    };
    if v == "forever" {
        return Ok(None);
    }
    let d = humantime::parse_duration(v).map_err(|e| {
        anyhow::anyhow!(
            "server.event_retention = {v:?} is not a duration ({e}); write e.g. \"30d\", \"12h\" \
             or \"forever\" (the default is 90d)"
        )
    })?;
    if d < Duration::from_secs(3600) {
        bail!(
            "server.event_retention = {v:?} is under an hour; keep events at least \"1h\" \
             (e.g. \"30d\"), or \"forever\""
        );
    }
    Ok(Some(d))
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
            let pem = files::read("ca_file", &p, "")?;
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
    let token = files::read("token_file", &token_file, " (the server's own Vault token)")?;
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
fn check_install_keys(at: &str, keys: &InstallKeys) -> Result<()> {
    let InstallKeys {
        flake,
        system,
        cache,
    } = keys;
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

/// `server.listen`, and `listen_tls` with its certificate and names.
fn check_listen_and_tls(
    server: &super::ServerSection,
    public_url: Option<&str>,
    base_dir: &Path,
) -> Result<(Option<SocketAddr>, Option<TlsSettings>)> {
    let addr = |field: &str, v: &str, example: &str| -> Result<SocketAddr> {
        v.parse().map_err(|_| {
            anyhow::anyhow!(
                "{field} = {v:?} is not an IP address and port; write e.g. \"{example}\" \
                 (a host name is not accepted here)"
            )
        })
    };
    let listen = server
        .listen
        .as_deref()
        .map(|v| addr("server.listen", v, "0.0.0.0:8080"))
        .transpose()?;
    let Some(listen_tls) = server.listen_tls.as_deref() else {
        for (field, set) in [
            ("tls_cert", server.tls_cert.is_some()),
            ("tls_key", server.tls_key.is_some()),
            ("tls_sans", !server.tls_sans.is_empty()),
            ("public_tls_url", server.public_tls_url.is_some()),
        ] {
            if set {
                bail!(
                    "server.{field} is set but server.listen_tls is not, so TLS is off; \
                     add listen_tls = \"0.0.0.0:8443\" to [server] or remove {field}"
                );
            }
        }
        return Ok((listen, None));
    };
    let listen_tls = addr("server.listen_tls", listen_tls, "0.0.0.0:8443")?;
    if let Some(l) = listen {
        if l == listen_tls && l.port() != 0 {
            bail!("server.listen and server.listen_tls are both {l}; give HTTPS its own port, e.g. listen_tls = \"0.0.0.0:8443\"");
        }
    }
    let public_tls_url = match &server.public_tls_url {
        None => None,
        Some(u) => {
            let u = check_http_url("server.public_tls_url", u, "https://10.0.0.1:8443")?;
            if !u.starts_with("https://") {
                bail!("server.public_tls_url = {u:?} must start with https:// (it is where agents reach the HTTPS listener)");
            }
            Some(u)
        }
    };
    let cert = match (&server.tls_cert, &server.tls_key) {
        (Some(c), Some(k)) => {
            if !server.tls_sans.is_empty() {
                bail!("server.tls_sans names the generated certificate's names, but tls_cert is the operator's own; remove tls_sans (the names are in your certificate)");
            }
            CertSource::Files {
                cert: base_dir.join(c),
                key: base_dir.join(k),
            }
        }
        (Some(_), None) | (None, Some(_)) => bail!(
            "server.tls_cert and server.tls_key go together: set both (your PEM certificate \
             chain and its key), or neither to have the server make a CA and certificate"
        ),
        (None, None) => {
            let mut sans: Vec<String> = Vec::new();
            for u in [public_url, public_tls_url.as_deref()]
                .into_iter()
                .flatten()
            {
                if let Some(h) = url_host(u) {
                    sans.push(h);
                }
            }
            if !listen_tls.ip().is_unspecified() {
                sans.push(listen_tls.ip().to_string());
            }
            for s in &server.tls_sans {
                let ok = s.parse::<std::net::IpAddr>().is_ok() || check_hostname(s).is_ok();
                if !ok {
                    bail!("server.tls_sans: {s:?} is neither an IP address nor a DNS name; write e.g. [\"10.0.0.1\", \"landfall.lan\"]");
                }
                sans.push(s.clone());
            }
            if sans.is_empty() {
                sans = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            }
            let mut seen = std::collections::BTreeSet::new();
            sans.retain(|s| seen.insert(s.clone()));
            CertSource::Generated { sans }
        }
    };
    Ok((
        listen,
        Some(TlsSettings {
            listen: listen_tls,
            cert,
            public_url: public_tls_url,
        }),
    ))
}

/// The host of `scheme://host[:port][/path]`, without brackets around an IPv6 address.
pub(crate) fn url_host(u: &str) -> Option<String> {
    let rest = u.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
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

/// Check `[netboot]`: every iPXE path is a file now (relative paths against
/// the config file's directory), the pool is one network, and what the DHCP
/// mode needs is there.
fn check_netboot(n: &NetbootSection, base_dir: &Path) -> Result<NetbootSettings> {
    let ipxe = |key: &str, p: &Option<PathBuf>| -> Result<Option<PathBuf>> {
        let Some(p) = p else { return Ok(None) };
        let p = base_dir.join(p);
        if !files::is_file(&p) {
            bail!(
                "netboot.{key}: {} is not a file; install Debian's `ipxe` package (it ships \
                 /usr/lib/ipxe/undionly.kpxe and snponly.efi) or nixpkgs' `ipxe`, and point \
                 netboot.{key} at the binary (relative paths are resolved against the config \
                 file's directory)",
                p.display()
            );
        }
        Ok(Some(p))
    };
    if let Some(i) = &n.interface {
        if i.is_empty()
            || i.len() > 15
            || !i
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            bail!("netboot.interface = {i:?} is not an interface name; write it as `ip link` shows it, e.g. \"eth1\"");
        }
    }
    let pool = match &n.pool {
        None => None,
        Some(p) => Some(check_pool(p, n.server_address)?),
    };
    let mut s = NetbootSettings {
        dhcp: DhcpMode::Off,
        interface: n.interface.clone(),
        server_address: n.server_address,
        tftp: false,
        tftp_port: n.tftp_port,
        dhcp_port: n.dhcp_port,
        pxe_port: n.pxe_port,
        ipxe_bios: ipxe("ipxe_bios", &n.ipxe_bios)?,
        ipxe_efi_x86_64: ipxe("ipxe_efi_x86_64", &n.ipxe_efi_x86_64)?,
        ipxe_efi_arm64: ipxe("ipxe_efi_arm64", &n.ipxe_efi_arm64)?,
        pool,
    };
    s.set_mode(n.dhcp, n.tftp)?;
    Ok(s)
}

impl NetbootSettings {
    /// Set the DHCP mode (the config's, or `serve --dhcp` over it) and whether
    /// TFTP runs (default: with DHCP), refusing what that mode lacks.
    pub fn set_mode(&mut self, dhcp: DhcpMode, tftp: Option<bool>) -> Result<()> {
        let tftp = tftp.unwrap_or(dhcp != DhcpMode::Off);
        if dhcp != DhcpMode::Off {
            if self.interface.is_none() {
                bail!(
                    "netboot.interface is required with dhcp = \"{dhcp}\": the interface of the \
                     boot network DHCP answers on, e.g. interface = \"eth1\""
                );
            }
            if self.server_address.is_none() {
                bail!(
                    "netboot.server_address is required with dhcp = \"{dhcp}\": this server's \
                     IPv4 address on the boot network, e.g. server_address = \"10.77.0.1\""
                );
            }
        }
        if dhcp == DhcpMode::Full && self.pool.is_none() {
            bail!(
                "dhcp = \"full\" needs [netboot.pool]: start, end and prefix_len of the \
                 addresses to hand out, e.g. start = \"10.77.0.100\", end = \"10.77.0.200\", \
                 prefix_len = 24"
            );
        }
        if (dhcp != DhcpMode::Off || tftp)
            && self.ipxe_bios.is_none()
            && self.ipxe_efi_x86_64.is_none()
            && self.ipxe_efi_arm64.is_none()
        {
            bail!(
                "netboot: dhcp = \"{dhcp}\"{} hands firmware an iPXE binary, and none is \
                 configured; set netboot.ipxe_bios = \"/usr/lib/ipxe/undionly.kpxe\" and \
                 netboot.ipxe_efi_x86_64 = \"/usr/lib/ipxe/snponly.efi\" (Debian's `ipxe` package)",
                if tftp { " with tftp" } else { "" }
            );
        }
        self.dhcp = dhcp;
        self.tftp = tftp;
        Ok(())
    }
}

fn check_pool(p: &super::PoolSection, server: Option<std::net::Ipv4Addr>) -> Result<PoolSettings> {
    if !(8..=30).contains(&p.prefix_len) {
        bail!(
            "netboot.pool.prefix_len = {} must be between 8 and 30, e.g. 24 for a /24",
            p.prefix_len
        );
    }
    let mask = u32::MAX << (32 - u32::from(p.prefix_len));
    let (start, end) = (u32::from(p.start), u32::from(p.end));
    if start > end {
        bail!(
            "netboot.pool: start {} is after end {}; swap them",
            p.start,
            p.end
        );
    }
    if start & mask != end & mask {
        bail!(
            "netboot.pool: start {} and end {} are not in one /{} network; keep the pool inside the boot network",
            p.start,
            p.end,
            p.prefix_len
        );
    }
    if let Some(s) = server {
        let s32 = u32::from(s);
        if s32 & mask != start & mask {
            bail!(
                "netboot.server_address {s} is not in the pool's network {}/{}; the clients could not reach it",
                std::net::Ipv4Addr::from(start & mask),
                p.prefix_len
            );
        }
        if (start..=end).contains(&s32) {
            bail!(
                "netboot.pool: {}..{} contains server_address {s}; start the pool after it",
                p.start,
                p.end
            );
        }
    }
    let lease_time = humantime::parse_duration(&p.lease_time).map_err(|e| {
        anyhow::anyhow!(
            "netboot.pool.lease_time = {:?}: {e}; write e.g. \"1h\" or \"30m\"",
            p.lease_time
        )
    })?;
    if lease_time < Duration::from_secs(60) {
        bail!(
            "netboot.pool.lease_time = {:?} is under a minute; give at least \"1m\" (e.g. \"1h\")",
            p.lease_time
        );
    }
    Ok(PoolSettings {
        start: p.start,
        end: p.end,
        prefix_len: p.prefix_len,
        router: p.router,
        dns: p.dns.clone(),
        lease_time,
    })
}

/// `[server.http]`: every timeout at least a second and at most a day (the
/// shutdown grace may be 0: drop at once), a connection cap of at least 1.
fn check_http(h: &super::HttpSection) -> Result<super::HttpSettings> {
    const DAY: u64 = 86_400;
    let d = super::HttpSection::default();
    for (field, v, min, default) in [
        (
            "header_timeout_secs",
            h.header_timeout_secs,
            1,
            d.header_timeout_secs,
        ),
        (
            "idle_timeout_secs",
            h.idle_timeout_secs,
            1,
            d.idle_timeout_secs,
        ),
        (
            "tls_handshake_timeout_secs",
            h.tls_handshake_timeout_secs,
            1,
            d.tls_handshake_timeout_secs,
        ),
        (
            "send_timeout_secs",
            h.send_timeout_secs,
            1,
            d.send_timeout_secs,
        ),
        (
            "shutdown_grace_secs",
            h.shutdown_grace_secs,
            0,
            d.shutdown_grace_secs,
        ),
    ] {
        if v < min || v > DAY {
            bail!(
                "server.http.{field} = {v} is out of range; give seconds from {min} to {DAY} \
                 (or leave it out for the default, {default})"
            );
        }
    }
    if h.max_connections == Some(0) {
        bail!(
            "server.http.max_connections = 0 would refuse every client; give at least 1, or leave \
             it out to follow the descriptor limit"
        );
    }
    let secs = Duration::from_secs;
    Ok(super::HttpSettings {
        header_timeout: secs(h.header_timeout_secs),
        idle_timeout: secs(h.idle_timeout_secs),
        tls_handshake_timeout: secs(h.tls_handshake_timeout_secs),
        send_timeout: secs(h.send_timeout_secs),
        max_connections: h.max_connections,
        shutdown_grace: secs(h.shutdown_grace_secs),
        sendfile: h.sendfile,
    })
}

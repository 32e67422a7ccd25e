//! `[dashboard]`: the web dashboard's sessions, login limits and users
//! (server/src/dashboard/). As written, and after validation.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `[dashboard]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSection {
    /// Serve the dashboard under `/ui/` (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How long a login lasts, e.g. "8h" (default 8h).
    #[serde(default)]
    pub session_ttl: Option<String>,
    /// Failed logins allowed per client address, and per user name, in
    /// `login_window` (default 5).
    #[serde(default)]
    pub max_failed_logins: Option<u32>,
    /// The window of `max_failed_logins`, e.g. "5m" (default 5m).
    #[serde(default)]
    pub login_window: Option<String>,
    /// `[[dashboard.users]]`: who may log in with a password.
    #[serde(default)]
    pub users: Vec<DashboardUserSection>,
}

/// `[[dashboard.users]]` as written: a name, a role and an argon2 password
/// hash (PHC string, as `landfall hash-password` prints it), inline or in a
/// file (`password_hash_file`, relative to the config's directory; read at
/// start, so it can stay out of a world-readable config or the Nix store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardUserSection {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub password_hash_file: Option<String>,
}

/// A `[[dashboard.users]]` entry after validation: its hash read and checked.
#[derive(Debug, Clone)]
pub struct DashboardUser {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

/// What a dashboard login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; no action.
    Viewer,
    /// Also retries, reinstalls and approves machines (the admin token logs
    /// in as an operator).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// `[dashboard]` after validation.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    pub enabled: bool,
    pub session_ttl: Duration,
    pub max_failed_logins: u32,
    pub login_window: Duration,
    pub users: Vec<DashboardUser>,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(8 * 3600),
            max_failed_logins: 5,
            login_window: Duration::from_secs(300),
            users: Vec::new(),
        }
    }
}

/// A user name: what a person types, shown in the page header.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

fn duration(field: &str, value: &str, min: Duration, max: Duration) -> Result<Duration> {
    let d = humantime::parse_duration(value)
        .with_context(|| format!("{field} = {value:?}: write e.g. \"8h\" or \"30m\""))?;
    if d < min || d > max {
        bail!(
            "{field} = {value:?} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
    }
    Ok(d)
}

impl DashboardSection {
    /// `base`: the config's directory (`password_hash_file` is relative to it).
    pub fn check(self, base: &Path) -> Result<DashboardSettings> {
        let d = DashboardSettings::default();
        let session_ttl = match &self.session_ttl {
            Some(v) => duration(
                "dashboard.session_ttl",
                v,
                Duration::from_secs(60),
                Duration::from_secs(30 * 86_400),
            )?,
            None => d.session_ttl,
        };
        let login_window = match &self.login_window {
            Some(v) => duration(
                "dashboard.login_window",
                v,
                Duration::from_secs(10),
                Duration::from_secs(86_400),
            )?,
            None => d.login_window,
        };
        let max_failed_logins = self.max_failed_logins.unwrap_or(d.max_failed_logins);
        if max_failed_logins == 0 {
            bail!("dashboard.max_failed_logins = 0 would lock everybody out; use at least 1 (default 5)");
        }
        let mut users = Vec::with_capacity(self.users.len());
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("dashboard.users[{i}]");
            if !valid_name(&u.name) {
                bail!(
                    "{at}.name = {:?}: use 1 to 64 letters, digits, '.', '_', '@' or '-'",
                    u.name
                );
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                bail!(
                    "{at}.name = {:?} is listed twice; give each user one entry",
                    u.name
                );
            }
            let (field, hash) = match (&u.password_hash, &u.password_hash_file) {
                (Some(h), None) => ("password_hash", h.clone()),
                (None, Some(f)) => {
                    let key = format!("{at}.password_hash_file");
                    let text = super::files::read(&key, &base.join(f), "")?;
                    ("password_hash_file", text.trim().to_owned())
                }
                (Some(_), Some(_)) => bail!(
                    "{at} (user {:?}) has both password_hash and password_hash_file; keep one",
                    u.name
                ),
                (None, None) => bail!(
                    "{at} (user {:?}) has no password_hash or password_hash_file; make a hash \
                     with `landfall hash-password` (it reads the password on stdin)",
                    u.name
                ),
            };
            check_hash(&hash).with_context(|| {
                format!(
                    "{at}.{field} (user {:?}): make one with `landfall hash-password` \
                     (it reads the password on stdin)",
                    u.name
                )
            })?;
            users.push(DashboardUser {
                name: u.name.clone(),
                role: u.role,
                password_hash: hash,
            });
        }
        Ok(DashboardSettings {
            enabled: self.enabled.unwrap_or(true),
            session_ttl,
            max_failed_logins,
            login_window,
            users,
        })
    }
}

/// A PHC string of argon2 (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
fn check_hash(s: &str) -> Result<()> {
    let h = argon2::PasswordHash::new(s)
        .map_err(|e| anyhow::anyhow!("not a PHC password hash ({e})"))?;
    let alg = h.algorithm.as_str();
    if !matches!(alg, "argon2id" | "argon2i" | "argon2d") {
        bail!("the hash is {alg}, not argon2 (argon2id is the one to use)");
    }
    if h.hash.is_none() || h.salt.is_none() {
        bail!("the hash has no salt or no output");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pw: &str) -> String {
        crate::dashboard::auth::hash_password(pw).unwrap()
    }

    #[test]
    fn users_names_roles_and_hashes_are_checked_naming_the_field() {
        let ok: DashboardSection = toml::from_str(&format!(
            "session_ttl = \"1h\"\n[[users]]\nname = \"alice\"\nrole = \"operator\"\npassword_hash = \"{}\"\n",
            hash("pw")
        ))
        .unwrap();
        let s = ok.check(Path::new(".")).unwrap();
        assert_eq!(s.session_ttl, Duration::from_secs(3600));
        assert_eq!(s.users[0].role, Role::Operator);

        let bad: DashboardSection = toml::from_str(
            "[[users]]\nname = \"bob\"\nrole = \"viewer\"\npassword_hash = \"hunter2\"\n",
        )
        .unwrap();
        let e = format!("{:#}", bad.check(Path::new(".")).unwrap_err());
        assert!(
            e.contains("dashboard.users[0].password_hash") && e.contains("landfall hash-password"),
            "{e}"
        );

        let e = toml::from_str::<DashboardSection>(
            "[[users]]\nname = \"bob\"\nrole = \"admin\"\npassword_hash = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("viewer") && e.contains("operator"), "{e}");

        let twice: DashboardSection = toml::from_str(&format!(
            "[[users]]\nname = \"a\"\nrole = \"viewer\"\npassword_hash = \"{h}\"\n\
             [[users]]\nname = \"a\"\nrole = \"viewer\"\npassword_hash = \"{h}\"\n",
            h = hash("x")
        ))
        .unwrap();
        let e = format!("{:#}", twice.check(Path::new(".")).unwrap_err());
        assert!(e.contains("dashboard.users[1].name"), "{e}");

        let short: DashboardSection = toml::from_str("session_ttl = \"5s\"").unwrap();
        let e = format!("{:#}", short.check(Path::new(".")).unwrap_err());
        assert!(e.contains("dashboard.session_ttl"), "{e}");
    }

    #[test]
    fn a_hash_comes_from_a_file_beside_the_config_and_one_source_is_required() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tech.hash"), format!("{}\n", hash("pw"))).unwrap();
        let from_file: DashboardSection = toml::from_str(
            "[[users]]\nname = \"tech\"\nrole = \"viewer\"\npassword_hash_file = \"tech.hash\"\n",
        )
        .unwrap();
        let s = from_file.check(dir.path()).unwrap();
        let h = &s.users[0].password_hash;
        assert!(
            h.starts_with("$argon2id$") && !h.ends_with('\n'),
            "read and trimmed: {h:?}"
        );

        let missing: DashboardSection = toml::from_str(
            "[[users]]\nname = \"tech\"\nrole = \"viewer\"\npassword_hash_file = \"nope.hash\"\n",
        )
        .unwrap();
        let e = format!("{:#}", missing.check(dir.path()).unwrap_err());
        assert!(
            e.contains("dashboard.users[0].password_hash_file") && e.contains("nope.hash"),
            "{e}"
        );

        std::fs::write(dir.path().join("bad.hash"), "hunter2\n").unwrap();
        let bad: DashboardSection = toml::from_str(
            "[[users]]\nname = \"tech\"\nrole = \"viewer\"\npassword_hash_file = \"bad.hash\"\n",
        )
        .unwrap();
        let e = format!("{:#}", bad.check(dir.path()).unwrap_err());
        assert!(
            e.contains("dashboard.users[0].password_hash_file") && e.contains("not a PHC"),
            "{e}"
        );

        let neither: DashboardSection =
            toml::from_str("[[users]]\nname = \"tech\"\nrole = \"viewer\"\n").unwrap();
        let e = format!("{:#}", neither.check(dir.path()).unwrap_err());
        assert!(
            e.contains("dashboard.users[0]") && e.contains("password_hash_file"),
            "{e}"
        );

        let both: DashboardSection = toml::from_str(&format!(
            "[[users]]\nname = \"tech\"\nrole = \"viewer\"\npassword_hash = \"{}\"\npassword_hash_file = \"tech.hash\"\n",
            hash("pw")
        ))
        .unwrap();
        let e = format!("{:#}", both.check(dir.path()).unwrap_err());
        assert!(e.contains("both"), "{e}");
    }
}

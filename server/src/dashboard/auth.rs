//! Dashboard logins: the admin token or `[[dashboard.users]]` with argon2
//! hashes; sessions held in memory (a restart logs everybody out); CSRF
//! tokens; failed logins limited per client address and per user name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::app::{random_hex, token_hash};
use crate::config::{DashboardSettings, Role};

/// Name of the session cookie (path `/ui`).
pub const SESSION_COOKIE: &str = "landfall_session";
/// Name of the cookie that carries the login form's CSRF token.
pub const LOGIN_COOKIE: &str = "landfall_login";
/// The user name a login with the admin token gets.
pub const ADMIN_USER: &str = "admin";
/// Most sessions held at once; past it the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;
/// Most clients and names whose failed logins are counted at once.
const MAX_LIMITED: usize = 10_000;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every POST of this session carries.
    pub csrf: String,
    pub expires: Instant,
    /// A message for the next page (an action's answer).
    pub flash: Option<Flash>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// Sessions by the SHA-256 of their cookie value.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session: its cookie value (given to the browser only).
    pub fn create(&self, user: &str, role: Role) -> Result<String> {
        let cookie = random_hex(32)?;
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_hex(32)?,
            expires: Instant::now() + self.ttl,
            flash: None,
        };
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(token_hash(&cookie), session);
        Ok(cookie)
    }

    /// The live session of a cookie value.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = token_hash(cookie);
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether the session is still there (not logged out, not expired).
    pub fn alive(&self, cookie: &str) -> bool {
        self.get(cookie).is_some()
    }

    /// Log out: the cookie is worth nothing from now on.
    pub fn remove(&self, cookie: &str) {
        self.lock().remove(&token_hash(cookie));
    }

    pub fn set_flash(&self, cookie: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&token_hash(cookie)) {
            s.flash = Some(flash);
        }
    }

    pub fn take_flash(&self, cookie: &str) -> Option<Flash> {
        self.lock()
            .get_mut(&token_hash(cookie))
            .and_then(|s| s.flash.take())
    }
}

/// Failed logins counted per client address and per user name, each in a
/// fixed window: past the limit every try (even a right one) is refused
/// until the window ends.
pub struct LoginLimiter {
    map: Mutex<HashMap<String, (Instant, u32)>>,
    max: u32,
    window: Duration,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            window,
        }
    }

    fn keys(ip: Option<IpAddr>, user: &str) -> Vec<String> {
        let mut k = vec![format!("user:{user}")];
        if let Some(ip) = ip {
            k.push(format!("ip:{ip}"));
        }
        k
    }

    /// `Some(seconds to wait)` when the address or the name is locked out.
    pub fn blocked(&self, ip: Option<IpAddr>, user: &str) -> Option<u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Self::keys(ip, user)
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|(start, n)| *n >= self.max && now < *start + self.window)
            .map(|(start, _)| (*start + self.window - now).as_secs() + 1)
            .max()
    }

    pub fn failed(&self, ip: Option<IpAddr>, user: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_LIMITED {
            map.retain(|_, (start, _)| now < *start + self.window);
        }
        for k in Self::keys(ip, user) {
            let e = map.entry(k).or_insert((now, 0));
            if now >= e.0 + self.window {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }

    pub fn succeeded(&self, ip: Option<IpAddr>, user: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for k in Self::keys(ip, user) {
            map.remove(&k);
        }
    }
}

/// What a login form sent.
pub enum Credentials {
    AdminToken(String),
    Password { user: String, password: String },
}

/// Check credentials: the user and role, or `None`. Argon2 runs on a
/// blocking thread; an unknown name costs the same as a known one.
pub async fn check(
    settings: &DashboardSettings,
    admin_token_hash: &str,
    creds: Credentials,
) -> Result<Option<(String, Role)>> {
    match creds {
        Credentials::AdminToken(t) => Ok(crate::api::same(&token_hash(t.trim()), admin_token_hash)
            .then(|| (ADMIN_USER.to_owned(), Role::Operator))),
        Credentials::Password { user, password } => {
            let found = settings.users.iter().find(|u| u.name == user).cloned();
            let hash = found
                .as_ref()
                .map(|u| u.password_hash.clone())
                .unwrap_or_else(|| dummy_hash().to_owned());
            let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .context("password check")?;
            Ok(match found {
                Some(u) if ok => Some((u.name, u.role)),
                _ => None,
            })
        }
    }
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash nobody's password matches, checked for unknown names.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(&random_hex(16).unwrap_or_default()).unwrap_or_default())
}

/// The argon2id PHC string of `password` (argon2's default cost), with a
/// random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

/// `landfall hash-password`: one line of stdin (without its line end).
pub fn hash_password_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on stdin; e.g. `read -rs PW && printf '%s\\n' \"$PW\" | landfall hash-password`");
    }
    hash_password(password)
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure under TLS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_sessions_end_at_logout_and_expiry() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));

        let s = Sessions::new(Duration::from_secs(60));
        let c = s.create("alice", Role::Viewer).unwrap();
        assert_eq!(s.get(&c).unwrap().user, "alice");
        s.set_flash(
            &c,
            Flash {
                ok: true,
                text: "done".into(),
            },
        );
        assert_eq!(s.take_flash(&c).unwrap().text, "done");
        assert!(s.take_flash(&c).is_none());
        s.remove(&c);
        assert!(s.get(&c).is_none());

        let short = Sessions::new(Duration::ZERO);
        let c = short.create("bob", Role::Operator).unwrap();
        assert!(short.get(&c).is_none(), "expired");
    }

    #[test]
    fn failed_logins_lock_the_address_and_the_name_out() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let ip: Option<IpAddr> = Some("10.0.0.9".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.10".parse().unwrap());
        assert!(l.blocked(ip, "alice").is_none());
        l.failed(ip, "alice");
        assert!(l.blocked(ip, "alice").is_none());
        l.failed(ip, "alice");
        let wait = l.blocked(ip, "alice").unwrap();
        assert!((1..=61).contains(&wait), "{wait}");
        // The name from another address, and another name from this one.
        assert!(l.blocked(other, "alice").is_some());
        assert!(l.blocked(ip, "bob").is_some());
        assert!(l.blocked(other, "bob").is_none());
        l.succeeded(ip, "alice");
        assert!(l.blocked(ip, "alice").is_none());
    }

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; landfall_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie("x", "v", "/ui", Duration::from_secs(5), true);
        assert_eq!(
            c,
            "x=v; Path=/ui; Max-Age=5; HttpOnly; SameSite=Strict; Secure"
        );
    }
}

//! The agent's side of the trusted-orchestrator flow (docs/security.md):
//!
//! 1. `sys/wrapping/lookup` the wrap token and compare its `creation_path`
//!    with the assignment's (and with the AppRole `secret-id` shape);
//! 2. `sys/wrapping/unwrap` it: the `secret_id`;
//! 3. `auth/APPROLE/login` with the image's `role_id`: a Vault token;
//! 4. read every KV v2 path of the assignment;
//! 5. `auth/token/revoke-self`, whatever happened in 4.
//!
//! A wrap token that fails lookup, was created elsewhere, or is gone by the
//! time it is unwrapped is a [`SecretsError::SecurityAlarm`]: someone else
//! may hold the `secret_id`. The caller stops before touching any disk.
//!
//! Connection errors and 5xx are retried with [`Retry`] (capped); 4xx fail at
//! once. No token, id or value ever reaches an error, a log line or `Debug`.

use std::collections::BTreeMap;
use std::time::Duration;

use landfall_proto::{SecretFile, VaultAssignment};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::secret::SecretBytes;
use crate::retry::{Attempt, Retry, RetryError};

/// Why fetching secrets failed. The caller matches on it: an alarm is a
/// security event (`data.security = true`), the others plain failures.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "security alarm: {reason}; the wrapped secret_id may have been intercepted, \
         so the install stops before any disk is touched (the server marks the machine \
         compromised; investigate, then `landfall reinstall`)"
    )]
    SecurityAlarm { reason: String },
    #[error(
        "Vault denied {path} ({status}): {errors}; the AppRole's policy must grant \
         `read` on {path} (e.g. `path \"{path}\" {{ capabilities = [\"read\"] }}`)"
    )]
    Denied {
        path: String,
        status: u16,
        errors: String,
    },
    #[error("no secret at {path} (404); write it first, e.g. `bao kv put {kv_hint} KEY=VALUE`")]
    NotFound { path: String, kv_hint: String },
    #[error("secret {from:?} is missing: {what}; add the key to the KV secret or fix the role's secret_files")]
    Missing { from: String, what: String },
    #[error("Vault answered {status} for {path}: {errors}{hint}")]
    Vault {
        path: String,
        status: u16,
        errors: String,
        hint: &'static str,
    },
    #[error("Vault at {url} failed after {tries} tries: {last}")]
    Unavailable {
        url: String,
        tries: u32,
        last: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl SecretsError {
    pub fn is_security_alarm(&self) -> bool {
        matches!(self, Self::SecurityAlarm { .. })
    }

    /// What the failed event's `data` says: `security` for an alarm (the
    /// server then marks the machine compromised), nothing otherwise.
    pub fn failure_data(&self) -> landfall_proto::FailureData {
        landfall_proto::FailureData {
            security: self.is_security_alarm(),
            ..Default::default()
        }
    }
}

/// How the agent talks to Vault; [`FetchOptions::default`] for real installs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Retries for connection errors and 5xx (each call separately).
    pub retry: Retry,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// A CA PEM baked into the image (`/etc/landfall/vault-ca.pem`); wins over
    /// the assignment's `ca_pem`, so a forged assignment cannot swap the CA.
    pub pinned_ca: Option<String>,
    /// Accept an `http://` Vault address (`landfall.vault_insecure_http=1`,
    /// development only). Off: plain http is refused.
    pub allow_http: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            retry: Retry {
                initial: Duration::from_millis(500),
                cap: Duration::from_secs(5),
                max_tries: Some(6),
            },
            timeout: Duration::from_secs(15),
            pinned_ca: None,
            allow_http: false,
        }
    }
}

/// The fetched secrets: KV path (as in `vault.reads`) -> key -> value, the
/// files of an age bundle (path in the bundle -> content, see
/// [`super::bundle`]), and the files to place. `Debug` shows paths, keys and
/// bundle names, never values.
pub struct Fetched {
    secrets: BTreeMap<String, BTreeMap<String, SecretBytes>>,
    bundle: BTreeMap<String, SecretBytes>,
    files: Vec<SecretFile>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: BTreeMap<&str, Vec<&str>> = self
            .secrets
            .iter()
            .map(|(p, m)| (p.as_str(), m.keys().map(String::as_str).collect()))
            .collect();
        f.debug_struct("Fetched")
            .field("keys", &keys)
            .field("bundle", &self.bundle.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .finish()
    }
}

impl Fetched {
    /// Build from values at hand (tests, the age bundle path). Every file's
    /// `from` must resolve.
    pub fn new(
        secrets: BTreeMap<String, BTreeMap<String, SecretBytes>>,
        files: &[SecretFile],
    ) -> Result<Self, SecretsError> {
        Self::with_sources(secrets, BTreeMap::new(), files)
    }

    /// Build from the files of an age bundle (`bundle:PATH` references).
    pub fn from_bundle(
        bundle: BTreeMap<String, SecretBytes>,
        files: &[SecretFile],
    ) -> Result<Self, SecretsError> {
        Self::with_sources(BTreeMap::new(), bundle, files)
    }

    fn with_sources(
        secrets: BTreeMap<String, BTreeMap<String, SecretBytes>>,
        bundle: BTreeMap<String, SecretBytes>,
        files: &[SecretFile],
    ) -> Result<Self, SecretsError> {
        let f = Self {
            secrets,
            bundle,
            files: files.to_vec(),
        };
        for file in files {
            f.lookup(&file.from)?;
        }
        Ok(f)
    }

    /// The content of the bundle file at `path` (e.g. a LUKS key).
    pub fn bundle_file(&self, path: &str) -> Option<&SecretBytes> {
        self.bundle.get(path)
    }

    /// The value of `key` in the KV secret at `path` (e.g. a LUKS key for the
    /// disk step: `get("hosts/ws-01", "luks_key")`).
    pub fn get(&self, path: &str, key: &str) -> Option<&SecretBytes> {
        self.secrets.get(path)?.get(key)
    }

    /// Resolve a `kv:PATH#KEY` or `bundle:PATH` reference.
    pub fn lookup(&self, from: &str) -> Result<&SecretBytes, SecretsError> {
        let missing = |what: String| SecretsError::Missing {
            from: from.to_owned(),
            what,
        };
        if let Some(p) = super::bundle::parse_bundle_from(from) {
            return self.bundle.get(p).ok_or_else(|| {
                missing(if self.bundle.is_empty() {
                    "no secrets bundle was opened".to_owned()
                } else {
                    format!(
                        "the bundle has no file {p:?} (it has: {})",
                        self.bundle.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            });
        }
        let (path, key) = parse_from(from)
            .ok_or_else(|| missing("not of the form kv:PATH#KEY or bundle:PATH".into()))?;
        let m = self.secrets.get(path).ok_or_else(|| {
            missing(format!(
                "{path:?} was not read (it is not among the assignment's vault.reads)"
            ))
        })?;
        m.get(key).ok_or_else(|| {
            missing(format!(
                "the secret at {path:?} has no key {key:?} (it has: {})",
                m.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn files(&self) -> &[SecretFile] {
        &self.files
    }

    /// The KV paths read, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

/// `kv:PATH#KEY` -> (PATH, KEY).
pub fn parse_from(from: &str) -> Option<(&str, &str)> {
    let (p, k) = from.strip_prefix("kv:")?.split_once('#')?;
    (!p.is_empty() && !k.is_empty()).then_some((p, k))
}

/// Run the whole flow (see the module docs) and return the secrets. Every
/// `files[].from` must resolve, so a missing key fails here, before disks.
pub async fn fetch(
    vault: &VaultAssignment,
    role_id: &SecretBytes,
    files: &[SecretFile],
    opts: &FetchOptions,
) -> Result<Fetched, SecretsError> {
    let c = VaultClient::new(vault, opts)?;
    check_creation_path_shape(vault)?;

    // 1. Look up the wrap token before using it.
    let looked: Data<LookupData> = c
        .call(
            Method::POST,
            "sys/wrapping/lookup",
            None,
            Some(Body::WrapToken(vault.wrap_token.expose())),
            VaultCall::Lookup,
        )
        .await?;
    if looked.data.creation_path != vault.creation_path {
        return Err(SecretsError::SecurityAlarm {
            reason: format!(
                "the wrap token was created at {:?}, not at {:?} as the server said",
                looked.data.creation_path, vault.creation_path
            ),
        });
    }

    // 2. Unwrap: single use, so from here on nobody else can.
    let unwrapped: Data<UnwrapData> = c
        .call(
            Method::POST,
            "sys/wrapping/unwrap",
            Some(vault.wrap_token.expose().as_bytes()),
            None,
            VaultCall::Unwrap,
        )
        .await?;
    let secret_id = unwrapped.data.secret_id;

    // 3. AppRole login.
    let login_path = format!("auth/{}/login", vault.approle_mount);
    let login: LoginResponse = c
        .call(
            Method::POST,
            &login_path,
            None,
            Some(Body::Login {
                role_id,
                secret_id: &secret_id,
            }),
            VaultCall::Login,
        )
        .await?;
    drop(secret_id);
    let token = login.auth.client_token;

    // 4. KV v2 reads, then 5. revoke the token whatever happened.
    let read = read_all(&c, vault, &token).await;
    let revoked: Result<Empty, _> = c
        .call(
            Method::POST,
            "auth/token/revoke-self",
            Some(token.expose()),
            None,
            VaultCall::Revoke,
        )
        .await;
    if let Err(e) = revoked {
        tracing::warn!(error = %e, "could not revoke the agent's Vault token; it expires with its TTL");
    }
    Fetched::new(read?, files)
}

async fn read_all(
    c: &VaultClient,
    vault: &VaultAssignment,
    token: &SecretBytes,
) -> Result<BTreeMap<String, BTreeMap<String, SecretBytes>>, SecretsError> {
    let mut out = BTreeMap::new();
    for p in &vault.reads {
        let api_path = format!("{}/data/{}", vault.kv_mount, p.trim_matches('/'));
        let kv: Data<KvData> = c
            .call(
                Method::GET,
                &api_path,
                Some(token.expose()),
                None,
                VaultCall::Read {
                    kv_hint: format!("-mount={} {p}", vault.kv_mount),
                },
            )
            .await?;
        tracing::info!(path = %api_path, keys = kv.data.data.len(), "read secret");
        out.insert(p.clone(), kv.data.data);
    }
    Ok(out)
}

/// An AppRole secret-id creation path has the shape
/// `auth/APPROLE_MOUNT/role/NAME/secret-id`; anything else wraps something
/// we must not trust, whatever lookup says.
fn check_creation_path_shape(vault: &VaultAssignment) -> Result<(), SecretsError> {
    let ok = vault
        .creation_path
        .strip_prefix(&format!("auth/{}/role/", vault.approle_mount))
        .and_then(|r| r.strip_suffix("/secret-id"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::SecurityAlarm {
            reason: format!(
                "the assignment's creation_path {:?} is not an AppRole secret-id path \
                 (auth/{}/role/NAME/secret-id)",
                vault.creation_path, vault.approle_mount
            ),
        })
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    creation_path: String,
}

#[derive(Deserialize)]
struct UnwrapData {
    secret_id: SecretBytes,
}

#[derive(Deserialize)]
struct LoginResponse {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: SecretBytes,
}

#[derive(Deserialize)]
struct KvData {
    #[serde(default)]
    data: BTreeMap<String, SecretBytes>,
}

/// Any answer (or none: 204).
struct Empty;

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Empty)
    }
}

#[derive(Deserialize, Default)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// Request bodies, built into a zeroized buffer.
enum Body<'a> {
    WrapToken(&'a str),
    Login {
        role_id: &'a SecretBytes,
        secret_id: &'a SecretBytes,
    },
}

impl Body<'_> {
    fn to_bytes(&self) -> Result<SecretBytes, SecretsError> {
        let s = |b: &SecretBytes| {
            b.expose_str().map(str::to_owned).ok_or_else(|| {
                SecretsError::Setup("a Vault id is not UTF-8 (check the role_id file)".into())
            })
        };
        let v = match self {
            Body::WrapToken(t) => serde_json::json!({ "token": t }),
            Body::Login { role_id, secret_id } => {
                let mut r = zeroize::Zeroizing::new(s(role_id)?);
                let mut si = zeroize::Zeroizing::new(s(secret_id)?);
                serde_json::json!({
                    "role_id": std::mem::take(&mut *r),
                    "secret_id": std::mem::take(&mut *si),
                })
            }
        };
        let bytes = serde_json::to_vec(&v).map_err(|e| SecretsError::Setup(e.to_string()))?;
        // The Value's strings are dropped without zeroizing; its buffers are
        // short-lived copies (documented in docs/security.md).
        Ok(SecretBytes::new(bytes))
    }
}

/// What a call is, for mapping 4xx answers to the right error.
#[derive(Clone)]
enum VaultCall {
    Lookup,
    Unwrap,
    Login,
    Read { kv_hint: String },
    Revoke,
}

struct VaultClient {
    base: String,
    http: reqwest::Client,
    retry: Retry,
}

impl VaultClient {
    fn new(vault: &VaultAssignment, opts: &FetchOptions) -> Result<Self, SecretsError> {
        let base = vault.address.trim_end_matches('/').to_owned();
        let https = base.starts_with("https://");
        let plain_ok = base.starts_with("http://") && opts.allow_http;
        if !https && !plain_ok {
            return Err(SecretsError::Setup(format!(
                "Vault address {base:?} is not https; plain http is refused unless the image \
                 or kernel command line sets landfall.vault_insecure_http=1 (development only)"
            )));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(opts.timeout)
            .user_agent(concat!("landfall-agent/", env!("CARGO_PKG_VERSION")))
            .tls_built_in_root_certs(false)
            .https_only(!opts.allow_http);
        if https {
            let pem = opts
                .pinned_ca
                .as_ref()
                .or(vault.ca_pem.as_ref())
                .ok_or_else(|| {
                    SecretsError::Setup(
                        "Vault is https but no CA is pinned: bake /etc/landfall/vault-ca.pem into \
                     the image or set vault.ca_file on the server"
                            .into(),
                    )
                })?;
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    SecretsError::Setup("the Vault CA is not a PEM certificate".into())
                })?;
            for cert in certs {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b
            .build()
            .map_err(|e| SecretsError::Setup(format!("building the Vault HTTP client: {e}")))?;
        Ok(Self {
            base,
            http,
            retry: opts.retry,
        })
    }

    /// One API call with retries on connection errors and 5xx.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&[u8]>,
        body: Option<Body<'_>>,
        call: VaultCall,
    ) -> Result<T, SecretsError> {
        let url = format!("{}/v1/{path}", self.base);
        let body = body.map(|b| b.to_bytes()).transpose()?;
        let r = self
            .retry
            .run(
                |_| {
                    let (method, url, call) = (method.clone(), url.clone(), call.clone());
                    let body = body.as_ref();
                    async move { self.once(method, &url, path, token, body, &call).await }
                },
                |e, n, d| {
                    tracing::warn!(path, try_ = n, delay = ?d, error = %e, "Vault call failed; retrying");
                },
            )
            .await;
        match r {
            Ok(v) => Ok(v),
            Err(RetryError::Fatal(e)) => Err(e),
            Err(RetryError::Exhausted { tries, last }) => Err(SecretsError::Unavailable {
                url,
                tries,
                last: last.to_string(),
            }),
        }
    }

    async fn once<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        path: &str,
        token: Option<&[u8]>,
        body: Option<&SecretBytes>,
        call: &VaultCall,
    ) -> Attempt<T, SecretsError> {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            let mut v = match reqwest::header::HeaderValue::from_bytes(t) {
                Ok(v) => v,
                Err(_) => {
                    return Attempt::Fatal(SecretsError::Setup(
                        "a Vault token has bytes not allowed in a header".into(),
                    ))
                }
            };
            v.set_sensitive(true);
            req = req.header("X-Vault-Token", v);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.expose().to_vec());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry(SecretsError::Setup(format!(
                    "cannot reach {url}: {}",
                    chain(e)
                )))
            }
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => SecretBytes::new(b.to_vec()),
            Err(e) => {
                return Attempt::Retry(SecretsError::Setup(format!(
                    "reading the answer of {url}: {}",
                    chain(e)
                )))
            }
        };
        if status.is_success() {
            let raw = if bytes.is_empty() {
                &b"null"[..]
            } else {
                bytes.expose()
            };
            return match serde_json::from_slice::<T>(raw) {
                Ok(v) => Attempt::Done(v),
                // serde_json's message names the field and position, not the value.
                Err(e) => Attempt::Fatal(SecretsError::Setup(format!(
                    "{url} answered {status} with unexpected JSON: {e}"
                ))),
            };
        }
        let errors = serde_json::from_slice::<VaultErrors>(bytes.expose())
            .unwrap_or_default()
            .errors
            .join("; ");
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Attempt::Retry(SecretsError::Vault {
                path: path.to_owned(),
                status: status.as_u16(),
                errors,
                hint: "",
            });
        }
        Attempt::Fatal(client_error(path, status, errors, call))
    }
}

/// A 4xx answer as the error the caller can act on.
fn client_error(path: &str, status: StatusCode, errors: String, call: &VaultCall) -> SecretsError {
    match call {
        VaultCall::Lookup => SecretsError::SecurityAlarm {
            reason: format!(
                "the wrap token failed sys/wrapping/lookup ({status}: {errors}): it was already \
                 unwrapped, expired, or never existed"
            ),
        },
        VaultCall::Unwrap => SecretsError::SecurityAlarm {
            reason: format!(
                "the wrap token could not be unwrapped ({status}: {errors}) right after a \
                 successful lookup: someone else unwrapped it"
            ),
        },
        VaultCall::Read { kv_hint } if status == StatusCode::NOT_FOUND => SecretsError::NotFound {
            path: path.to_owned(),
            kv_hint: kv_hint.clone(),
        },
        VaultCall::Read { .. } if status == StatusCode::FORBIDDEN => SecretsError::Denied {
            path: path.to_owned(),
            status: status.as_u16(),
            errors,
        },
        VaultCall::Login => SecretsError::Vault {
            path: path.to_owned(),
            status: status.as_u16(),
            errors,
            hint: "; check the image's role_id (/etc/landfall/vault-role-id) belongs to the \
                   role's AppRole",
        },
        _ => SecretsError::Vault {
            path: path.to_owned(),
            status: status.as_u16(),
            errors,
            hint: "",
        },
    }
}

/// A reqwest error with its sources on one line (they carry the TLS reason).
fn chain(e: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

//! Vault/OpenBao as trusted orchestrator: per install attempt the server
//! mints a response-wrapped, single-use, short-TTL AppRole `secret_id` and
//! hands the wrap token (never the `secret_id`) to the agent in the
//! assignment. The `role_id` reaches the agent by another channel (baked into
//! the image), so neither channel alone can log in. See docs/security.md.
//!
//! Nothing here logs, stores or returns a token in an error: the wrap token
//! lives only in the answer to `hello`; the server's own token only in the
//! request header.

use std::time::Duration;

use anyhow::{Context, Result};
use landfall_proto::{SecretString, VaultAssignment};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::{expand_template, RoleVault, VaultSettings};

/// Why minting failed. `Display` names the URL path and the fix, never a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Vault could not be reached (connection, TLS, timeout): 503.
    #[error("cannot reach Vault at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// Vault answered with an error status: 502.
    #[error("Vault answered {status} for {url}: {errors}{hint}")]
    Status {
        url: String,
        status: StatusCode,
        errors: String,
        hint: &'static str,
    },
    /// Vault answered something that is not a wrapped response: 502.
    #[error("Vault answered {url} without the expected wrap_info: {detail}")]
    Protocol { url: String, detail: String },
    /// The server's own token file could not be read: 503.
    #[error("{0:#}")]
    Local(anyhow::Error),
}

impl MintError {
    /// True when the problem is on the way to Vault (503), not Vault's answer (502).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Local(_))
    }
}

/// Mints wrapped `secret_id`s; one per server.
pub struct Orchestrator {
    settings: VaultSettings,
    http: reqwest::Client,
}

/// What a mint gives: the assignment's `vault` part, and the accessors to
/// record for revoking it later (none when Vault answered without them).
pub struct Minted {
    pub assignment: VaultAssignment,
    pub accessors: Option<MintAccessors>,
}

/// The accessors (not secrets: they can only look up or revoke) of a mint.
#[derive(Debug, Clone)]
pub struct MintAccessors {
    pub approle: String,
    pub wrap_accessor: String,
    pub secret_id_accessor: String,
}

#[derive(Deserialize)]
struct WrapResponse {
    wrap_info: Option<WrapInfo>,
}

#[derive(Deserialize)]
struct WrapInfo {
    token: SecretString,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    creation_path: String,
    #[serde(default)]
    wrapped_accessor: String,
}

#[derive(Deserialize)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

/// How long one call to Vault may take; the agent retries `hello` on 5xx.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Orchestrator {
    /// Build the HTTP client: rustls, the CA from `ca_file` as the only root
    /// (no system roots), plain http only when the config allowed it.
    pub fn new(settings: &VaultSettings) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(TIMEOUT)
            .user_agent(concat!("landfall/", env!("CARGO_PKG_VERSION")))
            .tls_built_in_root_certs(false)
            .https_only(!settings.insecure_http);
        if let Some(pem) = &settings.ca_pem {
            for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("parsing vault.ca_file")?
            {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Self {
            settings: settings.clone(),
            http: b.build().context("building the Vault HTTP client")?,
        })
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    /// `auth/APPROLE_MOUNT/role/NAME/secret-id`: the path the wrapped response
    /// is created at, which the agent checks with `sys/wrapping/lookup`.
    pub fn creation_path(&self, approle: &str) -> String {
        format!(
            "auth/{}/role/{approle}/secret-id",
            self.settings.approle_mount
        )
    }

    fn token(&self) -> Result<SecretString, MintError> {
        let t = std::fs::read_to_string(&self.settings.token_file)
            .with_context(|| {
                format!(
                    "reading vault.token_file {}",
                    self.settings.token_file.display()
                )
            })
            .map_err(MintError::Local)?;
        Ok(SecretString::new(t.trim()))
    }

    /// Mint a wrapped `secret_id` for `attempt_id` and build the assignment's
    /// `vault` part, with the accessors to record (the caller revokes the
    /// attempt's previous mints, recorded in the store, first).
    pub async fn mint(
        &self,
        attempt_id: &str,
        role_vault: &RoleVault,
        hostname: &str,
        role: &str,
    ) -> Result<Minted, MintError> {
        let token = self.token()?;
        let creation_path = self.creation_path(&role_vault.approle);
        let url = format!("{}/v1/{creation_path}", self.settings.address);
        // The metadata lands on the token the agent logs in with: audit logs
        // then name the machine and attempt.
        let metadata = serde_json::json!({
            "hostname": hostname,
            "role": role,
            "landfall_attempt": attempt_id,
        })
        .to_string();
        let resp = self
            .http
            .post(&url)
            .header("X-Vault-Token", sensitive(&token)?)
            .header(
                "X-Vault-Wrap-TTL",
                format!("{}s", self.settings.wrap_ttl.as_secs()),
            )
            .json(&serde_json::json!({ "metadata": metadata }))
            .send()
            .await
            .map_err(|e| MintError::Unreachable {
                url: url.clone(),
                detail: chain(e),
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let errors = serde_json::from_str::<VaultErrors>(&body)
                .map(|e| e.errors.join("; "))
                .unwrap_or_else(|_| body.chars().take(200).collect());
            let hint = match status {
                StatusCode::FORBIDDEN => {
                    "; the server's token (vault.token_file) needs a policy with \
                     `update` on this path"
                }
                StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
                    "; check that the AppRole exists (roles.NAME.vault.approle) and \
                     vault.approle_mount"
                }
                _ => "",
            };
            return Err(MintError::Status {
                url,
                status,
                errors,
                hint,
            });
        }
        let body: WrapResponse = resp.json().await.map_err(|e| MintError::Protocol {
            url: url.clone(),
            detail: chain(e),
        })?;
        let Some(info) = body.wrap_info else {
            return Err(MintError::Protocol {
                url,
                detail: "no wrap_info: the response was not wrapped (a proxy dropping \
                         X-Vault-Wrap-TTL?)"
                    .into(),
            });
        };
        if info.creation_path != creation_path {
            return Err(MintError::Protocol {
                url,
                detail: format!(
                    "wrap_info.creation_path is {:?}, expected {creation_path:?}",
                    info.creation_path
                ),
            });
        }
        let accessors = (!info.accessor.is_empty()).then(|| MintAccessors {
            approle: role_vault.approle.clone(),
            wrap_accessor: info.accessor.clone(),
            secret_id_accessor: info.wrapped_accessor.clone(),
        });
        let assignment = VaultAssignment {
            address: self.settings.agent_address.clone(),
            wrap_token: info.token,
            creation_path,
            approle_mount: self.settings.approle_mount.clone(),
            kv_mount: self.settings.kv_mount.clone(),
            reads: role_vault
                .reads
                .iter()
                .map(|r| expand_template(r, hostname, role))
                .collect(),
            ca_pem: self.settings.ca_pem.clone(),
        };
        Ok(Minted {
            assignment,
            accessors,
        })
    }

    /// Revoke a mint (a security alarm): the wrap token by its accessor and
    /// the `secret_id` it wrapped by its accessor, with the server's token.
    /// A wrap token already unwrapped is gone (Vault answers 400): that
    /// counts as revoked. The error names the paths that failed, no token.
    pub async fn revoke(&self, m: &MintAccessors) -> Result<(), String> {
        let token = self.token().map_err(|e| e.to_string())?;
        self.revoke_with(&token, &m.wrap_accessor, &m.secret_id_accessor, &m.approle)
            .await
    }

    /// Revoke the wrap token (by accessor) and destroy the `secret_id` it
    /// wrapped; both are tried. A wrap token already used or expired is
    /// fine (nothing left to revoke); a failed destroy is an error.
    async fn revoke_with(
        &self,
        token: &SecretString,
        wrap_accessor: &str,
        secret_accessor: &str,
        approle: &str,
    ) -> Result<(), String> {
        let mut failed = Vec::new();
        let calls = [
            (
                "auth/token/revoke-accessor".to_owned(),
                serde_json::json!({ "accessor": wrap_accessor }),
            ),
            (
                format!(
                    "auth/{}/role/{approle}/secret-id-accessor/destroy",
                    self.settings.approle_mount
                ),
                serde_json::json!({ "secret_id_accessor": secret_accessor }),
            ),
        ];
        let header = sensitive(token).map_err(|e| e.to_string())?;
        for (i, (path, body)) in calls.into_iter().enumerate() {
            let url = format!("{}/v1/{path}", self.settings.address);
            let r = self
                .http
                .post(&url)
                .header("X-Vault-Token", header.clone())
                .json(&body)
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {}
                // The wrap token was unwrapped or expired: nothing to revoke.
                Ok(resp) if i == 0 && resp.status() == StatusCode::BAD_REQUEST => {}
                Ok(resp) => failed.push(format!("{path}: {}", resp.status())),
                Err(e) => failed.push(format!("{path}: {}", chain(e))),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// The token as a header value marked sensitive (kept out of `Debug` and
/// HTTP/2 header compression tables).
fn sensitive(token: &SecretString) -> Result<reqwest::header::HeaderValue, MintError> {
    let mut v = reqwest::header::HeaderValue::from_str(token.expose()).map_err(|_| {
        MintError::Local(anyhow::anyhow!(
            "vault.token_file holds characters not allowed in an HTTP header; write only the token"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// A reqwest error with its sources on one line (they carry the TLS reason).
fn chain(e: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

//! `[metrics]` and `[[webhooks]]` (issue 15): what watches the server. The
//! token and secret files are read now (through `files`), so a missing or
//! empty one stops the start with the field named.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Result};
use landfall_proto::{MachineState, SecretString};

use std::collections::BTreeMap;

use super::{files, MetricsSection, RoleConfig, WebhookConfig};

/// The states a webhook is told about unless it names its own: the ones a
/// person acts on, and the good news that ends an install.
pub const DEFAULT_WEBHOOK_STATES: [MachineState; 6] = [
    MachineState::Failed,
    MachineState::Compromised,
    MachineState::Installed,
    MachineState::Ready,
    MachineState::Degraded,
    MachineState::IdentityHeld,
];

/// Shortest webhook secret accepted.
const MIN_SECRET: usize = 16;

/// `[metrics]` after validation.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// The bearer token `/metrics` requires, when `token_file` is set.
    pub token: Option<SecretString>,
    /// Serve `/metrics` on the plain-HTTP listener when TLS is on.
    pub plain_http: bool,
}

/// One `[[webhooks]]` entry after validation.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub states: Vec<MachineState>,
    /// Empty: every machine.
    pub roles: Vec<String>,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: SecretString,
    /// The CA trusted for an https `url`, instead of the public roots.
    pub ca_pem: Option<String>,
}

pub(super) fn check(
    metrics: &MetricsSection,
    hooks: &[WebhookConfig],
    roles: &BTreeMap<String, RoleConfig>,
    base: &Path,
) -> Result<(MetricsSettings, Vec<WebhookSettings>)> {
    let token = match &metrics.token_file {
        None => None,
        Some(f) => Some(secret_file("metrics.token_file", &base.join(f), 1)?),
    };
    let metrics = MetricsSettings {
        token,
        plain_http: metrics.plain_http,
    };
    let mut urls = BTreeSet::new();
    let mut webhooks = Vec::new();
    for (i, w) in hooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let hook = check_webhook(&at, w, roles, base)?;
        if !urls.insert(hook.url.clone()) {
            bail!(
                "{at}.url is also the url of an earlier [[webhooks]] entry; merge the two \
                 entries' states and roles into one"
            );
        }
        webhooks.push(hook);
    }
    Ok((metrics, webhooks))
}

fn check_webhook(
    at: &str,
    w: &WebhookConfig,
    roles: &BTreeMap<String, RoleConfig>,
    base: &Path,
) -> Result<WebhookSettings> {
    let url = reqwest::Url::parse(&w.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{at}.url = {:?} is not an http(s) URL; write e.g. \"https://hooks.lan/landfall\"",
                w.url
            )
        })?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "{at}.url carries a user name or password; the receiver checks the signature \
             header instead (secret_file)"
        );
    }
    let states = match &w.states {
        None => DEFAULT_WEBHOOK_STATES.to_vec(),
        Some(list) if list.is_empty() => bail!(
            "{at}.states is empty: name the states to tell about, or leave it out for the \
             default ({})",
            names(&DEFAULT_WEBHOOK_STATES)
        ),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(j, s)| match MachineState::parse(s) {
                MachineState::Unknown | MachineState::Expected => bail!(
                    "{at}.states[{j}] = {s:?} is not a state a machine enters; use one of: {}",
                    names(&STORED_STATES)
                ),
                st => Ok(st),
            })
            .collect::<Result<_>>()?,
    };
    for (j, r) in w.roles.iter().enumerate() {
        if !roles.contains_key(r) {
            bail!(
                "{at}.roles[{j}] = {r:?} names no role; define [roles.{r}] or use one of: {}",
                roles.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let secret = secret_file(
        &format!("{at}.secret_file"),
        &base.join(&w.secret_file),
        MIN_SECRET,
    )?;
    let ca_pem = match &w.ca_file {
        None => None,
        Some(f) => {
            let p = base.join(f);
            let pem = files::read(&format!("{at}.ca_file"), &p, "")?;
            reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{at}.ca_file {}: no PEM certificate in it; give the CA that signed the \
                         receiver's certificate",
                        p.display()
                    )
                })?;
            Some(pem)
        }
    };
    Ok(WebhookSettings {
        url: w.url.clone(),
        states,
        roles: w.roles.clone(),
        secret,
        ca_pem,
    })
}

/// Every state a machine can enter (all but `expected` and `unknown`).
const STORED_STATES: [MachineState; 11] = [
    MachineState::Discovered,
    MachineState::Assigned,
    MachineState::Installing,
    MachineState::Installed,
    MachineState::Ready,
    MachineState::Degraded,
    MachineState::Failed,
    MachineState::Compromised,
    MachineState::ReinstallRequested,
    MachineState::RetryRequested,
    MachineState::IdentityHeld,
];

fn names(states: &[MachineState]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The trimmed text of a token or key file, at least `min` characters.
fn secret_file(key: &str, path: &Path, min: usize) -> Result<SecretString> {
    let text = files::read(key, path, "")?;
    let t = text.trim();
    if t.len() < min {
        bail!(
            "{key}: {} holds {} characters; write at least {min} (e.g. the output of \
             `openssl rand -hex 32`)",
            path.display(),
            t.len()
        );
    }
    Ok(SecretString::new(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const BASE: &str = r#"
[roles.workstation]
[roles.server]
"#;

    /// Validate `BASE` + `extra` in a directory holding `hook.key` (32
    /// characters), `short.key` and `metrics.token`.
    fn check(extra: &str) -> Result<crate::config::Settings> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.key"), "k".repeat(32) + "\n").unwrap();
        std::fs::write(dir.path().join("short.key"), "abc").unwrap();
        std::fs::write(dir.path().join("metrics.token"), "t0ken\n").unwrap();
        Config::parse(&format!("{BASE}{extra}")).and_then(|c| c.validate(dir.path()))
    }

    fn err(extra: &str) -> String {
        format!("{:#}", check(extra).unwrap_err())
    }

    #[test]
    fn webhooks_take_states_roles_and_a_secret() {
        let s = check(
            r#"
[metrics]
token_file = "metrics.token"

[[webhooks]]
url = "https://hooks.lan/landfall"
secret_file = "hook.key"

[[webhooks]]
url = "http://10.0.0.9:9000/x"
states = ["failed", "discovered"]
roles = ["server"]
secret_file = "hook.key"
"#,
        )
        .unwrap();
        assert_eq!(s.metrics.token.as_ref().unwrap().expose(), "t0ken");
        assert!(!s.metrics.plain_http);
        assert_eq!(s.webhooks[0].states, DEFAULT_WEBHOOK_STATES);
        assert!(s.webhooks[0].roles.is_empty());
        assert_eq!(s.webhooks[0].secret.expose(), "k".repeat(32));
        assert_eq!(
            s.webhooks[1].states,
            [MachineState::Failed, MachineState::Discovered]
        );
        assert_eq!(s.webhooks[1].roles, ["server"]);
        let none = check("").unwrap();
        assert!(none.metrics.token.is_none() && none.webhooks.is_empty());
    }

    #[test]
    fn webhook_refusals_name_the_field_and_the_fix() {
        let hook = |body: &str| format!("[[webhooks]]\nsecret_file = \"hook.key\"\n{body}\n");
        for (cfg, want) in [
            (hook("url = \"ftp://x/\""), "webhooks[0].url = \"ftp://x/\" is not an http(s) URL"),
            (hook("url = \"https://u:p@x/\""), "webhooks[0].url carries a user name"),
            (
                hook("url = \"https://x/\"\nstates = [\"redy\"]"),
                "webhooks[0].states[0] = \"redy\" is not a state a machine enters; use one of: discovered",
            ),
            (hook("url = \"https://x/\"\nstates = [\"expected\"]"), "states[0] = \"expected\""),
            (hook("url = \"https://x/\"\nstates = []"), "webhooks[0].states is empty"),
            (
                hook("url = \"https://x/\"\nroles = [\"desk\"]"),
                "webhooks[0].roles[0] = \"desk\" names no role; define [roles.desk] or use one of: server, workstation",
            ),
            (
                format!("{}{}", hook("url = \"https://x/\""), hook("url = \"https://x/\"")),
                "webhooks[1].url is also the url",
            ),
            (
                "[[webhooks]]\nurl = \"https://x/\"\nsecret_file = \"short.key\"\n".into(),
                "webhooks[0].secret_file: ",
            ),
            (
                "[[webhooks]]\nurl = \"https://x/\"\nsecret_file = \"gone.key\"\n".into(),
                "webhooks[0].secret_file: reading",
            ),
            (
                hook("url = \"https://x/\"\nca_file = \"hook.key\""),
                "webhooks[0].ca_file",
            ),
            ("[[webhooks]]\nurl = \"https://x/\"\n".into(), "secret_file"),
            ("[metrics]\ntoken_file = \"gone\"\n".into(), "metrics.token_file: reading"),
            ("[metrics]\ntokens = \"x\"\n".into(), "unknown field `tokens`"),
        ] {
            let e = err(&cfg);
            assert!(e.contains(want), "{cfg}\n=> {e}\nwanted {want}");
        }
        assert!(
            err("[[webhooks]]\nurl = \"https://x/\"\nsecret_file = \"short.key\"\n")
                .contains("holds 3 characters; write at least 16")
        );
    }
}

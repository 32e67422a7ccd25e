//! Webhook notifications (issue 15): the notifier task of a running server.
//!
//! The store journals every change of a machine's state in the transaction
//! that made it (migration 7's triggers, `store/outbox.rs`). Once a second
//! the notifier fans the journal out into one delivery per matching
//! `[[webhooks]]` entry, claims the deliveries that are due, POSTs each
//! body (a [`StateChange`](landfall_proto::notify::StateChange)) signed with
//! HMAC-SHA256, and records the result: delivered (never sent again), or
//! due again after a doubling delay (1 s up to 10 min), or failed when it
//! has been tried for [`GIVE_UP_AFTER`]. The outbox is in the database, so
//! a restart loses none; a server that dies mid-send leaves its claim to
//! end after [`LEASE_SECS`], and that delivery is sent again (a receiver
//! drops a repeated `X-Landfall-Delivery` id).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use landfall_cmd::retry::Retry;
use landfall_proto::notify::{
    NotifiedMachine, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, STATE_CHANGED,
};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{App, AppState};
use crate::config::WebhookSettings;
use crate::store::{now, DueDelivery, SendResult, WebhookTarget};

/// How often the notifier looks at the outbox.
const POLL: Duration = Duration::from_secs(1);
/// How long a claimed delivery is hidden from other notifiers (another
/// server on the same database) while this one sends it.
pub const LEASE_SECS: i64 = 60;
/// Longest wait for a receiver's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries sent at once.
const BATCH: u64 = 16;
/// Journaled changes fanned out per look.
const FAN_OUT: u64 = 500;
/// A delivery not taken within this time after its change is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Ended deliveries are kept this long for `landfall notifications`.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The delay before the next send of a delivery that failed.
const BACKOFF: Retry = Retry {
    initial: Duration::from_secs(1),
    cap: Duration::from_secs(600),
    max_tries: None,
};

/// Start the notifier; it stops when `stop` turns true (or its sender is
/// gone), after the sends in flight are answered and recorded.
pub fn start(app: AppState, mut stop: watch::Receiver<bool>) -> Result<JoinHandle<()>> {
    let clients = clients(&app.settings.webhooks)?;
    if !app.settings.webhooks.is_empty() && dashboard_base(&app).is_none() {
        tracing::warn!(
            "webhook bodies carry no dashboard link: set server.public_url (the base URL \
             machines and people reach this server at)"
        );
    }
    Ok(tokio::spawn(async move {
        let mut pruned_at = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = look(&app, &clients, &mut pruned_at).await {
                tracing::error!("webhook notifier: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                r = stop.changed() => if r.is_err() { break },
            }
        }
    }))
}

/// One HTTP client per webhook (its own CA, or the public roots), no redirects.
fn clients(hooks: &[WebhookSettings]) -> Result<HashMap<String, reqwest::Client>> {
    hooks
        .iter()
        .map(|w| {
            let mut b = reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("landfall/", env!("CARGO_PKG_VERSION")));
            if let Some(pem) = &w.ca_pem {
                b = b.tls_built_in_root_certs(false);
                for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
                    b = b.add_root_certificate(c);
                }
            }
            Ok((
                w.url.clone(),
                b.build().context("building a webhook client")?,
            ))
        })
        .collect()
}

/// The dashboard's base URL in webhook bodies: the one people reach the
/// admin side at (HTTPS when TLS is on, as the agent's base).
fn dashboard_base(app: &App) -> Option<String> {
    match &app.settings.public_url {
        Some(u) => app.agent_base(u),
        None => app.settings.tls.as_ref().and_then(|t| t.public_url.clone()),
    }
}

/// The machine's dashboard page: `BASE/ui/machines/HOSTNAME` (else the MAC).
fn dashboard_link(base: &str, m: &NotifiedMachine) -> String {
    format!(
        "{}/ui/machines/{}",
        base.trim_end_matches('/'),
        m.hostname.as_deref().unwrap_or(&m.mac)
    )
}

/// Fan out the journal, send what is due, now and then forget old deliveries.
async fn look(
    app: &AppState,
    clients: &HashMap<String, reqwest::Client>,
    pruned_at: &mut i64,
) -> Result<()> {
    // Bounded: a burst larger than this goes on at the next look.
    for _ in 0..10 {
        let a = app.clone();
        let taken = app
            .store
            .write(move |tx| {
                let targets: Vec<WebhookTarget<'_>> = a
                    .settings
                    .webhooks
                    .iter()
                    .map(|w| WebhookTarget {
                        url: &w.url,
                        states: &w.states,
                        roles: &w.roles,
                    })
                    .collect();
                let base = dashboard_base(&a);
                let link = |m: &NotifiedMachine| base.as_deref().map(|b| dashboard_link(b, m));
                tx.fan_out(&targets, &link, FAN_OUT)
            })
            .await?;
        if taken < FAN_OUT as usize {
            break;
        }
    }
    let t = now();
    if t - *pruned_at >= 3600 {
        app.store
            .write(move |tx| tx.prune_deliveries(t - KEEP.as_secs() as i64))
            .await
            .context("forgetting old deliveries")?;
        *pruned_at = t;
    }
    let due = app
        .store
        .write(move |tx| tx.claim_due(t, LEASE_SECS, BATCH))
        .await?;
    let mut sends = tokio::task::JoinSet::new();
    for d in due {
        let client = clients.get(&d.url).cloned();
        let secret = app
            .settings
            .webhooks
            .iter()
            .find(|w| w.url == d.url)
            .map(|w| w.secret.expose().as_bytes().to_vec());
        sends.spawn(async move {
            let result = match (client, secret) {
                (Some(c), Some(s)) => send(&c, &s, &d).await,
                _ => Err((None, "the webhook is no longer configured".to_owned())),
            };
            (d, result)
        });
    }
    while let Some(joined) = sends.join_next().await {
        let (d, result) = joined.context("a webhook send panicked")?;
        let now = now();
        let recorded = match result {
            Ok(status) => {
                tracing::debug!(delivery = d.id, url = %origin(&d.url), status, "webhook delivered");
                app.metrics.webhook_sent("delivered");
                SendResult::Delivered { status }
            }
            Err((status, error)) => {
                let gone = clients.get(&d.url).is_none();
                if gone || now - d.created_at >= GIVE_UP_AFTER.as_secs() as i64 {
                    tracing::error!(delivery = d.id, url = %origin(&d.url), tries = d.attempts + 1, "webhook delivery given up: {error}");
                    app.metrics.webhook_sent("failed");
                    SendResult::GiveUp { status, error }
                } else {
                    let delay = BACKOFF.delay_before(d.attempts + 2).as_secs().max(1) as i64;
                    tracing::warn!(delivery = d.id, url = %origin(&d.url), tries = d.attempts + 1, "webhook delivery failed, trying again in {delay}s: {error}");
                    app.metrics.webhook_sent("retry");
                    SendResult::Retry {
                        status,
                        error,
                        next_at: now + delay,
                    }
                }
            }
        };
        app.store
            .write(move |tx| tx.record_send(d.id, &recorded, now))
            .await?;
    }
    Ok(())
}

/// POST one delivery: its 2xx status, or the status (if any) and why not.
async fn send(
    client: &reqwest::Client,
    secret: &[u8],
    d: &DueDelivery,
) -> Result<u16, (Option<u16>, String)> {
    let r = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, d.body.as_bytes()))
        .header(DELIVERY_HEADER, d.id.to_string())
        .header(EVENT_HEADER, STATE_CHANGED)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| (None, transport_error(&e)))?;
    let status = r.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err((
            Some(status.as_u16()),
            format!("the receiver answered {status}"),
        ))
    }
}

/// A transport error without the URL (which may carry a token in its path).
fn transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "no answer within the timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", crate::app::hex(&mac.finalize().into_bytes()))
}

/// `scheme://host[:port]` of a URL, for the log: a webhook's path may
/// carry a token.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "(bad url)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn signature_is_hmac_sha256_hex() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn links_name_the_machine_by_hostname_else_mac() {
        let m = |h: Option<&str>| NotifiedMachine {
            mac: "52:54:00:00:00:01".into(),
            hostname: h.map(str::to_owned),
            role: None,
        };
        assert_eq!(
            dashboard_link("https://lf.lan:8443/", &m(Some("ws-01"))),
            "https://lf.lan:8443/ui/machines/ws-01"
        );
        assert_eq!(
            dashboard_link("http://10.0.0.1:8080", &m(None)),
            "http://10.0.0.1:8080/ui/machines/52:54:00:00:00:01"
        );
    }

    #[test]
    fn the_backoff_doubles_to_ten_minutes() {
        let d = |a: u32| BACKOFF.delay_before(a + 2).as_secs();
        assert_eq!([d(0), d(1), d(2), d(3)], [1, 2, 4, 8]);
        assert_eq!(d(9), 512);
        assert_eq!(d(10), 600);
        assert_eq!(d(1000), 600);
    }
}

//! The Prometheus metrics of one server (issue 15), in the Prometheus text
//! format (0.0.4) through `prometheus-client`. `GET /metrics` is
//! `api::metrics`; this module records and renders.
//!
//! What happens is counted where it happens (installs, events, answers,
//! webhook sends, store calls, step durations from the agents' `Timing`);
//! what the machines are is read from the store at each scrape (machines by
//! state and role, deliveries by status), and the DHCP/TFTP servers'
//! counters are read from their own atomics. Counters start at 0 with each
//! server process, as Prometheus expects of counters. The names are listed
//! in docs/operator-guide.md ("Metrics").

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use landfall_proto::{DoneData, Event, FailureData, MachineState, Step, Timing};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::netboot::dhcp::DhcpStats;
use crate::netboot::tftp::TftpStats;
use crate::store::Store;

/// `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    state: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    role: String,
    /// The step that failed (`other` for a step the protocol does not name).
    step: String,
    /// The install failure's class, `security` for a compromised machine,
    /// `none` when the failure data has none.
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// Seconds of an agent's step: from a second to well over an hour.
const STEP_BUCKETS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// How long a scrape waits for the store's counts before it shows the last ones.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// What a scrape reads from the store.
#[derive(Debug, Clone, Default)]
struct StoreSnapshot {
    counts: Vec<crate::store::MachineCount>,
    deliveries: Vec<(landfall_proto::notify::DeliveryStatus, u64)>,
    known: std::collections::HashSet<String>,
}

/// The metrics of one server.
pub struct Metrics {
    /// The store's counts of the last scrape that read them.
    last_snapshot: Mutex<Option<StoreSnapshot>>,
    registry: Registry,
    /// One scrape at a time: a scrape refreshes the store's gauges, then renders.
    scrape: Mutex<()>,
    machines: Family<MachineLabels, Gauge>,
    deliveries: Family<StatusLabels, Gauge>,
    installs_started: Family<RoleLabels, Counter>,
    installs_finished: Family<RoleLabels, Counter>,
    installs_failed: Family<FailedLabels, Counter>,
    step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    events_stored: Counter,
    hello_answers: Family<StatusLabels, Counter>,
    verify_answers: Family<StatusLabels, Counter>,
    store_seconds: Histogram,
    webhook_sends: Family<StatusLabels, Counter>,
    netboot: Arc<NetbootCounters>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            scrape: Mutex::new(()),
            machines: Family::default(),
            deliveries: Family::default(),
            installs_started: Family::default(),
            installs_finished: Family::default(),
            installs_failed: Family::default(),
            step_seconds: Family::new_with_constructor(|| Histogram::new(STEP_BUCKETS)),
            events_stored: Counter::default(),
            last_snapshot: Mutex::new(None),
            hello_answers: Family::default(),
            verify_answers: Family::default(),
            // 50 µs .. ~1.6 s.
            store_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
            ),
            webhook_sends: Family::default(),
            netboot: Arc::new(NetbootCounters::default()),
            registry: Registry::default(),
        };
        registry.register(
            "landfall_machines",
            "Machines the server knows, by state and role (configured, never booted: expected)",
            m.machines.clone(),
        );
        registry.register(
            "landfall_installs_started",
            "Install attempts begun (a first hello of a boot token), by role",
            m.installs_started.clone(),
        );
        registry.register(
            "landfall_installs_finished",
            "Install attempts whose terminal event said success, by role",
            m.installs_finished.clone(),
        );
        registry.register(
            "landfall_installs_failed",
            "Install attempts whose terminal event said failure, by role, failed step and failure class",
            m.installs_failed.clone(),
        );
        registry.register(
            "landfall_step_duration_seconds",
            "Wall time of the agents' steps, from the Timing of each terminal event",
            m.step_seconds.clone(),
        );
        registry.register(
            "landfall_events_stored",
            "Agent events stored (each seq once)",
            m.events_stored.clone(),
        );
        registry.register(
            "landfall_hello_answers",
            "Answers to POST /api/v1/agent/hello, by HTTP status",
            m.hello_answers.clone(),
        );
        registry.register(
            "landfall_verify_answers",
            "Answers to POST /api/v1/agent/verify, by HTTP status",
            m.verify_answers.clone(),
        );
        registry.register(
            "landfall_store_call_seconds",
            "Time each store call waited for the database connection and used it",
            m.store_seconds.clone(),
        );
        registry.register(
            "landfall_webhook_deliveries",
            "Webhook deliveries in the outbox, by status (pending, delivered, failed)",
            m.deliveries.clone(),
        );
        registry.register(
            "landfall_webhook_sends",
            "Webhook sends tried, by result (delivered, retry, failed)",
            m.webhook_sends.clone(),
        );
        registry.register_collector(Box::new(m.netboot.clone()));
        Self { registry, ..m }
    }

    /// The histogram the store observes each call's latency into.
    pub fn store_latency(&self) -> Histogram {
        self.store_seconds.clone()
    }

    /// Count the DHCP and TFTP servers' counters from now on.
    pub fn watch_netboot(&self, dhcp: Option<Arc<DhcpStats>>, tftp: Option<Arc<TftpStats>>) {
        let _ = self.netboot.stats.set((dhcp, tftp));
    }

    /// A new install attempt of a machine of `role` began.
    pub fn install_started(&self, role: &str) {
        self.installs_started
            .get_or_create(&role_labels(Some(role)))
            .inc();
    }

    /// `inserted` events were stored.
    pub fn events_stored(&self, inserted: usize) {
        self.events_stored.inc_by(inserted as u64);
    }

    /// An attempt of a machine of `role` ended in `state` with the terminal
    /// event among `events`: count it, and its steps' durations.
    pub fn install_ended(&self, role: Option<&str>, state: MachineState, events: &[Event]) {
        let Some(done) = events.iter().find(|e| e.is_terminal()) else {
            return;
        };
        let role = role_labels(role);
        let timing = if state == MachineState::Installed {
            self.installs_finished.get_or_create(&role).inc();
            serde_json::from_value::<DoneData>(done.data.clone().unwrap_or_default())
                .map(|d| d.timing)
                .ok()
        } else {
            let f = FailureData::from_data(done.data.as_ref());
            let class = if state == MachineState::Compromised {
                "security".to_owned()
            } else {
                f.class.map_or("none", |c| c.as_str()).to_owned()
            };
            self.installs_failed
                .get_or_create(&FailedLabels {
                    role: role.role,
                    step: step_label(f.step.as_deref().unwrap_or("unknown")),
                    class,
                })
                .inc();
            f.timing
        };
        for (step, t) in timing.unwrap_or_else(Timing::default).steps {
            self.step_seconds
                .get_or_create(&StepLabels {
                    step: step_label(&step),
                })
                .observe(t.wall_ms as f64 / 1000.0);
        }
    }

    /// Count an answer to hello (`verify` false) or verify.
    pub fn answered(&self, verify: bool, status: u16) {
        let f = if verify {
            &self.verify_answers
        } else {
            &self.hello_answers
        };
        f.get_or_create(&StatusLabels {
            status: status.to_string(),
        })
        .inc();
    }

    /// Count a webhook send's result (`delivered`, `retry`, `failed`).
    pub fn webhook_sent(&self, result: &str) {
        self.webhook_sends
            .get_or_create(&StatusLabels {
                status: result.to_owned(),
            })
            .inc();
    }

    /// The text `GET /metrics` answers: the store's counts read now (the
    /// last ones read, when the store does not answer within
    /// [`SNAPSHOT_WAIT`]: a stalled database never stalls a scrape), then
    /// every metric.
    pub async fn render(&self, store: &Store, settings: &Settings) -> Result<String> {
        let macs: Vec<String> = settings.machines.keys().cloned().collect();
        let read = store.read(move |tx| {
            Ok(StoreSnapshot {
                counts: tx.machine_counts()?,
                deliveries: tx.delivery_counts()?,
                known: tx.known_macs(&macs)?,
            })
        });
        let snapshot = match tokio::time::timeout(SNAPSHOT_WAIT, read).await {
            Ok(r) => {
                let s = r?;
                *self.last_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                s
            }
            Err(_) => {
                tracing::warn!(
                    "/metrics: the store did not answer in time; the last counts are shown"
                );
                self.last_snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default()
            }
        };
        self.render_snapshot(snapshot, settings)
    }

    fn render_snapshot(&self, snapshot: StoreSnapshot, settings: &Settings) -> Result<String> {
        let StoreSnapshot {
            counts,
            deliveries,
            known,
        } = snapshot;
        let expected = settings
            .machines
            .iter()
            .filter(|(mac, _)| !known.contains(mac.as_str()))
            .map(|(_, m)| m.role.clone())
            .collect::<Vec<_>>();
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.machines.clear();
        for c in counts {
            self.machines
                .get_or_create(&MachineLabels {
                    state: c.state.as_str().to_owned(),
                    role: c.role.unwrap_or_default(),
                })
                .inc_by(c.count.min(i64::MAX as u64) as i64);
        }
        for role in expected {
            self.machines
                .get_or_create(&MachineLabels {
                    state: MachineState::Expected.as_str().to_owned(),
                    role,
                })
                .inc();
        }
        self.deliveries.clear();
        for (status, n) in deliveries {
            self.deliveries
                .get_or_create(&StatusLabels {
                    status: status.as_str().to_owned(),
                })
                .set(n.min(i64::MAX as u64) as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn role_labels(role: Option<&str>) -> RoleLabels {
    RoleLabels {
        role: role.unwrap_or_default().to_owned(),
    }
}

/// A step name as a label: the protocol's step names, `other` for the rest
/// (an agent's extension step: the label set stays small).
fn step_label(name: &str) -> String {
    match serde_json::from_value::<Step>(serde_json::Value::String(name.to_owned())) {
        Ok(s) if s != Step::Unknown => s.as_str().to_owned(),
        _ => "other".to_owned(),
    }
}

/// The DHCP and TFTP servers' own counters, read at each scrape.
#[derive(Debug, Default)]
struct NetbootCounters {
    stats: OnceLock<NetbootStats>,
}

type NetbootStats = (Option<Arc<DhcpStats>>, Option<Arc<TftpStats>>);

impl Collector for NetbootCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((dhcp, tftp)) = self.stats.get() else {
            return Ok(());
        };
        let mut counters: Vec<(&str, &str, u64)> = Vec::new();
        if let Some(d) = dhcp {
            let g = DhcpStats::get;
            counters.extend([
                (
                    "landfall_dhcp_received",
                    "DHCP packets received",
                    g(&d.received),
                ),
                (
                    "landfall_dhcp_answered",
                    "DHCP answers sent",
                    g(&d.answered),
                ),
                (
                    "landfall_dhcp_malformed",
                    "DHCP packets dropped: not DHCP, no message type, or not Ethernet",
                    g(&d.malformed),
                ),
                (
                    "landfall_dhcp_rate_limited",
                    "DHCP packets dropped over the per-MAC limit",
                    g(&d.rate_limited),
                ),
                (
                    "landfall_dhcp_unsupported",
                    "Netboot clients of an architecture without an iPXE configured",
                    g(&d.unsupported),
                ),
                (
                    "landfall_dhcp_pool_exhausted",
                    "Full DHCP: requests with no free address",
                    g(&d.pool_exhausted),
                ),
                (
                    "landfall_dhcp_naks",
                    "Full DHCP: NAKs for an address not held for the MAC",
                    g(&d.naks),
                ),
            ]);
        }
        if let Some(t) = tftp {
            let g = TftpStats::get;
            counters.extend([
                (
                    "landfall_tftp_requests",
                    "TFTP read requests for a served file",
                    g(&t.requests),
                ),
                (
                    "landfall_tftp_completed",
                    "TFTP transfers ended with the last block acknowledged",
                    g(&t.completed),
                ),
                (
                    "landfall_tftp_sent_bytes",
                    "TFTP data bytes sent (first sends only)",
                    g(&t.bytes),
                ),
                (
                    "landfall_tftp_refused",
                    "TFTP requests for a name that is not served",
                    g(&t.refused),
                ),
                (
                    "landfall_tftp_malformed",
                    "TFTP packets that are not TFTP, and write requests",
                    g(&t.malformed),
                ),
                (
                    "landfall_tftp_timeouts",
                    "TFTP transfers abandoned after the last resend of a block",
                    g(&t.timeouts),
                ),
                (
                    "landfall_tftp_busy",
                    "TFTP requests refused while the most transfers ran",
                    g(&t.busy),
                ),
                (
                    "landfall_tftp_retransmits",
                    "TFTP blocks sent again",
                    g(&t.retransmits),
                ),
                (
                    "landfall_tftp_stray",
                    "TFTP packets on the listening port that belong to no transfer",
                    g(&t.stray),
                ),
            ]);
        }
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::{EventKind, FailureClass, StepTiming};

    fn done(kind: EventKind, data: serde_json::Value) -> Event {
        Event {
            seq: 9,
            time: "2026-01-01T00:00:00Z".into(),
            step: Step::Done,
            kind,
            progress: None,
            message: String::new(),
            data: Some(data),
        }
    }

    fn timing(steps: &[(&str, u64)]) -> Timing {
        Timing {
            steps: steps
                .iter()
                .map(|(s, ms)| {
                    (
                        (*s).to_owned(),
                        StepTiming {
                            wall_ms: *ms,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn terminal_events_count_by_role_step_and_class() {
        let m = Metrics::new();
        let ok = DoneData {
            timing: timing(&[("disks", 1500), ("probe", 10)]),
        };
        m.install_ended(
            Some("ws"),
            MachineState::Installed,
            &[done(
                EventKind::Finished,
                serde_json::to_value(&ok).unwrap(),
            )],
        );
        let failed = FailureData {
            step: Some("install".into()),
            class: Some(FailureClass::Build),
            timing: Some(timing(&[("install", 4000)])),
            ..Default::default()
        };
        m.install_ended(
            Some("ws"),
            MachineState::Failed,
            &[done(EventKind::Failed, failed.to_data().unwrap())],
        );
        m.install_ended(None, MachineState::Compromised, &[]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let settings = crate::config::Config::demo()
            .validate(std::path::Path::new("."))
            .unwrap();
        let text = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(m.render(&store, &settings))
            .unwrap();
        for line in [
            "landfall_installs_finished_total{role=\"ws\"} 1",
            "landfall_installs_failed_total{role=\"ws\",step=\"install\",class=\"build\"} 1",
            "landfall_step_duration_seconds_sum{step=\"disks\"} 1.5",
            "landfall_step_duration_seconds_count{step=\"other\"} 1",
            "landfall_step_duration_seconds_sum{step=\"install\"} 4.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(
            !text.contains("security"),
            "no terminal event, nothing counted"
        );
        assert!(
            !text.contains("landfall_tftp"),
            "no netboot, no netboot counters"
        );
    }
}

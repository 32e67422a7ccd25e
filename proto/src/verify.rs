//! First-boot verification: `POST /api/v1/agent/verify` and the agent's
//! `/etc/landfall/verify.json` (see docs/verify.md).

use serde::{Deserialize, Serialize};

use crate::{MachineState, SecretString};

/// `POST /api/v1/agent/verify` (Authorization: Bearer verify_token)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// The install attempt the verify token was minted for; when given it
    /// must be the token's attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// The running system's hostname (/proc/sys/kernel/hostname).
    #[serde(default)]
    pub hostname: String,
    pub checks: Vec<CheckResult>,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    /// One line: what was seen ("SSH-2.0-OpenSSH_9.2p1") or why it failed.
    #[serde(default)]
    pub detail: String,
    /// How long the check took (its last try), in milliseconds.
    #[serde(default)]
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// `ready` (every check ok) or `degraded`.
    pub state: MachineState,
}

/// The last verification a machine reported, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySummary {
    pub attempt_id: String,
    /// RFC 3339 time the server received it.
    pub received_at: String,
    #[serde(default)]
    pub hostname: String,
    pub ok: bool,
    pub checks: Vec<CheckResult>,
}

/// `/etc/landfall/verify.json` in the installed system (0600, written by the
/// agent at install time): where to report and with which token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyConfig {
    /// Base URL of the landfall server.
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// Bearer token for `POST /api/v1/agent/verify`; redacted in `Debug`.
    pub token: SecretString,
    /// The hostname the machine was installed as.
    pub hostname: String,
    /// Checks to run, in addition to those of `--checks FILE` (the NixOS module's).
    #[serde(default)]
    pub checks: Vec<NamedCheck>,
    /// Seconds a failing check is retried (services still starting); absent: see docs/verify.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// The server CA the installer pinned (PEM), pinned again for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca_pem: Option<String>,
    /// The server fingerprint the installer pinned (`landfall.server_ca_sha256=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca_sha256: Option<String>,
    /// The installer ran with `landfall.insecure_http=1` (plain HTTP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

/// A check with the name it is reported under (default: its kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCheck {
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub check: Check,
}

impl NamedCheck {
    pub fn new(name: impl Into<String>, check: Check) -> Self {
        Self {
            name: name.into(),
            check,
        }
    }

    /// The reported name: `name`, or the kind when empty.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            self.check.kind()
        } else {
            &self.name
        }
    }
}

/// One thing to verify, tagged by `kind`. An unknown kind (a newer server or
/// module) parses as [`Check::Unknown`] and is reported failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    /// An `SSH-2.0-` banner line.
    Ssh {
        #[serde(default = "localhost")]
        host: String,
        #[serde(default = "ssh_port")]
        port: u16,
    },
    /// An X.224 Connection Confirm to an RDP Connection Request.
    Rdp {
        #[serde(default = "localhost")]
        host: String,
        #[serde(default = "rdp_port")]
        port: u16,
    },
    /// An `RFB 003.00x` banner.
    Vnc {
        #[serde(default = "localhost")]
        host: String,
        #[serde(default = "vnc_port")]
        port: u16,
    },
    /// A cifs/smb3 mount at `mountpoint` (an automount is triggered first);
    /// with `write_test` a file is written, read back and removed.
    Smb {
        mountpoint: String,
        #[serde(default = "yes")]
        write_test: bool,
    },
    /// /proc/sys/kernel/hostname equals `expected`.
    Hostname { expected: String },
    /// A TCP connection is accepted.
    Tcp {
        #[serde(default = "localhost")]
        host: String,
        port: u16,
    },
    /// `systemctl is-active UNIT` says active.
    Unit { unit: String },
    /// The path exists and can be listed or read.
    Path { path: String },
    #[serde(other)]
    Unknown,
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ssh { .. } => "ssh",
            Self::Rdp { .. } => "rdp",
            Self::Vnc { .. } => "vnc",
            Self::Smb { .. } => "smb",
            Self::Hostname { .. } => "hostname",
            Self::Tcp { .. } => "tcp",
            Self::Unit { .. } => "unit",
            Self::Path { .. } => "path",
            Self::Unknown => "unknown",
        }
    }
}

fn localhost() -> String {
    "localhost".to_owned()
}
fn ssh_port() -> u16 {
    22
}
fn rdp_port() -> u16 {
    3389
}
fn vnc_port() -> u16 {
    5900
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_with_defaults_and_unknown_kinds() {
        let c: Vec<NamedCheck> = serde_json::from_str(
            r#"[{"kind":"ssh"},{"name":"rdp","kind":"rdp","port":3390},
                {"name":"home","kind":"smb","mountpoint":"/home/a"},
                {"name":"x","kind":"teleport","speed":9}]"#,
        )
        .unwrap();
        assert_eq!(
            c[0].check,
            Check::Ssh {
                host: "localhost".into(),
                port: 22
            }
        );
        assert_eq!(c[0].display_name(), "ssh");
        assert_eq!(c[1].display_name(), "rdp");
        assert_eq!(
            c[2].check,
            Check::Smb {
                mountpoint: "/home/a".into(),
                write_test: true
            }
        );
        assert_eq!(c[3].check, Check::Unknown);
        assert_eq!(c[3].display_name(), "x");
        let back = serde_json::to_string(&c[1]).unwrap();
        assert_eq!(
            back,
            r#"{"name":"rdp","kind":"rdp","host":"localhost","port":3390}"#
        );
    }

    #[test]
    fn verify_config_redacts_the_token() {
        let cfg = VerifyConfig {
            server: "http://s".into(),
            attempt_id: Some("a1".into()),
            token: SecretString::new("CANARYverify"),
            hostname: "ws-01".into(),
            checks: vec![NamedCheck::new(
                "host",
                Check::Hostname {
                    expected: "ws-01".into(),
                },
            )],
            timeout: None,
            server_ca_pem: None,
            server_ca_sha256: Some("ab".repeat(32)),
            insecure_http: false,
        };
        assert!(!format!("{cfg:?}").contains("CANARY"));
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""token":"CANARYverify""#), "{json}");
        assert_eq!(serde_json::from_str::<VerifyConfig>(&json).unwrap(), cfg);
    }
}

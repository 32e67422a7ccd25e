//! The agent API: `hello` and `events` (see docs/protocol.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Inventory};

/// `POST /api/v1/agent/hello`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// The one-time boot token from the kernel command line.
    pub boot_token: String,
    pub agent_version: String,
    #[serde(default)]
    pub protocol: u32,
    pub inventory: Inventory,
    /// A random per-boot secret (hex) the agent keeps in its state directory:
    /// it proves that a repeated hello with the same boot token comes from the
    /// client that exchanged it first. Older servers ignore it; a server that
    /// knows it serves a repeated hello only with the same nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResponse {
    pub attempt_id: String,
    /// Bearer token for this attempt's events; it can do nothing else.
    pub agent_token: String,
    pub assignment: Assignment,
    /// The seq the agent's first event of this exchange must carry: 1 for a new
    /// attempt; after a repeated hello (an agent restarted mid-attempt) one past
    /// the highest seq already stored, so no new event collides with an old one.
    #[serde(default = "first_seq")]
    pub next_seq: u64,
}

fn first_seq() -> u64 {
    1
}

/// PCR 7, the Secure Boot state: the same for the PXE-booted installer and
/// the installed system when both boot in the same Secure Boot state
/// (docs/disks.md "Unlocking at boot").
pub const DEFAULT_TPM2_PCRS: &[u8] = &[7];

fn default_tpm2_pcrs() -> Vec<u8> {
    DEFAULT_TPM2_PCRS.to_vec()
}

/// What the server wants installed on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub hostname: String,
    pub role: String,
    /// Name of the disko layout (a file in the server's layouts directory), if any.
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub wipe: WipePolicy,
    /// How the installed system opens the layout's LUKS volumes at boot.
    #[serde(default)]
    pub luks_unlock: LuksUnlock,
    /// With `luks_unlock = tpm2`: the PCRs (0..=23) the TPM2 key is sealed
    /// to; empty: the TPM alone. Default `[7]` (Secure Boot state).
    #[serde(default = "default_tpm2_pcrs")]
    pub tpm2_pcrs: Vec<u8>,
    /// The layout rendered to JSON (`nix-instantiate --eval --strict --json`):
    /// the whole file, `{disko: {devices}}` or `{devices}`. The agent
    /// partitions from it (see docs/disks.md); `None`: no disk step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disko: Option<serde_json::Value>,
    /// Layout disk name -> device path ("/dev/disk/by-id/...", "/dev/vda") or
    /// "auto" (chosen by rule from the inventory). Overrides the layout's `device`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, String>,
    /// Where and how to fetch this attempt's secrets from Vault/OpenBao (the
    /// server as trusted orchestrator, see docs/security.md); `None`: no Vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultAssignment>,
    /// Files the agent writes into the target from the fetched secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<SecretFile>,
    /// Bearer token for the installed system's `POST /api/v1/agent/verify`,
    /// minted per attempt at hello (the server keeps its hash). The install
    /// step writes it into `/etc/landfall/verify.json` (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<SecretString>,
    /// What `nixos-install` installs; `None`: the agent stops after the
    /// configure step (disks, secrets and generated files in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallTarget>,
    /// First-boot checks the role declares (`[[roles.NAME.checks]]`); the
    /// configure step writes them into `/etc/landfall/verify.json`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::verify::NamedCheck>,
}

impl Assignment {
    /// An assignment with what the server's database keeps of it (hostname,
    /// role, layout, wipe) and every other part empty: the server's config
    /// resolution fills in the rest for a hello.
    pub fn new(hostname: String, role: String, layout: Option<String>, wipe: WipePolicy) -> Self {
        Self {
            hostname,
            role,
            layout,
            wipe,
            luks_unlock: LuksUnlock::default(),
            tpm2_pcrs: Vec::new(),
            disko: None,
            disks: BTreeMap::new(),
            vault: None,
            secret_files: Vec::new(),
            verify_token: None,
            install: None,
            checks: Vec::new(),
        }
    }
}

/// What the install step installs (docs/install.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstallTarget {
    /// Evaluate and build `REF#HOST` on the target:
    /// `nixos-install --flake REF#HOST`. The generated
    /// `/etc/nixos/flake.nix` extends the same configuration with the
    /// generated hardware file, so `nixos-rebuild` works later.
    Flake {
        /// A flake reference with the attribute, e.g. `git+https://git.lan/fleet#ws-01`.
        flake: String,
    },
    /// A prebuilt system closure: `nix copy --from CACHE --to /mnt PATH`,
    /// then `nixos-install --system PATH`. Nothing is evaluated on the target.
    System {
        /// `/nix/store/...-nixos-system-HOST-...`
        path: String,
        /// Binary cache URL, e.g. `http://cache.lan:5000`.
        cache: String,
        /// A flake reference for the generated `/etc/nixos/flake.nix`
        /// (`REF#HOST`), so later `nixos-rebuild` has a source; optional.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flake: Option<String>,
    },
    /// A kind this agent does not know: the install step fails and names it.
    #[serde(other)]
    Unknown,
}

impl InstallTarget {
    /// The flake reference (`REF#HOST`), if any.
    pub fn flake(&self) -> Option<&str> {
        match self {
            Self::Flake { flake } => Some(flake),
            Self::System { flake, .. } => flake.as_deref(),
            Self::Unknown => None,
        }
    }
}

/// `POST /api/v1/agent/wait` (Authorization: Bearer agent_token): an agent
/// whose install failed asks, by long poll, what the operator wants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitRequest {
    pub attempt_id: String,
    /// How long the server may hold the request before answering `wait`
    /// (capped by the server, 60 s).
    #[serde(default = "default_wait_secs")]
    pub timeout_secs: u64,
}

fn default_wait_secs() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    pub action: WaitAction,
    /// With `retry`: the assignment again, rebuilt from the server's config
    /// (the operator may have fixed it) with fresh single-use tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
}

/// The operator's answer to a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitAction {
    /// Nothing yet: ask again.
    Wait,
    /// `landfall retry HOST`: run again from the failed step.
    Retry,
    /// `landfall reinstall HOST` (or the attempt is no longer current): stop
    /// waiting and reboot; the next PXE boot starts over.
    Stop,
    #[serde(other)]
    Unknown,
}

/// A string that must never be shown: `Debug` and `Display` print
/// `[redacted]`; serde sees the plain string (transparent). Get the value
/// with [`SecretString::expose`], only where it is sent to its one consumer.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself. Do not log, format or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The Vault/OpenBao part of an assignment: a response-wrapped, single-use,
/// short-TTL AppRole `secret_id` minted by the server for this attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultAssignment {
    /// Base URL of Vault/OpenBao, e.g. `https://vault.lan:8200`.
    pub address: String,
    /// The wrapping token around the `secret_id`. Single use: the agent
    /// unwraps it once; a token someone else used is an interception alarm.
    pub wrap_token: SecretString,
    /// Where the wrapped response was created
    /// (`auth/approle/role/NAME/secret-id`); the agent compares it with
    /// `sys/wrapping/lookup` before unwrapping.
    pub creation_path: String,
    /// Mount point of the AppRole auth method (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// Mount point of the KV v2 engine (default `landfall`).
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// KV v2 paths under `kv_mount` this machine reads, already expanded
    /// (`hosts/ws-01`, `roles/workstation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// PEM of the CA that signs Vault's certificate; the agent trusts only it.
    /// `None` with an `https` address: the agent needs its own pinned CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn default_kv_mount() -> String {
    "landfall".to_owned()
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

/// A file the agent writes into the target (under `/mnt`) from a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    /// Absolute path in the installed system, e.g. `/var/lib/sops-nix/key.txt`.
    pub path: String,
    /// `kv:PATH#KEY`: the key `KEY` of the KV v2 secret at `PATH` (one of
    /// the assignment's `vault.reads`), e.g. `kv:hosts/ws-01#age_key`; or
    /// `bundle:PATH`: the file `PATH` of the installer's age bundle, e.g.
    /// `bundle:hosts/ws-01/ssh_host_ed25519_key` (docs/security.md).
    pub from: String,
    /// Octal file mode, default `0600`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Owner and group names looked up in the target's /etc/passwd and
    /// /etc/group (`root` when absent there).
    #[serde(default = "default_root")]
    pub owner: String,
    #[serde(default = "default_root")]
    pub group: String,
}

impl SecretFile {
    /// A file at `path` from `from` with the defaults: mode 0600, root:root.
    pub fn new(path: String, from: String) -> Self {
        Self {
            path,
            from,
            mode: default_mode(),
            owner: default_root(),
            group: default_root(),
        }
    }
}

fn default_mode() -> String {
    "0600".to_owned()
}

fn default_root() -> String {
    "root".to_owned()
}

/// May the agent destroy data it finds on the target disks?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WipePolicy {
    /// Refuse any disk that holds a partition table, filesystem or other signature.
    #[default]
    Never,
    /// Wipe whatever is on the chosen disks.
    Always,
    /// Unknown to this reader: treated like `never`.
    #[serde(other)]
    Unknown,
}

/// How the installed system unlocks the layout's LUKS volumes at boot
/// (docs/disks.md "Unlocking at boot"). The layout's own key (`passwordFile`
/// or `settings.keyFile`) is for formatting; this says what the installed
/// initrd gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LuksUnlock {
    /// Unattended: the key is written into the target (0400 under
    /// `/etc/secrets/initrd`) and appended to the installed initrd
    /// (`boot.initrd.secrets`), which opens the volume with it.
    #[default]
    InitrdKey,
    /// A person types the passphrase at the console at every boot; the key
    /// is not written to the target.
    Prompt,
    /// Unattended and bound to this machine: the agent enrols the machine's
    /// TPM2 (`systemd-cryptenroll`, sealed to [`Assignment::tpm2_pcrs`]); the
    /// installed systemd initrd unseals it. No key is written to the target;
    /// the format-time key stays in its slot as the recovery key.
    Tpm2,
    /// Unknown to this reader: refused before any disk is touched.
    #[serde(other)]
    Unknown,
}

/// `POST /api/v1/agent/events` (Authorization: Bearer agent_token)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub attempt_id: String,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Every seq up to and including this one is stored.
    pub acked_seq: u64,
}

pub use crate::error::{ErrorBody, ErrorCode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_redacts_and_round_trips() {
        let v = VaultAssignment {
            address: "https://vault:8200".into(),
            wrap_token: SecretString::new("s.CANARYwraptoken"),
            creation_path: "auth/approle/role/ws/secret-id".into(),
            approle_mount: "approle".into(),
            kv_mount: "landfall".into(),
            reads: vec!["hosts/ws-01".into()],
            ca_pem: None,
        };
        let dbg = format!("{v:?} {}", v.wrap_token);
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        let json = serde_json::to_string(&v).unwrap();
        assert!(
            json.contains(r#""wrap_token":"s.CANARYwraptoken""#),
            "{json}"
        );
        let back: VaultAssignment = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn install_targets_parse_and_unknown_kinds_survive() {
        let a: Assignment = serde_json::from_str(
            r#"{"hostname":"a","role":"r","install":{"kind":"flake","flake":"git+https://g/f#a"}}"#,
        )
        .unwrap();
        assert_eq!(
            a.install.as_ref().unwrap().flake(),
            Some("git+https://g/f#a")
        );
        let t: InstallTarget = serde_json::from_str(
            r#"{"kind":"system","path":"/nix/store/x-nixos-system-a","cache":"http://c"}"#,
        )
        .unwrap();
        assert!(matches!(&t, InstallTarget::System { flake: None, .. }));
        let t: InstallTarget =
            serde_json::from_str(r#"{"kind":"image","url":"http://x"}"#).unwrap();
        assert_eq!(t, InstallTarget::Unknown);
        let w: WaitResponse = serde_json::from_str(r#"{"action":"teleport"}"#).unwrap();
        assert_eq!(w.action, WaitAction::Unknown);
    }

    #[test]
    fn luks_unlock_tpm2_and_its_pcrs_parse_with_defaults() {
        let a: Assignment = serde_json::from_str(r#"{"hostname":"a","role":"r"}"#).unwrap();
        assert_eq!(
            (a.luks_unlock, a.tpm2_pcrs),
            (LuksUnlock::InitrdKey, vec![7])
        );
        let a: Assignment = serde_json::from_str(
            r#"{"hostname":"a","role":"r","luks_unlock":"tpm2","tpm2_pcrs":[]}"#,
        )
        .unwrap();
        assert_eq!((a.luks_unlock, a.tpm2_pcrs.len()), (LuksUnlock::Tpm2, 0));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["luks_unlock"], "tpm2");
        let a: Assignment =
            serde_json::from_str(r#"{"hostname":"a","role":"r","luks_unlock":"fido2"}"#).unwrap();
        assert_eq!(a.luks_unlock, LuksUnlock::Unknown);
    }

    #[test]
    fn old_assignments_and_minimal_vault_parse_with_defaults() {
        let a: Assignment = serde_json::from_str(r#"{"hostname":"a","role":"r"}"#).unwrap();
        assert!(a.vault.is_none() && a.secret_files.is_empty());
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            !json.contains("vault") && !json.contains("secret_files"),
            "{json}"
        );
        let a: Assignment = serde_json::from_str(
            r#"{"hostname":"a","role":"r","vault":{"address":"http://v","wrap_token":"t",
                "creation_path":"p","future":1},
                "secret_files":[{"path":"/k","from":"kv:hosts/a#k"}]}"#,
        )
        .unwrap();
        let v = a.vault.unwrap();
        assert_eq!(
            (v.kv_mount.as_str(), v.approle_mount.as_str()),
            ("landfall", "approle")
        );
        let f = &a.secret_files[0];
        assert_eq!(
            (f.mode.as_str(), f.owner.as_str(), f.group.as_str()),
            ("0600", "root", "root")
        );
    }
}

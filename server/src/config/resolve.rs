//! Resolution: a role and (for a listed machine) its `[[machines]]` entry
//! -> the [`Assignment`] an agent gets. A machine overrides its role key by
//! key; that layering is [`Mergeable::merge`], one per section, and the
//! assignment is built in [`Settings::assignment`] only.

use std::collections::BTreeMap;

use landfall_proto::names::check_hostname;
use landfall_proto::{Assignment, InstallTarget, SecretFile};

use super::{MachineConfig, RoleConfig, Settings, Unknown};

/// validated names, so the result stays a plain path).
pub fn expand_template(t: &str, hostname: &str, role: &str) -> String {
    t.replace("{hostname}", hostname).replace("{role}", role)
}

/// One section of the config that a more specific layer (a machine) may set
/// over a more general one (its role), as bootc's `Mergeable`: what `other`
/// sets wins, what it leaves unset keeps `self`'s value.
pub trait Mergeable {
    fn merge(&mut self, other: Self);
}

/// A key: set wins over unset.
impl<T> Mergeable for Option<T> {
    fn merge(&mut self, other: Self) {
        if other.is_some() {
            *self = other;
        }
    }
}

/// A map: entry by entry.
impl<V> Mergeable for BTreeMap<String, V> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

/// What `nixos-install` installs: `flake`, `system` and `cache`, key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallKeys {
    pub flake: Option<String>,
    pub system: Option<String>,
    pub cache: Option<String>,
}

impl Mergeable for InstallKeys {
    fn merge(&mut self, other: Self) {
        self.flake.merge(other.flake);
        self.system.merge(other.system);
        self.cache.merge(other.cache);
    }
}

impl InstallKeys {
    /// The install target, `{hostname}`/`{role}` replaced in `flake`. `None`
    /// when neither a flake nor a system is given.
    fn target(self, hostname: &str, role: &str) -> Option<InstallTarget> {
        let flake = self.flake.map(|f| expand_template(&f, hostname, role));
        match (self.system, self.cache) {
            (Some(path), Some(cache)) => Some(InstallTarget::System { path, cache, flake }),
            // Refused at load; nothing to install from.
            (Some(_), None) => None,
            (None, _) => flake.map(|flake| InstallTarget::Flake { flake }),
        }
    }
}

/// The keys a `[[machines]]` entry may set over its role's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub layout: Option<String>,
    /// Layout disk name -> device or "auto".
    pub disks: BTreeMap<String, String>,
    pub install: InstallKeys,
}

impl Mergeable for Layer {
    fn merge(&mut self, other: Self) {
        self.layout.merge(other.layout);
        Mergeable::merge(&mut self.disks, other.disks);
        self.install.merge(other.install);
    }
}

impl Layer {
    /// A layer of the keys as written (a role's or a machine's).
    fn of(
        layout: &Option<String>,
        disks: &BTreeMap<String, String>,
        [flake, system, cache]: [&Option<String>; 3],
    ) -> Self {
        Layer {
            layout: layout.clone(),
            disks: disks.clone(),
            install: InstallKeys {
                flake: flake.clone(),
                system: system.clone(),
                cache: cache.clone(),
            },
        }
    }
}

impl RoleConfig {
    /// This role's layer, the base a machine's is merged over.
    pub fn layer(&self) -> Layer {
        let install = [&self.flake, &self.system, &self.cache];
        Layer::of(&self.layout, &self.disks, install)
    }
}

impl MachineConfig {
    /// What this machine sets over its role.
    pub fn layer(&self) -> Layer {
        let install = [&self.flake, &self.system, &self.cache];
        Layer::of(&self.layout, &self.disks, install)
    }
}

/// `role`'s layer with `machine`'s merged over it.
pub(super) fn layered(role: Option<&RoleConfig>, machine: Option<&MachineConfig>) -> Layer {
    let mut l = role.map(RoleConfig::layer).unwrap_or_default();
    if let Some(m) = machine {
        l.merge(m.layer());
    }
    l
}

impl Settings {
    /// Whether hellos of machines with `role` are checked against the
    /// pinned identity (`[roles.NAME] pin_identity`, default on).
    pub fn pin_identity(&self, role: &str) -> bool {
        self.roles
            .get(role)
            .and_then(|r| r.pin_identity)
            .unwrap_or(true)
    }

    /// The assignment for a MAC (normalised), from `[[machines]]` or auto-enrolment.
    /// `None` means: hold it as discovered.
    pub fn assignment_for(&self, mac: &str) -> Option<Assignment> {
        if let Some(m) = self.machines.get(mac) {
            let mut a = self.assignment(&m.role, m.hostname.clone(), Some(m));
            self.complete(&mut a, mac);
            return Some(a);
        }
        self.enrolment_for(mac, &|_| false)
    }

    /// The assignment of `mac`: its `[[machines]]` entry, else (with
    /// `enroll.unknown = "install"`) the enrol role with a hostname no other
    /// machine has: not a configured one's, nor one `taken` says is in use.
    pub fn enrolment_for(&self, mac: &str, taken: &dyn Fn(&str) -> bool) -> Option<Assignment> {
        if self.machines.contains_key(mac) {
            return self.assignment_for(mac);
        }
        if self.unknown != Unknown::Install {
            return None;
        }
        let role_name = self.enroll_role.as_ref()?;
        let hostname = auto_hostname(role_name, mac, &|name| {
            taken(name) || self.machines.values().any(|m| m.hostname == name)
        });
        Some(self.assignment(role_name, hostname, None))
    }

    /// The assignment of a machine the database knows as `hostname`/`role`
    /// (e.g. auto-enrolled earlier); `None` if that role no longer exists.
    pub fn role_assignment_checked(&self, role: &str, hostname: &str) -> Option<Assignment> {
        if !self.roles.contains_key(role) || check_hostname(hostname).is_err() {
            return None;
        }
        Some(self.assignment(role, hostname.to_owned(), None))
    }

    /// The layers of `mac`'s assignment in `role`: the role's, with the
    /// machine's `[[machines]]` entry over it when it is listed in that role.
    fn layer(&self, role: &str, mac: &str) -> Layer {
        let machine = self.machines.get(mac).filter(|m| m.role == role);
        layered(self.roles.get(role), machine)
    }

    /// Fill what the database does not keep: the rendered layout, the disk
    /// map (role entries, then the machine's own over them), the secret files,
    /// the install target (the machine's keys over the role's) and the role's
    /// first-boot checks.
    pub fn complete(&self, a: &mut Assignment, mac: &str) {
        let role = self.roles.get(&a.role);
        let layer = self.layer(&a.role, mac);
        a.install = layer.install.target(&a.hostname, &a.role);
        a.checks = self.checks.get(&a.role).cloned().unwrap_or_default();
        a.luks_unlock = role.map(|r| r.luks_unlock.into()).unwrap_or_default();
        a.tpm2_pcrs = match role.and_then(|r| r.tpm2_pcrs.as_ref()) {
            // Checked at load: 0..=23 (validate.rs check_tpm2_pcrs).
            Some(p) => p.iter().map(|n| *n as u8).collect(),
            None => landfall_proto::agent::DEFAULT_TPM2_PCRS.to_vec(),
        };
        a.disko = a.layout.as_ref().and_then(|l| self.layouts.get(l).cloned());
        a.disks = layer.disks;
        a.secret_files = role
            .map(|r| {
                r.secret_files
                    .iter()
                    .map(|f| SecretFile {
                        from: expand_template(&f.from, &a.hostname, &a.role),
                        ..f.0.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    /// The one place an [`Assignment`] is built: what the database keeps of
    /// it (hostname, role, layout, wipe), from `role_name` and, for a listed
    /// machine, its entry over the role. [`Settings::complete`] fills the rest.
    fn assignment(
        &self,
        role_name: &str,
        hostname: String,
        machine: Option<&MachineConfig>,
    ) -> Assignment {
        let role = self.roles.get(role_name);
        Assignment::new(
            hostname,
            role_name.to_owned(),
            layered(role, machine).layout,
            role.map(|r| r.wipe.into()).unwrap_or_default(),
        )
    }
}

/// `ROLE-XXXXXX` from the last three bytes of the MAC; when `taken` says
/// that name is in use, more of the MAC (four, five, then all six bytes:
/// unique among MACs), then a `-N` suffix.
pub fn auto_hostname(role: &str, mac: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let bytes: Vec<&str> = mac.split(':').collect();
    (3..=bytes.len())
        .map(|n| format!("{role}-{}", bytes[bytes.len() - n..].concat()))
        .chain((2..).map(|n| format!("{role}-{}-{n}", bytes.concat())))
        .find(|name| !taken(name))
        .expect("an unbounded list of names has a free one")
}

//! The disk journal: what the disk step of one attempt has applied, kept in
//! the installer's runtime directory (`RunOptions::state_dir`, tmpfs: it
//! survives an agent restart, not a reboot). One small typed JSON file per
//! attempt, rewritten atomically (temp file, fsync, rename, fsync of the
//! directory) after each applied step. A restarted agent of the same
//! attempt reads it, plans again from the journal's targets and id seed
//! (the same plan: [`super::ids`]), re-probes the disks and compares
//! ([`Journal::check`]): what matches is not made again; anything that
//! differs stops the step with a message naming the disk, the field and
//! both values. See docs/disks.md, "Restart safety".

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::ids::Ids;
use super::plan::{Op, Plan, Target};

/// The format version of the file.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub attempt_id: String,
    /// The seed every pinned id of the plan comes from.
    pub ids: Ids,
    /// Layout disk -> the device chosen by the first run.
    pub targets: BTreeMap<String, Target>,
    /// What was applied, in order.
    pub done: Vec<Done>,
}

/// One applied step, with what a probe must find for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Done {
    /// The protective MBR and GPT were written to `device` with this disk GUID.
    Gpt {
        disk: String,
        device: String,
        disk_guid: String,
    },
    /// A filesystem, swap area or LUKS header (blkid `TYPE`) with this UUID.
    Signature {
        disk: String,
        device: String,
        fs_type: String,
        uuid: String,
    },
    /// An operation without an id to read back (LUKS open, subvolumes, mounts).
    Op { disk: String, what: String },
}

/// One difference between the journal and the disks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk {disk}: {device} {field} is {found}, but the journal of attempt {attempt} says this agent made it with {expected}; refusing to resume the disk step (someone else changed the disk, or it is another disk): check the disk, then `landfall reinstall HOST` to start over")]
pub struct Mismatch {
    pub attempt: String,
    pub disk: String,
    pub device: String,
    pub field: &'static str,
    pub expected: String,
    pub found: String,
}

impl Journal {
    pub fn new(attempt_id: &str, ids: Ids, targets: BTreeMap<String, Target>) -> Self {
        Self {
            version: VERSION,
            attempt_id: attempt_id.to_owned(),
            ids,
            targets,
            done: Vec::new(),
        }
    }

    /// `STATE_DIR/disks-ATTEMPT.json`.
    pub fn path(state_dir: &Path, attempt_id: &str) -> PathBuf {
        let safe: String = attempt_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        state_dir.join(format!("disks-{safe}.json"))
    }

    /// The journal at `path`, `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let j: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a disk journal of this agent; remove it to start the disk step over",
                path.display()
            )
        })?;
        anyhow::ensure!(
            j.version == VERSION,
            "{}: journal version {} (this agent writes {VERSION})",
            path.display(),
            j.version
        );
        Ok(Some(j))
    }

    /// Write atomically: a reader (a restarted agent) sees the old or the
    /// new journal, never a part of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    pub fn is_done(&self, d: &Done) -> bool {
        self.done.contains(d)
    }

    /// What running `op` of disk `disk` leaves, as journal entry.
    pub fn entry(plan: &Plan, disk: &str, op: &Op) -> Done {
        let dp = plan.disks.iter().find(|d| d.name == disk);
        match op {
            Op::WriteGpt { device, .. } => Done::Gpt {
                disk: disk.to_owned(),
                device: device.clone(),
                disk_guid: dp.and_then(|d| d.disk_guid.clone()).unwrap_or_default(),
            },
            _ => match op.pinned_uuid() {
                Some((device, uuid)) => Done::Signature {
                    disk: disk.to_owned(),
                    device: device.to_owned(),
                    fs_type: match op {
                        Op::Mkfs { format, .. } => format.clone(),
                        Op::Mkswap { .. } => "swap".into(),
                        _ => "crypto_LUKS".into(),
                    },
                    uuid,
                },
                None => Done::Op {
                    disk: disk.to_owned(),
                    what: op.describe(),
                },
            },
        }
    }

    /// Re-probe what the journal says was made and compare. Nothing is written.
    pub fn check(&self) -> std::result::Result<(), Box<Mismatch>> {
        for d in &self.done {
            let (disk, device, field, key, expected) = match d {
                Done::Gpt {
                    disk,
                    device,
                    disk_guid,
                } => (disk, device, "GPT disk GUID", "PTUUID", disk_guid),
                Done::Signature {
                    disk, device, uuid, ..
                } => (disk, device, "UUID", "UUID", uuid),
                Done::Op { .. } => continue,
            };
            let found = match super::probe::probe(device) {
                Ok(f) => f.get(key).unwrap_or("absent").to_owned(),
                Err(e) => format!("unreadable ({e:#})"),
            };
            if !found.eq_ignore_ascii_case(expected) {
                return Err(Box::new(Mismatch {
                    attempt: self.attempt_id.clone(),
                    disk: disk.clone(),
                    device: device.clone(),
                    field,
                    expected: expected.clone(),
                    found,
                }));
            }
        }
        Ok(())
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory:
/// write, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let r = (|| {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("flushing {}", dir.display()))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

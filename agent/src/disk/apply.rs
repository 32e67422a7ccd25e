//! `apply()`: execute a [`Plan`]. Safety first (every target probed and
//! checked before anything is written), then each disk's operations — disks
//! in parallel — and each volume's (md arrays, volume groups, pools,
//! bcachefs) as soon as the disks and volumes making its members are done,
//! in parallel with whatever does not depend on it, then the mounts in
//! order, then the read-back (what the disks hold now, compared with the plan).
//! On failure: unmount, close LUKS, deactivate volume groups, stop md arrays,
//! export pools, wipe the new tables so a half-made disk never boots, and
//! say which operation failed and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::guards::{Holder, HolderKind, MountGuard};
use super::journal::{Done, Journal};
use super::layout::KeySource;
use super::nixos::NixosConfig;
use super::plan::{DiskPlan, Mount, Op, Plan, Target};
use super::safety::{self, Refusal};
use crate::cmd::Cmd;
use crate::retry::{Attempt, Retry};

/// Where LUKS keys come from. The bytes go to cryptsetup's stdin only.
pub trait KeyProvider: Send + Sync {
    fn key(&self, src: &KeySource) -> Result<Vec<u8>>;
}

/// Keys handed over by the secrets step (by the layout's path), falling
/// back to reading the file at that path on the installer.
#[derive(Default)]
pub struct Keys {
    pub by_path: BTreeMap<String, Vec<u8>>,
}

impl KeyProvider for Keys {
    fn key(&self, src: &KeySource) -> Result<Vec<u8>> {
        let path = src.path();
        let mut k = match self.by_path.get(path) {
            Some(k) => k.clone(),
            None => std::fs::read(path).with_context(|| {
                format!("reading LUKS key {path} (not among the secrets the agent holds)")
            })?,
        };
        if matches!(src, KeySource::PasswordFile(_)) {
            // A passphrase: one line, as typed at boot.
            while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                k.pop();
            }
            k.push(b'\n');
        }
        anyhow::ensure!(
            k.iter().any(|b| !b.is_ascii_whitespace()),
            "LUKS key {path} is empty"
        );
        Ok(k)
    }
}

/// One operation's progress.
#[derive(Debug, Clone, Serialize)]
pub struct OpEvent {
    /// 1-based number of the operation in the plan's printed order.
    pub index: usize,
    pub total: usize,
    pub disk: Option<String>,
    pub what: String,
    pub state: OpState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Started,
    Done {
        millis: u64,
    },
    /// Not run, with the named option that said so.
    Skipped {
        because: &'static str,
    },
    Failed,
}

pub type ProgressFn = Arc<dyn Fn(&OpEvent) + Send + Sync>;

pub struct ApplyOptions {
    /// The target root the mountpoints are below ("/mnt").
    pub root: PathBuf,
    /// Overwrite disks that hold data (`--wipe` / the assignment's wipe policy).
    pub wipe: bool,
    /// Filesystem formats made and read back but not mounted. For hosts
    /// whose kernel cannot mount them (CI's kernel has no vfat); empty in
    /// production. Each skip is reported.
    pub no_mount_formats: Vec<String>,
    /// Open LUKS volumes (and make what is inside them). `false` only for
    /// hosts without device-mapper (CI's kernel): headers are written and
    /// verified, the nested content is skipped and each skip is reported.
    pub open_luks: bool,
    /// Extra `cryptsetup luksFormat` arguments (tests: a fast KDF).
    pub luks_format_args: Vec<String>,
    pub keys: Arc<dyn KeyProvider>,
    pub progress: Option<ProgressFn>,
    /// The attempt's disk journal ([`super::journal`]): each applied
    /// operation is recorded there; when it already holds entries, this is a
    /// resume: they are checked against the disks and not run again.
    pub journal: Option<JournalFile>,
    /// The installer's runtime directory (tmpfs): `systemd-cryptenroll`
    /// reads the unlock key from a file, made in a fresh 0700 directory here
    /// and removed right after.
    pub state_dir: PathBuf,
    /// Where the TPM is looked for (`/sys/class/tpm/tpm0` below it): "/".
    pub sysfs_root: PathBuf,
}

/// A journal and the file it is saved to after each applied operation.
#[derive(Clone)]
pub struct JournalFile {
    pub path: PathBuf,
    pub journal: Arc<std::sync::Mutex<Journal>>,
}

impl JournalFile {
    pub fn new(path: PathBuf, journal: Journal) -> Self {
        Self {
            path,
            journal: Arc::new(std::sync::Mutex::new(journal)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_done(&self, d: &Done) -> bool {
        self.lock().is_done(d)
    }

    fn record(&self, d: Done) -> Result<()> {
        let mut j = self.lock();
        if !j.is_done(&d) {
            j.done.push(d);
        }
        j.save(&self.path)
    }

    fn reset(&self) -> Result<()> {
        let mut j = self.lock();
        j.done.clear();
        j.save(&self.path)
    }

    /// A copy of the journal as it is now.
    pub fn snapshot(&self) -> Journal {
        self.lock().clone()
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/mnt"),
            wipe: false,
            no_mount_formats: Vec::new(),
            open_luks: true,
            luks_format_args: Vec::new(),
            keys: Arc::new(Keys::default()),
            progress: None,
            journal: None,
            state_dir: PathBuf::from("/run/landfall"),
            sysfs_root: PathBuf::from("/"),
        }
    }
}

/// What the disk step leaves for the next steps: the mounts (kept mounted
/// until `close()`), what holds the devices below them (LUKS mappings, md
/// arrays, volume groups, pools), the NixOS configuration and what was read
/// back.
#[derive(Debug)]
pub struct Applied {
    /// The installer paths the layout took keys from ([`Plan::key_paths`]).
    pub key_paths: std::collections::BTreeSet<String>,
    pub mounts: Vec<MountGuard>,
    /// In the order they were set up; closed in reverse.
    pub holders: Vec<Holder>,
    pub nixos: NixosConfig,
    pub read_back: ReadBack,
    /// Layout disk -> device written (by-id when known).
    pub disks: BTreeMap<String, String>,
}

impl Applied {
    /// Leave everything mounted and open (the CLI's `apply`, like `disko --mode mount`).
    pub fn leak(mut self) {
        std::mem::take(&mut self.mounts)
            .into_iter()
            .for_each(MountGuard::leak);
        std::mem::take(&mut self.holders)
            .into_iter()
            .for_each(Holder::leak);
    }

    /// The LUKS mappings still open.
    pub fn luks_open(&self) -> usize {
        self.holders
            .iter()
            .filter(|h| h.kind() == HolderKind::Luks)
            .count()
    }

    /// Unmount (children first), then close what holds the devices.
    pub async fn close(mut self) -> Result<()> {
        self.try_close().await
    }

    /// Unmount (children first) and close the holders (last set up, first
    /// closed), stopping at the first failure: what is still mounted or
    /// open stays held here, so the caller can try again (a technician's
    /// shell left in /mnt) or drop it.
    pub async fn try_close(&mut self) -> Result<()> {
        while let Some(m) = self.mounts.last_mut() {
            m.try_close().await?;
            self.mounts.pop();
        }
        while let Some(h) = self.holders.last_mut() {
            h.try_close().await?;
            self.holders.pop();
        }
        Ok(())
    }
}

/// Best effort on error paths and panics: children unmounted before parents,
/// then the holders closed in reverse (each guard's own `Drop` does the work).
impl Drop for Applied {
    fn drop(&mut self) {
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
        while let Some(h) = self.holders.pop() {
            drop(h);
        }
    }
}

/// What the read-back found on the disks after applying.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadBack {
    pub partitions: Vec<ReadBackPart>,
    /// Every device the plan made a signature on, with what blkid finds there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<ReadBackPart>,
    /// Targets found mounted, in order.
    pub mounted: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadBackPart {
    pub device: String,
    pub partlabel: String,
    /// blkid TYPE ("" when the partition holds nothing, e.g. BIOS boot).
    pub fs_type: String,
    pub uuid: String,
}

struct OpProgress {
    f: Option<ProgressFn>,
    total: usize,
}

impl OpProgress {
    fn emit(&self, index: usize, disk: Option<&str>, what: &str, state: OpState) {
        if let Some(f) = &self.f {
            f(&OpEvent {
                index,
                total: self.total,
                disk: disk.map(str::to_owned),
                what: what.to_owned(),
                state,
            });
        }
    }
}

/// Probe and check every target. Nothing is written.
pub async fn check_safety(plan: &Plan, wipe: bool) -> Result<()> {
    for d in &plan.disks {
        let p = safety::probe(&d.target.device)
            .await
            .with_context(|| format!("probing disk {} ({})", d.name, d.target.device))?;
        safety::check(&d.name, &p, wipe).map_err(anyhow::Error::new)?;
    }
    Ok(())
}

/// Is `e` a safety refusal (nothing was touched)?
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refusal>().is_some()
}

/// One disk or volume and its operations, run in order by one task.
#[derive(Clone)]
struct Unit {
    name: String,
    /// The disk's plan (table, target) for a disk; `None` for a volume.
    disk: Option<DiskPlan>,
    ops: Vec<Op>,
    /// Index of its first operation in the plan's printed order, minus one.
    base: usize,
}

/// What one unit leaves: holders, whether it wrote a table, the tables it
/// made on volumes (for the read-back), and how it ended.
#[derive(Default)]
struct UnitOut {
    holders: Vec<Holder>,
    wrote: bool,
    nested: Vec<DiskPlan>,
}

/// Run the plan. See the module documentation.
pub async fn apply(plan: &Plan, opts: &ApplyOptions) -> Result<Applied> {
    if plan.needs_tpm2() {
        check_tpm2(&opts.sysfs_root)?;
    }
    let resuming = opts
        .journal
        .as_ref()
        .is_some_and(|j| !j.snapshot().done.is_empty());
    if resuming {
        let j = opts.journal.as_ref().expect("resuming").snapshot();
        // The disks hold what this attempt made (and may still be mounted
        // by the agent that was killed): compare them with the journal
        // instead of refusing them as in use or holding data.
        unmount_below(&opts.root)?;
        j.check().map_err(|m| anyhow::Error::new(*m))?;
    } else {
        check_safety(plan, opts.wipe).await?;
    }
    let progress = Arc::new(OpProgress {
        f: opts.progress.clone(),
        total: plan.op_count(),
    });
    let ctx = Arc::new(Ctx {
        progress: progress.clone(),
        keys: opts.keys.clone(),
        open_luks: opts.open_luks,
        luks_format_args: opts.luks_format_args.clone(),
        journal: opts.journal.clone(),
        plan: Arc::new(plan.clone()),
        state_dir: opts.state_dir.clone(),
        root: opts.root.clone(),
    });

    // Each disk and each volume is one unit of work, its operations in
    // order (disko's order within a device: a LUKS volume is opened before
    // what it holds is made). A unit starts once every unit it waits for
    // ([`super::plan::VolumePlan::after`]: those making its members) has
    // finished; units with no dependency between them run in parallel.
    let mut pending: Vec<(usize, Unit, Vec<String>)> = Vec::new();
    let mut base = 0;
    for d in &plan.disks {
        pending.push((
            pending.len(),
            Unit {
                name: d.name.clone(),
                disk: Some(d.clone()),
                ops: d.ops.clone(),
                base,
            },
            d.after.clone(),
        ));
        base += d.ops.len();
    }
    for v in &plan.volumes {
        pending.push((
            pending.len(),
            Unit {
                name: v.label.clone(),
                disk: None,
                ops: v.ops.clone(),
                base,
            },
            v.after.clone(),
        ));
        base += v.ops.len();
    }
    let mut holders: Vec<Holder> = Vec::new();
    let mut written: Vec<String> = Vec::new();
    let mut nested: Vec<DiskPlan> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut finished: std::collections::BTreeSet<String> = Default::default();
    let mut set = tokio::task::JoinSet::new();
    loop {
        if failure.is_none() {
            let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut pending)
                .into_iter()
                .partition(|(_, _, after)| after.iter().all(|a| finished.contains(a)));
            pending = rest;
            for (i, unit, _) in ready {
                let ctx = ctx.clone();
                set.spawn(async move {
                    let mut out = UnitOut::default();
                    let r = run_unit(&unit, &ctx, &mut out).await;
                    (i, unit, r, out)
                });
            }
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (_, unit, r, out) = match joined {
            Ok(j) => j,
            Err(e) => {
                failure.get_or_insert(anyhow!("a disk task panicked: {e}"));
                continue;
            }
        };
        // In the order units finish: a unit finishes after those it waits
        // for, so holders close (in reverse) before what they stand on.
        holders.extend(out.holders);
        nested.extend(out.nested);
        if out.wrote {
            if let Some(d) = &unit.disk {
                written.push(d.target.device.clone());
            }
        }
        match r {
            Ok(()) => {
                finished.insert(unit.name.clone());
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if failure.is_none() && !pending.is_empty() {
        let names: Vec<&str> = pending.iter().map(|(_, u, _)| u.name.as_str()).collect();
        failure = Some(anyhow!(
            "the plan's units {} wait for units that never ran (a plan error)",
            names.join(", ")
        ));
    }
    let mut mounts: Vec<MountGuard> = Vec::new();
    if failure.is_none() {
        if let Err(e) = mount_all(plan, opts, &progress, base, &mut mounts).await {
            failure = Some(e);
        }
    }
    let read_back = if failure.is_none() {
        match read_back(plan, &nested, &mounts, opts).await {
            Ok(v) => Some(v),
            Err(e) => {
                failure = Some(e.context("reading the disks back failed"));
                None
            }
        }
    } else {
        None
    };
    if let Some(e) = failure {
        cleanup(mounts, holders, &written).await;
        if let Some(j) = &opts.journal {
            // The new tables were wiped: nothing of this attempt is left to
            // resume; a retry starts the disk step over on the same disks.
            j.reset()
                .with_context(|| format!("resetting the disk journal {}", j.path.display()))?;
        }
        return Err(e.context(format!(
            "applying the layout failed; unmounted, closed LUKS, deactivated volume groups, \
             stopped md arrays and wiped the new partition tables of {}",
            if written.is_empty() {
                "no disk".to_owned()
            } else {
                written.join(", ")
            }
        )));
    }
    Ok(Applied {
        key_paths: plan.key_paths(),
        mounts,
        holders,
        nixos: plan.nixos.clone(),
        read_back: read_back.unwrap_or_default(),
        disks: plan
            .disks
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.target
                        .by_id
                        .clone()
                        .unwrap_or_else(|| d.target.device.clone()),
                )
            })
            .collect(),
    })
}

async fn cleanup(mut mounts: Vec<MountGuard>, mut holders: Vec<Holder>, written: &[String]) {
    while let Some(m) = mounts.pop() {
        if let Err(e) = m.close().await {
            tracing::warn!("cleanup: {e:#}");
        }
    }
    while let Some(h) = holders.pop() {
        if let Err(e) = h.close().await {
            tracing::warn!("cleanup: {e:#}");
        }
    }
    for dev in written {
        if let Err(e) = wipe(dev).await {
            tracing::warn!("cleanup: wiping {dev}: {e:#}");
        }
    }
}

struct Ctx {
    progress: Arc<OpProgress>,
    keys: Arc<dyn KeyProvider>,
    open_luks: bool,
    luks_format_args: Vec<String>,
    journal: Option<JournalFile>,
    plan: Arc<Plan>,
    state_dir: PathBuf,
    root: PathBuf,
}

/// Whether an operation needs a device-mapper device (skipped with
/// `open_luks = false`): it is on /dev/mapper, or opens one.
fn on_mapper(op: &Op) -> bool {
    match op {
        Op::LuksOpen { .. } | Op::LuksAddKey { .. } => true,
        Op::Tpm2Enroll { .. } | Op::LuksFormat { .. } | Op::Wipe { .. } => false,
        op => op.device().starts_with("/dev/mapper/"),
    }
}

async fn run_unit(u: &Unit, ctx: &Ctx, out: &mut UnitOut) -> Result<()> {
    let label = Some(u.name.as_str());
    for (i, op) in u.ops.iter().enumerate() {
        let index = u.base + i + 1;
        let what = op.describe();
        if on_mapper(op) && !ctx.open_luks {
            ctx.progress.emit(
                index,
                label,
                &what,
                OpState::Skipped {
                    because: "open_luks = false",
                },
            );
            continue;
        }
        let entry = Journal::entry(&ctx.plan, &u.name, op);
        if let Some(j) = &ctx.journal {
            if j.is_done(&entry) {
                // Made by this attempt before the agent restarted, and
                // checked against the disk ([`Journal::check`]): take over
                // what it set up.
                resume_op(op, u, ctx, out).await?;
                ctx.progress.emit(
                    index,
                    label,
                    &what,
                    OpState::Skipped {
                        because: "journal: done before the agent restarted",
                    },
                );
                continue;
            }
        }
        ctx.progress.emit(index, label, &what, OpState::Started);
        let t0 = Instant::now();
        if matches!(op, Op::WriteGpt { .. } | Op::WriteMbr { .. }) {
            out.wrote = true;
        }
        let mut r = run_op(op, u, ctx, out).await;
        if let (Ok(()), Some(j)) = (&r, &ctx.journal) {
            r = j.record(entry);
        }
        match r {
            Ok(()) => ctx.progress.emit(
                index,
                label,
                &what,
                OpState::Done {
                    millis: t0.elapsed().as_millis() as u64,
                },
            ),
            Err(e) => {
                ctx.progress.emit(index, label, &what, OpState::Failed);
                return Err(e.context(format!(
                    "operation {index} on {} {} failed: {what}",
                    if u.disk.is_some() { "disk" } else { "volume" },
                    u.name
                )));
            }
        }
    }
    Ok(())
}

/// A journalled operation: what it set up is taken over (a LUKS mapping
/// still open, an md array, a volume group, a pool; a table on a volume is
/// read for the read-back), or set up again when it is gone.
async fn resume_op(op: &Op, u: &Unit, ctx: &Ctx, out: &mut UnitOut) -> Result<()> {
    match op {
        Op::LuksOpen { name, .. } => {
            if Path::new(&format!("/dev/mapper/{name}")).exists() {
                out.holders.push(Holder::new(HolderKind::Luks, name));
            } else {
                run_op(op, u, ctx, out).await?;
            }
        }
        Op::MdCreate { name, device, .. } if Path::new(device).exists() => {
            out.holders.push(Holder::new(HolderKind::Md, name));
        }
        Op::VgCreate { name, .. } => out.holders.push(Holder::new(HolderKind::Vg, name)),
        Op::ZpoolCreate { name, .. } => out.holders.push(Holder::new(HolderKind::Zpool, name)),
        Op::NestedTable { .. } => out.nested.push(nested_plan(op)?),
        _ => {}
    }
    Ok(())
}

/// Run `argv` through the command runner (LVM's tools without their
/// warnings about inherited descriptors), `stdin` fed when given.
async fn run_argv(argv: &[String], stdin: Option<Vec<u8>>) -> Result<()> {
    let mut cmd = Cmd::new(&argv[0]).args(&argv[1..]);
    if ["pvcreate", "vgcreate", "lvcreate", "vgchange"].contains(&argv[0].as_str()) {
        cmd = cmd.env("LVM_SUPPRESS_FD_WARNINGS", "1");
    }
    if let Some(s) = stdin {
        cmd = cmd.stdin(s);
    }
    cmd.run().await?;
    Ok(())
}

async fn run_op(op: &Op, u: &Unit, ctx: &Ctx, out: &mut UnitOut) -> Result<()> {
    let disk = || {
        u.disk
            .clone()
            .ok_or_else(|| anyhow!("{} is a volume, not a disk", u.name))
    };
    match op {
        Op::Wipe { device } => wipe(device).await,
        Op::WriteGpt { .. } => {
            let d = disk()?;
            tokio::task::spawn_blocking(move || super::gpt::write(&d))
                .await
                .context("the GPT writer panicked")?
        }
        Op::WriteMbr { .. } => {
            let d = disk()?;
            tokio::task::spawn_blocking(move || super::mbr::write(&d))
                .await
                .context("the MBR writer panicked")?
        }
        Op::Reread { device, partitions } => reread(device, partitions, &disk()?).await,
        Op::NestedTable {
            device, partitions, ..
        } => {
            wait_node(device).await?;
            let d = nested_plan(op)?;
            let d2 = d.clone();
            let table = d.table;
            tokio::task::spawn_blocking(move || match table {
                Some(super::layout::TableKind::Msdos) => super::mbr::write(&d2),
                _ => super::gpt::write(&d2),
            })
            .await
            .context("the table writer panicked")??;
            let kernel: Vec<String> = d.partitions.iter().map(|p| p.device.clone()).collect();
            reread(&d.target.device, &kernel, &d).await?;
            // The names the plan uses (/dev/md/NAMEpN) are udev's; without
            // udev (a minimal installer) they are made here, as mdadm makes
            // /dev/md/NAME itself.
            for (name, node) in partitions.iter().zip(&kernel) {
                ensure_link(name, node)?;
            }
            out.nested.push(d);
            Ok(())
        }
        Op::BtrfsSubvolumes {
            device,
            names,
            swap_files,
        } => btrfs_subvolumes(device, names, swap_files).await,
        Op::LuksFormat { key, .. } => {
            let mut argv = op.argv().expect("a command");
            // Our own args go before the device (the last argument).
            let dev = argv.pop().expect("device");
            argv.extend(ctx.luks_format_args.iter().cloned());
            argv.push(dev);
            run_argv(&argv, Some(ctx.keys.key(key)?)).await
        }
        Op::LuksOpen { key, name, .. } => {
            run_argv(&op.argv().expect("a command"), Some(ctx.keys.key(key)?)).await?;
            out.holders.push(Holder::new(HolderKind::Luks, name));
            Ok(())
        }
        Op::LuksAddKey {
            device,
            key,
            args,
            new_key,
        } => {
            let new = zeroize::Zeroizing::new(ctx.keys.key(new_key)?);
            let file = KeyFile::new(&ctx.state_dir, &new)?;
            let argv =
                super::ops::luks_add_key_argv(device, key, args, &file.path().to_string_lossy());
            let r = run_argv(&argv, Some(ctx.keys.key(key)?)).await;
            let removed = file.close();
            r?;
            removed
        }
        Op::Mkfs { .. }
        | Op::Mkswap { .. }
        | Op::HybridMbr { .. }
        | Op::MbrPartType { .. }
        | Op::MbrActivate { .. }
        | Op::PvCreate { .. }
        | Op::LvCreate { .. }
        | Op::ZfsCreate { .. }
        | Op::ZfsVolume { .. } => run_argv(&op.argv().expect("a command"), None).await,
        Op::Tpm2Enroll {
            device, key, pcrs, ..
        } => {
            let mut k = zeroize::Zeroizing::new(ctx.keys.key(key)?);
            if matches!(key, KeySource::PasswordFile(_)) {
                // Keys ends a passphrase with the newline cryptsetup's stdin
                // wants; the key file is read whole: the passphrase alone.
                k.pop();
            }
            let file = KeyFile::new(&ctx.state_dir, &k)?;
            let argv = super::plan::cryptenroll_argv(device, pcrs, &file.path().to_string_lossy());
            let r = Cmd::new(&argv[0]).args(&argv[1..]).run().await;
            let removed = file.close();
            r?;
            removed
        }
        Op::MdCreate { device, name, .. } => {
            // mdadm asks before using a member that looks used, or metadata
            // at the start of a boot array: disko answers "y".
            run_argv(&op.argv().expect("a command"), Some(b"y\n".to_vec())).await?;
            out.holders.push(Holder::new(HolderKind::Md, name));
            wait_node(device).await?;
            // mdadm.nix: a new array may show a stale table; wipe it.
            Cmd::new("wipefs")
                .args(["--all", "--force", "--quiet", device])
                .run()
                .await?;
            Ok(())
        }
        Op::VgCreate { name, .. } => {
            run_argv(&op.argv().expect("a command"), None).await?;
            out.holders.push(Holder::new(HolderKind::Vg, name));
            Ok(())
        }
        Op::ZpoolCreate { name, .. } => {
            let root = ctx.root.to_string_lossy().into_owned();
            let argv: Vec<String> = op
                .argv()
                .expect("a command")
                .into_iter()
                .map(|a| {
                    if a == super::ops::ROOT {
                        root.clone()
                    } else {
                        a
                    }
                })
                .collect();
            run_argv(&argv, None).await?;
            out.holders.push(Holder::new(HolderKind::Zpool, name));
            // zpool.nix: the root dataset is not left mounted (the mounts come later, in order).
            let mounted = Cmd::new("zfs")
                .args(["get", "-H", "-o", "value", "mounted", name])
                .run()
                .await?;
            if mounted.stdout.trim() == "yes" {
                Cmd::new("zfs").args(["unmount", name]).run().await?;
            }
            Ok(())
        }
        Op::BcachefsFormat { key, .. } => {
            let stdin = match key {
                Some(k) => Some(ctx.keys.key(k)?),
                None => None,
            };
            run_argv(&op.argv().expect("a command"), stdin).await
        }
        Op::BcachefsSubvolumes { device, names, key } => {
            bcachefs_subvolumes(device, names, key.as_ref(), ctx).await
        }
    }
}

/// The table an [`Op::NestedTable`] writes, on its device as it is now.
fn nested_plan(op: &Op) -> Result<DiskPlan> {
    let Op::NestedTable {
        device,
        owner,
        table,
        disk_guid,
        guids,
        partitions,
    } = op
    else {
        bail!("not a table operation");
    };
    let (canon, name) = safety::kernel_name(device)?;
    let read = |f: &str| -> Result<u64> {
        std::fs::read_to_string(format!("/sys/class/block/{name}/{f}"))
            .with_context(|| format!("reading the size of {device} ({name})"))?
            .trim()
            .parse()
            .with_context(|| format!("the size of {device}"))
    };
    let sectors = read("size")?;
    let ss = read("queue/logical_block_size").unwrap_or(512).max(512);
    let t = Target {
        device: canon.to_string_lossy().into_owned(),
        size_bytes: sectors * 512,
        sector_size: ss as u32,
        by_id: None,
    };
    let parts = super::plan::table_parts(table, &t, guids, |p| {
        partitions
            .get(p.number as usize - 1)
            .cloned()
            .unwrap_or_default()
    })
    .map_err(|e| anyhow!("the table on {device} ({owner}): {e}"))?;
    Ok(DiskPlan {
        name: owner.clone(),
        target: t,
        table: Some(table.kind),
        partitions: parts,
        disk_guid: disk_guid.clone(),
        ops: Vec::new(),
        after: Vec::new(),
        uses: Vec::new(),
    })
}

/// Wait (10 s at most) for a device node an earlier command makes.
async fn wait_node(device: &str) -> Result<()> {
    if !wait_for(|| Path::new(device).exists(), Duration::from_secs(10)).await {
        bail!("{device} did not appear within 10 s");
    }
    Ok(())
}

/// Make `link` a symlink to `node` when it does not exist (udev's job, done
/// here when no udev runs).
fn ensure_link(link: &str, node: &str) -> Result<()> {
    let l = Path::new(link);
    if l == Path::new(node) || l.exists() {
        return Ok(());
    }
    if let Some(dir) = l.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::os::unix::fs::symlink(node, l)
        .with_context(|| format!("linking {link} to {node} (no udev made it)"))
}

async fn bcachefs_subvolumes(
    device: &str,
    names: &[String],
    key: Option<&KeySource>,
    ctx: &Ctx,
) -> Result<()> {
    if let Some(k) = key {
        let first = device.split(':').next().unwrap_or(device);
        Cmd::new("bcachefs")
            .args(["unlock", "-k", "session", first])
            .stdin(ctx.keys.key(k)?)
            .run()
            .await?;
    }
    in_temp_mount(device, "bcachefs", "defaults", |dir| async move {
        create_subvolumes("bcachefs", &dir, names).await
    })
    .await
}

/// Mount `device` on a fresh temporary directory, run `f` with it, then
/// unmount and remove the directory whatever `f` returned.
async fn in_temp_mount<F, Fut>(device: &str, fs_type: &str, options: &str, f: F) -> Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let dir = temp_mount_dir(fs_type, device);
    let m = MountGuard::mount(device, &dir, fs_type, options).await?;
    let r = f(dir.clone()).await;
    let closed = m.close().await;
    let _ = std::fs::remove_dir(&dir);
    r?;
    closed
}

/// `TOOL subvolume create DIR/NAME` for each name (btrfs, bcachefs), the
/// parent directories made first.
async fn create_subvolumes(tool: &str, dir: &Path, names: &[String]) -> Result<()> {
    for n in names {
        let p = dir.join(n.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Cmd::new(tool)
            .args(["subvolume", "create"])
            .arg(&p)
            .run()
            .await?;
    }
    Ok(())
}

fn temp_mount_dir(what: &str, device: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "landfall-{what}-{}-{}",
        std::process::id(),
        device.rsplit('/').next().unwrap_or("dev").replace(':', "_")
    ))
}

/// `luks_unlock = "tpm2"` needs a TPM 2.0 the kernel sees: refused before
/// any disk is touched otherwise.
pub fn check_tpm2(sysfs_root: &Path) -> Result<()> {
    let tpm = sysfs_root.join("sys/class/tpm/tpm0");
    if !tpm.exists() {
        bail!(
            "luks_unlock = \"tpm2\" needs a TPM, and this machine has none ({} does not exist); \
             no disk was touched: enable the TPM (TPM 2.0, \"PTT\"/\"fTPM\"/\"Security Chip\") \
             in the firmware setup, or set the role's luks_unlock to \"initrd_key\" or \"prompt\", \
             then `landfall retry HOST`",
            tpm.display()
        );
    }
    let major = std::fs::read_to_string(tpm.join("tpm_version_major")).unwrap_or_default();
    if !major.trim().is_empty() && major.trim() != "2" {
        bail!(
            "luks_unlock = \"tpm2\" needs a TPM 2.0; this machine's TPM is version {}; \
             no disk was touched: switch the TPM to 2.0 in the firmware setup, or set the role's \
             luks_unlock to \"initrd_key\" or \"prompt\"",
            major.trim()
        );
    }
    Ok(())
}

/// A key in a 0600 file in a fresh 0700 directory on tmpfs, for a tool that
/// reads its key from a file only: removed by [`KeyFile::close`], or by
/// `Drop` on every other path.
pub struct KeyFile {
    dir: PathBuf,
    file: PathBuf,
}

impl KeyFile {
    pub fn new(state_dir: &Path, key: &[u8]) -> Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let fs = nix::sys::statfs::statfs(state_dir)
            .with_context(|| format!("statfs {}", state_dir.display()))?
            .filesystem_type();
        // ramfs (0x858458f6) has no constant in nix: compare the number.
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        if fs != nix::sys::statfs::TMPFS_MAGIC && fs.0 as i64 != RAMFS_MAGIC {
            bail!(
                "{} is not on tmpfs: the LUKS key for systemd-cryptenroll must not touch a disk; \
                 set LANDFALL_STATE_DIR (landfall.state_dir=) to a directory under /run",
                state_dir.display()
            );
        }
        let dir = loop {
            let d = state_dir.join(format!(".unlock-{:016x}", rand_u64()?));
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => break d,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
            }
        };
        let kf = KeyFile {
            file: dir.join("key"),
            dir,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kf.file)
            .with_context(|| format!("creating {}", kf.file.display()))?;
        f.write_all(key)
            .with_context(|| format!("writing {}", kf.file.display()))?;
        Ok(kf)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Remove the file and its directory.
    pub fn close(mut self) -> Result<()> {
        let dir = std::mem::take(&mut self.dir);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn rand_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("getrandom: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

/// Remove every signature from a disk and the partitions the kernel knows,
/// and forget those partitions. md arrays and volume groups still active on
/// it (an earlier install: the safety check let them through only with the
/// wipe policy) are stopped and deactivated first.
/// `mdadm --stop` an array on a disk being wiped. The disks of one plan are wiped in
/// parallel, so the wipe of another member's disk may be stopping the same array: a stop
/// that fails while the array is still there is tried again, and an array that is gone
/// (`/sys/block/MD`) is stopped.
async fn stop_md(md: &str) -> Result<()> {
    let gone = || !Path::new("/sys/block").join(md).exists();
    Retry {
        initial: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        max_tries: Some(10),
    }
    .run(
        |_| async {
            match Cmd::new("mdadm")
                .args(["--stop", &format!("/dev/{md}")])
                .run()
                .await
            {
                Ok(_) => Attempt::Done(()),
                Err(_) if gone() => Attempt::Done(()),
                Err(e) => Attempt::Retry(e),
            }
        },
        |e, n, _| tracing::debug!("stopping {md} (try {n}): {e}"),
    )
    .await
    .map_err(|e| anyhow!("{e}"))
}

pub async fn wipe(device: &str) -> Result<()> {
    let (_, name) = safety::kernel_name(device)?;
    for stop in safety::stack_above(&name) {
        let (cmd, what) = match &stop {
            safety::Stacked::Md(md) => {
                stop_md(md)
                    .await
                    .with_context(|| format!("stopping md array {md} on {device}"))?;
                continue;
            }
            safety::Stacked::Vg(vg) => (
                Cmd::new("vgchange")
                    .args(["-an", vg])
                    .env("LVM_SUPPRESS_FD_WARNINGS", "1"),
                format!("deactivating volume group {vg} on {device}"),
            ),
            safety::Stacked::Other(_) => continue,
        };
        cmd.run().await.with_context(|| what)?;
    }
    for p in safety::kernel_partitions(&name) {
        let node = format!("/dev/{p}");
        if Path::new(&node).exists() {
            clear_zfs_labels(&node)?;
            Cmd::new("wipefs")
                .args(["--all", "--force", "--quiet", &node])
                .run()
                .await?;
        }
    }
    // Partitions added with BLKPG (partx) stay until deleted.
    if !safety::kernel_partitions(&name).is_empty() {
        let _ = Cmd::new("partx").args(["-d", device]).run().await;
    }
    clear_zfs_labels(device)?;
    Cmd::new("wipefs")
        .args(["--all", "--force", "--quiet", device])
        .run()
        .await?;
    Ok(())
}

/// Size of one ZFS vdev label (`vdev_label_t`): two at the start of a
/// vdev, two at its end (the device's size rounded down to a multiple of it).
const ZFS_LABEL: u64 = 256 << 10;

/// Zero the four places a ZFS vdev label can be on `device` when one of
/// them holds an uberblock (magic 0x00bab10c, either byte order, at a 1 KiB
/// step in the label's second half). wipefs erases only the uberblock magic
/// libblkid reports (one of each label's 128), and `zpool import` still finds
/// the pool in the labels' nvlists; zeroed, the disk is no pool member for
/// either. Devices without a label are only read (1 MiB).
pub fn clear_zfs_labels(device: &str) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("opening {device} to look for ZFS labels"))?;
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("the size of {device}"))?;
    let end = size / ZFS_LABEL * ZFS_LABEL;
    let mut spans = vec![(0, (2 * ZFS_LABEL).min(size))];
    if end >= 4 * ZFS_LABEL {
        spans.push((end - 2 * ZFS_LABEL, 2 * ZFS_LABEL));
    } else if end > 2 * ZFS_LABEL {
        spans.push((2 * ZFS_LABEL, end - 2 * ZFS_LABEL));
    }
    let magic = [0x00ba_b10c_u64.to_le_bytes(), 0x00ba_b10c_u64.to_be_bytes()];
    let mut found = false;
    for &(at, len) in &spans {
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .with_context(|| format!("reading {len} bytes at {at} of {device} (ZFS labels)"))?;
        found |= buf.chunks(ZFS_LABEL as usize).any(|label| {
            (ZFS_LABEL as usize / 2..label.len().saturating_sub(8))
                .step_by(1024)
                .any(|o| magic.iter().any(|m| label[o..o + 8] == *m))
        });
    }
    if !found {
        return Ok(());
    }
    let zeros = vec![0u8; (2 * ZFS_LABEL) as usize];
    for (at, len) in spans {
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(&zeros[..len as usize]))
            .with_context(|| format!("zeroing {len} bytes at {at} of {device} (ZFS labels)"))?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {device} after clearing ZFS labels"))
}

/// Make the kernel see the new table: BLKRRPART (`blockdev --rereadpt`,
/// retried while busy); when the partitions do not appear (kernels without
/// GPT parsing, e.g. CI's), add them with BLKPG (`partx -a`). Then wait
/// for every node, with the size the plan gave it.
async fn reread(device: &str, partitions: &[String], d: &DiskPlan) -> Result<()> {
    let retry = Retry {
        initial: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        max_tries: Some(10),
    };
    let reread = retry
        .run(
            |_| async {
                match Cmd::new("blockdev")
                    .args(["--rereadpt", device])
                    .run()
                    .await
                {
                    Ok(_) => Attempt::Done(()),
                    // EBUSY: something still holds an old partition; try again.
                    Err(e) if e.stderr_tail.contains("busy") => Attempt::Retry(e),
                    // EINVAL: no partition scanning here (loop without partscan).
                    Err(e) => Attempt::Fatal(e),
                }
            },
            |e, n, _| tracing::debug!("re-reading {device} (try {n}): {e}"),
        )
        .await;
    let want = planned_bounds(d);
    let ready = || nodes_ready(partitions, d) && bounds_match(device, &want);
    let scanned = match reread {
        Ok(()) => wait_for(ready, Duration::from_millis(300)).await,
        Err(e) => {
            tracing::debug!("BLKRRPART failed, syncing partitions with partx: {e}");
            false
        }
    };
    if !scanned {
        // BLKPG: drop what the kernel holds with another table's bounds (a
        // probe of such a node reads past the new partition: EIO), add the rest.
        sync_partitions(device, &want).await?;
    }
    if !wait_for(ready, Duration::from_secs(10)).await {
        bail!(
            "the partition nodes {} did not appear with the planned bounds within 10 s",
            partitions.join(" ")
        );
    }
    // Signatures an earlier layout left where the new partitions now start
    // (a partition that gets no filesystem would show them otherwise).
    for node in partitions {
        let f = super::probe::probe(node)?;
        if f.ambivalent || f.get("TYPE").is_some() || f.get("PTTYPE").is_some() {
            Cmd::new("wipefs")
                .args(["--all", "--force", "--quiet", node])
                .run()
                .await?;
        }
    }
    Ok(())
}

/// A partition as the kernel knows it (sysfs): its number, first sector and
/// length, both in 512-byte units whatever the disk's sector size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelPart {
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
}

/// The partitions the kernel knows of `device`, by number.
pub fn kernel_parts(device: &str) -> Result<Vec<KernelPart>> {
    let (_, name) = safety::kernel_name(device)?;
    let read = |p: &str, f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/block/{p}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut parts: Vec<KernelPart> = safety::kernel_partitions(&name)
        .iter()
        .filter_map(|p| {
            Some(KernelPart {
                number: u32::try_from(read(p, "partition")?).ok()?,
                start: read(p, "start")?,
                sectors: read(p, "size")?,
            })
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// What the kernel must hold after the plan's table is written.
fn planned_bounds(d: &DiskPlan) -> Vec<KernelPart> {
    let per_lba = u64::from(d.target.sector_size) / 512;
    let mut want: Vec<KernelPart> = d
        .partitions
        .iter()
        .map(|p| KernelPart {
            number: p.number,
            start: p.first_lba * per_lba,
            sectors: p.size_bytes / 512,
        })
        .collect();
    want.sort();
    want
}

fn bounds_match(device: &str, want: &[KernelPart]) -> bool {
    kernel_parts(device).is_ok_and(|have| have == want)
}

/// The partition numbers to drop (known with other bounds, or not in the
/// table) and then to add, so that the kernel's view equals `want`.
pub fn partition_fixes(have: &[KernelPart], want: &[KernelPart]) -> (Vec<u32>, Vec<u32>) {
    let drop = have
        .iter()
        .filter(|h| !want.contains(h))
        .map(|h| h.number)
        .collect();
    let add = want
        .iter()
        .filter(|w| !have.contains(w))
        .map(|w| w.number)
        .collect();
    (drop, add)
}

/// Make the kernel's partitions of `device` exactly `want` with BLKPG
/// (`partx -d/-a --nr N`): for kernels or devices without partition
/// scanning, and for a disk that held another table. Errors name what still
/// differs.
pub async fn sync_partitions(device: &str, want: &[KernelPart]) -> Result<()> {
    let have = kernel_parts(device)?;
    let (drop, add) = partition_fixes(&have, want);
    for n in &drop {
        Cmd::new("partx")
            .args(["-d", "--nr", &n.to_string(), device])
            .run()
            .await
            .with_context(|| {
                format!("dropping partition {n} of {device}, which the kernel holds with another table's bounds")
            })?;
    }
    for n in &add {
        Cmd::new("partx")
            .args(["-a", "--nr", &n.to_string(), device])
            .run()
            .await
            .with_context(|| format!("adding partition {n} of {device} with partx"))?;
    }
    let now = kernel_parts(device)?;
    if now != want {
        bail!(
            "the kernel's partitions of {device} still differ from the written table: \
             kernel {now:?}, table {want:?}"
        );
    }
    Ok(())
}

fn nodes_ready(partitions: &[String], d: &DiskPlan) -> bool {
    partitions.iter().zip(&d.partitions).all(|(node, p)| {
        let Ok((_, name)) = safety::kernel_name(node) else {
            return false;
        };
        std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|sectors| sectors * 512 == p.size_bytes)
    })
}

async fn wait_for(mut f: impl FnMut() -> bool, max: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() >= max {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn btrfs_subvolumes(
    device: &str,
    names: &[String],
    swap_files: &[(String, String)],
) -> Result<()> {
    in_temp_mount(device, "btrfs", "subvol=/", |dir| async move {
        create_subvolumes("btrfs", &dir, names).await?;
        // btrfs.nix `swapCreate`.
        for (path, size) in swap_files {
            Cmd::new("btrfs")
                .args(["filesystem", "mkswapfile", "--size", size])
                .arg(dir.join(path))
                .run()
                .await?;
        }
        Ok(())
    })
    .await
}

/// Unmount everything mounted at or below `root`, deepest first: the
/// mounts a killed agent of this attempt left (a resume mounts again).
pub fn unmount_below(root: &Path) -> Result<()> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let r = root.to_string_lossy().into_owned();
    let mut below: Vec<String> = crate::hw::mountinfo::read()?
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|t| *t == r || t.starts_with(&format!("{}/", r.trim_end_matches('/'))))
        .collect();
    below.reverse();
    for t in below {
        nix::mount::umount2(Path::new(&t), nix::mount::MntFlags::empty())
            .with_context(|| format!("unmounting {t}, left by the agent that was killed"))?;
    }
    Ok(())
}

/// Mount target of a mountpoint below the root.
pub fn target_of(root: &Path, mountpoint: &str) -> PathBuf {
    let rel = mountpoint.trim_start_matches('/');
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

async fn mount_all(
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &OpProgress,
    base: usize,
    mounts: &mut Vec<MountGuard>,
) -> Result<()> {
    for (i, m) in plan.mounts.iter().enumerate() {
        let index = base + i + 1;
        let target = target_of(&opts.root, &m.mountpoint);
        let what = format!(
            "mount -t {} -o {} {} {}",
            m.fs_type,
            m.options_arg(),
            m.device,
            target.display()
        );
        if let Some(because) = skip_mount(m, opts) {
            progress.emit(
                index,
                m.disk.as_deref(),
                &what,
                OpState::Skipped { because },
            );
            continue;
        }
        progress.emit(index, m.disk.as_deref(), &what, OpState::Started);
        let t0 = Instant::now();
        match MountGuard::mount(&m.device, &target, &m.fs_type, &m.options_arg()).await {
            Ok(g) => mounts.push(g),
            Err(e) => {
                progress.emit(index, m.disk.as_deref(), &what, OpState::Failed);
                return Err(e.context(format!("operation {index} failed: {what}")));
            }
        }
        progress.emit(
            index,
            m.disk.as_deref(),
            &what,
            OpState::Done {
                millis: t0.elapsed().as_millis() as u64,
            },
        );
    }
    Ok(())
}

fn skip_mount(m: &Mount, opts: &ApplyOptions) -> Option<&'static str> {
    if opts.no_mount_formats.contains(&m.fs_type) {
        return Some("no_mount_formats");
    }
    if !opts.open_luks && m.device.starts_with("/dev/mapper/") {
        return Some("open_luks = false");
    }
    None
}

/// Read back: every partition's PARTLABEL, type, GUID and attribute bits
/// (or MBR type and active flag), on the disks and on the tables made on
/// volumes; every signature an operation made (filesystem, swap, LUKS,
/// physical volume, md member), and every mount (blkid low-level probe,
/// mountinfo).
pub async fn read_back(
    plan: &Plan,
    nested: &[DiskPlan],
    mounts: &[MountGuard],
    opts: &ApplyOptions,
) -> Result<ReadBack> {
    let mut v = ReadBack::default();
    for d in plan.disks.iter().chain(nested) {
        for p in &d.partitions {
            v.partitions.push(read_back_partition(d, p)?);
        }
    }
    // The last signature each device got, from the plan's operations.
    let mut want: Vec<(String, String)> = Vec::new();
    let set = |want: &mut Vec<(String, String)>, dev: &str, ty: String| {
        want.retain(|(d, _)| d != dev);
        want.push((dev.to_owned(), ty));
    };
    for (_, op) in plan.all_ops() {
        if on_mapper(op) && !opts.open_luks {
            continue;
        }
        match op {
            Op::MdCreate { members, .. } => {
                for m in members {
                    set(&mut want, m, "linux_raid_member".into());
                }
            }
            Op::BcachefsFormat { members, .. } => {
                for (_, _, m) in members {
                    set(&mut want, m, "bcachefs".into());
                }
            }
            // Made on the device (a table on an md array): its partitions are read above.
            Op::NestedTable { device, .. } => want.retain(|(d, _)| d != device),
            op => {
                if let Some(ty) = op.makes_type() {
                    set(&mut want, op.device(), ty);
                }
            }
        }
    }
    for (dev, ty) in want {
        let found = super::probe::probe(&dev).with_context(|| format!("reading back {dev}"))?;
        if found.ambivalent {
            bail!("{dev}: blkid finds several conflicting signatures");
        }
        let got = found.get("TYPE").unwrap_or_default().to_owned();
        if got != ty {
            bail!(
                "{dev}: blkid finds {}, the plan made {ty}",
                if got.is_empty() {
                    "no signature".to_owned()
                } else {
                    got
                }
            );
        }
        v.signatures.push(ReadBackPart {
            device: dev,
            partlabel: String::new(),
            fs_type: got,
            uuid: found.get("UUID").unwrap_or_default().to_owned(),
        });
    }
    for (_, op) in plan.all_ops() {
        if let Op::LvCreate {
            vg, name, lvm_type, ..
        } = op
        {
            // lvm makes no /dev/VG/LV link for a thin pool (not a volume to use), only its
            // device-mapper node VG-LV ('-' in either name doubled).
            let node = if lvm_type.as_deref() == Some("thin-pool") {
                format!(
                    "/dev/mapper/{}-{}",
                    vg.replace('-', "--"),
                    name.replace('-', "--")
                )
            } else {
                format!("/dev/{vg}/{name}")
            };
            if !Path::new(&node).exists() {
                bail!("{node} does not exist after lvcreate");
            }
        }
    }
    let mounted = crate::hw::mountinfo::read()?;
    for g in mounts {
        let t = std::fs::canonicalize(g.target())
            .unwrap_or_else(|_| g.target().to_path_buf())
            .to_string_lossy()
            .into_owned();
        let found = mounted.iter().any(|m| m.mountpoint == t);
        if !found {
            bail!("{} is not mounted on {t} after mounting it", g.device());
        }
        v.mounted.push(t);
    }
    Ok(v)
}

/// The PARTUUID blkid and udev give an MBR entry: the disk id (8 hex
/// digits) and the entry's number in two hex digits.
fn mbr_partuuid(disk_id: &str, number: u32) -> String {
    format!(
        "{:0>8}-{number:02x}",
        disk_id.trim_start_matches("0x").to_ascii_lowercase()
    )
}

fn read_back_partition(d: &DiskPlan, p: &super::plan::PartPlan) -> Result<ReadBackPart> {
    let found =
        super::probe::probe(&p.device).with_context(|| format!("reading back {}", p.device))?;
    let kv = found.values;
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    let label = get("PART_ENTRY_NAME");
    let msdos = d.table == Some(super::layout::TableKind::Msdos);
    if !msdos && label != p.label {
        bail!(
            "{}: PARTLABEL is {label:?}, the plan says {:?}",
            p.device,
            p.label
        );
    }
    let ptype = get("PART_ENTRY_TYPE");
    let want_type = match p.mbr_type {
        Some(t) => format!("0x{t:x}"),
        None => p.type_guid.clone(),
    };
    if !ptype.eq_ignore_ascii_case(&want_type) {
        bail!(
            "{}: partition type is {ptype}, the plan says {want_type}",
            p.device
        );
    }
    let flags =
        u64::from_str_radix(get("PART_ENTRY_FLAGS").trim_start_matches("0x"), 16).unwrap_or(0);
    let want_flags = if msdos {
        if p.bootable {
            0x80
        } else {
            0
        }
    } else {
        p.attributes
    };
    if flags != want_flags {
        bail!(
            "{}: partition flags are {flags:#x}, the plan says {want_flags:#x}",
            p.device
        );
    }
    // An MBR entry's PARTUUID is the disk id and its number (blkid: SSSSSSSS-NN).
    let want_uuid = match (msdos, &d.disk_guid) {
        (true, Some(id)) => Some(mbr_partuuid(id, p.number)),
        (true, None) => None,
        (false, _) => p.guid.clone(),
    };
    if let Some(g) = want_uuid {
        let found = get("PART_ENTRY_UUID");
        if !found.eq_ignore_ascii_case(&g) {
            bail!("{}: PARTUUID is {found}, the plan says {g}", p.device);
        }
    }
    Ok(ReadBackPart {
        device: p.device.clone(),
        partlabel: if label.is_empty() {
            p.label.clone()
        } else {
            label
        },
        fs_type: get("TYPE"),
        uuid: get("UUID"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, start: u64, sectors: u64) -> KernelPart {
        KernelPart {
            number,
            start,
            sectors,
        }
    }

    #[test]
    fn partitions_with_other_bounds_are_dropped_and_added_again() {
        let have = [part(1, 2048, 100), part(2, 4096, 100), part(3, 8192, 10)];
        let want = [part(1, 2048, 100), part(2, 6144, 100), part(4, 9000, 5)];
        assert_eq!(partition_fixes(&have, &want), (vec![2, 3], vec![2, 4]));
        assert_eq!(partition_fixes(&want, &want), (vec![], vec![]));
        assert_eq!(partition_fixes(&[], &want), (vec![], vec![1, 2, 4]));
    }
}

//! Disks from disko-schema layouts, applied natively.
//!
//! layout (parse + validate, field paths in errors) -> select (which device
//! each layout disk is) -> plan (pure, printable, serialisable) -> safety
//! (probe, refuse) -> apply (wipe, GPT, re-read, mkfs/LUKS/swap, mounts,
//! disks in parallel) -> read back -> the NixOS configuration the
//! installed system needs. See docs/disks.md.

pub mod apply;
pub mod gpt;
pub mod guards;
pub mod ids;
pub mod journal;
pub mod mbr;
/// The layout model lives in landfall-disko (disko/), shared with the server.
pub use landfall_disko as layout;
pub mod nixos;
pub mod ops;
pub mod parted;
pub mod plan;
pub mod probe;
pub mod safety;
pub mod select;

pub use apply::{
    apply, check_safety, Applied, ApplyOptions, JournalFile, KeyProvider, Keys, OpEvent, OpState,
};
pub use ids::Ids;
pub use journal::Journal;
pub use layout::{Layout, LayoutError};
pub use nixos::NixosConfig;
pub use plan::{plan, plan_pinned, Plan, Target};

/// Parse a layout from its rendered JSON text.
pub fn parse_layout_json(text: &str) -> anyhow::Result<Layout> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("the layout is not JSON ({e}); render a .nix layout with `nix-instantiate --eval --strict --json FILE`"))?;
    Ok(Layout::from_json(&v)?)
}

/// Read a layout file: JSON as the server sends it, or a `.nix` file rendered
/// with `nix-instantiate --eval --strict --json` (needs Nix on this machine).
pub async fn load_layout(path: &std::path::Path) -> anyhow::Result<Layout> {
    use anyhow::Context;
    let text = if path.extension().is_some_and(|e| e == "nix") {
        render_nix(path).await?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    parse_layout_json(&text).with_context(|| format!("layout {}", path.display()))
}

/// `nix-instantiate --eval --strict --json FILE`, with a private state
/// directory so it also works as a user without a Nix daemon.
pub async fn render_nix(path: &std::path::Path) -> anyhow::Result<String> {
    landfall_cmd::nix::render_json(path).await
}

/// Targets for the CLI: `--disk NAME=DEV` overrides, `--size NAME=SIZE` for
/// a hypothetical disk (pure planning), "auto" chosen from this machine's
/// inventory.
pub fn cli_targets(
    layout: &Layout,
    overrides: &std::collections::BTreeMap<String, String>,
    sizes: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<std::collections::BTreeMap<String, Target>> {
    use anyhow::{bail, Context};
    let specs = select::device_specs(layout, overrides)?;
    let mut out = std::collections::BTreeMap::new();
    let mut rest = std::collections::BTreeMap::new();
    for (name, spec) in specs {
        if let Some(sz) = sizes.get(&name) {
            let bytes = match layout::parse_size(sz) {
                Ok(layout::Size::Bytes(b)) if b > 0 => b,
                _ => bail!("--size {name}={sz}: not a size (e.g. 20G)"),
            };
            let device = if layout::is_auto(&spec) {
                format!("/dev/<{name}>")
            } else {
                spec
            };
            out.insert(
                name,
                Target {
                    device,
                    size_bytes: bytes,
                    sector_size: 512,
                    by_id: None,
                },
            );
        } else {
            rest.insert(name, spec);
        }
    }
    for k in sizes.keys() {
        if !layout.disks.contains_key(k) {
            bail!("--size {k}=...: the layout has no disk {k:?}");
        }
    }
    if !rest.is_empty() {
        let candidates = if rest.values().any(|s| layout::is_auto(s)) {
            let inv = crate::hw::detect(std::path::Path::new("/"))
                .context("reading this machine's disks")?;
            candidates(&inv.disks)
        } else {
            Default::default()
        };
        out.extend(select::select(layout, &rest, &candidates.0, &candidates.1)?);
    }
    Ok(out)
}

/// The inventory's disks that "auto" may pick, and those left out because
/// they are in use (with why).
pub fn candidates(
    disks: &[landfall_proto::inventory::Disk],
) -> (Vec<landfall_proto::inventory::Disk>, Vec<select::LeftOut>) {
    let mut usable = Vec::new();
    let mut left_out = Vec::new();
    for d in disks {
        match use_of(&d.path) {
            None => usable.push(d.clone()),
            Some(why) => left_out.push(select::LeftOut {
                path: d.path.clone(),
                why,
            }),
        }
    }
    (usable, left_out)
}

/// Mounted, held, or active swap: never a candidate for "auto".
pub fn in_use(device: &str) -> bool {
    use_of(device).is_some()
}

/// How `device` (or one of its partitions) is in use: "mounted at /",
/// "vda2 held by dm-0", "vda3 is active swap"; `None`: it is not.
pub fn use_of(device: &str) -> Option<String> {
    let (_, name) = safety::kernel_name(device).ok()?;
    let mut names = vec![name.clone()];
    names.extend(safety::kernel_partitions(&name));
    let mounts = crate::hw::mountinfo::read().unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    names.iter().find_map(|n| {
        let dev = std::fs::read_to_string(format!("/sys/class/block/{n}/dev")).unwrap_or_default();
        let dev = dev.trim();
        let part = if *n == name {
            String::new()
        } else {
            format!("{n} ")
        };
        if let Some(m) = mounts.iter().find(|m| !dev.is_empty() && m.dev == dev) {
            return Some(format!("{part}mounted at {}", m.mountpoint));
        }
        let holders = crate::hw::list_dir(std::path::Path::new(&format!(
            "/sys/class/block/{n}/holders"
        )));
        if !holders.is_empty() {
            return Some(format!("{n} held by {}", holders.join(", ")));
        }
        swaps
            .lines()
            .any(|l| l.starts_with(&format!("/dev/{n} ")))
            .then(|| format!("{part}is active swap"))
    })
}

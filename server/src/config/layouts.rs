//! The disko layouts a config names: `DIR/NAME.json`, or `DIR/NAME.nix`
//! rendered by the workspace's one Nix renderer; loaded and checked at start.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Layout name -> the rendered JSON and the parsed layout.
pub(super) type Layouts = BTreeMap<String, (serde_json::Value, landfall_disko::Layout)>;

/// Load every layout `wanted` names (`(where it is named, name)`), each once,
/// from `dir`; an error names the first place that names a bad one.
pub(super) fn load_all(
    dir: &Path,
    wanted: impl IntoIterator<Item = (String, String)>,
) -> Result<Layouts> {
    let mut layouts = Layouts::new();
    for (at, name) in wanted {
        if let std::collections::btree_map::Entry::Vacant(slot) = layouts.entry(name) {
            let loaded =
                load_layout(dir, slot.key()).with_context(|| format!("{at} = {:?}", slot.key()))?;
            slot.insert(loaded);
        }
    }
    Ok(layouts)
}

/// `DIR/NAME.json`, or `DIR/NAME.nix` rendered by `landfall_cmd::nix` (`nix-instantiate --eval --strict --json`),
/// parsed and validated by landfall-disko, the parser the agent uses: a layout the agent
/// would refuse is refused here, with the file and the field's path.
fn load_layout(dir: &Path, name: &str) -> Result<(serde_json::Value, landfall_disko::Layout)> {
    let json = dir.join(format!("{name}.json"));
    let nix = dir.join(format!("{name}.nix"));
    let (file, text) = if json.is_file() {
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        (json, text)
    } else if nix.is_file() {
        let text = landfall_cmd::nix::render_json_blocking(&nix)?;
        (nix, text)
    } else {
        bail!(
            "no layout {name}.nix or {name}.json in {}; put the disko layout there or set server.layouts",
            dir.display()
        );
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("layout {name} is not valid JSON"))?;
    let layout = landfall_disko::Layout::from_json(&value).map_err(|e| {
        anyhow::anyhow!(
            "layout {}: {e}; fix the layout (docs/disks.md lists what the agent supports)",
            file.display()
        )
    })?;
    Ok((value, layout))
}

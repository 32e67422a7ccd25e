//! disko's own examples are the acceptance set of the layout model (issue
//! 16). They are not fetched at test time (no network guarantee for
//! GitHub): disko-layouts/disko-examples.json lists each example of
//! nix-community/disko's `example/` directory with the features it uses (as
//! `Layout::features()` read it when the list was made) and the project's
//! own fixtures that use the same features. Here: every fixture plans
//! through `landfall-agent plan`, the fixtures named for an example cover
//! all of its features, and docs/disks.md's "disko examples" table is this
//! list.

mod disk_common;

use std::collections::BTreeSet;

use disk_common::*;
use landfall_agent::disk::layout::FEATURES;
use serde::Deserialize;

#[derive(Deserialize)]
struct Examples {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    example: String,
    fixtures: Vec<String>,
    applied: String,
    reason: Option<String>,
    features: Vec<String>,
}

fn examples() -> Vec<Example> {
    let text = std::fs::read_to_string(repo().join("disko-layouts/disko-examples.json")).unwrap();
    serde_json::from_str::<Examples>(&text).unwrap().examples
}

/// The `--size NAME=8G` arguments for every disk of a fixture.
fn sizes(name: &str) -> Vec<String> {
    layout(name)
        .disks
        .keys()
        .flat_map(|d| ["--size".to_owned(), format!("{d}=8G")])
        .collect()
}

#[test]
fn every_fixture_plans_through_the_cli() {
    let mut failures = Vec::new();
    for name in all_layouts() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_landfall-agent"))
            .args(["plan", "--json", "--layout"])
            .arg(layout_path(&name))
            .args(sizes(&name))
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            j["nixos"]["fileSystems"]["/"].is_object(),
            "{name}: no / in {j}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_fixtures_cover_every_feature_of_every_disko_example() {
    let examples = examples();
    assert_eq!(examples.len(), 38, "disko's example/ has 38 layouts");
    let known: BTreeSet<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
    let fixtures: BTreeSet<String> = all_layouts().into_iter().collect();
    let mut failures = Vec::new();
    for e in &examples {
        for f in &e.features {
            if !known.contains(f.as_str()) {
                failures.push(format!("{}: unknown feature {f:?}", e.example));
            }
        }
        let mut have: BTreeSet<&'static str> = BTreeSet::new();
        for f in &e.fixtures {
            assert!(fixtures.contains(f), "{}: no fixture {f}.nix", e.example);
            have.extend(layout(f).features());
        }
        let missing: Vec<&String> = e
            .features
            .iter()
            .filter(|f| !have.contains(f.as_str()))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: fixtures {:?} lack {missing:?}",
                e.example, e.fixtures
            ));
        }
        match e.applied.as_str() {
            "loop" | "vm" => {}
            "planned" | "plan-only" if e.reason.is_some() => {}
            other => failures.push(format!(
                "{}: applied = {other:?} (loop, vm, or planned / plan-only with a reason)",
                e.example
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every feature some example uses is in a fixture (the union), and no
    // fixture is left out of the list.
    let listed: BTreeSet<&String> = examples.iter().flat_map(|e| &e.fixtures).collect();
    for f in &fixtures {
        assert!(listed.contains(f), "{f} is in no example's fixtures");
    }
}

/// The fixtures the VM tests apply: `storage_layouts.rs`'s FIXTURES and the layouts the
/// install scenarios of `install.rs` install.
fn vm_applied() -> BTreeSet<String> {
    let read = |f: &str| std::fs::read_to_string(repo().join("vm-tests/tests").join(f)).unwrap();
    let storage = read("storage_layouts.rs");
    let list = storage
        .split("const FIXTURES: &[&str] = &[")
        .nth(1)
        .and_then(|r| r.split("];").next())
        .expect("storage_layouts.rs has its FIXTURES list");
    let mut out: BTreeSet<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    let install = read("install.rs");
    out.extend(
        install
            .split("layout: \"")
            .skip(1)
            .filter_map(|r| r.split('"').next())
            .map(str::to_owned),
    );
    out
}

/// An example marked applied in the VM has a fixture a VM test applies.
#[test]
fn examples_marked_applied_in_the_vm_have_a_fixture_a_vm_test_applies() {
    let vm = vm_applied();
    assert!(
        vm.contains("mdadm-raid1") && vm.contains("simple-efi"),
        "{vm:?}"
    );
    let wrong: Vec<String> = examples()
        .iter()
        .filter(|e| e.applied == "vm" && !e.fixtures.iter().any(|f| vm.contains(f)))
        .map(|e| format!("{} ({:?})", e.example, e.fixtures))
        .collect();
    assert!(
        wrong.is_empty(),
        "marked applied in the VM, but no VM test applies their fixtures: {wrong:?} (VM tests apply {vm:?})"
    );
}

/// The rows of docs/disks.md's "disko examples" table.
fn table_rows() -> Vec<String> {
    examples()
        .iter()
        .map(|e| {
            let status = match (e.applied.as_str(), &e.reason) {
                ("loop", _) => "planned; applied on loop devices here".to_owned(),
                ("vm", _) => "planned; applied in the VM".to_owned(),
                ("planned", Some(r)) => format!("planned; not applied here: {r}"),
                (_, Some(r)) => format!("plan-only: {r}"),
                (s, None) => s.to_owned(),
            };
            let fixtures: Vec<String> = e.fixtures.iter().map(|f| format!("`{f}`")).collect();
            format!("| `{}` | {} | {status} |", e.example, fixtures.join(", "))
        })
        .collect()
}

#[test]
fn docs_list_every_disko_example_as_the_list_does() {
    let doc = std::fs::read_to_string(repo().join("docs/disks.md")).unwrap();
    let section = doc
        .split("\n## disko examples\n")
        .nth(1)
        .expect("docs/disks.md has a \"## disko examples\" section");
    let section = section.split("\n## ").next().unwrap();
    let missing: Vec<String> = table_rows()
        .into_iter()
        .filter(|r| !section.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/disks.md \"disko examples\" lacks these rows (generated from disko-layouts/disko-examples.json):\n{}",
        missing.join("\n")
    );
}

/// disko's naming (lib/types/gpt.nix `label`): a partition of a disk is
/// `disk-<disk name>-<partition name>`, of an md array's table
/// `mdadm-<array>-<partition name>`, of a table in a LUKS volume
/// `luks-<mapping>-<partition name>`; over 36 characters, the first 36 hex
/// digits of its sha256. Checked for every gpt partition of every fixture
/// (none sets `label` itself).
#[test]
fn partition_labels_follow_diskos_naming() {
    use landfall_agent::disk::layout::{Content, Owner, TableKind};
    use sha2::{Digest, Sha256};
    let mut checked = 0;
    for name in all_layouts() {
        let l = layout(&name);
        for (owner, c) in l.all_contents() {
            let Content::Table(t) = c else { continue };
            if t.kind != TableKind::Gpt {
                continue;
            }
            let parent = match &owner {
                Owner::Disk(d) => format!("disk-{}", l.disks[d].disko_name),
                Owner::Volume(v) => format!("mdadm-{}", v.name),
            };
            for p in &t.partitions {
                let full = format!("{parent}-{}", p.name);
                let want = if full.len() > 36 {
                    let h: String = Sha256::digest(full.as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    h[..36].to_owned()
                } else {
                    full
                };
                assert_eq!(p.label, want, "{name}: {}", p.path);
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "only {checked} labels checked");
}

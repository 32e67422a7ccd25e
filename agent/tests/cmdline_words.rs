//! Every `landfall.WORD=` that the Nix modules (kernel parameters, agent.conf),
//! the server's install script, the VM tests and the docs can hand to the
//! agent is one its parser knows ([`KNOWN_WORDS`]): the two cannot drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use landfall_agent::cmdline::{check_words, KNOWN_WORDS};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files under `dir` whose name ends with one of `exts`; `target` and hidden
/// directories are left out.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files(&p, exts, out);
            }
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(p);
        }
    }
}

/// `landfall.WORD=` occurrences: WORD of `[a-z0-9_]`, directly followed by `=`,
/// `landfall` not part of a longer name (`services.landfall.x` is an option).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("landfall.") {
        let start = from + i;
        from = start + "landfall.".len();
        let before = start.checked_sub(1).map(|j| b[j]);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c)) {
            continue;
        }
        let end = text[from..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| from + n);
        if end > from && b.get(end) == Some(&b'=') {
            out.push(text[from..end].to_owned());
        }
    }
    out
}

#[test]
fn the_scanner_finds_words_and_leaves_options_alone() {
    assert_eq!(
        words(
            r#"x "landfall.server=${u}" landfall.final=none services.landfall.enable = true; landfall.installer.ageBundle landfall.toml"#
        ),
        vec!["server".to_string(), "final".into()]
    );
}

#[test]
fn every_landfall_word_the_repository_writes_is_known_to_the_agent() {
    let root = repo();
    let mut scanned = Vec::new();
    for dir in ["iso-module", "nix"] {
        files(&root.join(dir), &[".nix"], &mut scanned);
    }
    scanned.push(root.join("flake.nix"));
    scanned.push(root.join("server/src/boot.rs"));
    files(&root.join("vm-tests"), &[".rs"], &mut scanned);
    files(&root.join("docs"), &[".md"], &mut scanned);
    scanned.push(root.join("README.md"));

    let known: BTreeSet<&str> = KNOWN_WORDS.iter().map(|(k, _)| *k).collect();
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for f in &scanned {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        for w in words(&text) {
            if !known.contains(w.as_str()) {
                unknown.push(format!("{rel}: landfall.{w}="));
            }
            found.entry(w).or_default().insert(rel.clone());
        }
    }
    assert!(
        unknown.is_empty(),
        "words the agent's parser does not know (add them to KNOWN_WORDS in \
         agent/src/cmdline.rs and read them, or fix the writer):\n{}",
        unknown.join("\n")
    );
    // The scan saw what the installer module and the server really write.
    let writes = |word: &str, file: &str| {
        assert!(
            found.get(word).is_some_and(|fs| fs.contains(file)),
            "landfall.{word}= not found in {file}: {found:?}"
        )
    };
    for w in [
        "server",
        "final",
        "console",
        "state_dir",
        "bundle",
        "vault_insecure_http",
    ] {
        writes(w, "iso-module/default.nix");
    }
    writes("server", "server/src/boot.rs");
    writes("token", "server/src/boot.rs");
    // And the parser accepts all of them in one line, as the kernel would pass it.
    let line: Vec<String> = found.keys().map(|w| format!("landfall.{w}=x")).collect();
    check_words(&line.join(" "), "the test's command line").unwrap();
}

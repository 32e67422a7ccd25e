//! The Nix side of `./x test`, with what runs here: Debian's `nix-bin` (no
//! nixpkgs, no NixOS builds) and `deadnix` / `nixpkgs-fmt` from crates.io.
//!
//! 1. `nix-instantiate --parse` on every tracked `.nix` file;
//! 2. `nix-instantiate --eval --strict --json` on every disko layout and on the
//!    files that evaluate without nixpkgs (`PURE_FILES`);
//! 3. `deadnix --fail` and `nixpkgs-fmt --check` on every tracked `.nix` file;
//! 4. landfall.toml rendered by the server module's renderer
//!    (`nix/lib/landfall-toml.nix`) from `nix/tests/sample-fleet.nix` is accepted by
//!    `landfall serve --check-config`, and `nix/tests/broken-fleet.nix` is refused;
//! 5. the chain script the flake embeds in iPXE (`nix/lib/chain-ipxe.nix`) is the
//!    server's own `GET /chain.ipxe` (`landfall::boot::chain_script`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use landfall_cmd::nix::StateDir;

use crate::build::{run as run_cmd, workspace_root, Cmd};

/// crates.io tools, pinned so formatting does not change under us.
const TOOLS: &[(&str, &str)] = &[("deadnix", "1.3.1"), ("nixpkgs-fmt", "1.3.0")];

/// Files besides the disko layouts that must evaluate with builtins only.
/// `nix/tests/disks-resolve.nix` asserts the answers of `nix/lib/disks.nix`
/// (the target module's check of `landfall.disks.devices`): a wrong one throws.
const PURE_FILES: &[&str] = &[
    "nix/tests/sample-fleet.nix",
    "nix/tests/broken-fleet.nix",
    "nix/tests/disks-resolve.nix",
];

/// Render a fleet with the server module's renderer.
const RENDER: &str = "{ fleet }: import ./nix/lib/landfall-toml.nix (import fleet)";

pub fn run() -> Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let work = root.join("target/nixcheck");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let nix = Nix::new()?;

    let files = tracked_nix_files(&root)?;
    eprintln!(
        "xtask: nixcheck: {} tracked .nix files: parse, eval, deadnix, nixpkgs-fmt",
        files.len()
    );

    // 1. Parse.
    let mut failed = Vec::new();
    for f in &files {
        let out = nix.instantiate(&root, &["--parse", f.as_str()])?;
        if !out.status.success() {
            failed.push(format!("{f}:\n{}", stderr_text(&out)));
        }
    }
    if !failed.is_empty() {
        bail!(
            "nix-instantiate --parse failed on {} file(s):\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    // 2. Evaluate what needs no nixpkgs.
    let evaluated: Vec<&String> = files
        .iter()
        .filter(|f| is_layout(f) || PURE_FILES.contains(&f.as_str()))
        .collect();
    for f in &evaluated {
        let out = nix.instantiate(&root, &["--eval", "--strict", "--json", f.as_str()])?;
        if !out.status.success() {
            failed.push(format!("{f}:\n{}", stderr_text(&out)));
        }
    }
    if !failed.is_empty() {
        bail!(
            "nix-instantiate --eval --strict --json failed on {} file(s):\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    // 3. Lints (their own output, with colours on a terminal).
    let bin = tools(&root)?;
    lint(
        Cmd::new(bin.join("deadnix")).arg("--fail").args(&files),
        "deadnix found unused code (above): remove it, or prefix an unused argument with _",
    )?;
    lint(
        Cmd::new(bin.join("nixpkgs-fmt")).arg("--check").args(&files),
        "nixpkgs-fmt: the files above are not formatted; run `target/tools/bin/nixpkgs-fmt FILE...`",
    )?;

    // 4. The rendered landfall.toml against the real server. The sample fleet's
    //    [vault] names `vault.token` beside the config; the server reads it at load,
    //    and checks that the `artifacts` directory beside it exists.
    //    Its [metrics] token and [[webhooks]] key files too, and the argon2
    //    hash file of its [[dashboard.users]] entry (made by the server's own
    //    `hash-password` code, so the check sees a real PHC string).
    let tech_hash = format!(
        "{}\n",
        landfall::dashboard::auth::hash_password("nixcheck-tech")?
    );
    for (name, text) in [
        ("vault.token", "s.nixcheck-placeholder\n"),
        ("metrics.token", "nixcheck-metrics-token\n"),
        ("webhook.key", "nixcheck-webhook-key-0123456789\n"),
        ("tech.hash", tech_hash.as_str()),
    ] {
        let f = work.join(name);
        std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    // Its `artifacts = "artifacts"` must exist: the server refuses a missing one.
    let artifacts = work.join("artifacts");
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let good = render(&nix, &root, &work, "nix/tests/sample-fleet.nix")?;
    let out = check_config(&good)?;
    if !out.status.success() {
        bail!(
            "landfall serve --check-config refused {} (rendered from nix/tests/sample-fleet.nix \
             by nix/lib/landfall-toml.nix): the renderer and server/src/config/ disagree:\n{}",
            good.display(),
            stderr_text(&out)
        );
    }
    let bad = render(&nix, &root, &work, "nix/tests/broken-fleet.nix")?;
    let out = check_config(&bad)?;
    if out.status.code() != Some(1) {
        bail!(
            "landfall serve --check-config on {} (nix/tests/broken-fleet.nix) exited with {} \
             instead of 1: the check accepts a machine with an undefined role",
            bad.display(),
            out.status
        );
    }

    // 5. The embedded chain script is the server's.
    let out = nix.instantiate(
        &root,
        &[
            "--eval",
            "--strict",
            "--json",
            "--expr",
            "import ./nix/lib/chain-ipxe.nix \"http://10.0.0.1:8080/\"",
        ],
    )?;
    if !out.status.success() {
        bail!("evaluating nix/lib/chain-ipxe.nix:\n{}", stderr_text(&out));
    }
    let nix_script: String = serde_json::from_slice(&out.stdout)
        .context("nix/lib/chain-ipxe.nix did not evaluate to a string")?;
    let server_script = landfall::boot::chain_script("http://10.0.0.1:8080");
    if nix_script != server_script {
        bail!(
            "nix/lib/chain-ipxe.nix renders\n{nix_script}\nbut the server's GET /chain.ipxe \
             (server/src/boot.rs chain_script) is\n{server_script}\nmake them the same"
        );
    }

    eprintln!(
        "xtask: nixcheck: ok ({} parsed, {} evaluated, rendered fleet accepted, broken fleet refused, chain script matches) in {:.1}s",
        files.len(),
        evaluated.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A disko layout: `disko-layouts/NAME.nix` (subdirectories, e.g. fixtures of
/// refused layouts, are parsed and linted but not evaluated).
fn is_layout(f: &str) -> bool {
    f.strip_prefix("disko-layouts/")
        .is_some_and(|name| !name.contains('/'))
}

/// Run a linter over the files; its output goes straight to the terminal.
fn lint(cmd: Cmd, what: &str) -> Result<()> {
    match cmd.current_dir(workspace_root()).status_blocking() {
        Err(e) if e.status.is_some() => bail!("{what}"),
        r => Ok(r?),
    }
}

/// `git ls-files '*.nix'`: what CI's clean clone holds.
fn tracked_nix_files(root: &Path) -> Result<Vec<String>> {
    let out = capture(
        Cmd::new("git")
            .args(["ls-files", "-z", "--", "*.nix"])
            .current_dir(root),
    )?;
    if !out.status.success() {
        bail!("git ls-files failed:\n{}", stderr_text(&out));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Debian's nix-instantiate with the Nix renderer's private state directory
/// (`landfall_cmd::nix`), a store inside it, read-only and without NIX_PATH
/// (parsing and pure evaluation need no daemon, no /nix, no nixbld group and
/// no root).
struct Nix {
    state: StateDir,
}

impl Nix {
    fn new() -> Result<Self> {
        let state = StateDir::new()?;
        match state.instantiate().arg("--version").output_blocking() {
            Ok(o) if o.status.success() => Ok(Self { state }),
            Ok(o) => bail!("nix-instantiate --version failed:\n{}", stderr_text(&o)),
            Err(e) => bail!(
                "nix-instantiate not found ({e}); install Debian's nix-bin (./x test does it)"
            ),
        }
    }

    fn instantiate(&self, root: &Path, args: &[&str]) -> Result<Output> {
        capture(
            self.state
                .instantiate()
                .arg("--readonly-mode")
                .args(["--option", "build-users-group", ""])
                .args(args)
                .current_dir(root)
                .env("NIX_STORE_DIR", self.state.path().join("store"))
                .env("NIX_PATH", ""),
        )
    }
}

/// deadnix and nixpkgs-fmt in target/tools/bin, installed from crates.io when missing.
fn tools(root: &Path) -> Result<PathBuf> {
    let prefix = root.join("target/tools");
    let bin = prefix.join("bin");
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(name, version)| !installed(&bin, name, version))
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: nixcheck: installing {} into {} (cargo install --locked; about a minute on 2 cores, once)",
            missing.join(" "),
            prefix.display()
        );
        let started = Instant::now();
        run_cmd(
            Cmd::new("cargo")
                .args(["install", "--locked", "--root"])
                .arg(&prefix)
                .args(&missing),
        )?;
        eprintln!(
            "xtask: nixcheck: tools installed in {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(bin)
}

/// The binary is there and says it is `version` (nixpkgs-fmt 1.3.0 prints its
/// version and exits 1, so only the output counts).
fn installed(bin: &Path, name: &str, version: &str) -> bool {
    Cmd::new(bin.join(name))
        .arg("--version")
        .output_blocking()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{name} {version}")))
}

/// Render `fleet` to `work/NAME.toml` with the server module's renderer.
fn render(nix: &Nix, root: &Path, work: &Path, fleet: &str) -> Result<PathBuf> {
    let fleet_path = format!("./{fleet}");
    let out = nix.instantiate(
        root,
        &[
            "--eval",
            "--strict",
            "--json",
            "--arg",
            "fleet",
            &fleet_path,
            "-E",
            RENDER,
        ],
    )?;
    if !out.status.success() {
        bail!(
            "rendering {fleet} with nix/lib/landfall-toml.nix failed:\n{}",
            stderr_text(&out)
        );
    }
    let toml: String = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("nix-instantiate did not print a JSON string for {fleet}"))?;
    let name = Path::new(fleet)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fleet".into());
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `landfall serve --check-config --config FILE` (the workspace's server).
fn check_config(config: &Path) -> Result<Output> {
    eprintln!(
        "xtask: nixcheck: landfall serve --check-config --config {}",
        config.display()
    );
    // Built with the workspace's feature set, so `cargo test --workspace`
    // reuses these artifacts instead of building the server a second time.
    crate::build::run(Cmd::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]))?;
    capture(
        Cmd::new(workspace_root().join("target/debug/landfall"))
            .args(["serve", "--check-config", "--config"])
            .arg(config),
    )
}

/// Run to completion whatever the exit status (the caller judges it).
fn capture(cmd: Cmd) -> Result<Output> {
    Ok(cmd.output_blocking()?)
}

/// stderr without Debian nix-bin's harmless warning about the nixbld group.
fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("build-users-group"))
        .map(|l| format!("  {l}\n"))
        .collect()
}

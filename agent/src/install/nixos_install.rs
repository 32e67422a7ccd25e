//! The install step: `nixos-install` (after `nix copy` for a prebuilt
//! system) through the command runner, its output read line by line into
//! progress, and a failure put into a class a technician can act on
//! (docs/install.md).
//!
//! Planning the commands ([`commands`]) and reading the output
//! ([`Progress`], [`classify`]) are pure; [`run`] runs them.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{bail, Result};
use landfall_proto::InstallTarget;

use super::configure::{FlakeRef, FLAKE_DIR};
use crate::cmd::{Cmd, Stream};

/// Lines of output a failure keeps (event data and console).
pub const TAIL_LINES: usize = 20;

/// The commands that install `target` into `root`, in order.
pub fn commands(target: &InstallTarget, root: &Path) -> Result<Vec<Cmd>> {
    let base = || {
        Cmd::new("nixos-install")
            .arg("--root")
            .arg(root)
            .args(["--no-root-passwd", "--no-channel-copy"])
    };
    Ok(match target {
        InstallTarget::Flake { flake } => {
            let r = FlakeRef::parse(flake)?;
            // The generated flake: the fleet's configuration plus the
            // hardware file (configure step).
            let local = format!("{}{FLAKE_DIR}#{}", root.display(), r.host);
            vec![base().arg("--flake").arg(local)]
        }
        InstallTarget::System { path, cache, .. } => {
            if !path.starts_with("/nix/store/") {
                bail!("install system {path:?} is not a /nix/store path");
            }
            vec![
                Cmd::new("nix")
                    .args(["--extra-experimental-features", "nix-command"])
                    .args(["copy", "--from"])
                    .arg(cache)
                    .arg("--to")
                    .arg(root)
                    .arg(path),
                base().arg("--system").arg(path),
            ]
        }
        InstallTarget::Unknown => bail!(
            "the server sent an install target of a kind this agent does not know; \
             update the installer image's landfall-agent"
        ),
    })
}

pub use landfall_proto::FailureClass;

/// Which class wins when the output shows several: a failed download makes
/// builds fail too; an evaluation error stops everything before the builds.
fn rank(c: FailureClass) -> u8 {
    match c {
        FailureClass::Download => 4,
        FailureClass::Evaluation => 3,
        FailureClass::Build => 2,
        FailureClass::Bootloader => 1,
        FailureClass::Unknown => 0,
    }
}

/// Classify a failure from the output seen (oldest first) and whether the
/// bootloader phase had begun.
pub fn classify<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    bootloader_started: bool,
) -> FailureClass {
    let mut class = None;
    for l in lines {
        let l = l.trim();
        let lower = l.to_ascii_lowercase();
        let c = if lower.contains("unable to download")
            || lower.contains("cannot download")
            || lower.contains("http error")
            || lower.contains("could not resolve host")
            || lower.contains("couldn't resolve host")
            || lower.contains("unable to connect")
            || lower.contains("connection refused")
            || lower.contains("timeout was reached")
            || lower.contains("does not exist in binary cache")
            || lower.contains("no such path in binary cache")
        {
            Some(FailureClass::Download)
        } else if (lower.starts_with("error: builder for") && lower.contains("failed"))
            || lower.starts_with("error: cannot build")
            || (lower.starts_with("error: build of") && lower.contains("failed"))
            || lower.contains("builder failed with exit code")
        {
            Some(FailureClass::Build)
        } else if lower.contains("while evaluating")
            || lower.starts_with("error: undefined variable")
            || (lower.starts_with("error: attribute") && lower.contains("missing"))
            || lower.starts_with("error: syntax error")
            || lower.contains("does not provide attribute")
            || lower.contains("option `") && lower.contains("does not exist")
            || lower.contains("the option `") && lower.contains("is used but not defined")
            || lower.starts_with("error: getting status of")
            || lower.starts_with("error: assertion")
            || lower.starts_with("failed assertions:")
        {
            Some(FailureClass::Evaluation)
        } else if lower.contains("grub-install")
            || lower.contains("bootctl")
            || lower.contains("install-grub")
            || lower.contains("failed to install bootloader")
        {
            Some(FailureClass::Bootloader)
        } else {
            None
        };
        // The most telling class wins: a failed download makes builds fail
        // too; an evaluation error stops everything before the builds.
        class = class.into_iter().chain(c).max_by_key(|c| rank(*c));
    }
    match class {
        Some(c) => c,
        None if bootloader_started => FailureClass::Bootloader,
        None => FailureClass::Unknown,
    }
}

/// What a line of nix / nixos-install output means for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `these N derivations will be built:`
    WillBuild(u64),
    /// `these N paths will be fetched (...)`
    WillFetch(u64),
    /// `building '/nix/store/...drv'...`
    Building,
    /// `copying path '/nix/store/...' from '...'...`
    Copying,
    /// `installing the boot loader...`
    Bootloader,
    Other,
}

pub fn line_kind(line: &str) -> LineKind {
    let l = line.trim();
    let count = |rest: &str| rest.split_whitespace().next().and_then(|n| n.parse().ok());
    if let Some(rest) = l.strip_prefix("these ") {
        if rest.contains("derivations will be built") || rest.contains("derivation will be built") {
            return count(rest).map_or(LineKind::Other, LineKind::WillBuild);
        }
        if rest.contains("will be fetched") || rest.contains("will be copied") {
            return count(rest).map_or(LineKind::Other, LineKind::WillFetch);
        }
    }
    if l.starts_with("this derivation will be built") {
        return LineKind::WillBuild(1);
    }
    if l.starts_with("this path will be fetched") {
        return LineKind::WillFetch(1);
    }
    if l.starts_with("building '/nix/store/") {
        return LineKind::Building;
    }
    if l.starts_with("copying path '/nix/store/") {
        return LineKind::Copying;
    }
    if l.starts_with("installing the boot loader") {
        return LineKind::Bootloader;
    }
    LineKind::Other
}

/// Progress of the install from its output lines.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    expected: u64,
    done: u64,
    pub built: u64,
    pub copied: u64,
    pub bootloader_started: bool,
    tail: VecDeque<String>,
}

impl Progress {
    /// Take one line; returns the fraction done when it moved.
    pub fn line(&mut self, line: &str) -> Option<f32> {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        match line_kind(line) {
            LineKind::WillBuild(n) | LineKind::WillFetch(n) => {
                self.expected += n;
                None
            }
            k @ (LineKind::Building | LineKind::Copying) => {
                if k == LineKind::Building {
                    self.built += 1;
                } else {
                    self.copied += 1;
                }
                self.done += 1;
                Some(self.fraction())
            }
            LineKind::Bootloader => {
                self.bootloader_started = true;
                Some(0.95)
            }
            LineKind::Other => None,
        }
    }

    /// 0.0 ..= 0.95 while paths are built and copied (the rest is the
    /// bootloader and activation): done/expected when nix announced how many,
    /// else a curve that keeps moving without ever claiming the end.
    pub fn fraction(&self) -> f32 {
        if self.bootloader_started {
            return 0.95;
        }
        let f = if self.expected > 0 {
            (self.done as f32 / self.expected as f32).min(1.0)
        } else {
            1.0 - 1.0 / (1.0 + self.done as f32 / 50.0)
        };
        (f * 0.9).min(0.9)
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// A failed install: the class, the command, the last lines.
#[derive(Debug, thiserror::Error)]
#[error("{class_name} failure: {error}")]
pub struct InstallFailure {
    pub class: FailureClass,
    class_name: &'static str,
    pub error: crate::cmd::CmdError,
    pub last_lines: Vec<String>,
}

impl InstallFailure {
    /// What the failed event's `data` says besides `step`/`error`.
    pub fn failure_data(&self) -> landfall_proto::FailureData {
        landfall_proto::FailureData {
            class: Some(self.class),
            hint: Some(self.class.hint().to_owned()),
            command: Some(self.error.cmdline.clone()),
            exit_code: self.error.status.and_then(|s| s.code()),
            last_lines: self.last_lines.clone(),
            ..Default::default()
        }
    }
}

/// Fail before anything runs when a program is missing from PATH: the
/// image lacks NixOS's installer tools.
pub fn check_programs(cmds: &[Cmd], path: Option<&std::ffi::OsStr>) -> Result<()> {
    let dirs: Vec<std::path::PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    for c in cmds {
        let prog = Path::new(c.program());
        let found = if prog.components().count() > 1 {
            prog.exists()
        } else {
            dirs.iter().any(|d| d.join(prog).is_file())
        };
        if !found {
            bail!(
                "{} is not on the installer's PATH ({}): the installer image must carry NixOS's \
                 installer tools (the ISO and netboot images of nixosModules.installer do)",
                prog.display(),
                path.map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Run the commands; `on_line` gets every line with the progress fraction
/// when it moved. Stops at the first failure.
pub async fn run(
    cmds: Vec<Cmd>,
    mut on_line: impl FnMut(Stream, &str, Option<f32>),
) -> Result<Progress, InstallFailure> {
    let mut p = Progress::default();
    for cmd in cmds {
        let result = cmd
            .run_lines(|s, l| {
                let f = p.line(l);
                on_line(s, l, f);
            })
            .await;
        if let Err(error) = result {
            let tail = p.tail();
            let class = classify(tail.iter().map(String::as_str), p.bootloader_started);
            return Err(InstallFailure {
                class,
                class_name: class.as_str(),
                error,
                last_lines: tail,
            });
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_per_target() {
        let root = Path::new("/mnt");
        let c = commands(
            &InstallTarget::Flake {
                flake: "git+https://g/f#ws-01".into(),
            },
            root,
        )
        .unwrap();
        assert_eq!(
            c.iter().map(|c| c.display()).collect::<Vec<_>>(),
            ["nixos-install --root /mnt --no-root-passwd --no-channel-copy --flake '/mnt/etc/nixos#ws-01'"]
        );
        let c = commands(
            &InstallTarget::System {
                path: "/nix/store/abc-nixos-system-ws-01".into(),
                cache: "http://cache.lan:5000".into(),
                flake: None,
            },
            root,
        )
        .unwrap();
        assert_eq!(
            c.iter().map(|c| c.display()).collect::<Vec<_>>(),
            [
                "nix --extra-experimental-features nix-command copy --from http://cache.lan:5000 --to /mnt /nix/store/abc-nixos-system-ws-01",
                "nixos-install --root /mnt --no-root-passwd --no-channel-copy --system /nix/store/abc-nixos-system-ws-01",
            ]
        );
        let e = commands(&InstallTarget::Unknown, root).err().unwrap();
        assert!(e.to_string().contains("update"), "{e}");
        assert!(commands(
            &InstallTarget::Flake {
                flake: "nohost".into()
            },
            root
        )
        .is_err());
    }

    #[test]
    fn progress_follows_announced_totals() {
        let mut p = Progress::default();
        assert_eq!(p.line("these 2 derivations will be built:"), None);
        assert_eq!(
            p.line("these 2 paths will be fetched (1.00 MiB download, 4.00 MiB unpacked):"),
            None
        );
        let a = p
            .line("copying path '/nix/store/aaa-glibc' from 'https://cache.nixos.org'...")
            .unwrap();
        let b = p
            .line("copying path '/nix/store/bbb-bash' from 'https://cache.nixos.org'...")
            .unwrap();
        let c = p.line("building '/nix/store/ccc-etc.drv'...").unwrap();
        let d = p
            .line("building '/nix/store/ddd-nixos-system.drv'...")
            .unwrap();
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert!((d - 0.9).abs() < 1e-6, "{d}");
        assert_eq!((p.built, p.copied), (2, 2));
        assert_eq!(p.line("installing the boot loader..."), Some(0.95));
        assert!(p.bootloader_started);
    }

    #[test]
    fn progress_without_totals_moves_but_never_ends() {
        let mut p = Progress::default();
        let mut last = 0.0;
        for i in 0..500 {
            let f = p
                .line(&format!("building '/nix/store/{i}-x.drv'..."))
                .unwrap();
            assert!(f > last && f < 0.9);
            last = f;
        }
    }

    #[test]
    fn failures_are_classified() {
        let c = |lines: &[&str], boot| classify(lines.iter().copied(), boot);
        assert_eq!(
            c(
                &[
                    "building '/nix/store/x.drv'...",
                    "error: builder for '/nix/store/x.drv' failed with exit code 1;"
                ],
                false
            ),
            FailureClass::Build
        );
        assert_eq!(
            c(
                &[
                    "error: Cannot build '/nix/store/x.drv'.",
                    "       Reason: builder failed with exit code 2."
                ],
                false
            ),
            FailureClass::Build
        );
        assert_eq!(
            c(
                &[
                    "error: unable to download 'https://cache.nixos.org/nar/x': HTTP error 404",
                    "error: builder for '/nix/store/y.drv' failed with exit code 1"
                ],
                false
            ),
            FailureClass::Download
        );
        assert_eq!(
            c(
                &[
                    "error:",
                    "       … while evaluating the attribute 'config.system.build.toplevel'",
                    "       error: attribute 'foo' missing"
                ],
                false
            ),
            FailureClass::Evaluation
        );
        assert_eq!(
            c(&["error: flake 'git+https://g/f' does not provide attribute 'packages.x86_64-linux.nixosConfigurations.\"ws\".config.system.build.toplevel'"], false),
            FailureClass::Evaluation
        );
        assert_eq!(
            c(
                &[
                    "installing the boot loader...",
                    "Installing for i386-pc platform.",
                    "/nix/store/x/bin/grub-install: error: cannot find a device for /boot"
                ],
                true
            ),
            FailureClass::Bootloader
        );
        assert_eq!(
            c(&["installing the boot loader...", "something odd"], true),
            FailureClass::Bootloader
        );
        assert_eq!(c(&["something odd"], false), FailureClass::Unknown);
    }

    #[test]
    fn missing_programs_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = commands(
            &InstallTarget::Flake {
                flake: "g#h".into(),
            },
            Path::new("/mnt"),
        )
        .unwrap();
        let path = dir.path().as_os_str();
        let e = check_programs(&cmds, Some(path)).unwrap_err().to_string();
        assert!(
            e.starts_with("nixos-install is not on the installer's PATH"),
            "{e}"
        );
        std::fs::write(dir.path().join("nixos-install"), "").unwrap();
        check_programs(&cmds, Some(path)).unwrap();
    }

    /// The prebuilt-system path end to end through the runner, with TEST
    /// DOUBLES of `nix` and `nixos-install` (shell scripts on PATH that record
    /// their argv and print what the real ones print): `nix copy` runs first
    /// and its lines move progress; a failed download stops before
    /// `nixos-install` and is classed `download`.
    #[tokio::test]
    async fn a_prebuilt_system_is_copied_then_installed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("argv.log");
        let double = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n# TEST DOUBLE of {name}\necho \"{name} $*\" >> {}\n{body}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        double(
            "nixos-install",
            "echo 'installing the boot loader...'; echo 'installation finished!'",
        );
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let target = InstallTarget::System {
            path: "/nix/store/abc-nixos-system-ws".into(),
            cache: "http://cache.lan:5000".into(),
            flake: None,
        };
        let cmds = |path: &str| {
            commands(&target, Path::new("/mnt"))
                .unwrap()
                .into_iter()
                .map(|c| c.env("PATH", path))
                .collect::<Vec<_>>()
        };

        double(
            "nix",
            "echo 'these 2 paths will be fetched (1.0 MiB download, 2.0 MiB unpacked):' >&2; \
             echo \"copying path '/nix/store/aaa-glibc' from 'http://cache.lan:5000'...\" >&2; \
             echo \"copying path '/nix/store/abc-nixos-system-ws' from 'http://cache.lan:5000'...\" >&2",
        );
        let mut fractions = Vec::new();
        let p = run(cmds(&path), |_, _, f| fractions.extend(f))
            .await
            .unwrap();
        assert_eq!(p.copied, 2);
        assert_eq!(fractions, [0.45, 0.9, 0.95]);
        let argv = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            argv.lines().collect::<Vec<_>>(),
            [
                "nix --extra-experimental-features nix-command copy --from http://cache.lan:5000 --to /mnt /nix/store/abc-nixos-system-ws",
                "nixos-install --root /mnt --no-root-passwd --no-channel-copy --system /nix/store/abc-nixos-system-ws",
            ]
        );

        std::fs::remove_file(&log).unwrap();
        double(
            "nix",
            "echo \"error: unable to download 'http://cache.lan:5000/nar/x.nar.xz': HTTP error 404\" >&2; exit 1",
        );
        let e = run(cmds(&path), |_, _, _| {}).await.unwrap_err();
        assert_eq!(e.class, FailureClass::Download);
        let argv = std::fs::read_to_string(&log).unwrap();
        assert!(
            !argv.contains("nixos-install"),
            "installed after a failed copy: {argv}"
        );
    }

    #[tokio::test]
    async fn a_failing_command_carries_class_and_tail() {
        let cmd = Cmd::new("sh").args([
            "-c",
            "echo \"building '/nix/store/abc-hello.drv'...\"; \
             echo \"error: builder for '/nix/store/abc-hello.drv' failed with exit code 1\" >&2; exit 1",
        ]);
        let mut seen = Vec::new();
        let e = run(vec![cmd], |_, l, f| seen.push((l.to_owned(), f)))
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::Build);
        assert_eq!(e.last_lines.len(), 2);
        assert!(e.to_string().starts_with("build failure: `sh -c"), "{e}");
        let data = e.failure_data().to_data().unwrap();
        assert_eq!(data["class"], "build");
        assert_eq!(data["exit_code"], 1);
        // stdout and stderr interleave in any order; the building line moved progress.
        let building = seen
            .iter()
            .find(|(l, _)| l.starts_with("building"))
            .unwrap();
        assert!(building.1.is_some(), "{seen:?}");
    }
}

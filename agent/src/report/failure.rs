//! The failure screen: what failed, the hint and the last lines of output,
//! what the operator's two answers do, how to get a shell and what is still
//! mounted. Pure: the pipeline gathers the facts, tests read the text.

use std::path::Path;

/// What is true when a step failed.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The failed step's name.
    pub step: &'a str,
    /// The error chain; its first line is shown.
    pub message: &'a str,
    /// The step's advice (may name the machine as `HOST`).
    pub hint: Option<&'a str>,
    /// The failed program's last lines of output.
    pub last_lines: Vec<&'a str>,
    /// How `landfall retry`/`reinstall` name this machine (hostname, else MAC).
    pub host: &'a str,
    /// The installer's address, with or without a `/prefix`.
    pub ip: Option<&'a str>,
    /// Whether the installer runs sshd.
    pub sshd: bool,
    /// The steps a retry runs, in order (the first is where it starts).
    pub retry_runs: Vec<&'a str>,
    pub target_root: &'a Path,
    /// The target's file systems still mounted, and LUKS mappings still open.
    pub mounted: usize,
    pub luks_open: usize,
}

/// Lines of output shown at most.
const LAST_LINES: usize = 10;

impl Failure<'_> {
    pub fn lines(&self) -> Vec<String> {
        let host = self.host;
        let mut lines = vec![format!(
            "FAILED at step {}: {}",
            self.step,
            self.message.lines().next().unwrap_or("")
        )];
        if let Some(hint) = self.hint {
            let hint = hint
                .replace("landfall retry HOST", &format!("landfall retry {host}"))
                .replace(
                    "landfall reinstall HOST",
                    &format!("landfall reinstall {host}"),
                );
            lines.push(format!("hint: {hint}"));
        }
        if !self.last_lines.is_empty() {
            lines.push("last lines of output:".to_owned());
            let skip = self.last_lines.len().saturating_sub(LAST_LINES);
            lines.extend(self.last_lines[skip..].iter().map(|l| format!("  | {l}")));
        }
        let runs = &self.retry_runs;
        let retry = match runs.as_slice() {
            [] => "runs the install again".to_owned(),
            [only] => format!("runs the {only} step again"),
            [first, ..] => format!("runs again from {first} ({})", runs.join(", ")),
        };
        lines.push(format!(
            "waiting for the operator: `landfall retry {host}` {retry}; \
             `landfall reinstall {host}` reboots into a fresh install"
        ));
        // An ssh target is an address, never address/prefix.
        let ip = self.ip.map(|ip| ip.split('/').next().unwrap_or(ip));
        let shell = match (self.sshd, ip) {
            (true, Some(ip)) => {
                format!("shell: ssh root@{ip}, or log in on another console (Alt+F2)")
            }
            _ => "shell: log in on another console (Alt+F2)".to_owned(),
        };
        let root = self.target_root.display();
        let held = match (self.mounted, self.luks_open) {
            (0, 0) => format!("nothing of the target is mounted at {root}"),
            (0, l) => format!(
                "the target is unmounted; {l} LUKS mapping(s) stay open (cryptsetup status)"
            ),
            (m, 0) => format!("the target stays mounted at {root} ({m} mount(s))"),
            (m, l) => format!(
                "the target stays mounted at {root} ({m} mount(s), {l} LUKS mapping(s) open)"
            ),
        };
        lines.push(format!("{shell}; {held}"));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::Step;

    fn failure(step: Step) -> Failure<'static> {
        Failure {
            step: step.as_str(),
            message: "nixos-install failed\ncaused by: exit 1",
            hint: Some("fix the fleet flake, then `landfall retry HOST`"),
            last_lines: (0..15)
                .map(|i| ["l0", "l1", "l2", "l3", "l4"][i % 5])
                .collect(),
            host: "ws-07",
            ip: Some("192.0.2.2/24"),
            sshd: true,
            retry_runs: vec!["configure", "install", "finish"],
            target_root: Path::new("/mnt"),
            mounted: 3,
            luks_open: 1,
        }
    }

    #[test]
    fn the_screen_names_the_machine_the_address_and_what_a_retry_runs() {
        let text = failure(Step::Install).lines().join("\n");
        assert!(
            text.starts_with("FAILED at step install: nixos-install failed\n"),
            "{text}"
        );
        assert!(!text.contains("caused by"), "only the first line: {text}");
        assert!(!text.contains("HOST"), "{text}");
        assert!(text.contains("then `landfall retry ws-07`"), "{text}");
        assert!(
            text.contains(
                "`landfall retry ws-07` runs again from configure (configure, install, finish); \
                 `landfall reinstall ws-07` reboots"
            ),
            "{text}"
        );
        assert!(text.contains("ssh root@192.0.2.2,"), "{text}");
        assert!(!text.contains("/24"), "{text}");
        assert!(
            text.contains("the target stays mounted at /mnt (3 mount(s), 1 LUKS mapping(s) open)"),
            "{text}"
        );
        assert_eq!(
            text.matches("  | ").count(),
            10,
            "the last ten lines: {text}"
        );
    }

    #[test]
    fn after_the_disks_were_unmounted_the_screen_does_not_say_mounted() {
        let mut f = failure(Step::Finish);
        f.retry_runs = vec!["finish"];
        f.mounted = 0;
        f.luks_open = 1;
        f.hint = None;
        f.last_lines.clear();
        f.ip = Some("fd00::2/64");
        let text = f.lines().join("\n");
        assert!(!text.contains("stays mounted"), "{text}");
        assert!(
            text.contains("the target is unmounted; 1 LUKS mapping(s) stay open"),
            "{text}"
        );
        assert!(text.contains("runs the finish step again"), "{text}");
        assert!(text.contains("ssh root@fd00::2,"), "{text}");
        assert!(
            !text.contains("hint:") && !text.contains("last lines"),
            "{text}"
        );

        f.luks_open = 0;
        f.sshd = false;
        let text = f.lines().join("\n");
        assert!(
            text.contains("nothing of the target is mounted at /mnt"),
            "{text}"
        );
        assert!(!text.contains("ssh root@"), "no sshd: {text}");
    }
}

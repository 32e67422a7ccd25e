//! Where the agent learns its server and boot token: the kernel command line
//! (`landfall.server=URL landfall.token=TOKEN ...`), an optional config file
//! baked into the image (same `key=value` words, one or more per line, `#`
//! comments), and command-line flags. Flags win over the kernel command line,
//! which wins over the file.
//!
//! Every `landfall.WORD` the agent reads is in [`KNOWN_WORDS`]; a word that is
//! not is refused ([`check_words`]), so a misspelt `landfall.fianl=none` stops
//! the agent with the word named instead of being silently ignored. A test
//! (`tests/cmdline_words.rs`) reads every `landfall.WORD=` the Nix modules and
//! the server can put on a kernel line or into agent.conf and checks it is here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What to do after a successful install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FinalAction {
    #[default]
    Reboot,
    Poweroff,
    /// Exit and leave the machine running (tests, debugging).
    None,
}

/// How progress is drawn for the technician.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConsoleMode {
    /// Redraw a panel when stdout is a terminal, one line per event otherwise.
    #[default]
    Auto,
    /// Always one line per event (serial consoles captured to files, journald).
    Lines,
    /// Always redraw.
    Redraw,
}

/// Every `landfall.WORD` (without the `landfall.` prefix) the agent reads from
/// the kernel command line or agent.conf, with what it sets.
pub const KNOWN_WORDS: &[(&str, &str)] = &[
    (
        "server",
        "base URL of the landfall server (the server's boot.ipxe adds it)",
    ),
    (
        "token",
        "one-time boot token (the server's boot.ipxe adds it)",
    ),
    (
        "final",
        "after a successful install: reboot, poweroff or none",
    ),
    ("console", "progress display: auto, lines or redraw"),
    (
        "bundle",
        "path of the age secrets bundle (default /etc/landfall/secrets.age)",
    ),
    (
        "secrets_identity",
        "age identity file that opens the bundle (else a passphrase prompt)",
    ),
    (
        "vault_role_id",
        "Vault AppRole role_id when the image has no /etc/landfall/vault-role-id",
    ),
    (
        "server_ca_sha256",
        "SHA-256 of the landfall server's CA (or leaf) certificate to pin (`landfall ca-fingerprint`)",
    ),
    (
        "insecure_http",
        "1: allow a plain http:// landfall server (development only)",
    ),
    (
        "vault_insecure_http",
        "1: allow an http:// Vault (development only)",
    ),
    (
        "state_dir",
        "the disk journal and outbox directory when LANDFALL_STATE_DIR is unset (default /run/landfall)",
    ),
];

/// The settings `landfall-agent run` works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Base URL of the landfall server, e.g. `http://10.0.2.2:8080`.
    pub server: String,
    /// One-time boot token minted by the server for this boot.
    pub token: String,
    pub final_action: FinalAction,
    pub console: ConsoleMode,
    /// The age secrets bundle (`landfall.bundle=`, `--bundle`); `None`: the
    /// image's own, `secrets.age` in [`crate::pipeline::RunOptions::etc_dir`].
    pub bundle: Option<PathBuf>,
    /// `landfall.server_ca_sha256=`: the server certificate to pin, when the
    /// image carries no `server-ca.pem` ([`crate::report::ServerTrust`]).
    pub server_ca_sha256: Option<String>,
    /// `landfall.insecure_http=1`: a plain `http://` server is allowed.
    pub insecure_http: bool,
}

/// Values given as flags; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub token: Option<String>,
    pub final_action: Option<FinalAction>,
    pub console: Option<ConsoleMode>,
    pub bundle: Option<PathBuf>,
}

/// Split a kernel command line into words the way the kernel does: spaces
/// separate, double quotes group (`a="b c"` is one word `a=b c`).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Refuse every `landfall.WORD` of `text` that is not in [`KNOWN_WORDS`]:
/// the error names the word, where it came from (`origin`: "the kernel
/// command line", a file), the closest known word and the whole list.
pub fn check_words(text: &str, origin: &str) -> Result<()> {
    for key in landfall_params(text).keys() {
        if KNOWN_WORDS.iter().any(|(k, _)| k == key) {
            continue;
        }
        let closest = KNOWN_WORDS
            .iter()
            .map(|(k, _)| (edit_distance(k, key), *k))
            .min()
            .filter(|(d, _)| *d <= 2)
            .map(|(_, k)| format!("did you mean `landfall.{k}=`? "))
            .unwrap_or_default();
        let known: Vec<String> = KNOWN_WORDS
            .iter()
            .map(|(k, _)| format!("landfall.{k}"))
            .collect();
        bail!(
            "`landfall.{key}` on {origin} is not a setting this agent knows: {closest}\
             fix or remove it (known: {})",
            known.join(", ")
        );
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The text the agent reads its `landfall.*` words from: the image's
/// agent.conf, then the kernel command line, one after the other on their
/// own lines so a comment in the file never swallows a kernel word, and the
/// kernel's words win ([`landfall_params`] keeps the last).
pub fn layered_text(config_file: &str, cmdline: &str) -> String {
    format!("{config_file}\n{cmdline}")
}

/// The `landfall.*` parameters of a command line or config file, keyed without
/// the `landfall.` prefix. Later words win, as for the kernel.
pub fn landfall_params(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(split_words)
        .filter_map(|w| {
            let rest = w.strip_prefix("landfall.")?;
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

impl AgentConfig {
    /// Build the config from (lowest precedence first) an optional config file,
    /// the kernel command line text, and flags.
    pub fn resolve(file: Option<&str>, cmdline: &str, flags: Overrides) -> Result<Self> {
        if let Some(file) = file {
            check_words(file, "the agent's config file")?;
        }
        check_words(cmdline, "the kernel command line")?;
        let mut params = file.map(landfall_params).unwrap_or_default();
        params.extend(landfall_params(cmdline));

        let server = flags.server.or_else(|| params.remove("server"));
        let token = flags.token.or_else(|| params.remove("token"));
        let Some(server) = server.filter(|s| !s.is_empty()) else {
            bail!(
                "no landfall server given: boot with `landfall.server=http://HOST:PORT` on the \
                 kernel command line (the server's boot.ipxe adds it) or pass --server"
            );
        };
        let Some(token) = token.filter(|s| !s.is_empty()) else {
            bail!(
                "no boot token given: boot through the server's boot.ipxe (it adds \
                 `landfall.token=...`) or pass --token"
            );
        };
        let server = server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("landfall.server={server:?} must start with http:// or https://");
        }
        let final_action = match flags.final_action {
            Some(f) => f,
            None => parse_enum("final", params.get("final"))?.unwrap_or_default(),
        };
        let console = match flags.console {
            Some(c) => c,
            None => parse_enum("console", params.get("console"))?.unwrap_or_default(),
        };
        let bundle = match flags.bundle {
            Some(b) => Some(b),
            None => match params.get("bundle").map(String::as_str) {
                None => None,
                Some(b) if b.starts_with('/') => Some(PathBuf::from(b)),
                Some(b) => bail!(
                    "landfall.bundle={b:?} must be an absolute path to the age bundle, \
                     e.g. landfall.bundle=/run/media/landfall/secrets.age"
                ),
            },
        };
        let server_ca_sha256 = params
            .get("server_ca_sha256")
            .map(|v| crate::report::tls::parse_fingerprint(v))
            .transpose()?;
        let insecure_http = match params.get("insecure_http").map(String::as_str) {
            None | Some("0") => false,
            Some("1") => true,
            Some(v) => bail!("landfall.insecure_http={v:?} must be 1 (allow plain HTTP) or 0"),
        };
        Ok(Self {
            server,
            token,
            final_action,
            console,
            bundle,
            server_ca_sha256,
            insecure_http,
        })
    }

    /// Read the config file (if present) and the kernel command line from disk.
    pub fn load(config_file: &Path, cmdline_file: &Path, flags: Overrides) -> Result<Self> {
        let file = match std::fs::read_to_string(config_file) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", config_file.display())),
        };
        let cmdline = std::fs::read_to_string(cmdline_file)
            .with_context(|| format!("reading {}", cmdline_file.display()))?;
        if let Some(file) = &file {
            check_words(file, &config_file.display().to_string())?;
        }
        Self::resolve(file.as_deref(), &cmdline, flags)
    }
}

fn parse_enum<T: clap::ValueEnum>(key: &str, value: Option<&String>) -> Result<Option<T>> {
    let Some(v) = value else { return Ok(None) };
    T::from_str(v, true).map(Some).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        anyhow::anyhow!(
            "landfall.{key}={v:?} is not valid: use one of {}",
            allowed.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "vmlinuz initrd=initrd landfall.server=http://10.0.2.2:8080/ \
                        landfall.token=abc123 console=ttyS0 quiet\n";

    #[test]
    fn agent_conf_words_reach_the_steps_and_the_kernel_line_wins() {
        let conf = "landfall.vault_role_id=from-conf\n\
                    landfall.secrets_identity=/media/key.txt # on the USB stick";
        let text = layered_text(conf, "quiet landfall.vault_role_id=from-kernel\n");
        let p = landfall_params(&text);
        assert_eq!(p["vault_role_id"], "from-kernel");
        // The file's trailing comment does not swallow the kernel's words.
        assert_eq!(p["secrets_identity"], "/media/key.txt");
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("vault-role-id");
        let id = crate::secrets::role_id_from(&none, &layered_text(conf, "quiet")).unwrap();
        assert_eq!(id.expose_str(), Some("from-conf"));
        assert!(matches!(
            crate::secrets::IdentitySource::from_cmdline(&text),
            crate::secrets::IdentitySource::IdentityFile(p) if p == std::path::Path::new("/media/key.txt")
        ));
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(
            split_words(r#"a b="c d" e"#),
            vec!["a".to_string(), "b=c d".into(), "e".into()]
        );
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn resolves_from_cmdline() {
        let c = AgentConfig::resolve(None, LINE, Overrides::default()).unwrap();
        assert_eq!(c.server, "http://10.0.2.2:8080");
        assert_eq!(c.token, "abc123");
        assert_eq!(c.final_action, FinalAction::Reboot);
    }

    #[test]
    fn precedence_file_then_cmdline_then_flags() {
        let file =
            "# baked into the image\nlandfall.server=http://file:1 landfall.final=poweroff\n";
        let c = AgentConfig::resolve(Some(file), LINE, Overrides::default()).unwrap();
        assert_eq!(c.server, "http://10.0.2.2:8080");
        assert_eq!(c.final_action, FinalAction::Poweroff);
        let c = AgentConfig::resolve(
            Some(file),
            LINE,
            Overrides {
                server: Some("https://flag".into()),
                final_action: Some(FinalAction::None),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.server, "https://flag");
        assert_eq!(c.final_action, FinalAction::None);
    }

    #[test]
    fn missing_and_bad_values_name_the_parameter() {
        let e = AgentConfig::resolve(None, "landfall.token=x", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("landfall.server="), "{e}");
        let e = AgentConfig::resolve(None, "landfall.server=http://a", Overrides::default())
            .unwrap_err();
        assert!(e.to_string().contains("landfall.token="), "{e}");
        let e = AgentConfig::resolve(
            None,
            "landfall.server=ftp://a landfall.token=t",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = AgentConfig::resolve(
            None,
            "landfall.server=http://a landfall.token=t landfall.final=explode",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("landfall.final") && e.to_string().contains("poweroff"),
            "{e}"
        );
    }

    #[test]
    fn the_bundle_comes_from_the_flag_then_the_cmdline_then_the_file() {
        let file = "landfall.bundle=/etc/landfall/other.age\n";
        let c = AgentConfig::resolve(None, LINE, Overrides::default()).unwrap();
        assert_eq!(c.bundle, None, "no word: the image's own bundle");
        let c = AgentConfig::resolve(Some(file), LINE, Overrides::default()).unwrap();
        assert_eq!(c.bundle, Some(PathBuf::from("/etc/landfall/other.age")));
        let line = format!("{LINE} landfall.bundle=/run/media/usb/secrets.age");
        let c = AgentConfig::resolve(Some(file), &line, Overrides::default()).unwrap();
        assert_eq!(c.bundle, Some(PathBuf::from("/run/media/usb/secrets.age")));
        let c = AgentConfig::resolve(
            Some(file),
            &line,
            Overrides {
                bundle: Some("/tmp/flag.age".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.bundle, Some(PathBuf::from("/tmp/flag.age")));
        let e = AgentConfig::resolve(
            None,
            &format!("{LINE} landfall.bundle=secrets.age"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("landfall.bundle=") && e.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn unknown_words_are_refused_with_the_closest_known_one() {
        let e = AgentConfig::resolve(
            None,
            &format!("{LINE} landfall.fianl=none"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`landfall.fianl`"), "{e}");
        assert!(e.contains("kernel command line"), "{e}");
        assert!(e.contains("did you mean `landfall.final=`"), "{e}");
        assert!(e.contains("landfall.bundle"), "the known list: {e}");
        // In the file too, and with no close match no guess.
        let e = AgentConfig::resolve(Some("landfall.colour=red\n"), LINE, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`landfall.colour`") && e.contains("config file"),
            "{e}"
        );
        assert!(!e.contains("did you mean"), "{e}");
        // Words that are not landfall's are the kernel's business.
        AgentConfig::resolve(
            None,
            &format!("{LINE} landfallx=1 xlandfall.y=2"),
            Overrides::default(),
        )
        .unwrap();
        for (k, _) in KNOWN_WORDS {
            check_words(&format!("landfall.{k}=1"), "test").unwrap();
        }
        assert_eq!(edit_distance("final", "fianl"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    mod properties {
        //! The kernel command line and config file on untrusted text (issue
        //! 12, fuzzing): a value, or an error naming the word.
        use super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,24}",
                "landfall\\.[a-z_]{0,16}(=[ -~]{0,24})?",
                "\"[ -~]{0,16}\"?",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn any_text_resolves_or_errs(
                line in proptest::collection::vec(word(), 0..12).prop_map(|w| w.join(" ")),
                file in proptest::option::of("\\PC{0,80}"),
            ) {
                let _ = split_words(&line);
                let _ = landfall_params(&line);
                let _ = check_words(&line, "fuzz");
                let _ = AgentConfig::resolve(file.as_deref(), &line, Overrides::default());
            }

            #[test]
            fn unquoted_words_split_on_whitespace(words in proptest::collection::vec("[!#-~]{1,12}", 0..10)) {
                prop_assert_eq!(split_words(&words.join("  \t")), words);
            }

            #[test]
            fn the_last_landfall_word_wins(key in "[a-z_]{1,12}", a in "[!$-~]{0,12}", b in "[!$-~]{0,12}") {
                let params = landfall_params(&format!("x landfall.{key}={a} y landfall.{key}={b}"));
                prop_assert_eq!(params.get(&key), Some(&b));
            }
        }
    }
}

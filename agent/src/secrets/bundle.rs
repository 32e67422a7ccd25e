//! The offline secrets path: an age-encrypted bundle of files.
//!
//! Format (docs/security.md, "Age bundle"): an [age](https://age-encryption.org/v1)
//! file, binary (not armored), encrypted to a passphrase (scrypt) or to
//! X25519 recipients, whose plaintext is a **ustar tar** of regular files
//! with relative UTF-8 paths. Directory entries and a leading `./` are
//! accepted (what `tar -C DIR -cf - .` writes) and ignored; symlinks, hard
//! links, devices, fifos, absolute paths, `.`/`..` components and a path
//! given twice are refused. GNU/PAX long names are read (the `tar` crate
//! resolves them); [`create`] writes plain ustar. At most
//! [`MAX_PLAINTEXT`] bytes of file content.
//!
//! So `tar --format=ustar -C DIR -cf - . | age -p > secrets.age` makes a
//! bundle and `age -d secrets.age | tar -t` lists one.
//!
//! A role's `secret_files` name bundle files as `from = "bundle:PATH"`
//! (PATH as in the tar, without `./`; `{hostname}`/`{role}` expanded by the
//! server). [`Bundle::into_fetched`] turns the bundle into the same
//! [`Fetched`] the Vault path makes, for [`super::place`].
//!
//! Values live in [`SecretBytes`] (zeroized, redacted); each file is read
//! into a buffer of its exact size. The age crate zeroizes its decrypted
//! chunks and keys; not zeroized: its plaintext chunk buffer when encrypting
//! ([`create`], on the operator's machine) and its intermediate strings while
//! parsing an identity file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use anyhow::{bail, Context, Result};
use landfall_proto::SecretFile;
use tar::EntryType;
use zeroize::Zeroizing;

use super::prompt::Prompt;
use super::secret::SecretBytes;
use super::vault::{Fetched, SecretsError};

/// The bundle the installer image carries, in [`super::ETC_DIR`].
pub const BUNDLE_FILE: &str = "secrets.age";
/// Most file content a bundle may hold (it is held in memory).
pub const MAX_PLAINTEXT: u64 = 64 << 20;
/// Passphrase tries at the console.
pub const PROMPT_TRIES: u32 = 3;
/// scrypt work factor (log2 N) of bundles made by [`create`]: the age CLI's
/// own (256 MiB, about a second), not calibrated to the operator's fast
/// workstation, so that a small installer machine can still open them.
pub const SCRYPT_WORK_FACTOR: u8 = 18;

/// `bundle:PATH` -> PATH.
pub fn parse_bundle_from(from: &str) -> Option<&str> {
    from.strip_prefix("bundle:").filter(|p| !p.is_empty())
}

/// Whom [`create`] encrypts to.
pub enum Recipients {
    /// A passphrase (scrypt); the agent asks for it at the console.
    Passphrase(SecretBytes),
    /// age X25519 public keys (`age1...`); opened with an identity file.
    Keys(Vec<String>),
}

/// How [`open_bundle`] unlocks a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// An age identity file (`AGE-SECRET-KEY-1...` lines), e.g. on a USB stick.
    IdentityFile(PathBuf),
    /// A file holding the passphrase (one trailing newline is dropped).
    PassphraseFile(PathBuf),
    /// Ask on these terminals, [`PROMPT_TRIES`] tries, echo off.
    Prompt(Vec<PathBuf>),
}

impl IdentitySource {
    /// For an install: `landfall.secrets_identity=PATH` on the command line
    /// (or the image's agent.conf) names an identity file; else ask for the
    /// passphrase on the kernel's consoles (`console=tty0 console=ttyS0,115200`
    /// -> `/dev/tty0`, `/dev/ttyS0`), `/dev/console` when none is given.
    pub fn from_cmdline(cmdline: &str) -> Self {
        let params = crate::cmdline::landfall_params(cmdline);
        if let Some(p) = params.get("secrets_identity").filter(|p| !p.is_empty()) {
            return Self::IdentityFile(PathBuf::from(p));
        }
        Self::Prompt(console_ttys(cmdline))
    }
}

/// `/dev/NAME` of every `console=NAME[,OPTIONS]`, in order, or `/dev/console`.
pub fn console_ttys(cmdline: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for w in crate::cmdline::split_words(cmdline) {
        let Some(v) = w.strip_prefix("console=") else {
            continue;
        };
        let name = v.split(',').next().unwrap_or_default();
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        let p = PathBuf::from(format!("/dev/{name}"));
        if ok && !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(PathBuf::from("/dev/console"));
    }
    out
}

/// An opened bundle: path in the bundle -> content. `Debug` shows names and
/// sizes only.
pub struct Bundle {
    source: String,
    files: BTreeMap<String, SecretBytes>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("source", &self.source)
            .field("files", &self.entries())
            .finish()
    }
}

impl Bundle {
    /// Names and sizes, sorted by name (what `bundle list` prints).
    pub fn entries(&self) -> Vec<(&str, usize)> {
        self.files
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect()
    }

    pub fn get(&self, path: &str) -> Option<&SecretBytes> {
        self.files.get(path)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Where it came from (a path), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The assignment's `secret_files` (all `bundle:PATH`) with this bundle
    /// as their source, for [`super::place`]. Every reference must resolve.
    pub fn into_fetched(self, files: &[SecretFile]) -> Result<Fetched, SecretsError> {
        Fetched::from_bundle(self.files, files)
    }
}

/// Read and open the bundle at `path`.
pub fn open_bundle(path: &Path, source: &IdentitySource) -> Result<Bundle> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    open_bytes(&bytes, &path.display().to_string(), source)
}

/// Open a bundle already in memory (e.g. downloaded from the server);
/// `what` names it in messages and at the prompt.
pub fn open_bytes(bytes: &[u8], what: &str, source: &IdentitySource) -> Result<Bundle> {
    let scrypt = decryptor(bytes, what)?.is_scrypt();
    let bundle = match source {
        IdentitySource::IdentityFile(p) => {
            if scrypt {
                bail!("{what} is encrypted to a passphrase; give the passphrase, not an identity file");
            }
            let raw = SecretBytes::new(
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            );
            let ids = age::IdentityFile::from_buffer(raw.expose())
                .and_then(|f| {
                    f.into_identities()
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })
                .with_context(|| {
                    format!(
                        "{} is not an age identity file (AGE-SECRET-KEY-1...)",
                        p.display()
                    )
                })?;
            drop(raw);
            let reader = decryptor(bytes, what)?
                .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
                        "none of the identities in {} can open {what} (it was encrypted to other recipients)",
                        p.display()
                    ),
                    e => anyhow::anyhow!("decrypting {what}: {e}"),
                })?;
            read_tar(reader, what)?
        }
        IdentitySource::PassphraseFile(p) => {
            let pass = read_passphrase_file(p)?;
            try_passphrase(bytes, what, &pass)?
                .with_context(|| format!("wrong passphrase (from {}) for {what}", p.display()))?
        }
        IdentitySource::Prompt(ttys) => {
            if !scrypt {
                bail!(
                    "{what} is encrypted to X25519 recipients, not a passphrase; give an identity \
                     file (landfall.secrets_identity=PATH)"
                );
            }
            let mut prompt = Prompt::open(ttys)?;
            prompt.ask(what, PROMPT_TRIES, |p| try_passphrase(bytes, what, p))?
        }
    };
    tracing::info!(bundle = what, files = bundle.len(), "secrets bundle opened");
    Ok(bundle)
}

/// A passphrase file's content without one trailing newline; not empty.
pub fn read_passphrase_file(p: &Path) -> Result<SecretBytes> {
    let mut raw =
        Zeroizing::new(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    if raw.last() == Some(&b'\n') {
        raw.pop();
        if raw.last() == Some(&b'\r') {
            raw.pop();
        }
    }
    if raw.is_empty() {
        bail!("{} holds no passphrase", p.display());
    }
    Ok(SecretBytes::new(std::mem::take(&mut *raw)))
}

fn decryptor<'a>(bytes: &'a [u8], what: &str) -> Result<age::Decryptor<&'a [u8]>> {
    age::Decryptor::new_buffered(bytes).map_err(|e| match e {
        age::DecryptError::UnknownFormat | age::DecryptError::InvalidHeader => anyhow::anyhow!(
            "{what} is not a binary age file ({e}); make it with `landfall-agent bundle create` \
             or `tar ... | age` (without --armor)"
        ),
        e => anyhow::anyhow!("reading the age header of {what}: {e}"),
    })
}

/// `Ok(None)`: wrong passphrase. Other failures (not a passphrase bundle,
/// excessive work factor, a bad tar inside) are errors.
fn try_passphrase(bytes: &[u8], what: &str, pass: &SecretBytes) -> Result<Option<Bundle>> {
    let Some(s) = pass.expose_str() else {
        return Ok(None);
    };
    let dec = decryptor(bytes, what)?;
    if !dec.is_scrypt() {
        bail!("{what} is encrypted to X25519 recipients, not a passphrase; give an identity file");
    }
    let id = age::scrypt::Identity::new(SecretString::from(s.to_owned()));
    match dec.decrypt(std::iter::once(&id as &dyn age::Identity)) {
        Ok(reader) => read_tar(reader, what).map(Some),
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => Ok(None),
        Err(age::DecryptError::ExcessiveWork { required, target }) => bail!(
            "{what} needs scrypt work factor 2^{required}, more than this machine accepts \
             (about 16 x 2^{target}); recreate it with `landfall-agent bundle create` (2^{SCRYPT_WORK_FACTOR})"
        ),
        Err(e) => bail!("decrypting {what}: {e}"),
    }
}

/// The tar reader on plaintext bytes, for the fuzzer (`fuzz/`, `./x fuzz`):
/// what [`open_bytes`] does after decrypting.
#[doc(hidden)]
pub fn read_tar_bytes(bytes: &[u8]) -> Result<Bundle> {
    read_tar(bytes, "fuzz input")
}

/// Read the tar inside a bundle, refusing anything but regular files with
/// clean relative paths.
fn read_tar(r: impl Read, what: &str) -> Result<Bundle> {
    let mut archive = tar::Archive::new(r);
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let entries = archive
        .entries()
        .with_context(|| format!("reading the tar inside {what}"))?;
    for entry in entries {
        let mut e = entry.with_context(|| format!("reading the tar inside {what}"))?;
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let ty = e.header().entry_type();
        let kind = match ty {
            EntryType::Regular => None,
            EntryType::Directory => {
                entry_path(&raw, true).with_context(|| format!("{what}: tar entry {shown:?}"))?;
                continue;
            }
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink => Some("a symbolic link"),
            EntryType::Link => Some("a hard link"),
            EntryType::Char | EntryType::Block => Some("a device"),
            EntryType::Fifo => Some("a fifo"),
            _ => Some("not a regular file"),
        };
        if let Some(kind) = kind {
            bail!(
                "{what}: tar entry {shown:?} is {kind}; a bundle holds regular files only \
                 (no links, devices or fifos)"
            );
        }
        let path =
            entry_path(&raw, false).with_context(|| format!("{what}: tar entry {shown:?}"))?;
        let size = e.size();
        total = total.saturating_add(size);
        if total > MAX_PLAINTEXT {
            bail!("{what}: the files add up to more than {MAX_PLAINTEXT} bytes");
        }
        // Exact size, read in place: no reallocation leaves a copy behind.
        let mut buf = Zeroizing::new(vec![0u8; size as usize]);
        e.read_exact(&mut buf)
            .with_context(|| format!("{what}: reading tar entry {path:?}"))?;
        let value = SecretBytes::new(std::mem::take(&mut *buf));
        if files.insert(path.clone(), value).is_some() {
            bail!("{what}: tar entry {path:?} appears twice");
        }
    }
    Ok(Bundle {
        source: what.to_owned(),
        files,
    })
}

/// A tar entry name as a bundle path: UTF-8, relative, a leading `./`
/// dropped, no empty, `.` or `..` components, no control characters. A
/// directory may end in `/` (and be `./` itself: then "").
fn entry_path(raw: &[u8], dir: bool) -> Result<String> {
    let s = std::str::from_utf8(raw).context("the name is not UTF-8")?;
    if s.starts_with('/') {
        bail!("absolute path; bundle paths are relative");
    }
    if s.chars().any(char::is_control) {
        bail!("control character in the name");
    }
    let mut p = s.strip_prefix("./").unwrap_or(s);
    if dir {
        p = p.strip_suffix('/').unwrap_or(p);
        if p.is_empty() || p == "." {
            return Ok(String::new());
        }
    }
    for seg in p.split('/') {
        match seg {
            ".." => bail!(".. component; it would leave the bundle"),
            "." | "" => bail!("empty or . component"),
            _ => {}
        }
    }
    Ok(p.to_owned())
}

/// Make a bundle of the regular files under `from_dir` (recursively, sorted;
/// a symlink or special file is an error). Returns the age file's bytes.
pub fn create(from_dir: &Path, to: &Recipients) -> Result<Vec<u8>> {
    let mut paths = Vec::new();
    walk(from_dir, from_dir, &mut paths)?;
    if paths.is_empty() {
        bail!("{} holds no files", from_dir.display());
    }
    let encryptor = match to {
        Recipients::Passphrase(p) => {
            let s = p.expose_str().context("the passphrase is not UTF-8")?;
            if s.is_empty() {
                bail!("empty passphrase");
            }
            let mut r = age::scrypt::Recipient::new(SecretString::from(s.to_owned()));
            r.set_work_factor(SCRYPT_WORK_FACTOR);
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .context("setting up the passphrase")?
        }
        Recipients::Keys(keys) => {
            if keys.is_empty() {
                bail!("no recipient");
            }
            let rs = keys
                .iter()
                .map(|k| {
                    k.trim().parse::<age::x25519::Recipient>().map_err(|e| {
                        anyhow::anyhow!(
                            "recipient {k:?} is not an age X25519 public key (age1...): {e}"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
                .context("setting up the recipients")?
        }
    };
    let out = encryptor
        .wrap_output(Vec::new())
        .context("writing the age header")?;
    // The tar goes straight into the encryptor: the plaintext is never
    // gathered in one buffer.
    let mut tar = tar::Builder::new(out);
    for rel in &paths {
        let full = from_dir.join(rel);
        let data = SecretBytes::new(
            std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?,
        );
        let mut h = tar::Header::new_ustar();
        h.set_path(rel).with_context(|| {
            format!("{rel}: too long for a ustar name (100 bytes, or 155 + 100 split at a /)")
        })?;
        h.set_entry_type(EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append(&h, data.expose())
            .with_context(|| format!("adding {rel}"))?;
    }
    let mut out = tar.into_inner().context("finishing the tar")?;
    out.flush().context("encrypting")?;
    let bytes = out.finish().context("finishing the age file")?;
    tracing::info!(files = paths.len(), "secrets bundle made");
    Ok(bytes)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for p in names {
        let m =
            std::fs::symlink_metadata(&p).with_context(|| format!("inspecting {}", p.display()))?;
        if m.is_dir() {
            walk(root, &p, out)?;
        } else if m.is_file() {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_str()
                .with_context(|| format!("{}: the name is not UTF-8", p.display()))?
                .to_owned();
            entry_path(rel.as_bytes(), false).with_context(|| p.display().to_string())?;
            out.push(rel);
        } else {
            bail!(
                "{} is not a regular file (a symlink, device or fifo); a bundle holds regular \
                 files only",
                p.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(path: &str, from: &str) -> SecretFile {
        SecretFile {
            path: path.into(),
            from: from.into(),
            mode: "0600".into(),
            owner: "root".into(),
            group: "root".into(),
        }
    }

    #[test]
    fn round_trip_with_a_key_and_into_fetched() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("hosts/ws-01")).unwrap();
        std::fs::write(
            src.join("hosts/ws-01/ssh_host_ed25519_key"),
            "CANARY-UNIT-1",
        )
        .unwrap();
        std::fs::write(src.join("luks.key"), "k2").unwrap();
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let idf = d.path().join("key.txt");
        std::fs::write(
            &idf,
            format!("# test\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        let bytes = create(&src, &Recipients::Keys(vec![id.to_public().to_string()])).unwrap();
        let b = open_bytes(&bytes, "t.age", &IdentitySource::IdentityFile(idf)).unwrap();
        assert_eq!(
            b.entries(),
            vec![("hosts/ws-01/ssh_host_ed25519_key", 13), ("luks.key", 2)]
        );
        assert!(!format!("{b:?}").contains("CANARY"));
        let f = b
            .into_fetched(&[sf("/etc/ssh/k", "bundle:hosts/ws-01/ssh_host_ed25519_key")])
            .unwrap();
        assert_eq!(
            f.lookup("bundle:hosts/ws-01/ssh_host_ed25519_key")
                .unwrap()
                .expose(),
            b"CANARY-UNIT-1"
        );
        assert!(f.bundle_file("luks.key").is_some());
        assert!(!format!("{f:?}").contains("CANARY"));
        let e = Fetched::from_bundle(BTreeMap::new(), &[sf("/x", "bundle:nope")]).unwrap_err();
        assert!(e.to_string().contains("no secrets bundle"), "{e}");
    }

    #[test]
    fn passphrase_file_right_and_wrong() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "x").unwrap();
        let pf = d.path().join("pass");
        std::fs::write(&pf, "right horse\n").unwrap();
        let bytes = create(
            d.path(),
            &Recipients::Passphrase(read_passphrase_file(&pf).unwrap()),
        )
        .unwrap();
        let b = open_bytes(&bytes, "t.age", &IdentitySource::PassphraseFile(pf.clone())).unwrap();
        assert!(b.get("a").is_some() && b.get("pass").is_some());
        std::fs::write(&pf, "wrong\n").unwrap();
        let e = format!(
            "{:#}",
            open_bytes(&bytes, "t.age", &IdentitySource::PassphraseFile(pf)).unwrap_err()
        );
        assert!(e.contains("wrong passphrase"), "{e}");
    }

    #[test]
    fn entry_paths() {
        assert_eq!(entry_path(b"./a/b", false).unwrap(), "a/b");
        assert_eq!(entry_path(b"./", true).unwrap(), "");
        assert_eq!(entry_path(b"./hosts/", true).unwrap(), "hosts");
        for bad in [
            &b"/etc/x"[..],
            b"a/../b",
            b"..",
            b"a//b",
            b"a/./b",
            b"a\nb",
            b"\xff",
        ] {
            assert!(entry_path(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn consoles_from_the_cmdline() {
        assert_eq!(
            console_ttys("quiet console=tty0 console=ttyS0,115200n8 console=ttyS0"),
            vec![PathBuf::from("/dev/tty0"), PathBuf::from("/dev/ttyS0")]
        );
        assert_eq!(console_ttys("quiet"), vec![PathBuf::from("/dev/console")]);
        assert_eq!(
            IdentitySource::from_cmdline("landfall.secrets_identity=/run/usb/key.txt"),
            IdentitySource::IdentityFile("/run/usb/key.txt".into())
        );
    }

    mod properties {
        //! The tar reader on untrusted bytes (issue 12, fuzzing): a bundle's
        //! plaintext is whatever its creator wrote.
        use super::*;
        use proptest::prelude::*;

        fn tar_of(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, data.as_slice()).unwrap();
            }
            b.into_inner().unwrap()
        }

        fn files() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
            proptest::collection::btree_map(
                "[a-z0-9_.-]{0,6}[a-z0-9](/[a-z0-9_-]{1,8}){0,2}",
                proptest::collection::vec(any::<u8>(), 0..600),
                1..5,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_are_a_bundle_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = read_tar(bytes.as_slice(), "fuzz");
            }

            #[test]
            fn a_tar_of_regular_files_reads_back(files in files()) {
                let b = read_tar(tar_of(&files).as_slice(), "t").unwrap();
                prop_assert_eq!(b.len(), files.len());
                for (name, data) in &files {
                    prop_assert_eq!(b.get(name).map(|v| v.expose()), Some(data.as_slice()));
                }
            }

            #[test]
            fn a_damaged_tar_is_a_bundle_or_an_error(
                files in files(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            ) {
                let mut bytes = tar_of(&files);
                for (at, v) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = v;
                }
                let _ = read_tar(bytes.as_slice(), "fuzz");
            }
        }
    }
}

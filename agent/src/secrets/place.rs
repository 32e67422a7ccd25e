//! Write the assignment's secret files into the mounted target (`/mnt`).
//!
//! Each file: its path checked (absolute, no `.`/`..`, no symlink on the way
//! under the root), missing parent directories created (the file's own
//! directory 0700, except the shared system directories in
//! [`SHARED_DIRS`], which get 0755 like their siblings), then written
//! atomically: a temporary file (mode 0600, `O_EXCL`) in the same directory,
//! the bytes, `fchmod` to the file's mode, `fchown`, `rename` over the final
//! name. No fsync per file: the finish step's `sync` before unmounting makes
//! the whole target durable at once (one flush instead of two per file), and
//! a machine that crashes before that is installed again from scratch.
//!
//! Owner and group are looked up by name in the *target's* `/etc/passwd` and
//! `/etc/group` under the root. Before `nixos-install` these usually do not
//! exist yet, so any name not found there becomes 0 (root): give such files a
//! fixed `uid`/`gid` in the NixOS config, or let the service's own setup
//! chown them (sops-nix does for its outputs). Kept deliberately simple.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::vault::Fetched;

/// Directories that, when the agent has to create them, get 0755: other
/// programs of the installed system read files beside the secret.
pub const SHARED_DIRS: &[&str] = &[
    "/etc",
    "/etc/ssh",
    "/etc/nixos",
    "/var",
    "/var/lib",
    "/root",
    "/home",
];

/// A file written by [`place`] (path inside the target, without the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedFile {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Length in bytes (the value itself is never returned).
    pub len: usize,
}

/// Write every file of `fetched` under `root`.
pub fn place(root: &Path, fetched: &Fetched) -> Result<Vec<PlacedFile>> {
    place_except(root, fetched, &std::collections::BTreeSet::new())
}

/// Write the files of `fetched` under `root`, except those at the paths in
/// `skip` (LUKS keys the layout consumed while formatting: they unlock the
/// disks and have no business in the target's file system).
pub fn place_except(
    root: &Path,
    fetched: &Fetched,
    skip: &std::collections::BTreeSet<String>,
) -> Result<Vec<PlacedFile>> {
    let mut placed = Vec::new();
    for f in fetched.files().iter().filter(|f| !skip.contains(&f.path)) {
        let value = fetched.lookup(&f.from)?;
        let rel = checked_relative(&f.path)?;
        let mode = u32::from_str_radix(&f.mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("{}: mode {:?} is not octal up to 0777", f.path, f.mode))?;
        let uid = lookup_id(&root.join("etc/passwd"), &f.owner)
            .with_context(|| format!("{}: owner {:?}", f.path, f.owner))?;
        let gid = lookup_id(&root.join("etc/group"), &f.group)
            .with_context(|| format!("{}: group {:?}", f.path, f.group))?;
        let target = root.join(&rel);
        make_parents(root, &rel)
            .with_context(|| format!("creating the directories of {}", f.path))?;
        write_atomic(&target, value.expose(), mode, uid, gid)
            .with_context(|| format!("writing {}", target.display()))?;
        tracing::info!(path = %f.path, mode = format!("{mode:04o}"), uid, gid, "secret file placed");
        placed.push(PlacedFile {
            path: PathBuf::from(&f.path),
            mode,
            uid,
            gid,
            len: value.len(),
        });
    }
    Ok(placed)
}

/// Write a non-secret file the installer generates (configuration, inventory)
/// into the target the same careful way: path checked, parents made (0755 for
/// [`SHARED_DIRS`]), atomic, owned by root. Returns the path written.
pub fn write_target_file(root: &Path, path: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let rel = checked_relative(path)?;
    make_parents(root, &rel)?;
    let target = root.join(&rel);
    write_atomic(&target, data, mode, 0, 0)
        .with_context(|| format!("writing {}", target.display()))?;
    Ok(target)
}

/// `/a/b` -> `a/b`, refusing relative paths, `.`/`..` and empty names.
fn checked_relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() || path.ends_with('/') {
        bail!("secret file path {path:?} must be an absolute file path");
    }
    // `Path::components` drops interior `.`; look at the raw segments.
    if path.split('/').any(|s| s == "." || s == "..") {
        bail!("secret file path {path:?} must not contain . or .. components");
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => rel.push(n),
            _ => bail!("secret file path {path:?} must not contain . or .. components"),
        }
    }
    if rel.as_os_str().is_empty() {
        bail!("secret file path {path:?} names no file");
    }
    Ok(rel)
}

/// Create the missing directories between `root` and the file; refuse a
/// symlink on the way (it could lead out of the target).
fn make_parents(root: &Path, rel: &Path) -> Result<()> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut cur = root.to_path_buf();
    let mut in_target = PathBuf::from("/");
    let n = parent.components().count();
    for (i, c) in parent.components().enumerate() {
        cur.push(c);
        in_target.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!(
                    "{} is a symlink; refusing to write a secret through it",
                    cur.display()
                )
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory", cur.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let own_dir = i + 1 == n;
                let shared = SHARED_DIRS.iter().any(|d| Path::new(d) == in_target);
                let mode = if own_dir && !shared { 0o700 } else { 0o755 };
                std::fs::create_dir(&cur).with_context(|| format!("mkdir {}", cur.display()))?;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("chmod {mode:o} {}", cur.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", cur.display())),
        }
    }
    Ok(())
}

fn write_atomic(target: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    let dir = target.parent().context("no parent directory")?;
    let name = target
        .file_name()
        .context("no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.landfall-{}", std::process::id()));
    // A leftover from a crashed earlier run is ours to replace.
    let _ = std::fs::remove_file(&tmp);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        f.write_all(data).context("writing")?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid}"))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:04o}"))?;
        std::fs::rename(&tmp, target).context("renaming into place")?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The numeric id of `name` in a passwd/group file (third field), 0 when
/// the file or the name is missing. `root` is always 0.
fn lookup_id(file: &Path, name: &str) -> Result<u32> {
    if name == "root" {
        return Ok(0);
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %file.display(), name, "not in the target yet; using 0 (root)");
            return Ok(0);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() == Some(name) {
            let id = fields
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{}: bad line for {name:?}", file.display()))?;
            return Ok(id);
        }
    }
    tracing::info!(file = %file.display(), name, "name not in the target; using 0 (root)");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use landfall_proto::SecretFile;

    use super::super::SecretBytes;
    use super::*;

    fn file(path: &str, from: &str, mode: &str, owner: &str) -> SecretFile {
        SecretFile {
            path: path.into(),
            from: from.into(),
            mode: mode.into(),
            owner: owner.into(),
            group: owner.into(),
        }
    }

    #[test]
    fn luks_keys_are_not_placed_in_the_target() {
        let root = tempfile::tempdir().unwrap();
        let mut kv = BTreeMap::new();
        kv.insert("luks".to_owned(), SecretBytes::new(b"k3y".to_vec()));
        kv.insert("age".to_owned(), SecretBytes::new(b"AGE".to_vec()));
        let mut secrets = BTreeMap::new();
        secrets.insert("hosts/h".to_owned(), kv);
        let files = vec![
            file(
                "/run/landfall/secrets/luks.key",
                "kv:hosts/h#luks",
                "0400",
                "root",
            ),
            file(
                "/var/lib/sops-nix/key.txt",
                "kv:hosts/h#age",
                "0600",
                "root",
            ),
        ];
        let fetched = Fetched::new(secrets, &files).unwrap();
        let skip = ["/run/landfall/secrets/luks.key".to_owned()].into();
        let placed = place_except(root.path(), &fetched, &skip).unwrap();
        assert_eq!(placed.len(), 1);
        assert!(root.path().join("var/lib/sops-nix/key.txt").exists());
        assert!(
            !root.path().join("run").exists(),
            "the LUKS key reached the target"
        );
    }

    #[test]
    fn places_files_with_modes_dirs_and_owners() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nsmb:x:1234:100::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nsmb:x:4321:\n").unwrap();
        let mut kv = BTreeMap::new();
        kv.insert(
            "age_key".to_owned(),
            SecretBytes::new(b"AGE-SECRET-KEY-1".to_vec()),
        );
        kv.insert(
            "smb".to_owned(),
            SecretBytes::new(b"username=u\npassword=p\n".to_vec()),
        );
        let mut secrets = BTreeMap::new();
        secrets.insert("hosts/ws-01".to_owned(), kv);
        let files = vec![
            file(
                "/var/lib/sops-nix/key.txt",
                "kv:hosts/ws-01#age_key",
                "0600",
                "root",
            ),
            file("/etc/samba/creds", "kv:hosts/ws-01#smb", "0440", "smb"),
            file(
                "/etc/ssh/ssh_host_ed25519_key",
                "kv:hosts/ws-01#age_key",
                "0600",
                "nobody",
            ),
        ];
        let fetched = Fetched::new(secrets, &files).unwrap();
        let placed = place(r, &fetched).unwrap();
        assert_eq!(placed.len(), 3);
        let m = |p: &str| std::fs::metadata(r.join(p)).unwrap();
        assert_eq!(
            std::fs::read(r.join("var/lib/sops-nix/key.txt")).unwrap(),
            b"AGE-SECRET-KEY-1"
        );
        assert_eq!(m("var/lib/sops-nix/key.txt").mode() & 0o7777, 0o600);
        assert_eq!(m("var/lib/sops-nix").mode() & 0o7777, 0o700);
        assert_eq!(m("var/lib").mode() & 0o7777, 0o755);
        assert_eq!(m("etc/ssh").mode() & 0o7777, 0o755, "a shared system dir");
        assert_eq!(m("etc/samba").mode() & 0o7777, 0o700);
        let smb = m("etc/samba/creds");
        assert_eq!(
            (smb.mode() & 0o7777, smb.uid(), smb.gid()),
            (0o440, 1234, 4321)
        );
        assert_eq!(
            m("etc/ssh/ssh_host_ed25519_key").uid(),
            0,
            "unknown name -> root"
        );
        // Placing again replaces atomically and leaves no temporary file.
        place(r, &fetched).unwrap();
        let names: Vec<_> = std::fs::read_dir(r.join("etc/samba"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("creds")]);
        let dbg = format!("{fetched:?} {placed:?}");
        assert!(
            !dbg.contains("AGE-SECRET") && !dbg.contains("password"),
            "{dbg}"
        );
    }

    #[test]
    fn refuses_escapes_and_missing_keys() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut kv = BTreeMap::new();
        kv.insert("k".to_owned(), SecretBytes::new(b"v".to_vec()));
        let mut secrets = BTreeMap::new();
        secrets.insert("p".to_owned(), kv);
        let e = Fetched::new(BTreeMap::new(), &[file("/x", "kv:p#k", "0600", "root")]).unwrap_err();
        assert!(e.to_string().contains("was not read"), "{e}");
        for bad in ["/../etc/x", "relative", "/a/./b"] {
            let mut s = BTreeMap::new();
            let mut kv = BTreeMap::new();
            kv.insert("k".to_owned(), SecretBytes::new(b"v".to_vec()));
            s.insert("p".to_owned(), kv);
            let f = Fetched::new(s, &[file(bad, "kv:p#k", "0600", "root")]).unwrap();
            let e = format!("{:#}", place(r, &f).unwrap_err());
            assert!(e.contains(bad), "{e}");
        }
        std::os::unix::fs::symlink("/tmp", r.join("etc")).unwrap();
        let f = Fetched::new(secrets, &[file("/etc/x", "kv:p#k", "0600", "root")]).unwrap();
        let e = format!("{:#}", place(r, &f).unwrap_err());
        assert!(e.contains("symlink"), "{e}");
    }
}

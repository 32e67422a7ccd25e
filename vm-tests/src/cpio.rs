//! A writer for the "newc" cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! Each entry: a 110-byte ASCII header (`070701` + 13 fields of 8 hex digits), the name with its
//! NUL, padding to 4 bytes, the data, padding to 4 bytes. The archive ends with `TRAILER!!!`.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{bail, Context, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive; parent directories are added on demand (mode 0755), names are unique.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    names: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            names: BTreeSet::new(),
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer (flushed).
    pub fn finish(mut self) -> Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0)?;
        self.out.flush().context("flushing cpio archive")?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        let name = normalize(path)?;
        // mkdir -p for the parents.
        let mut parent = String::new();
        for comp in name.split('/').take(name.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            if !self.names.contains(&parent) {
                let p = parent.clone();
                self.entry(&p, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
        }
        if !self.names.insert(name.clone()) {
            bail!("cpio: duplicate entry {name}");
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let size =
            u32::try_from(data.len()).with_context(|| format!("cpio: {name} is over 4 GiB"))?;
        self.header(&name, ino, mode, nlink, rdev, size)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
    ) -> Result<()> {
        let namesize = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).context("writing cpio archive")?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }
}

/// `/a//b/` -> `a/b`; refuses empty names and `..`.
fn normalize(path: &str) -> Result<String> {
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || comps.contains(&"..") {
        bail!("cpio: bad entry name {path:?}");
    }
    Ok(comps.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("/tmp", 0o1777).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_layout_and_alignment() {
        let a = sample();
        assert_eq!(a.len() % 4, 0);
        // The first entry is the parent "bin", created on demand.
        assert_eq!(&a[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        assert_eq!(field(1), S_IFDIR | 0o755);
        assert_eq!(field(11), 4); // "bin\0"
        assert_eq!(&a[110..114], b"bin\0");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn refuses_duplicates_and_dotdot() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"x").unwrap();
        assert!(w.file("/a", 0o644, b"y").is_err());
        assert!(w.file("../etc/passwd", 0o644, b"y").is_err());
    }

    /// Cross-checks with GNU cpio (Debian package `cpio`, which ./x installs).
    #[test]
    fn gnu_cpio_reads_it() {
        let out = crate::cmd::Cmd::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(sample())
            .run_blocking()
            .expect("cpio (Debian package cpio; ./x installs it)");
        let listing = out.stdout;
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("-rwxr-xr-x")
                && lines[1].contains(" 18 ")
                && lines[1].ends_with(" bin/hello"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("bin/sh -> busybox"),
            "{listing}"
        );
        assert!(
            lines[4].starts_with("crw-------")
                && lines[4].contains("5,")
                && lines[4].ends_with(" dev/console"),
            "{listing}"
        );
        assert!(
            lines[5].starts_with("drwxrwxrwt") && lines[5].ends_with(" tmp"),
            "{listing}"
        );
    }
}

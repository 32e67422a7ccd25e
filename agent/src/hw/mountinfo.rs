//! `/proc/self/mountinfo` (proc(5)), parsed in one place: the disk safety
//! check, the disk step's read-back and resume, and the first-boot SMB check
//! all read mounts through it.

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 3, `MAJOR:MINOR` of the mounted device.
    pub dev: String,
    /// Field 5, unescaped (`\040` is a space).
    pub mountpoint: String,
    /// The first field after the ` - ` separator.
    pub fstype: String,
    /// The second field after the separator, unescaped.
    pub source: String,
}

/// Parse mountinfo text; lines without the ` - ` separator are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut f = left.split(' ');
            let dev = f.nth(2)?.to_owned();
            let mountpoint = unescape(f.nth(1)?);
            let mut r = right.split(' ');
            Some(MountEntry {
                dev,
                mountpoint,
                fstype: r.next()?.to_owned(),
                source: unescape(r.next().unwrap_or("")),
            })
        })
        .collect()
}

/// This process's mounts; an unreadable file is an error naming it.
pub fn read() -> anyhow::Result<Vec<MountEntry>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// mountinfo escapes space, tab, newline and backslash as `\OOO` (octal).
/// An escape above `\377` is no byte (the kernel never writes one): kept as
/// it is written.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)))
        .then(|| {
            b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'))
        })
        .and_then(|v| u8::try_from(v).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `./x fuzz` found: `\540` overflowed a u8 (a panic in a debug
    /// build, a wrong byte in release).
    #[test]
    fn an_escape_above_377_is_kept_as_written() {
        let m = parse("36 35 98:0 / /mnt/my\\540dir rw - ext4 /dev/vda1 rw\n");
        assert_eq!(m[0].mountpoint, "/mnt/my\\540dir");
        assert_eq!(unescape("a\\377b\\040c"), "a\u{fffd}b c");
    }

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(
            "22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n\
             36 22 0:33 / /mnt/a\\040b rw - cifs //host/my\\040share rw\n\
             garbage line\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, "254:2");
        assert_eq!(m[0].mountpoint, "/");
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].source, "/dev/vda2");
        assert_eq!(m[1].mountpoint, "/mnt/a b");
        assert_eq!(m[1].source, "//host/my share");
    }

    #[test]
    fn optional_fields_do_not_shift_the_separator() {
        let m = parse("40 22 8:1 / /boot rw shared:5 master:2 - vfat /dev/sda1 rw\n");
        assert_eq!(m[0].mountpoint, "/boot");
        assert_eq!(m[0].fstype, "vfat");
    }
}

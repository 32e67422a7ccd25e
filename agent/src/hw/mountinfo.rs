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
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
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

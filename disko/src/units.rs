//! Sizes, sgdisk and parted positions, LVM sizes, partition type codes and
//! disko's naming helpers.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A partition size: bytes, or the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Bytes(u64),
    Rest,
}

/// sgdisk's start/end syntax: `0` (default), an absolute offset, `+size`
/// (relative to start) or `-size` (from the end of the usable area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Default,
    At(u64),
    Plus(u64),
    FromEnd(u64),
}

/// "512M", "1G", "100%", "4096" (bytes). K/M/G/T/P are binary, as sgdisk reads them.
pub fn parse_size(s: &str) -> Result<Size, String> {
    if s == "100%" {
        return Ok(Size::Rest);
    }
    if s.ends_with('%') {
        return Err(format!(
            "{s:?}: only \"100%\" (the rest of the disk) is supported as a percentage, as in disko"
        ));
    }
    parse_bytes(s).map(Size::Bytes)
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size; use e.g. \"512M\", \"20G\" or \"100%\"");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        "P" | "PiB" => 50,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

pub(crate) fn parse_bound(s: &str, is_end: bool) -> Result<Bound, String> {
    let what = if is_end { "end" } else { "start" };
    let bad =
        |m: String| format!("{s:?} is not a valid {what}: {m} (e.g. \"1M\", \"+512M\", \"-1G\")");
    if s == "0" {
        return Ok(if is_end {
            Bound::FromEnd(0)
        } else {
            Bound::Default
        });
    }
    if let Some(r) = s.strip_prefix('+') {
        return parse_bytes(r).map(Bound::Plus).map_err(bad);
    }
    if let Some(r) = s.strip_prefix('-') {
        return parse_bytes(r).map(Bound::FromEnd).map_err(bad);
    }
    parse_bytes(s).map(Bound::At).map_err(bad)
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Rest => f.write_str("100%"),
            Size::Bytes(b) => f.write_str(&human(*b)),
        }
    }
}

/// Bytes as the largest exact binary unit ("512M"), else MiB with a decimal.
pub fn human(b: u64) -> String {
    for (shift, u) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{u}", b >> shift);
        }
    }
    if b >= 1 << 20 {
        return format!("{:.1}M", b as f64 / (1u64 << 20) as f64);
    }
    format!("{b}B")
}

/// A position in parted's syntax, as disko's legacy `table` passes
/// `start`/`end` to `parted mkpart`: a number with a unit, or a percentage;
/// negative counts from the end of the disk. Units as parted reads them
/// (`parse_unit_suffix`): `s` sectors, `B` bytes, `k`/`M`/`G`/`T` decimal
/// (1000-based: "1M" is 1,000,000 bytes), `KiB`/`MiB`/`GiB`/`TiB` binary,
/// `%` of the disk. A bare number is MB (parted's default unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartedPos {
    /// As written, e.g. "1MiB", "100%", "-1G".
    pub text: String,
    pub negative: bool,
    /// The number as a decimal fraction: `num / 10^scale`.
    pub num: u64,
    pub scale: u32,
    pub unit: PartedUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartedUnit {
    Sector,
    Byte,
    /// 1000^n bytes.
    Decimal(u32),
    /// 1024^n bytes.
    Binary(u32),
    Percent,
}

impl PartedUnit {
    /// Bytes per unit (percent: per 1% of `dev_bytes`, integer-divided as parted does).
    pub fn size(self, sector: u64, dev_bytes: u64) -> u64 {
        match self {
            PartedUnit::Sector => sector,
            PartedUnit::Byte => 1,
            PartedUnit::Decimal(n) => 1000u64.pow(n),
            PartedUnit::Binary(n) => 1024u64.pow(n),
            PartedUnit::Percent => dev_bytes / 100,
        }
    }
}

pub fn parse_parted_pos(s: &str) -> Result<PartedPos, String> {
    let bad = || {
        format!(
            "{s:?} is not a parted position; use e.g. \"1MiB\", \"512MiB\", \"100%\" or \"-1GiB\""
        )
    };
    let t = s.trim();
    let (negative, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, unit) = rest.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 6 {
        return Err(bad());
    }
    let digits = format!("{int}{frac}");
    let num: u64 = digits.parse().map_err(|_| bad())?;
    let lower = unit.to_ascii_lowercase();
    let unit = match lower.as_str() {
        "" => PartedUnit::Decimal(2),
        "s" => PartedUnit::Sector,
        "b" => PartedUnit::Byte,
        "%" => PartedUnit::Percent,
        _ => {
            let b = lower.as_bytes();
            let power = match b[0] {
                b'k' => 1,
                b'm' => 2,
                b'g' => 3,
                b't' => 4,
                _ => return Err(bad()),
            };
            match &lower[1..] {
                "" | "b" => PartedUnit::Decimal(power),
                "ib" => PartedUnit::Binary(power),
                _ => return Err(bad()),
            }
        }
    };
    Ok(PartedPos {
        text: t.to_owned(),
        negative,
        num,
        scale: frac.len() as u32,
        unit,
    })
}

/// An LVM logical volume size as disko hands it to `lvcreate`: `-L SIZE`
/// (with LVM's units), or `-l N%...` for a percentage (`"100%"` becomes
/// `"100%FREE"`, as disko does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum LvSize {
    /// `-L` (or `-V` for a thin volume): "10M", "1G", "512m".
    Fixed(String),
    /// `-l`: "100%FREE", "50%VG".
    Extents(String),
}

impl LvSize {
    pub fn parse(s: &str) -> Result<LvSize, String> {
        let bad = || {
            format!(
                "{s:?} is not an LVM size; use e.g. \"10M\", \"20G\", \"100%\", \"100%FREE\" or \"50%VG\""
            )
        };
        if let Some((n, what)) = s.split_once('%') {
            let n: u32 = n.parse().map_err(|_| bad())?;
            if n == 0 || n > 100 {
                return Err(bad());
            }
            let what = match what {
                "" => "FREE",
                "FREE" | "VG" | "PVS" | "ORIGIN" => what,
                _ => return Err(bad()),
            };
            return Ok(LvSize::Extents(format!("{n}%{what}")));
        }
        let end = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(end);
        if num.is_empty() || num.parse::<f64>().is_err() {
            return Err(bad());
        }
        if !matches!(
            unit,
            "" | "b" | "B" | "s" | "S" | "k" | "K" | "m" | "M" | "g" | "G" | "t" | "T" | "p" | "P"
        ) {
            return Err(bad());
        }
        Ok(LvSize::Fixed(s.to_owned()))
    }

    /// Bytes of a fixed size (LVM reads `-L` units as binary), for checks.
    pub fn bytes(&self) -> Option<u64> {
        let LvSize::Fixed(s) = self else { return None };
        let end = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(end);
        let n: f64 = num.parse().ok()?;
        let mult = match unit.to_ascii_lowercase().as_str() {
            "b" => 1.0,
            "s" => 512.0,
            "k" => 1024.0,
            "" | "m" => 1048576.0,
            "g" => 1073741824.0,
            "t" => 1099511627776.0,
            "p" => 1125899906842624.0,
            _ => return None,
        };
        Some((n * mult) as u64)
    }

    /// The text given to lvcreate.
    pub fn arg(&self) -> &str {
        match self {
            LvSize::Fixed(s) | LvSize::Extents(s) => s,
        }
    }
}

/// disko's default partition label (lib/types/gpt.nix): `${parent.type}-${parent.name}-${name}`,
/// the first 36 hex digits of its SHA-256 when longer than 36 characters.
pub fn default_label_of(parent_type: &str, parent: &str, part: &str) -> String {
    let label = format!("{parent_type}-{parent}-{part}");
    if label.chars().count() > 36 {
        sha256_hex(&label)[..36].to_owned()
    } else {
        label
    }
}

/// [`default_label_of`] for a partition of a disk.
pub fn default_label(disk: &str, part: &str) -> String {
    default_label_of("disk", disk, part)
}

pub(crate) fn sha256_hex(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// disko's `hexEscapeUdevSymlink` (lib/default.nix): every byte outside
/// its allowed set `[0-9A-Za-z#+-.:=@_/]` (a regex class, so `+-.` is the
/// range `+ , - .`) becomes `\xHH` (upper-case hex, no zero padding, as
/// `lib.toHexString`).
pub fn hex_escape_udev_symlink(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"#+,-.:=@_/".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:X}"));
        }
    }
    out
}

pub const EF00: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const EF02: &str = "21686148-6449-6E6F-744E-656564454649";

/// sgdisk's type codes (gdisk `parttypes.cc`) the agent knows, and GUIDs.
const CODES: &[(&str, &str)] = &[
    ("EF00", EF00),
    ("EF01", "024DEE41-33E7-11D3-9D69-0008C781F39F"),
    ("EF02", EF02),
    ("EA00", "BC13C2FF-59E6-4262-A352-B275FD6F7172"),
    ("8300", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("8200", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ("8301", "8DA63339-0007-60C0-C436-083AC8230908"),
    ("8302", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"),
    ("8303", "44479540-F297-41B2-9AF7-D131D5F0458A"),
    ("8304", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ("8305", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
    ("8306", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8"),
    ("8307", "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3"),
    ("8308", "7FFEC5C9-2D00-49B7-8941-3EA10A5586B7"),
    ("8309", "CA7D7CCB-63ED-4C53-861C-1742536059CC"),
    ("830A", "B0E01050-EE5F-4390-949A-9101B17104E9"),
    ("8310", "4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
    ("8311", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1"),
    ("8312", "773F91EF-66D4-49B5-BD83-D683BF40AD16"),
    ("8313", "8484680C-9521-48C6-9C11-B0720656F69E"),
    ("8314", "9F7E8F2B-5D0F-4DE6-9EB6-5F24C8A46B9A"),
    ("8E00", "E6D6D379-F507-44C2-A23C-238F2A3DF928"),
    ("FD00", "A19D880F-05FC-4D3B-A006-743F0F84911E"),
    ("0700", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
    ("0C01", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"),
    ("2700", "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"),
    ("BF00", "6A898CC3-1DD2-11B2-99A6-080020736631"),
    ("BF01", "6A898CC3-1DD2-11B2-99A6-080020736631"),
    ("A504", "516E7CB6-6ECF-11D6-8FF8-00022D09712B"),
];

/// The GUID of an sgdisk type code ("ef00" too) or of a GUID string.
pub fn type_guid(code: &str) -> Option<&'static str> {
    let up = code.to_ascii_uppercase();
    if let Some((_, g)) = CODES.iter().find(|(c, _)| *c == up) {
        return Some(g);
    }
    if is_guid(&up) {
        // Leak-free: return the canonical form from the table when it is known.
        if let Some((_, g)) = CODES.iter().find(|(_, g)| *g == up) {
            return Some(g);
        }
        return Some(Box::leak(up.into_boxed_str()));
    }
    None
}

/// The sgdisk code of a known GUID ("8300"), else the GUID.
pub fn type_code_of(guid: &str) -> String {
    CODES
        .iter()
        .find(|(_, g)| g.eq_ignore_ascii_case(guid))
        .map(|(c, _)| (*c).to_owned())
        .unwrap_or_else(|| guid.to_owned())
}

pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(parse_size("1G"), Ok(Size::Bytes(1 << 30)));
        assert_eq!(parse_size("100%"), Ok(Size::Rest));
        assert!(parse_size("12X").unwrap_err().contains("is not a size"));
        assert!(parse_size("50%").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(parse_bound("-1G", true), Ok(Bound::FromEnd(1 << 30)));
    }

    #[test]
    fn parted_positions_read_units_as_parted() {
        let p = parse_parted_pos("1M").unwrap();
        assert_eq!((p.num, p.scale, p.unit), (1, 0, PartedUnit::Decimal(2)));
        let p = parse_parted_pos("100MiB").unwrap();
        assert_eq!((p.num, p.unit), (100, PartedUnit::Binary(2)));
        let p = parse_parted_pos("-1.5GB").unwrap();
        assert!(p.negative);
        assert_eq!((p.num, p.scale, p.unit), (15, 1, PartedUnit::Decimal(3)));
        assert_eq!(parse_parted_pos("100%").unwrap().unit, PartedUnit::Percent);
        assert_eq!(parse_parted_pos("2048s").unwrap().unit, PartedUnit::Sector);
        for bad in ["", "M", "1X", "1.2.3M", "1MiBx"] {
            assert!(parse_parted_pos(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lvm_sizes_follow_disko() {
        assert_eq!(
            LvSize::parse("100%"),
            Ok(LvSize::Extents("100%FREE".into()))
        );
        assert_eq!(
            LvSize::parse("100%FREE"),
            Ok(LvSize::Extents("100%FREE".into()))
        );
        assert_eq!(LvSize::parse("50%VG"), Ok(LvSize::Extents("50%VG".into())));
        assert_eq!(LvSize::parse("10M"), Ok(LvSize::Fixed("10M".into())));
        assert_eq!(LvSize::parse("10M").unwrap().bytes(), Some(10 << 20));
        for bad in ["", "10X", "0%", "150%", "50%DISK", "M"] {
            assert!(LvSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn udev_escape_matches_diskos_examples() {
        // lib/default.nix's own examples.
        assert_eq!(
            hex_escape_udev_symlink("Boot data partition"),
            "Boot\\x20data\\x20partition"
        );
        assert_eq!(
            hex_escape_udev_symlink("Even(crazier)par&titi^onName"),
            "Even\\x28crazier\\x29par\\x26titi\\x5EonName"
        );
        assert_eq!(
            hex_escape_udev_symlink("all0these@char#acters+_are-allow.ed"),
            "all0these@char#acters+_are-allow.ed"
        );
    }

    #[test]
    fn type_codes() {
        assert_eq!(type_guid("ef00"), Some(EF00));
        assert_eq!(
            type_guid("8309"),
            Some("CA7D7CCB-63ED-4C53-861C-1742536059CC")
        );
        assert_eq!(
            type_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            Some(EF00)
        );
        assert_eq!(type_guid("ZZZZ"), None);
        assert_eq!(type_code_of(EF02), "EF02");
    }
}

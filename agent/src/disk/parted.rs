//! Where `parted -s DEV -- mkpart ... START END` puts a partition: disko's
//! legacy `table` (lib/types/table.nix) makes its partitions with parted,
//! and the plan computes the same sectors (pure) so the table can be written
//! in-process and checked. Modelled on parted 3.5 (`parted/parted.c`
//! `do_mkpart`, `libparted/unit.c` `ped_unit_parse_custom`):
//!
//! - a position is a number and a unit; the sector is `num * unit / sector
//!   size` (negative: counted from the end of the disk), with a range of
//!   half a unit around it (`radius`), none for s, B and the binary units
//!   (KiB, MiB, ...); "1M" is 1,000,000 bytes ±500 kB, "1MiB" exactly 2048
//!   sectors;
//! - an end in IEC units (`kiB`/`MiB`/`GiB`/`TiB`) is moved back one sector
//!   (the end is inclusive);
//! - start and end snap to the boundary of the partition or free space
//!   they fall in when that boundary is in range (`snap_to_boundaries`);
//! - then the nearest positions with optimal alignment (start on a 1 MiB
//!   boundary, end just before one) within the ranges and the table's
//!   usable area; none: refused (parted would only warn).
//!
//! A test writes every legacy fixture with parted into an image file and
//! compares (agent/tests/disk_plan.rs).

use landfall_disko::{PartedPos, PartedUnit};

/// A position as parted reads it: the sector and the range it may move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub sector: i64,
    pub lo: i64,
    pub hi: i64,
}

/// `ped_unit_parse_custom`: sector and range of `p` on a device of `len` sectors.
pub fn parse(p: &PartedPos, len: u64, ss: u64) -> Pos {
    let unit = p.unit.size(ss, len * ss) as i128;
    let ss_i = ss as i128;
    let pow10 = 10i128.pow(p.scale);
    // radius = (ceil(unit / ss) / 2) - 1; none for sectors, bytes and the
    // binary units (parted takes "4MiB" as exact). A percentage keeps its
    // radius even when 1% happens to be a power of two (seen with parted 3.5:
    // "99%" of a 100 MiB disk ends on the 1 MiB boundary before it).
    let mut radius = ((unit + ss_i - 1) / ss_i) / 2 - 1;
    if radius < 0
        || matches!(
            p.unit,
            PartedUnit::Sector | PartedUnit::Byte | PartedUnit::Binary(_)
        )
    {
        radius = 0;
    }
    // (double) num * unit_size / sector_size, truncated towards zero.
    let mut sector = (p.num as i128 * unit / (pow10 * ss_i)) as i64;
    let len = len as i64;
    if p.negative {
        sector = len - sector;
    }
    let radius = radius as i64;
    let lo = (sector - radius).max(0);
    let hi = (sector + radius).min(len - 1);
    Pos {
        sector: sector.clamp(0, len - 1),
        lo,
        hi,
    }
}

/// `_string_ends_with_iec_unit`: "kiB", "MiB", "GiB", "TiB" (the first letter as parted spells it).
fn ends_with_iec(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4
        && b"kMGTPEZY".contains(&b[b.len() - 3])
        && s[s.len() - 2..].eq_ignore_ascii_case("iB")
}

/// A region parted sees on the disk: metadata, free space or a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    start: i64,
    end: i64,
}

/// The regions covering the whole device: metadata before `first`, after
/// `last`, the partitions made so far and the free space between.
fn regions(len: i64, first: i64, last: i64, used: &[(i64, i64)]) -> Vec<Region> {
    let mut u = used.to_vec();
    u.sort();
    let mut out = vec![Region {
        start: 0,
        end: first - 1,
    }];
    let mut at = first;
    for (s, e) in u {
        if s > at {
            out.push(Region {
                start: at,
                end: s - 1,
            });
        }
        out.push(Region { start: s, end: e });
        at = e + 1;
    }
    if at <= last {
        out.push(Region {
            start: at,
            end: last,
        });
    }
    if last < len - 1 {
        out.push(Region {
            start: last + 1,
            end: len - 1,
        });
    }
    out
}

/// The table's usable area and alignment.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Device length in sectors.
    pub len: u64,
    pub sector_size: u64,
    /// First and last sector a partition may use (gpt: 34 and len - 34; msdos: 1 and len - 1).
    pub first: u64,
    pub last: u64,
    /// Optimal alignment in sectors (1 MiB).
    pub grain: u64,
}

/// Where parted puts `mkpart START END` with the partitions `used` already
/// made (inclusive sector ranges). `Err` says why it does not fit.
pub fn place(
    g: &Geometry,
    start: &PartedPos,
    end: &PartedPos,
    used: &[(u64, u64)],
) -> Result<(u64, u64), String> {
    let len = g.len as i64;
    let mut s = parse(start, g.len, g.sector_size);
    let mut e = parse(end, g.len, g.sector_size);
    if s.sector != e.sector && ends_with_iec(&end.text) {
        e.sector -= 1;
        e.lo -= 1;
        e.hi -= 1;
    }
    let used_i: Vec<(i64, i64)> = used.iter().map(|&(a, b)| (a as i64, b as i64)).collect();
    let rs = regions(len, g.first as i64, g.last as i64, &used_i);
    let find = |x: i64| {
        rs.iter()
            .position(|r| r.start <= x && x <= r.end)
            .unwrap_or(0)
    };
    // snap_to_boundaries: each end moves to the boundary of its region
    // (start: the region's start, or the next region's; end: the region's
    // end, or the previous region's) when that is within its range.
    let (si, ei) = (find(s.sector), find(e.sector));
    let (sr, er) = (rs[si], rs[ei]);
    let same = si == ei;
    let adjacent = sr.end + 1 == er.start;
    let inside = |p: &Pos, x: i64| p.lo <= x && x <= p.hi;
    // prefer_snap for the start (what = 0) and the end (what = -1).
    let prefer = |x: i64, r: Region, p: &Pos, what: i64, allow_up: bool, allow_down: bool| {
        let up = (allow_up && inside(p, r.end + 1 + what)).then(|| r.end + 1 + what - x);
        let down = (allow_down && inside(p, r.start + what)).then(|| x - (r.start + what));
        match (up, down) {
            (Some(u), Some(d)) => {
                if d < u || (d == u && what == 0) {
                    (-1, d)
                } else {
                    (1, u)
                }
            }
            (Some(u), None) => (1, u),
            (None, Some(d)) => (-1, d),
            (None, None) => (0, 0),
        }
    };
    let (mut s_up, s_down) = (!same, true);
    let (e_up, mut e_down) = (true, !same);
    let (mut sw, sd) = prefer(s.sector, sr, &s, 0, s_up, s_down);
    let (mut ew, ed) = prefer(e.sector, er, &e, -1, e_up, e_down);
    if adjacent && sw == 1 && ew == -1 {
        if ed < sd {
            s_up = false;
            sw = prefer(s.sector, sr, &s, 0, s_up, s_down).0;
        } else {
            e_down = false;
            ew = prefer(e.sector, er, &e, -1, e_up, e_down).0;
        }
    }
    s.sector = match sw {
        -1 => sr.start,
        1 => sr.end + 1,
        _ => s.sector,
    };
    e.sector = match ew {
        -1 => er.start - 1,
        1 => er.end,
        _ => e.sector,
    };
    // The partition stays in the free space its start is in (parted's
    // overlap constraint) and in the table's usable area.
    if let Some((x, y)) = used_i
        .iter()
        .find(|(x, y)| *x <= s.sector && s.sector <= *y)
    {
        return Err(format!(
            "{} starts inside the partition at sectors {x}..{y}",
            start.text
        ));
    }
    let gap_lo = used_i
        .iter()
        .filter(|(_, y)| *y < s.sector)
        .map(|(_, y)| y + 1)
        .max()
        .unwrap_or(0)
        .max(g.first as i64);
    let gap_hi = used_i
        .iter()
        .filter(|(x, _)| *x > s.sector)
        .map(|(x, _)| x - 1)
        .min()
        .unwrap_or(len - 1)
        .min(g.last as i64);
    // First the optimal alignment within the ranges (start on a grain
    // boundary, end just before one); failing that, any sector nearest to
    // the request, which must then still be in the ranges.
    let grain = g.grain as i64;
    let nearest = |x: i64, lo: i64, hi: i64, offset: i64| -> Option<i64> {
        if lo > hi {
            return None;
        }
        // The aligned sectors around x (brought into the range), nearest first.
        let c = x.clamp(lo, hi);
        let down = c - (c - offset).rem_euclid(grain);
        let up = if down == c { c } else { down + grain };
        [down, up]
            .into_iter()
            .filter(|s| lo <= *s && *s <= hi)
            .min_by_key(|s| (s - x).abs())
    };
    let aligned = nearest(s.sector, s.lo.max(gap_lo), s.hi.min(gap_hi), 0).and_then(|a| {
        nearest(
            e.sector,
            e.lo.max(gap_lo).max(a),
            e.hi.min(gap_hi),
            grain - 1,
        )
        .map(|b| (a, b))
    });
    let (a, b) = match aligned {
        Some(ab) => ab,
        None => {
            let a = s.sector.clamp(gap_lo, gap_hi);
            let b = e.sector.clamp(gap_lo, gap_hi);
            if !(s.lo <= a && a <= s.hi && e.lo <= b && b <= e.hi) || b < a {
                return Err(format!(
                    "{} .. {} does not fit where parted would put it (sectors {a}..{b}; \
                     the free space is {gap_lo}..{gap_hi})",
                    start.text, end.text
                ));
            }
            (a, b)
        }
    };
    Ok((a as u64, b as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_disko::parse_parted_pos;

    fn gpt(len: u64) -> Geometry {
        Geometry {
            len,
            sector_size: 512,
            first: 34,
            last: len - 34,
            grain: 2048,
        }
    }

    fn at(g: &Geometry, s: &str, e: &str, used: &[(u64, u64)]) -> (u64, u64) {
        place(
            g,
            &parse_parted_pos(s).unwrap(),
            &parse_parted_pos(e).unwrap(),
            used,
        )
        .unwrap()
    }

    #[test]
    fn decimal_and_binary_units_land_where_parted_puts_them() {
        let g = gpt(204800);
        // Seen with parted 3.5 on a 100 MiB image: 1MiB..10MiB is 2048..20479.
        assert_eq!(at(&g, "1MiB", "10MiB", &[]), (2048, 20479));
        // "1M" is 1e6 bytes ± 0.5e6: the nearest 1 MiB boundary; "2.9MiB" is exact.
        assert_eq!(at(&g, "2.9MiB", "50MiB", &[]), (5939, 102399));
        assert_eq!(at(&g, "3MB", "50MiB", &[]), (6144, 102399));
        assert_eq!(at(&g, "1MiB", "99%", &[]), (2048, 202751));
        // And "50M" .. "100%" after it: the end is the last usable sector
        // (no 1 MiB boundary in range), as parted 3.5 writes it.
        let p1 = at(&g, "1M", "50M", &[]);
        assert_eq!(p1, (2048, 98303));
        assert_eq!(at(&g, "50M", "100%", &[p1]), (98304, 204766));
    }
}

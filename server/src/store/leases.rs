//! DHCP leases of `[netboot] dhcp = "full"`: one address per MAC, kept
//! across restarts. An offered address is held briefly; an acknowledged
//! one for the lease time.

use std::net::Ipv4Addr;

use super::Tx;
use crate::params;
use anyhow::Result;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub expires_at: i64,
}

impl Tx<'_> {
    /// The address for `mac`: its own lease (even expired, while nobody took
    /// it), else the first pool address no live lease holds. Held for `mac`
    /// until `hold_until`, or longer if its lease already runs longer.
    /// `None` when the pool is exhausted.
    pub fn lease_offer(
        &mut self,
        mac: &str,
        pool: (Ipv4Addr, Ipv4Addr),
        now: i64,
        hold_until: i64,
    ) -> Result<Option<Ipv4Addr>> {
        let own = self.query_opt(
            "SELECT ip, expires_at FROM dhcp_leases WHERE mac = ?1",
            params![mac],
        )?;
        let (lo, hi) = (u32::from(pool.0), u32::from(pool.1));
        let in_pool = |ip: &Ipv4Addr| (lo..=hi).contains(&u32::from(*ip));
        if let Some(own) = own {
            let (ip, exp): (String, i64) = (own.get(0)?, own.get(1)?);
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                if in_pool(&ip) {
                    self.exec(
                        "UPDATE dhcp_leases SET expires_at = ?2 WHERE mac = ?1",
                        params![mac, exp.max(hold_until)],
                    )?;
                    return Ok(Some(ip));
                }
            }
            self.exec("DELETE FROM dhcp_leases WHERE mac = ?1", params![mac])?;
        }
        let mut taken = std::collections::HashSet::new();
        for r in self.query(
            "SELECT ip FROM dhcp_leases WHERE expires_at > ?1",
            params![now],
        )? {
            if let Ok(ip) = r.get::<String>(0)?.parse::<Ipv4Addr>() {
                taken.insert(u32::from(ip));
            }
        }
        let Some(free) = (lo..=hi).find(|ip| !taken.contains(ip)).map(Ipv4Addr::from) else {
            self.roll_back();
            return Ok(None);
        };
        // An expired lease of another MAC on this address gives way.
        self.exec(
            "DELETE FROM dhcp_leases WHERE ip = ?1",
            params![free.to_string()],
        )?;
        self.exec(
            "INSERT INTO dhcp_leases (mac, ip, expires_at) VALUES (?1, ?2, ?3)",
            params![mac, free.to_string(), hold_until],
        )?;
        Ok(Some(free))
    }

    /// Confirm `mac`'s request for `ip` until `expires_at`: true when `ip` is
    /// the address held for `mac`.
    pub fn lease_ack(&mut self, mac: &str, ip: Ipv4Addr, expires_at: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE dhcp_leases SET expires_at = ?3 WHERE mac = ?1 AND ip = ?2",
            params![mac, ip.to_string(), expires_at],
        )?;
        Ok(n == 1)
    }

    /// Give `mac`'s address back (DHCPRELEASE, DHCPDECLINE).
    pub fn lease_release(&mut self, mac: &str) -> Result<()> {
        self.exec("DELETE FROM dhcp_leases WHERE mac = ?1", params![mac])?;
        Ok(())
    }

    /// Every lease, by address.
    pub fn leases(&mut self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for r in self.query("SELECT mac, ip, expires_at FROM dhcp_leases", params![])? {
            if let Ok(ip) = r.get::<String>(1)?.parse() {
                out.push(Lease {
                    mac: r.get(0)?,
                    ip,
                    expires_at: r.get(2)?,
                });
            }
        }
        out.sort_by_key(|l| u32::from(l.ip));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn leases_are_kept_per_mac_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let pool: (Ipv4Addr, Ipv4Addr) = (
            "10.77.0.100".parse().unwrap(),
            "10.77.0.101".parse().unwrap(),
        );
        let s = Store::open(&db).unwrap();
        let a = s
            .write_blocking(move |tx| tx.lease_offer("aa", pool, 0, 60))
            .unwrap()
            .unwrap();
        assert_eq!(a, pool.0);
        assert_eq!(
            s.write_blocking(move |tx| tx.lease_offer("aa", pool, 1, 61))
                .unwrap(),
            Some(a),
            "same MAC, same address"
        );
        let b = s
            .write_blocking(move |tx| tx.lease_offer("bb", pool, 1, 61))
            .unwrap()
            .unwrap();
        assert_eq!(b, pool.1);
        assert_eq!(
            s.write_blocking(move |tx| tx.lease_offer("cc", pool, 2, 62))
                .unwrap(),
            None,
            "pool exhausted"
        );
        assert!(s
            .write_blocking(move |tx| tx.lease_ack("aa", a, 3600))
            .unwrap());
        assert!(
            !s.write_blocking(move |tx| tx.lease_ack("aa", b, 3600))
                .unwrap(),
            "not its address"
        );
        drop(s);
        let s = Store::open(&db).unwrap();
        assert_eq!(
            s.read_blocking(|tx| tx.leases()).unwrap(),
            vec![
                Lease {
                    mac: "aa".into(),
                    ip: a,
                    expires_at: 3600
                },
                Lease {
                    mac: "bb".into(),
                    ip: b,
                    expires_at: 61
                },
            ]
        );
        // bb's offer expired: cc takes its address; aa's lease holds.
        assert_eq!(
            s.write_blocking(move |tx| tx.lease_offer("cc", pool, 100, 160))
                .unwrap(),
            Some(b)
        );
        s.write_blocking(move |tx| tx.lease_release("aa")).unwrap();
        assert_eq!(
            s.write_blocking(move |tx| tx.lease_offer("dd", pool, 100, 160))
                .unwrap(),
            Some(a)
        );
    }
}

//! Counts for `/metrics`, read at each scrape.

use anyhow::Result;
use landfall_proto::MachineState;

use super::Tx;

/// How many machines are in one state with one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCount {
    pub state: MachineState,
    /// `None`: machines without a role (discovered).
    pub role: Option<String>,
    pub count: u64,
}

impl Tx<'_> {
    /// The machines by state and role.
    pub fn machine_counts(&mut self) -> Result<Vec<MachineCount>> {
        self.query(
            "SELECT state, role, COUNT(*) FROM machines GROUP BY state, role ORDER BY state, role",
            crate::params![],
        )?
        .iter()
        .map(|r| {
            Ok(MachineCount {
                state: MachineState::parse(&r.get::<String>(0)?),
                role: r.get(1)?,
                count: r.get(2)?,
            })
        })
        .collect()
    }

    /// Which of `macs` the store knows.
    pub fn known_macs(&mut self, macs: &[String]) -> Result<std::collections::HashSet<String>> {
        let mut known = std::collections::HashSet::new();
        for mac in macs {
            if self
                .query_opt("SELECT 1 FROM machines WHERE mac = ?1", crate::params![mac])?
                .is_some()
            {
                known.insert(mac.clone());
            }
        }
        Ok(known)
    }
}

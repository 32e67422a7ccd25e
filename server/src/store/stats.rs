//! Counts for `/metrics`, read at each scrape.

use anyhow::Result;
use landfall_proto::MachineState;

use super::Store;

/// How many machines are in one state with one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCount {
    pub state: MachineState,
    /// `None`: machines without a role (discovered).
    pub role: Option<String>,
    pub count: u64,
}

impl Store {
    /// The machines by state and role.
    pub fn machine_counts(&self) -> Result<Vec<MachineCount>> {
        let conn = self.lock();
        let mut q = conn.prepare(
            "SELECT state, role, COUNT(*) FROM machines GROUP BY state, role ORDER BY state, role",
        )?;
        let rows = q.query_map([], |r| {
            Ok(MachineCount {
                state: MachineState::parse(&r.get::<_, String>(0)?),
                role: r.get(1)?,
                count: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Store {
    /// Which of `macs` the store knows (one lock, one prepared lookup each).
    pub fn known_macs<'a>(
        &self,
        macs: impl IntoIterator<Item = &'a str>,
    ) -> Result<std::collections::HashSet<&'a str>> {
        let conn = self.lock();
        let mut q = conn.prepare_cached("SELECT 1 FROM machines WHERE mac = ?1")?;
        let mut known = std::collections::HashSet::new();
        for mac in macs {
            if q.exists([mac])? {
                known.insert(mac);
            }
        }
        Ok(known)
    }
}

//! Store latency for `/metrics`: every store call goes through
//! [`Store::lock`](super::Store), whose guard observes, when it is dropped,
//! how long the call waited for the connection and used it.

use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;

/// The connection, held for one store call and timed.
pub(super) struct Timed<'a> {
    pub(super) conn: MutexGuard<'a, Connection>,
    pub(super) since: Instant,
    pub(super) latency: Option<&'a Histogram>,
}

impl Deref for Timed<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Timed<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.latency {
            h.observe(self.since.elapsed().as_secs_f64());
        }
    }
}

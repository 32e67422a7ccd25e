//! The one retry helper lives in the shared runner crate
//! ([`landfall_cmd::retry`]); `crate::retry` keeps its paths.

pub use landfall_cmd::retry::*;

//! THE command runner lives in the workspace crate `landfall-cmd` (shared
//! with the server, xtask and vm-tests); `crate::cmd` keeps its paths.

pub use landfall_cmd::*;

//! The workspace's one command runner (`landfall-cmd`): the command line,
//! shell-quoted, and stderr's tail in errors; blocking runs and `spawn` here.

pub use landfall_cmd::*;

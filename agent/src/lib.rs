//! landfall-agent: the in-image installer.
//!
//! `main.rs` parses arguments, calls into this library for each subcommand
//! and prints the result (text, or JSON with `--json`) and the error chain;
//! the work lives here so it can be tested. The install order is decided in
//! one place: [`pipeline`].

pub mod cmd;
pub mod cmdline;
pub mod disk;
pub mod failure;
pub mod hw;
pub mod install;
pub mod options;
pub mod pipeline;
pub mod report;
pub mod retry;
pub mod secrets;
pub mod steps;
pub mod timing;

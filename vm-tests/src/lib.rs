//! QEMU + real iPXE harness for landfall's VM tests.
//!
//! Two pieces, used by the end-to-end VM test:
//! - [`image::Image`] builds a tiny netboot image (the host's kernel + a busybox initrd written
//!   here in Rust) that brings up the network and runs the agent like the real image's service;
//! - [`qemu::Vm`] boots a QEMU machine (SeaBIOS or OVMF) through the iPXE ROM of its NIC
//!   against an HTTP bootfile URL, captures the serial console, and never outlives its owner.
//!
//! [`testsrv::TestServer`] is a tiny static HTTP server that records requests, for tests that
//! do not need the real landfall server.

pub mod cmd;
pub mod cpio;
pub mod image;
pub mod qemu;
pub mod testsrv;

pub use image::{Image, ImageSpec};
pub use qemu::{Accel, DiskSpec, Firmware, Vm, VmSpec};
pub use testsrv::TestServer;

//! QEMU + real iPXE harness for landfall's VM tests.
//!
//! Two pieces, used by the end-to-end VM test:
//! - [`image::Image`] builds a tiny netboot image (the host's kernel + a busybox initrd written
//!   here in Rust) that brings up the network and runs the agent like the real image's service;
//! - [`qemu::Vm`] boots a QEMU machine (SeaBIOS or OVMF) through the iPXE ROM of its NIC
//!   against an HTTP bootfile URL, captures the serial console, and never outlives its owner.
//!
//! [`script::run`] boots the image with a shell script in place of the agent's service and
//! the given disks (the agent's CLI and raw tools side by side: storage safety, benchmarks).
//!
//! [`tpm::Swtpm`] gives a VM a software TPM 2.0 whose state outlives one boot.
//!
//! [`testsrv::TestServer`] is a tiny static HTTP server that records requests, for tests that
//! do not need the real landfall server.
//!
//! Not real, and named so: [`doubles`] holds the `nixos-install` TEST DOUBLE the image can
//! carry ([`ImageSpec::with_nixos_install_double`]); [`image::FIRSTBOOT_PARAM`] turns the image
//! into the FIRST-BOOT STAND-IN of an installed machine (booted with [`KernelBoot`]), because
//! no NixOS closure can be built on the test machine (docs/testing.md).
//!
//! Host requirements (Debian 12, as root: /boot/vmlinuz-* is 0600): qemu-system-x86,
//! ipxe-qemu, ovmf (UEFI only), linux-image-amd64, busybox-static, kmod (modprobe); xz-utils or
//! zstd only if the kernel's modules are compressed; util-linux (setpriv) is essential anyway.
//! `cpio` is optional (a unit test cross-checks the archive with it). No `qemu-img`: new disks
//! are sparse raw files.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use landfall_vm_tests::{image, DiskSpec, Firmware, Image, ImageSpec, Vm, VmSpec};
//!
//! // Serve out_dir as the artifacts directory; the boot script must say
//! // `kernel .../vmlinuz initrd=initrd console=ttyS0 ...` (see image::CONSOLE_ARGS).
//! let image = Image::build(ImageSpec::new("target/release/landfall-agent", "/tmp/artifacts"))?;
//! let mut spec = VmSpec::new(Firmware::Uefi, "52:54:00:12:34:56",
//!                            "http://10.0.2.2:8080/boot.ipxe", "/tmp/vm1");
//! spec.disks.push(DiskSpec { path: "/tmp/vm1/disk0.raw".into(), serial: "DISK0".into(),
//!                            size_bytes: 8 << 30 });
//! let mut vm = Vm::start(spec)?;
//! vm.wait_for_serial(image::NETWORK_UP, Duration::from_secs(300))?;
//! let status = vm.wait_exit(Duration::from_secs(1800))?; // the guest powered off
//! # let _ = (image, status); Ok(()) }
//! ```

pub mod agent;
pub mod cmd;
pub mod cpio;
pub mod doubles;
pub mod image;
pub mod qemu;
pub mod script;
pub mod testsrv;
pub mod tpm;

pub use image::{Image, ImageSpec};
pub use qemu::{Accel, DiskSpec, Firmware, KernelBoot, Tap, Vm, VmSpec};
pub use testsrv::TestServer;
pub use tpm::Swtpm;

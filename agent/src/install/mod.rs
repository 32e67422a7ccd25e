//! Turning a partitioned, mounted /mnt into an installed NixOS: the generated
//! configuration ([`hwconfig`]), and (next) `nixos-install` and first-boot verify.

pub mod configure;
pub mod hwconfig;
pub mod nixos_install;
pub mod nixstr;
pub mod verify;

# landfall-agent, static (musl): the installer runs it from any initrd or ISO, and
# `./x test` builds the same program with glibc `+crt-static` (vm-tests/src/agent.rs).
#
# Follows the nixpkgs Rust manual (doc/languages-frameworks/rust.section.md):
# `rustPlatform.buildRustPackage` with `cargoLock.lockFile`, and
# `rustPlatform.bindgenHook` for crates that run bindgen (blkid-sys). `pkgsStatic`
# gives a musl toolchain whose C libraries are static archives, so blkid-sys'
# `cargo:rustc-link-lib=blkid` finds util-linux's libblkid.a and nothing else.
{ lib, pkgsStatic }:
let
  workspace = (lib.importTOML ../../Cargo.toml).workspace.package;
in
pkgsStatic.rustPlatform.buildRustPackage {
  pname = "landfall-agent";
  inherit (workspace) version;

  src = import ./source.nix { inherit lib; };
  cargoLock.lockFile = ../../Cargo.lock;

  cargoBuildFlags = [ "-p" "landfall-agent" ];
  cargoTestFlags = [ "-p" "landfall-agent" ];
  # The agent's tests start a real landfall server and bind sockets; `./x test`
  # runs them. The package build only compiles.
  doCheck = false;

  nativeBuildInputs = [ pkgsStatic.rustPlatform.bindgenHook ];
  # libblkid.a and blkid/blkid.h; the minimal util-linux has no systemd/udev deps.
  buildInputs = [ pkgsStatic.util-linuxMinimal ];

  meta = {
    description = "landfall in-image installer agent (static)";
    license = lib.licenses.asl20;
    mainProgram = "landfall-agent";
    platforms = lib.platforms.linux;
  };
}

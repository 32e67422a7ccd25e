# landfall-agent, static (musl): the installer runs it from any initrd or ISO, and
# `./x test` builds the same program with glibc `+crt-static` (vm-tests/src/agent.rs).
#
# Follows the nixpkgs Rust manual (doc/languages-frameworks/rust.section.md):
# `rustPlatform.buildRustPackage` with `cargoLock.lockFile`, and
# `rustPlatform.bindgenHook` for crates that run bindgen (blkid-sys).
#
# Call it with `pkgsStatic.callPackage` (flake.nix, iso-module, verify.nix):
# `pkgsStatic` gives a musl toolchain whose C libraries are static archives, so
# blkid-sys' `cargo:rustc-link-lib=blkid` finds util-linux's libblkid.a and
# nothing else. The arguments come through callPackage so splicing applies:
# `rustPlatform.bindgenHook` in nativeBuildInputs is then the build platform's
# hook (a glibc libclang the build script can dlopen). Taking `pkgsStatic` and
# writing `pkgsStatic.rustPlatform.bindgenHook` would not: rustPlatform is a
# scope (makeScopeWithSplicing') whose members are not spliced, so that hook's
# libclang would be the host's (static musl) one (docs/nix.md).
{ lib, rustPlatform, util-linuxMinimal }:
let
  workspace = (lib.importTOML ../../Cargo.toml).workspace.package;
in
rustPlatform.buildRustPackage {
  pname = "landfall-agent";
  inherit (workspace) version;

  src = import ./source.nix { inherit lib; };
  cargoLock.lockFile = ../../Cargo.lock;

  cargoBuildFlags = [ "-p" "landfall-agent" ];
  cargoTestFlags = [ "-p" "landfall-agent" ];
  # The agent's tests start a real landfall server and bind sockets; `./x test`
  # runs them. The package build only compiles.
  doCheck = false;

  nativeBuildInputs = [ rustPlatform.bindgenHook ];
  # libblkid.a and blkid/blkid.h; the minimal util-linux has no systemd/udev deps.
  buildInputs = [ util-linuxMinimal ];

  meta = {
    description = "landfall in-image installer agent (static)";
    license = lib.licenses.asl20;
    mainProgram = "landfall-agent";
    platforms = lib.platforms.linux;
  };
}

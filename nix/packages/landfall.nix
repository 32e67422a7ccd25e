# landfall, the provisioning server and its admin CLI (`landfall serve`,
# `landfall machines`, ...). SQLite is bundled by rusqlite, TLS is rustls: no
# system libraries. buildRustPackage as in the nixpkgs Rust manual.
{ lib, rustPlatform }:
let
  workspace = (lib.importTOML ../../Cargo.toml).workspace.package;
in
rustPlatform.buildRustPackage {
  pname = "landfall";
  inherit (workspace) version;

  src = import ./source.nix { inherit lib; };
  cargoLock.lockFile = ../../Cargo.lock;

  cargoBuildFlags = [ "-p" "landfall" ];
  cargoTestFlags = [ "-p" "landfall" ];
  # The server's tests (API, restart persistence, CLI) run in `./x test`; the
  # package build only compiles. The NixOS test in checks runs the built binary.
  doCheck = false;

  meta = {
    description = "landfall provisioning server: iPXE boot decisions, artifacts, agent API";
    license = lib.licenses.asl20;
    mainProgram = "landfall";
    platforms = lib.platforms.linux;
  };
}

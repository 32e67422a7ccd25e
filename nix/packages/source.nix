# The Cargo workspace as a store path: only what cargo reads, so editing docs/,
# nix/ or the flake does not rebuild the binaries. Every workspace member must be
# present (cargo parses the whole workspace even for `-p landfall-agent`).
{ lib }:
lib.fileset.toSource {
  root = ../..;
  fileset = lib.fileset.unions [
    ../../Cargo.toml
    ../../Cargo.lock
    ../../proto
    ../../disko
    ../../agent
    ../../server
    ../../vm-tests
    ../../xtask
  ];
}

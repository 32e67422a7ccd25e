# The landfall installer as a bootable ISO (BIOS and UEFI, CD or USB stick).
# nixpkgs' minimal installation CD plus the agent, exactly as nixpkgs builds its
# own: nixos/modules/installer/cd-dvd/installation-cd-minimal.nix, which imports
# installation-cd-base.nix (iso-image.nix, installation-device.nix). The image is
# `config.system.build.isoImage` (flake: `packages.iso`).
#
# An ISO is not booted through the server's boot.ipxe, so no boot token is on its
# kernel command line: set `landfall.installer.serverUrl` and see
# docs/operator-guide.md ("Installing from the ISO") for how the token is obtained.
{ lib, modulesPath, ... }:
{
  imports = [
    "${modulesPath}/installer/cd-dvd/installation-cd-minimal.nix"
    ./default.nix
  ];

  landfall.installer.enable = true;

  # The installer is stateless; follow the release it is built from, as
  # nix-community/nixos-images does.
  system.stateVersion = lib.mkDefault lib.trivial.release;
}

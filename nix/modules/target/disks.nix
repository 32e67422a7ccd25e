# landfall.disks: the installed system mounts its disks from the same disko
# layout file the agent applied (disko-layouts/NAME.nix), through disko's NixOS
# module (nix-community/disko module.nix: `disko.devices` -> fileSystems, boot,
# swapDevices while `disko.enableConfig` is true).
#
# Why disko and not the file systems the agent could write into
# hardware-configuration.nix: the layout is one reviewed file in the operator's
# repository, and the system built from it is the same at every rebuild and every
# reinstall. File systems generated at install time would name UUIDs known only
# then, would live only on the machine, and would drift from the layout the server
# hands out. disko names partitions by label (disk-DISK-PART), which the agent
# creates as disko does, so the mounts match without install-time data. The agent's
# hardware-configuration.nix therefore carries no fileSystems
# (`nixos-generate-config --no-filesystems`).
{ config, lib, options, ... }:
let
  cfg = config.landfall.disks;
  inherit (lib) mkIf mkOption types;

  # Every `auto` disk needs a real device, and every key must name a layout
  # disk: ../../lib/disks.nix (pure, tested by nix/tests/disks-resolve.nix).
  resolved = import ../../lib/disks.nix (import cfg.layout) cfg.devices;
in
{
  options.landfall.disks = {
    layout = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = lib.literalExpression "./disko-layouts/single-disk.nix";
      description = "The disko layout file the server assigned to this machine (a plain attribute set).";
    };

    devices = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { main = "/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNX0R123456"; };
      description = ''
        Layout disk name -> device, the same map as the server's `disks`
        (`disko.devices.disk.NAME.device`). Disks left out keep the layout's device;
        a layout disk whose device is `"auto"` must be given here (disko needs an
        absolute path), and every key must name a disk of the layout.
      '';
    };
  };

  config = mkIf (cfg.layout != null) ({
    assertions = [{
      assertion = options ? disko;
      message = "landfall.disks.layout needs disko's NixOS module (the flake's nixosModules.target imports it).";
    }] ++ map (message: { assertion = false; inherit message; }) resolved.problems;
  } // lib.optionalAttrs (options ? disko) {
    # Only a fully resolved layout reaches disko: with an `auto` device disko's
    # own type check would fail first, without naming the option to set.
    disko.devices = mkIf (resolved.problems == [ ]) resolved.devices;
  });
}

# The disks of a disko layout resolved against `landfall.disks.devices` (layout
# disk name -> device). builtins only, so nixcheck evaluates its tests
# (nix/tests/disks-resolve.nix) without nixpkgs.
#
# disko types a disk's `device` as an absolute path (disko lib/default.nix,
# `optionTypes.absolute-pathname`), and a layout's `device = "auto"` (the agent
# picks the disk at install time) is not one: with an EF02 partition disko even
# sets `boot.loader.grub.devices = [ device ]` (lib/types/gpt.nix). So every
# `auto` disk needs a real device here, and a key that names no disk of the
# layout is a mistake (a misspelt disk name would otherwise be ignored).
#
#   resolve layout devices -> { problems = [ "..." ]; devices = <disko.devices>; }
#
# `layout` is `{ disko.devices = ...; }` or the devices attribute set itself.
let
  inherit (builtins) attrNames concatLists filter hasAttr map mapAttrs substring;
  isReal = d: builtins.isString d && d != "auto" && substring 0 1 d == "/";
in
layout: devices:
let
  layoutDevices = layout.disko.devices or layout;
  disks = layoutDevices.disk or { };
  deviceOf = name: devices.${name} or disks.${name}.device or "auto";

  unknown = map
    (name: "landfall.disks.devices.${name}: the layout has no disk `${name}` (its disks: ${toString (attrNames disks)}); remove the key or use one of those names.")
    (filter (name: !(hasAttr name disks)) (attrNames devices));

  unresolved = concatLists (map
    (name:
      let d = deviceOf name; in
      if isReal d then [ ] else [
        "landfall.disks: layout disk `${name}` has device \"${toString d}\"; set landfall.disks.devices.${name} to its real device (e.g. /dev/disk/by-id/...), as disko needs an absolute path."
      ])
    (attrNames disks));
in
{
  problems = unknown ++ unresolved;
  devices = layoutDevices // {
    disk = mapAttrs (name: disk: disk // { device = deviceOf name; }) disks;
  };
}

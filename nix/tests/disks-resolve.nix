# nix/lib/disks.nix on the repository's layouts; nixcheck evaluates this file
# (PURE_FILES in xtask/src/nixcheck.rs) and a wrong answer throws.
let
  resolve = import ../lib/disks.nix;
  twoDisk = import ../../disko-layouts/two-disk.nix;
  hybrid = import ../../disko-layouts/hybrid.nix;

  expect = what: got: want:
    if got == want then true
    else builtins.throw "disks-resolve: ${what}: got ${builtins.toJSON got}, want ${builtins.toJSON want}";

  byId = "/dev/disk/by-id/nvme-A";
  byId2 = "/dev/disk/by-id/nvme-B";

  # An `auto` disk with no device given: one problem naming it and the option.
  missing = resolve twoDisk { system = byId; };
  # A key that is not a disk of the layout.
  unknown = resolve hybrid { main = byId; mian = byId2; };
  # Every disk given: no problem, and the devices are in the resolved layout.
  resolved = resolve twoDisk { system = byId; data = byId2; };
  # `"auto"` given as the device is not a device either.
  autoGiven = resolve hybrid { main = "auto"; };
in
assert expect "missing: problems" missing.problems [
  "landfall.disks: layout disk `data` has device \"auto\"; set landfall.disks.devices.data to its real device (e.g. /dev/disk/by-id/...), as disko needs an absolute path."
];
assert expect "unknown: problems" unknown.problems [
  "landfall.disks.devices.mian: the layout has no disk `mian` (its disks: main); remove the key or use one of those names."
];
assert expect "resolved: problems" resolved.problems [ ];
assert expect "resolved: system" resolved.devices.disk.system.device byId;
assert expect "resolved: data" resolved.devices.disk.data.device byId2;
assert expect "resolved: content kept" resolved.devices.disk.data.content twoDisk.disko.devices.disk.data.content;
assert expect "auto given: one problem" (builtins.length autoGiven.problems) 1;
{
  missing = missing.problems;
  unknown = unknown.problems;
  resolved = resolved.devices.disk;
}

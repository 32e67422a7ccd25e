# expect: disko.devices.zpool.tank.mode.topology.vdev.0.members.0
# expect: "data9" names no member of pool "tank"
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          zfs = {
            size = "100%";
            content = { type = "zfs"; pool = "tank"; };
          };
        };
      };
    };
    zpool.tank = {
      type = "zpool";
      mode.topology = {
        type = "topology";
        vdev = [{ members = [ "data9" ]; }];
      };
      rootFsOptions.compression = "zstd";
    };
  };
}

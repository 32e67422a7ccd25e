# expect: disko.devices.zpool
# expect: `zpool` is not supported yet
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          root = {
            size = "100%";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };
    zpool.tank = { type = "zpool"; rootFsOptions.compression = "zstd"; };
  };
}

# expect: disko.devices.disk.main.content.partitions.root.content.mountpoint
# expect: mountpoint "/" is already used by disko.devices.disk.main.content.partitions.old.content.mountpoint
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          old = {
            size = "64M";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
          root = {
            size = "100%";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

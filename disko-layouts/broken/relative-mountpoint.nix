# expect: disko.devices.disk.main.content.partitions.root.content.mountpoint
# expect: "home" is not an absolute path
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
            content = { type = "filesystem"; format = "ext4"; mountpoint = "home"; };
          };
        };
      };
    };

  };
}

# expect: disko.devices.disk.main.content.partitions.root.size
# expect: "100%" is already used by disko.devices.disk.main.content.partitions.home
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          home = {
            size = "100%";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/home"; };
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

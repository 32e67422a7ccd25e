# expect: disko.devices.disk.main.content.partitions.root.size
# expect: is missing: give `size`
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          root = {
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

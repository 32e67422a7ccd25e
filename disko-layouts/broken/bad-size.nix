# expect: disko.devices.disk.main.content.partitions.root.size
# expect: "12X" is not a size; use e.g. "512M", "20G" or "100%"
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          root = {
            size = "12X";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

# expect: disko.devices.disk.main.content.partitions.root.end
# expect: and `size` are both set
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          root = {
            size = "1G";
            end = "-1G";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

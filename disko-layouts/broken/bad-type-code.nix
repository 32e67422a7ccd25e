# expect: disko.devices.disk.main.content.partitions.root.type
# expect: "ZZ99" is not a known sgdisk type code
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
            type = "ZZ99";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

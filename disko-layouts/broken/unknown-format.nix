# expect: disko.devices.disk.main.content.partitions.root.content.format
# expect: "ntfs" is not supported
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
            content = { type = "filesystem"; format = "ntfs"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

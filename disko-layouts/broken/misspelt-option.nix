# expect: disko.devices.disk.main.content.partitions.root.content.mountpoit
# expect: unknown or unsupported option
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
            content = { type = "filesystem"; format = "ext4"; mountpoit = "/"; };
          };
        };
      };
    };

  };
}

# expect: disko.devices.disk.main.content.partitions.root.content.type
# expect: unknown content type "ext5fs"
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
            content = { type = "ext5fs"; mountpoint = "/"; };
          };
        };
      };
    };

  };
}

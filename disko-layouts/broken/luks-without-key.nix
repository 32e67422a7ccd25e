# expect: disko.devices.disk.main.content.partitions.luks.content.settings.keyFile
# expect: is missing (and no `passwordFile`)
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          luks = {
            size = "100%";
            content = {
              type = "luks";
              name = "crypted";
              settings.allowDiscards = true;
              content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
            };
          };
        };
      };
    };

  };
}

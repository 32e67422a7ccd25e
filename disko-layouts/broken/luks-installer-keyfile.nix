# expect: disko.devices.disk.main.content.partitions.luks.content.settings.keyFile
# expect: exists only on the installer
# expect: passwordFile = "/run/landfall/secrets/luks.key";
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
              settings.keyFile = "/run/landfall/secrets/luks.key";
              content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
            };
          };
        };
      };
    };
  };
}

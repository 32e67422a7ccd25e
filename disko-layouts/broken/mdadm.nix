# expect: disko.devices.mdadm
# expect: `mdadm` is not supported yet
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
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };
    mdadm.raid1 = { type = "mdadm"; level = 1; content = { type = "gpt"; partitions = { }; }; };
  };
}

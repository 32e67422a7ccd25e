# expect: disko.devices.mdadm.raid3.level
# expect: 3 is not a RAID level mdadm creates (known: 0, 1, 4, 5, 6, 10)
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          md = {
            size = "100%";
            content = { type = "mdraid"; name = "raid3"; };
          };
        };
      };
    };
    mdadm.raid3 = {
      type = "mdadm";
      level = 3;
      content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
    };
  };
}

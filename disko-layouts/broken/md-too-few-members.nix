# expect: disko.devices.mdadm.raid6.level
# expect: RAID 6 needs at least 4 members; 1 partition(s) name array "raid6"
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
            content = { type = "mdraid"; name = "raid6"; };
          };
        };
      };
    };
    mdadm.raid6 = {
      type = "mdadm";
      level = 6;
      content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
    };
  };
}

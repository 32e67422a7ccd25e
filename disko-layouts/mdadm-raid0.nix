# Two disks striped with mdadm (RAID 0), a GPT on the array with the ext4
# root, a BIOS boot partition on each disk. disko's example/mdadm-raid0.nix.
{
  disko.devices = {
    disk.disk1 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          boot = {
            size = "1M";
            type = "EF02";
          };
          mdadm = {
            size = "100%";
            content = {
              type = "mdraid";
              name = "raid0";
            };
          };
        };
      };
    };
    disk.disk2 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          boot = {
            size = "1M";
            type = "EF02";
          };
          mdadm = {
            size = "100%";
            content = {
              type = "mdraid";
              name = "raid0";
            };
          };
        };
      };
    };
    mdadm.raid0 = {
      type = "mdadm";
      level = 0;
      content = {
        type = "gpt";
        partitions.primary = {
          size = "100%";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
          };
        };
      };
    };
  };
}

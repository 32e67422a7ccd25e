# Three disks in an mdadm RAID 5 created with extra `mdadm --create`
# arguments (--assume-clean: no initial resync), a GPT on the array with the
# ext4 root. disko's example/mdadm-raid5-args.nix.
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
              name = "raid5";
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
              name = "raid5";
            };
          };
        };
      };
    };
    disk.disk3 = {
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
              name = "raid5";
            };
          };
        };
      };
    };
    mdadm.raid5 = {
      type = "mdadm";
      level = 5;
      extraArgs = [ "--assume-clean" ];
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

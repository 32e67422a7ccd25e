# LVM RAID over two disks: /boot an mdadm RAID 1 of the two ESPs (metadata
# 1.0), a physical volume on each disk, a mirrored root and a striped
# (raid0) /home. disko's example/lvm-raid.nix.
{
  disko.devices = {
    disk.one = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          boot = {
            size = "256M";
            type = "EF00";
            content = {
              type = "mdraid";
              name = "boot";
            };
          };
          primary = {
            size = "100%";
            content = {
              type = "lvm_pv";
              vg = "pool";
            };
          };
        };
      };
    };
    disk.two = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          boot = {
            size = "256M";
            type = "EF00";
            content = {
              type = "mdraid";
              name = "boot";
            };
          };
          primary = {
            size = "100%";
            content = {
              type = "lvm_pv";
              vg = "pool";
            };
          };
        };
      };
    };
    mdadm.boot = {
      type = "mdadm";
      level = 1;
      metadata = "1.0";
      content = {
        type = "filesystem";
        format = "vfat";
        mountpoint = "/boot";
        mountOptions = [ "umask=0077" ];
      };
    };
    lvm_vg.pool = {
      type = "lvm_vg";
      lvs = {
        root = {
          size = "256M";
          lvm_type = "mirror";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
            mountOptions = [ "defaults" ];
          };
        };
        home = {
          size = "64M";
          lvm_type = "raid0";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/home";
          };
        };
      };
    };
  };
}

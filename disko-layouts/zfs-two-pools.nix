# An ext4 root, and two pools that are not root: a mirror mounted at
# /storage, and a single-disk pool whose root dataset does not mount
# (canmount=off: created with -m none). Applying is untested here (no ZFS
# module for the test kernel). disko's example/non-root-zfs.nix.
{
  disko.devices = {
    disk.x = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            size = "64M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          root = {
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
    disk.y = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.zfs = {
          size = "100%";
          content = {
            type = "zfs";
            pool = "storage";
          };
        };
      };
    };
    disk.z = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.zfs = {
          size = "100%";
          content = {
            type = "zfs";
            pool = "storage";
          };
        };
      };
    };
    disk.a = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.zfs = {
          size = "100%";
          content = {
            type = "zfs";
            pool = "storage2";
          };
        };
      };
    };
    zpool = {
      storage = {
        type = "zpool";
        mode = "mirror";
        mountpoint = "/storage";
        datasets.dataset = {
          type = "zfs_fs";
          mountpoint = "/storage/dataset";
        };
      };
      storage2 = {
        type = "zpool";
        mountpoint = "/storage2";
        rootFsOptions.canmount = "off";
        datasets.dataset = {
          type = "zfs_fs";
          mountpoint = "/storage2/dataset";
        };
      };
    };
  };
}

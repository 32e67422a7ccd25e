# ext4 root on the first disk; the second disk, whole, is a ZFS pool member
# (no partition table), its datasets mounted below the ext4 root. Applying
# is untested here (no ZFS module for the test kernel). disko's
# example/zfs-over-legacy.nix.
{
  disko.devices = {
    disk.disk1 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            size = "500M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          primary = {
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
    disk.disk2 = {
      type = "disk";
      device = "auto";
      content = {
        type = "zfs";
        pool = "zroot";
      };
    };
    zpool.zroot = {
      type = "zpool";
      datasets = {
        root = {
          type = "zfs_fs";
          options.mountpoint = "none";
        };
        "root/zfs_fs" = {
          type = "zfs_fs";
          mountpoint = "/zfs_fs";
          options."com.sun:auto-snapshot" = "true";
        };
      };
    };
  };
}

# A mirrored ZFS pool over a partition of each disk, root on the pool's root
# dataset; datasets mounted by zfsutil, one unmounted, one legacy, zvols
# (one holding ext4, one empty, one encrypted), an encrypted dataset with a
# child. The key named by keylocation is the agent's secret file at that
# path. Applying is untested here (no ZFS module for the test kernel).
# disko's example/zfs.nix.
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
          zfs = {
            size = "100%";
            content = {
              type = "zfs";
              pool = "zroot";
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
        partitions = {
          zfs = {
            size = "100%";
            content = {
              type = "zfs";
              pool = "zroot";
            };
          };
        };
      };
    };
    zpool.zroot = {
      type = "zpool";
      mode = "mirror";
      options.cachefile = "none";
      rootFsOptions = {
        compression = "zstd";
        "com.sun:auto-snapshot" = "false";
      };
      mountpoint = "/";
      datasets = {
        zfs_fs = {
          type = "zfs_fs";
          mountpoint = "/zfs_fs";
          options."com.sun:auto-snapshot" = "true";
        };
        zfs_unmounted_fs = {
          type = "zfs_fs";
          options.mountpoint = "none";
        };
        zfs_legacy_fs = {
          type = "zfs_fs";
          options.mountpoint = "legacy";
          mountpoint = "/zfs_legacy_fs";
        };
        zfs_volume = {
          type = "zfs_volume";
          size = "10M";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/ext4onzfs";
          };
        };
        zfs_volume_no_content = {
          type = "zfs_volume";
          size = "10M";
        };
        zfs_encryptedvolume = {
          type = "zfs_volume";
          size = "10M";
          options = {
            encryption = "aes-256-gcm";
            keyformat = "passphrase";
            keylocation = "file:///run/landfall/secrets/zfs.key";
          };
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/ext4onzfsencrypted";
          };
        };
        encrypted = {
          type = "zfs_fs";
          options = {
            mountpoint = "none";
            encryption = "aes-256-gcm";
            keyformat = "passphrase";
            keylocation = "file:///run/landfall/secrets/zfs.key";
          };
        };
        "encrypted/test" = {
          type = "zfs_fs";
          mountpoint = "/zfs_crypted";
        };
      };
    };
  };
}

# Everything stacked: two LUKS volumes (one with a fixed partition GUID and a
# second key, one whose key file is read with a size and an offset) holding
# the physical volumes of one volume group; a mirrored and striped logical
# volumes, two of which are the members of an md RAID 1 holding a GPT, two
# more the mirrored members of a ZFS pool with datasets and a zvol. Created
# in dependency order: disks, the volume group, then the md array and the
# pool. Applying is untested here (ZFS). disko's example/complex.nix.
{
  disko.devices = {
    disk.disk0 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.ESP = {
          start = "1M";
          end = "128M";
          type = "EF00";
          content = {
            type = "filesystem";
            format = "vfat";
            mountpoint = "/boot";
            mountOptions = [ "umask=0077" ];
          };
        };
      };
    };
    disk.disk1 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.luks = {
          uuid = "f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f1";
          start = "1M";
          size = "100%";
          content = {
            type = "luks";
            name = "crypted1";
            settings.keyFile = "/etc/secrets/initrd/disk.key";
            additionalKeyFiles = [ "/run/landfall/secrets/luks-extra.key" ];
            extraFormatArgs = [ "--iter-time 1" ];
            content = {
              type = "lvm_pv";
              vg = "pool";
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
        partitions.luks = {
          start = "1M";
          size = "100%";
          content = {
            type = "luks";
            name = "crypted2";
            settings = {
              keyFile = "/etc/secrets/initrd/disk.key";
              keyFileSize = 8;
              keyFileOffset = 2;
            };
            extraFormatArgs = [ "--iter-time 1" ];
            content = {
              type = "lvm_pv";
              vg = "pool";
            };
          };
        };
      };
    };
    mdadm.raid1 = {
      type = "mdadm";
      level = 1;
      content = {
        type = "gpt";
        partitions.bla = {
          start = "1M";
          size = "100%";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/ext4_mdadm_lvm";
          };
        };
      };
    };
    lvm_vg.pool = {
      type = "lvm_vg";
      lvs = {
        root = {
          size = "10M";
          lvm_type = "mirror";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/ext4_on_lvm";
            mountOptions = [ "defaults" ];
          };
        };
        raid1 = {
          size = "30M";
          lvm_type = "raid0";
          content = {
            type = "mdraid";
            name = "raid1";
          };
        };
        raid2 = {
          size = "30M";
          lvm_type = "raid0";
          content = {
            type = "mdraid";
            name = "raid1";
          };
        };
        zfs1 = {
          size = "128M";
          lvm_type = "raid0";
          content = {
            type = "zfs";
            pool = "zroot";
          };
        };
        zfs2 = {
          size = "128M";
          lvm_type = "raid0";
          content = {
            type = "zfs";
            pool = "zroot";
          };
        };
      };
    };
    zpool.zroot = {
      type = "zpool";
      mode = "mirror";
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
        zfs_testvolume = {
          type = "zfs_volume";
          size = "10M";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/ext4onzfs";
          };
        };
      };
    };
  };
}

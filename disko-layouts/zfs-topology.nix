# A pool with a prescribed topology: a single-disk vdev and a mirror for
# storage, a hot spare, mirrored and single log, dedup and special vdevs, and
# a cache device; each member named by its disk (the disk's partition
# labelled disk-NAME-zfs) or by path. Applying is untested here (no ZFS
# module for the test kernel). disko's example/zfs-with-vdevs.nix.
{
  disko.devices = {
    disk.data1 = {
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
    disk.data2 = {
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
    disk.data3 = {
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
    disk.spare = {
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
    disk.log1 = {
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
    disk.log2 = {
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
    disk.log3 = {
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
    disk.dedup1 = {
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
    disk.dedup2 = {
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
    disk.dedup3 = {
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
    disk.special1 = {
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
    disk.special2 = {
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
    disk.special3 = {
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
    disk.cache = {
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
      mode.topology = {
        type = "topology";
        vdev = [
          { members = [ "data1" ]; }
          {
            mode = "mirror";
            members = [ "data2" "/dev/disk/by-partlabel/disk-data3-zfs" ];
          }
        ];
        spare = [ "spare" ];
        log = [
          {
            mode = "mirror";
            members = [ "log1" "log2" ];
          }
          { members = [ "log3" ]; }
        ];
        dedup = [
          {
            mode = "mirror";
            members = [ "dedup1" "dedup2" ];
          }
          { members = [ "dedup3" ]; }
        ];
        special = [
          {
            mode = "mirror";
            members = [ "special1" "special2" ];
          }
          { members = [ "special3" ]; }
        ];
        cache = [ "cache" ];
      };
      rootFsOptions = {
        compression = "zstd";
        "com.sun:auto-snapshot" = "false";
      };
      mountpoint = "/";
      datasets.zfs_fs = {
        type = "zfs_fs";
        mountpoint = "/zfs_fs";
        options."com.sun:auto-snapshot" = "true";
      };
    };
  };
}

# Two bcachefs filesystems: one over three devices of two label groups,
# encrypted (the passphrase is the agent's secret file), compressed, with
# subvolumes mounted as /, /home and /nix; one with a fixed uuid mounted
# below /home. Applying is untested here (the test kernel has no bcachefs).
# disko's example/bcachefs.nix.
{
  disko.devices = {
    disk.vdb = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          vdb1 = {
            type = "EF00";
            size = "100M";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          vdb2 = {
            size = "100%";
            content = {
              type = "bcachefs";
              filesystem = "mounted_subvolumes_in_multi";
              label = "group_a.vdb2";
              extraFormatArgs = [ "--discard" ];
            };
          };
        };
      };
    };
    disk.vdc = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.vdc1 = {
          size = "100%";
          content = {
            type = "bcachefs";
            filesystem = "mounted_subvolumes_in_multi";
            label = "group_a.vdc1";
            extraFormatArgs = [ "--discard" ];
          };
        };
      };
    };
    disk.vdd = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.vdd1 = {
          size = "100%";
          content = {
            type = "bcachefs";
            filesystem = "mounted_subvolumes_in_multi";
            label = "group_b.vdd1";
            extraFormatArgs = [ "--force" ];
          };
        };
      };
    };
    disk.vde = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions.vde1 = {
          size = "100%";
          content = {
            type = "bcachefs";
            filesystem = "relies_on_external_subvolume";
            label = "group_a.vde1";
          };
        };
      };
    };
    bcachefs_filesystems = {
      mounted_subvolumes_in_multi = {
        type = "bcachefs_filesystem";
        passwordFile = "/run/landfall/secrets/bcachefs.key";
        extraFormatArgs = [
          "--compression=lz4"
          "--background_compression=lz4"
        ];
        subvolumes = {
          "subvolumes/root" = {
            mountpoint = "/";
            mountOptions = [ "verbose" ];
          };
          "subvolumes/home" = {
            mountpoint = "/home";
          };
          "subvolumes/home/user" = { };
          "subvolumes/nix" = {
            mountpoint = "/nix";
          };
          "subvolumes/test" = { };
        };
      };
      relies_on_external_subvolume = {
        type = "bcachefs_filesystem";
        mountpoint = "/home/Documents";
        uuid = "64e50034-ebe2-eaf8-1f93-cf56266a8d86";
      };
    };
  };
}

# An LVM thin pool: a physical volume on the disk, a 256M thin pool, root
# and /home thin volumes in it, and a plain logical volume without content.
# The installed system needs services.lvm.boot.thin.enable (the agent's
# hardware file sets it). disko's example/lvm-thin.nix.
{
  disko.devices = {
    disk.main = {
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
              type = "lvm_pv";
              vg = "mainpool";
            };
          };
        };
      };
    };
    lvm_vg.mainpool = {
      type = "lvm_vg";
      lvs = {
        thinpool = {
          size = "256M";
          lvm_type = "thin-pool";
        };
        root = {
          size = "128M";
          lvm_type = "thinlv";
          pool = "thinpool";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
            mountOptions = [ "defaults" ];
          };
        };
        home = {
          size = "64M";
          lvm_type = "thinlv";
          pool = "thinpool";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/home";
          };
        };
        raw = {
          size = "16M";
        };
      };
    };
  };
}

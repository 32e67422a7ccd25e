# LVM on LUKS: an ESP and one LUKS volume (discards allowed, a second key
# added with luksAddKey) holding a physical volume; the volume group has a
# root taking what the others leave, /home, and a logical volume without
# content. disko's example/luks-lvm.nix.
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
          luks = {
            size = "100%";
            content = {
              type = "luks";
              name = "crypted";
              extraOpenArgs = [ ];
              passwordFile = "/run/landfall/secrets/luks.key";
              settings.allowDiscards = true;
              additionalKeyFiles = [ "/run/landfall/secrets/luks-extra.key" ];
              content = {
                type = "lvm_pv";
                vg = "pool";
              };
            };
          };
        };
      };
    };
    lvm_vg.pool = {
      type = "lvm_vg";
      lvs = {
        root = {
          size = "100%";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
            mountOptions = [ "defaults" ];
          };
        };
        home = {
          size = "64M";
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

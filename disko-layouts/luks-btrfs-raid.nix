# A btrfs RAID 1 over two LUKS volumes: the first volume is only opened (no
# content), the second holds the btrfs whose mkfs arguments name the first
# mapping as its second device ("-d raid1" is split into words, as disko's
# shell does). disko prepares the disks in name order; landfall in parallel,
# except that disk2 waits for disk1, which makes the /dev/mapper/p1 its mkfs
# names. disko's example/luks-btrfs-raid.nix.
{
  disko.devices = {
    disk.disk1 = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            size = "512M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          crypt_p1 = {
            size = "100%";
            content = {
              type = "luks";
              name = "p1";
              passwordFile = "/run/landfall/secrets/luks.key";
              settings.allowDiscards = true;
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
        partitions.crypt_p2 = {
          size = "100%";
          content = {
            type = "luks";
            name = "p2";
            passwordFile = "/run/landfall/secrets/luks.key";
            settings.allowDiscards = true;
            content = {
              type = "btrfs";
              extraArgs = [ "-d raid1" "/dev/mapper/p1" ];
              subvolumes."/root" = {
                mountpoint = "/";
                mountOptions = [ "rw" "relatime" "ssd" ];
              };
            };
          };
        };
      };
    };
  };
}

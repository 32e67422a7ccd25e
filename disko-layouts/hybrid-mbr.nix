# A hybrid MBR: the first partition (a FAT firmware partition, not mounted)
# also gets an MBR entry of type 0x0c, after the 0xEE protective one
# (efiGptPartitionFirst = false), for boards whose boot ROM reads only the
# MBR. disko's example/hybrid-mbr.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        efiGptPartitionFirst = false;
        partitions = {
          TOW-BOOT-FI = {
            priority = 1;
            type = "EF00";
            size = "32M";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = null;
            };
            hybrid = {
              mbrPartitionType = "0x0c";
              mbrBootableFlag = false;
            };
          };
          ESP = {
            type = "EF00";
            size = "256M";
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
  };
}

# An ESP, an XFS root, swap at the end of the disk (randomly encrypted at
# every boot) and /tmp on tmpfs.
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
          root = {
            end = "-1G";
            content = {
              type = "filesystem";
              format = "xfs";
              mountpoint = "/";
            };
          };
          swap = {
            size = "100%";
            type = "8200";
            content = {
              type = "swap";
              randomEncryption = true;
            };
          };
        };
      };
    };
    nodev."/tmp" = {
      fsType = "tmpfs";
      mountOptions = [ "size=200M" "mode=1777" ];
    };
  };
}

# Partition names with spaces and special characters: the GPT name keeps
# them, the installed system's by-partlabel links escape them as udev does.
# disko's example/gpt-name-with-whitespace.nix.
{
  disko.devices = {
    disk.vdb = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            type = "EF00";
            size = "100M";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          "name with spaces" = {
            size = "100M";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/name with spaces";
            };
          };
          "name^with\\some@special#chars" = {
            size = "100M";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/name^with\\some@special#chars";
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

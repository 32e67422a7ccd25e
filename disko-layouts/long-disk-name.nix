# A disk `name` too long for a partition label: the labels are the first 36
# hex digits of the sha256 of "disk-NAME-PART", as disko makes them. disko's
# example/long-device-name.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      name = "this-is-some-super-long-name-to-test-what-happens-when-the-name-is-too-long";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            type = "EF00";
            size = "500M";
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

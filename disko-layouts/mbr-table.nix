# An MBR (msdos) partition table, disko's legacy `table` with
# format = "msdos": positions in parted's units, as parted places them;
# /boot is the active (bootable) partition, swap at the end of the disk.
# The msdos variant of disko's example/legacy-table.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "table";
        format = "msdos";
        partitions = [
          {
            part-type = "primary";
            fs-type = "fat32";
            start = "1MiB";
            end = "256MiB";
            bootable = true;
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          }
          {
            part-type = "primary";
            start = "256MiB";
            end = "-256MiB";
            content = {
              type = "filesystem";
              format = "ext4";
              mountpoint = "/";
            };
          }
          {
            part-type = "primary";
            fs-type = "linux-swap";
            start = "-256MiB";
            end = "100%";
            content = {
              type = "swap";
            };
          }
        ];
      };
    };
  };
}

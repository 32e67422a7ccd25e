# disko's legacy `table` with format = "gpt" (made with parted): decimal
# units ("1M" is 1,000,000 bytes, placed on the nearest 1 MiB boundary, as
# parted does), every entry bootable (parted's boot flag on GPT makes an
# EFI system partition), a name with spaces (written udev-escaped, as disko
# does). disko's example/legacy-table.nix and legacy-table-with-whitespace.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "table";
        format = "gpt";
        partitions = [
          {
            name = "ESP";
            start = "1M";
            end = "250M";
            bootable = true;
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          }
          {
            name = "name with spaces";
            start = "250M";
            end = "300MiB";
            bootable = true;
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/name_with_spaces";
            };
          }
          {
            name = "root";
            start = "300MiB";
            end = "100%";
            part-type = "primary";
            bootable = true;
            content = {
              type = "filesystem";
              format = "ext4";
              mountpoint = "/";
            };
          }
        ];
      };
    };
  };
}

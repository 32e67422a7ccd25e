# An ESP given by its end, and an f2fs root to the end of the disk with
# extra features (checksums, compression) and compression mount options.
# The installed system gets f2fs in boot.supportedFilesystems and its
# initrd modules. disko's example/f2fs.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            end = "500M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          root = {
            name = "root";
            end = "-0";
            content = {
              type = "filesystem";
              format = "f2fs";
              mountpoint = "/";
              extraArgs = [
                "-O"
                "extra_attr,inode_checksum,sb_checksum,compression"
              ];
              mountOptions = [
                "compress_algorithm=zstd:6,compress_chksum,atgc,gc_merge,lazytime,nodiscard"
              ];
            };
          };
        };
      };
    };
  };
}

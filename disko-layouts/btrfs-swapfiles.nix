# btrfs with swap files: the top level mounted at /partition-root with two
# swap files there, root and /nix subvolumes, a subvolume that is only
# created, and /.swapvol holding two more swap files (one at a path of its
# own). The subvolumes' swap files get swapDevices entries below their
# mountpoints. disko's example/btrfs-subvolumes.nix and
# btrfs-only-root-subvolume.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            priority = 1;
            name = "ESP";
            start = "1M";
            end = "128M";
            type = "EF00";
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
              type = "btrfs";
              extraArgs = [ "-f" ];
              subvolumes = {
                "/rootfs" = {
                  mountpoint = "/";
                };
                "/nix" = {
                  mountOptions = [ "compress=zstd" "noatime" ];
                  mountpoint = "/nix";
                };
                "/test" = { };
                "/swap" = {
                  mountpoint = "/.swapvol";
                  swap = {
                    swapfile.size = "20M";
                    swapfile2.size = "20M";
                    swapfile2.path = "rel-path";
                  };
                };
              };
              mountpoint = "/partition-root";
              swap = {
                swapfile.size = "20M";
                swapfile1.size = "20M";
              };
            };
          };
        };
      };
    };
  };
}

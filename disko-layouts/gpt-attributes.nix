# GPT attribute bits and a fixed partition GUID: the BIOS boot partition is
# "required" (bit 0) and "legacy BIOS bootable" (bit 2); the root partition
# has a fixed PARTUUID, so the installed system names it by-partuuid.
# disko's example/gpt-bios-compat.nix, and the `uuid` of example/complex.nix.
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          boot = {
            size = "1M";
            type = "EF02";
            attributes = [ 0 2 ];
          };
          root = {
            size = "100%";
            uuid = "f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f0";
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

# expect: disko.devices.lvm_vg.pool
# expect: has no physical volume: no partition or disk has content { type = "lvm_pv"; vg = "pool"; }
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          root = {
            size = "100%";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          };
        };
      };
    };
    lvm_vg.pool = {
      type = "lvm_vg";
      lvs.home = {
        size = "10G";
        content = { type = "filesystem"; format = "ext4"; mountpoint = "/home"; };
      };
    };
  };
}

# expect: disko.devices.lvm_vg.pool.lvs.root.pool
# expect: is missing: a thin volume (lvm_type = "thinlv") names its thin pool
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "gpt";
        partitions = {
          pv = {
            size = "100%";
            content = { type = "lvm_pv"; vg = "pool"; };
          };
        };
      };
    };
    lvm_vg.pool = {
      type = "lvm_vg";
      lvs.root = {
        size = "10G";
        lvm_type = "thinlv";
        content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
      };
    };
  };
}

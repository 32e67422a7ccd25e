# expect: disko.devices.disk.main.content.partitions.pv.content.vg
# expect: "pool" names no volume group of the layout (it has none): add disko.devices.lvm_vg.pool
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
  };
}

# expect: disko.devices.disk.main.content.partitions.pv.content.type
# expect: "lvm_pv" is not supported yet
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

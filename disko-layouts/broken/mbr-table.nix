# expect: disko.devices.disk.main.content.partitions.1.part-type
# expect: "logical" partitions are not made by landfall
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
            start = "1MiB";
            end = "50%";
            content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
          }
          {
            part-type = "logical";
            start = "50%";
            end = "100%";
          }
        ];
      };
    };
  };
}

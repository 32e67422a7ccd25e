# expect: disko.devices.disk.main.content.type
# expect: "table" (MBR) tables are not supported yet
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";
      content = {
        type = "table";
        format = "msdos";
        partitions = [ ];
      };
    };

  };
}

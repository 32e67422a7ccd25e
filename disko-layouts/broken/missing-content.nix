# expect: disko.devices.disk.main.content
# expect: is missing
{
  disko.devices = {
    disk.main = {
      type = "disk";
      device = "auto";

    };

  };
}

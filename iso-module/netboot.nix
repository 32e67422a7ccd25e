# The landfall installer for network boot: kernel + initrd (the whole Nix store
# as a squashfs inside the initrd), served by the landfall server.
#
# Follows nixpkgs nixos/modules/installer/netboot/netboot-minimal.nix
# (netboot-base.nix + profiles/minimal.nix) and netboot.nix, which builds
# `system.build.kernel`, `system.build.netbootRamdisk` and
# `system.build.netbootIpxeScript` whose kernel line is
#   kernel bzImage init=${toplevel}/init initrd=initrd ${boot.kernelParams} ${cmdline}
# nix-community/nixos-images nix/netboot-installer/module.nix puts the same files
# into one tree; `system.build.landfallNetboot` does that for landfall:
#
#   bzImage (Image on aarch64)  the kernel, under nixpkgs' name
#   vmlinuz -> the same kernel  the name the server's install script asks for
#   initrd                      netbootRamdisk/initrd
#   netboot.ipxe                nixpkgs' script with `vmlinuz`, to boot this directory by hand
#   cmdline                     init=... and boot.kernelParams, one line
#
# The server's install script is `kernel BASE/artifacts/vmlinuz initrd=initrd
# landfall.server=.. landfall.token=.. IMAGE_ARGS KERNEL_ARGS` (server/src/boot.rs),
# IMAGE_ARGS read from this directory's `cmdline`: `init=` travels with the kernel
# and initrd it belongs to, never through server.kernel_args.
{ config, lib, pkgs, modulesPath, ... }:
let
  build = config.system.build;
  kernelFile = config.system.boot.loader.kernelFile;
  kernel = "${build.kernel}/${kernelFile}";
  init = "init=${build.toplevel}/init";
  cmdline = lib.concatStringsSep " " ([ init ] ++ config.boot.kernelParams);
  ipxeScript = pkgs.writeText "netboot.ipxe" ''
    #!ipxe
    # landfall installer, booted from this directory without the server's decision.
    # Add landfall.server=URL landfall.token=TOKEN through ''${cmdline} when chaining.
    kernel vmlinuz ${init} initrd=initrd ${toString config.boot.kernelParams} ''${cmdline}
    initrd initrd
    boot
  '';
in
{
  imports = [
    "${modulesPath}/installer/netboot/netboot-minimal.nix"
    ./default.nix
  ];

  landfall.installer.enable = true;

  system.stateVersion = lib.mkDefault lib.trivial.release;

  system.build.landfallNetboot = pkgs.runCommand "landfall-netboot"
    {
      passthru = {
        inherit cmdline;
        inherit (build) toplevel;
      };
      preferLocalBuild = true;
    }
    ''
      mkdir -p $out
      ln -s ${kernel} $out/${kernelFile}
      ln -s ${kernel} $out/vmlinuz
      ln -s ${build.netbootRamdisk}/initrd $out/initrd
      cp ${ipxeScript} $out/netboot.ipxe
      printf '%s\n' ${lib.escapeShellArg cmdline} > $out/cmdline
    '';
}

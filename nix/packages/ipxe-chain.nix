# iPXE with landfall's chain script embedded: it runs `dhcp` and chains to
# SERVER/boot.ipxe by itself, so any DHCP server that hands out this binary
# (or a USB stick / ISO of it) boots into landfall without the iPXE class
# (option 175) loop break. nixpkgs' `ipxe` takes `embedScript` and passes it
# as `EMBED=` to make, into every binary it builds (undionly.kpxe, ipxe.efi,
# snp.efi, ipxe.usb, ...; pkgs/by-name/ip/ipxe/package.nix).
#
#   landfall.packages.x86_64-linux.ipxe-chain.override { serverUrl = "http://10.0.0.1:8080"; }
#
# `serverUrl` is the server's boot URL base (`services.landfall.publicUrl`);
# the default names a host `landfall` that the site's DNS resolves.
{ ipxe, writeText, serverUrl ? "http://landfall:8080" }:
ipxe.override {
  embedScript = writeText "landfall-chain.ipxe" (import ../lib/chain-ipxe.nix serverUrl);
}

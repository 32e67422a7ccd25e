# The iPXE script of the server's `GET /chain.ipxe` (server/src/boot.rs
# `chain_script`), for embedding in an iPXE build: DHCP, then chain to the
# server's boot.ipxe with iPXE's own variables filled in. `./x test`
# (xtask nixcheck) evaluates this file and compares it with the server's.
url:
let
  len = builtins.stringLength url;
  base = if len > 0 && builtins.substring (len - 1) 1 url == "/" then builtins.substring 0 (len - 1) url else url;
in
''
  #!ipxe
  dhcp
  chain ${base}/boot.ipxe?mac=''${net0/mac}&arch=''${buildarch}&platform=''${platform}
''

# nixosModules.target: what an installed landfall machine imports. The flake
# wraps this with disko's NixOS module (disks.nix needs it) and the agent package.
#
#   landfall.verify            first-boot verification, reports `ready` to the server
#   landfall.roles.workstation desktop over RDP (xrdp) and VNC, homes on SMB shares
#   landfall.roles.server      hardened SSH
#   landfall.disks             the disko layout the agent applied
#   landfall.secrets           where the agent put the keys sops-nix / agenix read
{
  imports = [
    ./verify.nix
    ./workstation.nix
    ./server-role.nix
    ./disks.nix
    ./secrets.nix
  ];
}

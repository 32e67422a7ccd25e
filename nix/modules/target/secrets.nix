# landfall.secrets: the agent writes a role's secrets where the usual NixOS
# secret managers look, so an operator's sops-nix or agenix configuration works
# on the first boot without a manual key step:
#
#   /var/lib/sops-nix/key.txt       age key        sops-nix: sops.age.keyFile
#   /etc/ssh/ssh_host_ed25519_key   SSH host key   agenix: age.identityPaths; sops-nix: sops.age.sshKeyPaths
#   /var/lib/landfall/secrets/      other files (SMB credentials, VNC password), 0600 in 0700
#
# The options below only point sops-nix / agenix at those files when their modules
# are imported (`options ? sops`, `options ? age`), so this module does not depend
# on either.
{ config, lib, options, ... }:
let
  cfg = config.landfall.secrets;
  inherit (lib) mkDefault mkEnableOption mkIf mkMerge mkOption optionalAttrs types;
in
{
  options.landfall.secrets = {
    enable = mkEnableOption "pointing sops-nix/agenix at the keys the landfall agent placed";

    ageKeyFile = mkOption {
      type = types.str;
      default = "/var/lib/sops-nix/key.txt";
      description = "age private key placed by the agent (sops-nix's conventional path).";
    };

    sshHostKey = mkOption {
      type = types.str;
      default = "/etc/ssh/ssh_host_ed25519_key";
      description = "SSH host key placed by the agent (agenix's default identity).";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    (optionalAttrs (options ? sops) {
      sops.age.keyFile = mkDefault cfg.ageKeyFile;
      sops.age.sshKeyPaths = mkDefault [ cfg.sshHostKey ];
    })
    (optionalAttrs (options ? age) {
      age.identityPaths = mkDefault [ cfg.sshHostKey ];
    })
    {
      systemd.tmpfiles.rules = [ "d /var/lib/landfall/secrets 0700 root root -" ];
    }
  ]);
}

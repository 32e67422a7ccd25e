# landfall.roles.server: a server reachable over SSH with keys only.
# Settings follow nixos/modules/services/networking/ssh/sshd.nix (services.openssh.settings).
{ config, lib, ... }:
let
  cfg = config.landfall.roles.server;
  inherit (lib) mkEnableOption mkIf mkOption types;
in
{
  options.landfall.roles.server = {
    enable = mkEnableOption "the landfall server role (hardened SSH)";

    authorizedKeys = mkOption {
      type = types.attrsOf (types.listOf types.str);
      default = { };
      example = { admin = [ "ssh-ed25519 AAAA... admin@desk" ]; };
      description = "Users (created as wheel members) and their SSH public keys.";
    };

    port = mkOption {
      type = types.port;
      default = 22;
      description = "SSH port (opened in the firewall).";
    };
  };

  config = mkIf cfg.enable {
    services.openssh = {
      enable = true;
      ports = [ cfg.port ];
      openFirewall = true;
      # The agent placed the host keys (secrets.nix), so agenix recipients are known
      # before the first boot; only ed25519 is used.
      hostKeys = [{ path = "/etc/ssh/ssh_host_ed25519_key"; type = "ed25519"; }];
      settings = {
        PermitRootLogin = "no";
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        AuthenticationMethods = "publickey";
        AllowUsers = if cfg.authorizedKeys == { } then null else lib.attrNames cfg.authorizedKeys;
        X11Forwarding = false;
        AllowAgentForwarding = "no";
        AllowStreamLocalForwarding = "no";
        MaxAuthTries = 3;
        LoginGraceTime = 30;
        ClientAliveInterval = 300;
        ClientAliveCountMax = 2;
      };
    };

    users.users = lib.mapAttrs
      (_: keys: {
        isNormalUser = true;
        extraGroups = [ "wheel" ];
        openssh.authorizedKeys.keys = keys;
      })
      cfg.authorizedKeys;
    security.sudo.wheelNeedsPassword = lib.mkDefault false;

    networking.firewall.enable = true;

    landfall.verify.checks.ssh = {
      unit = "sshd.service";
      tcp = cfg.port;
    };
  };
}

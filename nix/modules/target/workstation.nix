# landfall.roles.workstation: a desktop reached over RDP (xrdp) and VNC, with each
# user's home directory on an SMB share, automounted with the credentials file the
# agent placed at install time.
#
# RDP: nixos/modules/services/networking/xrdp.nix with Xfce (a session xrdp can
# start without a GPU). VNC: x11vnc on the local display :0 (the LightDM greeter,
# then the user's session), password file placed by the agent.
# SMB homes: the cifs automount pattern of the NixOS manual/wiki (x-systemd.automount,
# credentials=FILE, uid/gid so the files belong to the user).
{ config, lib, pkgs, ... }:
let
  cfg = config.landfall.roles.workstation;
  inherit (lib) mkEnableOption mkIf mkOption types;

  userModule = { name, ... }: {
    options = {
      uid = mkOption {
        type = types.ints.between 1000 59999;
        example = 1001;
        description = "Fixed uid: the SMB mount maps the share's files to it.";
      };
      description = mkOption {
        type = types.str;
        default = name;
        description = "Full name (GECOS).";
      };
      extraGroups = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "wheel" ];
        description = "Additional groups.";
      };
      share = mkOption {
        type = types.nullOr types.str;
        default = if cfg.smb.server == null then null else "//${cfg.smb.server}/${cfg.smb.sharePrefix}${name}";
        defaultText = lib.literalExpression ''"//''${smb.server}/''${smb.sharePrefix}<name>"'';
        description = "SMB share mounted on the user's home; null for a local home.";
      };
    };
  };
in
{
  options.landfall.roles.workstation = {
    enable = mkEnableOption "the landfall workstation role (RDP, VNC, SMB homes)";

    users = mkOption {
      type = types.attrsOf (types.submodule userModule);
      default = { };
      example = lib.literalExpression ''{ alice = { uid = 1001; }; bob = { uid = 1002; extraGroups = [ "wheel" ]; }; }'';
      description = "Desktop users. Passwords are not set here: they come from the directory (SSSD/Kerberos) or the operator's own module.";
    };

    smb = {
      server = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "fs01.example.com";
        description = "File server holding the home shares.";
      };
      sharePrefix = mkOption {
        type = types.str;
        default = "homes/";
        description = "Path before the user name in each user's share (`//SERVER/PREFIXNAME`).";
      };
      credentialsFile = mkOption {
        type = types.str;
        default = "/var/lib/landfall/secrets/smb-credentials";
        description = ''
          cifs `credentials=` file (username=, password=, domain=), placed by the agent
          (0600 root) from the role's secrets. A string, not a Nix path: it must never
          enter the Nix store.
        '';
      };
      options = mkOption {
        type = types.listOf types.str;
        default = [ "vers=3.1.1" "seal" ];
        description = "Extra mount options (SMB version, encryption).";
      };
    };

    rdp.port = mkOption {
      type = types.port;
      default = 3389;
      description = "RDP port (opened in the firewall).";
    };

    vnc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to share display :0 over VNC (x11vnc).";
      };
      port = mkOption {
        type = types.port;
        default = 5900;
        description = "VNC port (opened in the firewall).";
      };
      passwordFile = mkOption {
        type = types.str;
        default = "/var/lib/landfall/secrets/vnc-passwd";
        description = "x11vnc `-rfbauth` file (made with `x11vnc -storepasswd`), placed by the agent.";
      };
    };
  };

  config = mkIf cfg.enable {
    services.xserver = {
      enable = true;
      desktopManager.xfce.enable = true;
      displayManager.lightdm.enable = true;
    };

    services.xrdp = {
      enable = true;
      port = cfg.rdp.port;
      openFirewall = true;
      defaultWindowManager = "xfce4-session";
    };

    systemd.services.landfall-x11vnc = mkIf cfg.vnc.enable {
      description = "VNC access to display :0";
      wantedBy = [ "graphical.target" ];
      after = [ "display-manager.service" ];
      unitConfig.ConditionPathExists = cfg.vnc.passwordFile;
      serviceConfig = {
        # -auth guess finds LightDM's X authority for the greeter and the session.
        ExecStart = "${pkgs.x11vnc}/bin/x11vnc -display :0 -auth guess -forever -shared -noxdamage -rfbport ${toString cfg.vnc.port} -rfbauth ${cfg.vnc.passwordFile}";
        Restart = "always";
        RestartSec = 3;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.vnc.enable cfg.vnc.port;

    users.users = lib.mapAttrs
      (_: u: {
        isNormalUser = true;
        inherit (u) uid description extraGroups;
        # The share is the home; the mount point is created, not populated.
        createHome = u.share == null;
      })
      cfg.users;

    environment.systemPackages = [ pkgs.cifs-utils ];
    boot.supportedFilesystems = [ "cifs" ];

    fileSystems = lib.mapAttrs'
      (name: u: lib.nameValuePair "/home/${name}" {
        device = u.share;
        fsType = "cifs";
        options = [
          "x-systemd.automount"
          "noauto"
          "x-systemd.idle-timeout=600"
          "x-systemd.device-timeout=10s"
          "x-systemd.mount-timeout=10s"
          "_netdev"
          "credentials=${cfg.smb.credentialsFile}"
          "uid=${toString u.uid}"
          "gid=${toString config.users.groups.users.gid}"
          "file_mode=0600"
          "dir_mode=0700"
        ] ++ cfg.smb.options;
      })
      (lib.filterAttrs (_: u: u.share != null) cfg.users);

    landfall.verify.checks = {
      rdp = {
        unit = "xrdp.service";
        tcp = cfg.rdp.port;
      };
    } // lib.optionalAttrs cfg.vnc.enable {
      vnc = {
        unit = "landfall-x11vnc.service";
        tcp = cfg.vnc.port;
      };
    } // lib.mapAttrs'
      (name: _: lib.nameValuePair "smb-home-${name}" { path = "/home/${name}"; })
      (lib.filterAttrs (_: u: u.share != null) cfg.users);
  };
}

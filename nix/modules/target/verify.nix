# landfall.verify: the first-boot check. The agent writes /etc/landfall/verify.json
# into the installed system (server URL, attempt, verify token; 0600); at boot
# `landfall-agent verify` runs the checks listed here (/etc/landfall/checks.json),
# posts them to /api/v1/agent/verify and, once the server answered, deletes
# verify.json, so later boots skip the unit (ConditionPathExists).
#
# `landfall-agent verify` comes with issue 5; this unit is its interface:
#   landfall-agent verify --config /etc/landfall/verify.json --checks /etc/landfall/checks.json
{ config, lib, pkgs, ... }:
let
  cfg = config.landfall.verify;
  inherit (lib) mkEnableOption mkIf mkOption types;

  checkModule = { name, ... }: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
        description = "Name reported to the server.";
      };
      unit = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sshd.service";
        description = "systemd unit that must be active.";
      };
      tcp = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 22;
        description = "TCP port on localhost that must accept a connection.";
      };
      path = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/home/alice";
        description = "Path that must be readable (e.g. an automounted SMB home).";
      };
    };
  };
in
{
  options.landfall.verify = {
    enable = mkEnableOption "the landfall first-boot verification";

    package = mkOption {
      type = types.package;
      default = pkgs.pkgsStatic.callPackage ../../packages/landfall-agent.nix { };
      defaultText = lib.literalExpression "pkgs.pkgsStatic.callPackage ../../packages/landfall-agent.nix { }";
      description = "landfall-agent package providing `landfall-agent verify`.";
    };

    configFile = mkOption {
      type = types.str;
      default = "/etc/landfall/verify.json";
      description = "Written by the agent at install time (holds the verify token); the unit runs only while it exists.";
    };

    checks = mkOption {
      type = types.attrsOf (types.submodule checkModule);
      default = { };
      example = lib.literalExpression ''{ ssh = { unit = "sshd.service"; tcp = 22; }; }'';
      description = "Checks reported to the server; the roles add theirs.";
    };

    timeout = mkOption {
      type = types.ints.positive;
      default = 300;
      description = "Seconds the checks may take (services still starting are retried within this time).";
    };
  };

  config = mkIf cfg.enable {
    environment.etc."landfall/checks.json".text = builtins.toJSON {
      inherit (cfg) timeout;
      checks = lib.mapAttrsToList (_: c: lib.filterAttrs (_: v: v != null) c) cfg.checks;
    };

    systemd.services.landfall-verify = {
      description = "landfall first-boot verification";
      wantedBy = [ "multi-user.target" ];
      # Not After=multi-user.target: that target is ordered after the units it wants
      # (systemd.target(5)), this one included. The checked units are waited for.
      after = [ "network-online.target" ] ++ lib.filter (u: u != null) (lib.mapAttrsToList (_: c: c.unit) cfg.checks);
      wants = [ "network-online.target" ];
      unitConfig.ConditionPathExists = cfg.configFile;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe cfg.package} verify --config ${cfg.configFile} --checks /etc/landfall/checks.json";
        TimeoutStartSec = cfg.timeout + 60;
        StandardOutput = "journal+console";
        # No ProtectHome: the checks read the automounted SMB homes.
        NoNewPrivileges = true;
        PrivateTmp = true;
      };
    };
  };
}

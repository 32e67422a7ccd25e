# services.landfall: the provisioning server. Machines and roles are Nix
# attribute sets rendered to landfall.toml by ../lib/landfall-toml.nix (the same
# renderer nixcheck runs through `landfall serve --check-config`); the artifacts
# directory holds the netboot builds (iso-module/netboot.nix, flake
# `packages.SYSTEM.netboot`), one per architecture: ARTIFACTS/x86_64 and
# ARTIFACTS/arm64, chosen by the server from iPXE's `${buildarch}`.
# The flake exposes this as `nixosModules.server` with `package` and
# `netboot.{x86_64,arm64}` defaulting to the flake's own packages.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.landfall;
  inherit (lib) mkEnableOption mkIf mkOption types;

  renderToml = import ../lib/landfall-toml.nix;

  listen =
    if lib.hasInfix ":" cfg.listenAddress
    then "[${cfg.listenAddress}]:${toString cfg.port}"
    else "${cfg.listenAddress}:${toString cfg.port}";

  # Layouts rendered to NAME.json at build time (the server reads NAME.json before
  # NAME.nix), so the server needs no nix-instantiate at run time.
  layoutsDir =
    let
      files = lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".nix" n) (builtins.readDir cfg.layouts);
    in
    pkgs.linkFarm "landfall-layouts" (lib.mapAttrsToList
      (n: _: {
        name = "${lib.removeSuffix ".nix" n}.json";
        path = pkgs.writeText "${lib.removeSuffix ".nix" n}.json" (builtins.toJSON (import (cfg.layouts + "/${n}")));
      })
      files);

  # The per-architecture netboot images, as ARTIFACTS/x86_64 and ARTIFACTS/arm64
  # (server/src/artifact_dir.rs `image_dir`): a machine of an architecture
  # without an image holds with that reason instead of booting the other one.
  netbootImages = lib.filterAttrs (_: image: image != null) cfg.netboot;
  netbootArtifacts =
    if netbootImages == { } then null
    else pkgs.linkFarm "landfall-artifacts" (lib.mapAttrsToList (name: path: { inherit name path; }) netbootImages);

  artifactsText = if cfg.artifacts == null then null else "${cfg.artifacts}";

  # nixpkgs' iPXE for an architecture (pkgs/by-name/ip/ipxe/package.nix builds
  # bin/undionly.kpxe and bin-x86_64-efi/{ipxe,snp}.efi on x86_64,
  # bin-arm64-efi/{ipxe,snp}.efi on aarch64, all copied to the top of $out):
  # the host's own, else cross-compiled; with `ipxe.embedChain`, built with
  # the chain script to this server embedded (../packages/ipxe-chain.nix).
  hostArch = if pkgs.stdenv.hostPlatform.isAarch64 then "arm64" else "x86_64";
  ipxeFor = arch:
    let
      set =
        if arch == hostArch then pkgs
        else if arch == "arm64" then pkgs.pkgsCross.aarch64-multiplatform
        else pkgs.pkgsCross.gnu64;
    in
    if cfg.ipxe.embedChain
    then set.callPackage ../packages/ipxe-chain.nix { serverUrl = bootBase; }
    else set.ipxe;
  # iPXE is served for the architectures that have a netboot image (the
  # host's own when `netboot` is not used).
  servesArch = arch: if netbootImages == { } then arch == hostArch else netbootImages ? ${arch};
  ipxeDefault = arch: file: if servesArch arch then "${ipxeFor arch}/${file}" else null;
  # The boot URL base an embedded chain script uses.
  bootBase =
    if cfg.publicUrl != null then cfg.publicUrl
    else "http://${toString cfg.dhcp.serverAddress}:${toString cfg.port}";

  # A directory outside the store (`artifacts = "/srv/landfall/artifacts"`)
  # exists only on the server, and the server refuses a missing one: the
  # build-time check gets an empty stand-in beside the config instead; the
  # service's ExecStartPre checks the real one before every start.
  artifactsOnServer = artifactsText != null && !(lib.hasPrefix builtins.storeDir artifactsText);

  tlsListen =
    if cfg.tls.port == null then null
    else if lib.hasInfix ":" cfg.listenAddress
    then "[${cfg.listenAddress}]:${toString cfg.tls.port}"
    else "${cfg.listenAddress}:${toString cfg.tls.port}";

  # The address Prometheus scrapes: this host over loopback when the server
  # listens on every address.
  scrapeHost =
    if cfg.listenAddress == "0.0.0.0" then "127.0.0.1"
    else if cfg.listenAddress == "::" then "[::1]"
    else if lib.hasInfix ":" cfg.listenAddress then "[${cfg.listenAddress}]"
    else cfg.listenAddress;

  renderArgs = {
    inherit (cfg) publicUrl bootTokenTtl eventRetention enroll roles machines webhooks;
    metrics = { inherit (cfg.metrics) tokenFile plainHttp; };
    dashboard = {
      inherit (cfg.dashboard) sessionTtl maxFailedLogins loginWindow;
      enabled = cfg.dashboard.enable;
      # Users are keyed by name in Nix; landfall.toml lists them.
      users = lib.mapAttrsToList (name: u: { inherit name; inherit (u) role passwordHash passwordHashFile; }) cfg.dashboard.users;
    };
    tls = {
      listen = tlsListen;
      inherit (cfg.tls) certFile keyFile sans publicUrl;
    };
    artifacts = artifactsText;
    # "${path}" copies a CA given as a Nix path into the store (toString would
    # keep the path of the operator's checkout).
    vault = cfg.vault // lib.optionalAttrs (cfg.vault.caFile != null) { caFile = "${cfg.vault.caFile}"; };
    # Only the operator's words: the image's own `init=` and kernel parameters
    # come from ARTIFACTS/cmdline, which the server reads at every boot
    # (server/src/boot.rs image_cmdline), so the kernel line and the kernel and
    # initrd it boots come from the same directory.
    inherit (cfg) kernelArgs;
    layouts = if cfg.layouts == null then null else layoutsDir;
    # `[netboot]`: the iPXE binaries only when DHCP or TFTP serves them (so a
    # server without network boot does not build iPXE).
    netbootSection = lib.optionalAttrs netbootOn {
      dhcp = cfg.dhcp.mode;
      inherit (cfg.dhcp) interface serverAddress tftp pool;
      ipxeBios = cfg.ipxe.bios;
      ipxeEfiX86_64 = cfg.ipxe.efiX86_64;
      ipxeEfiArm64 = cfg.ipxe.efiArm64;
    };
  };

  # The built-in DHCP or TFTP runs: UDP 67/4011 and 69 are below 1024.
  netbootOn = cfg.dhcp.mode != "off" || cfg.dhcp.tftp == true;
  # The UDP ports that listen: TFTP (69) when it runs, DHCP (67) in both modes,
  # the PXE boot server port (4011) of proxyDHCP (server/src/netboot/dhcp.rs).
  tftpOn = if cfg.dhcp.tftp == null then cfg.dhcp.mode != "off" else cfg.dhcp.tftp;
  netbootPorts = lib.optional tftpOn 69
    ++ lib.optional (cfg.dhcp.mode != "off") 67
    ++ lib.optional (cfg.dhcp.mode == "proxy") 4011;
  bindLow = cfg.port < 1024 || netbootOn;

  rendered = renderToml renderArgs;

  renderedForCheck =
    if artifactsOnServer then renderToml (renderArgs // { artifacts = "artifacts-stand-in"; }) else rendered;

  # Checked at build time by the server itself, so `nixos-rebuild build` fails on
  # a configuration the server would refuse. Not with [vault], a metrics token,
  # webhooks or dashboard users' hash files: the check reads their token, key
  # and hash files, which exist only on the server at run time.
  runtimeFiles = cfg.vault.address != null || cfg.metrics.tokenFile != null || cfg.webhooks != [ ]
    || lib.any (u: u.passwordHashFile != null) (lib.attrValues cfg.dashboard.users);
  configFile =
    if cfg.checkConfig && !runtimeFiles then
      pkgs.runCommand "landfall.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          text = rendered;
          checkText = renderedForCheck;
          passAsFile = [ "text" "checkText" ];
        }
        ''
          mkdir artifacts-stand-in
          cp "$checkTextPath" landfall.toml
          landfall serve --check-config --config landfall.toml --data "$TMPDIR/data"
          cp "$textPath" $out
        ''
    else
      pkgs.writeText "landfall.toml" rendered;

  diskMap = mkOption {
    type = types.attrsOf types.str;
    default = { };
    example = { main = "/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNX0R123456"; };
    description = ''
      Layout disk name -> device (`/dev/disk/by-id/...`) or `"auto"` (`disks`).
    '';
  };

  roleModule = { name, ... }: {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
        description = "Free text shown to operators.";
      };
      layout = mkOption {
        type = types.nullOr (types.strMatching "[a-z0-9-]+");
        default = null;
        example = "single-disk";
        description = "disko layout (file name without .nix in `layouts`) for machines of role `${name}`.";
      };
      wipe = mkOption {
        type = types.enum [ "never" "always" ];
        default = "never";
        description = "Whether the agent may destroy existing data on the target disks.";
      };
      luksUnlock = mkOption {
        type = types.enum [ "initrd_key" "prompt" "tpm2" ];
        default = "initrd_key";
        description = ''
          How installed machines of role `${name}` open their layout's LUKS volumes at boot:
          `initrd_key` (unattended: the key in the installed initrd, on the boot partition),
          `prompt` (a passphrase at the console at every boot) or `tpm2` (unattended and bound
          to the machine: the agent enrols its TPM2; the installed systemd initrd unseals it).
          See landfall's docs/disks.md.
        '';
      };
      tpm2Pcrs = mkOption {
        type = types.nullOr (types.listOf (types.ints.between 0 23));
        default = null;
        example = [ 7 ];
        description = ''
          With `luksUnlock = "tpm2"`: the PCRs the key is sealed to; `null` is the server's
          default `[ 7 ]` (Secure Boot state), `[ ]` binds to the TPM alone (docs/disks.md).
        '';
      };
      disks = diskMap;
      vault = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            approle = mkOption {
              type = types.str;
              example = "landfall-workstation";
              description = "AppRole the role's machines log in with (the server mints its wrapped secret_id).";
            };
            reads = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "hosts/{hostname}" "roles/workstation" ];
              description = "KV v2 paths under `vault.kvMount` the agent reads; `{hostname}` and `{role}` are replaced.";
            };
          };
        });
        default = null;
        description = "Vault AppRole and KV paths of role `${name}` (`[roles.${name}.vault]`; needs `services.landfall.vault`).";
      };
      secretFiles = mkOption {
        type = types.listOf (types.submodule {
          options = {
            path = mkOption {
              type = types.str;
              example = "/var/lib/sops-nix/key.txt";
              description = "Absolute path of the file in the installed system.";
            };
            from = mkOption {
              type = types.str;
              example = "kv:hosts/{hostname}#age_key";
              description = "`kv:PATH#KEY`, PATH one of the role's `vault.reads`.";
            };
            mode = mkOption {
              type = types.str;
              default = "0600";
              description = "Octal permission bits.";
            };
            owner = mkOption {
              type = types.str;
              default = "root";
              description = "Owner (user name in the installed system).";
            };
            group = mkOption {
              type = types.str;
              default = "root";
              description = "Group.";
            };
          };
        });
        default = [ ];
        description = "Files the agent writes into the target from Vault secrets (`[[roles.${name}.secret_files]]`).";
      };
      flake = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "git+https://git.lan/fleet#{hostname}";
        description = ''
          What the agent installs: `nixos-install --flake REF#ATTR` (`{hostname}` and `{role}`
          are replaced). Beside `system`: the source written into the target's
          `/etc/nixos/flake.nix`.
        '';
      };
      system = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/nix/store/00000000000000000000000000000000-nixos-system-ws-01-26.05";
        description = "A prebuilt system closure, copied from `cache` (usually set per machine).";
      };
      cache = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://cache.lan:5000";
        description = "Binary cache holding `system` (required with `system`).";
      };
      checks = mkOption {
        type = types.listOf (types.attrsOf (types.oneOf [ types.str types.int types.bool ]));
        default = [ ];
        example = [
          { kind = "ssh"; }
          { name = "home"; kind = "smb"; mountpoint = "/home/alice"; }
        ];
        description = ''
          First-boot checks of role `${name}` (`[[roles.${name}.checks]]`): `kind` is one of
          ssh, rdp, vnc, smb, tcp, unit, path, hostname, with that kind's fields (docs/verify.md).
        '';
      };
    };
  };

  installOverride = what: mkOption {
    type = types.nullOr types.str;
    default = null;
    description = "This machine's `${what}`; overrides the role's.";
  };

  machineModule = { name, ... }: {
    options = {
      hostname = mkOption {
        type = types.str;
        default = name;
        defaultText = lib.literalExpression "<name>";
        description = "RFC 1123 hostname; defaults to the attribute name.";
      };
      mac = mkOption {
        type = types.strMatching "([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}";
        example = "52:54:00:12:01:01";
        description = "MAC address of the NIC the machine PXE-boots from.";
      };
      role = mkOption {
        type = types.strMatching "[a-z0-9-]+";
        example = "workstation";
        description = "Name of a role in `services.landfall.roles`.";
      };
      layout = mkOption {
        type = types.nullOr (types.strMatching "[a-z0-9-]+");
        default = null;
        description = "disko layout for this machine; overrides the role's.";
      };
      disks = diskMap;
      flake = installOverride "flake";
      system = installOverride "system";
      cache = installOverride "cache";
    };
  };
in
{
  options.services.landfall = {
    enable = mkEnableOption "the landfall provisioning server";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../packages/landfall.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ../packages/landfall.nix { }";
      description = "The landfall server package.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "10.0.0.1";
      description = "Address to listen on (`--listen ADDRESS:PORT`); `::` for all IPv6 and IPv4 addresses.";
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      description = "TCP port for iPXE scripts, artifacts and the API.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall (machines fetch boot.ipxe, artifacts and call the API on it).";
    };

    # Several servers (one per rack or building) sharing one state
    # (landfall's docs/operator-guide.md, "Several servers, one PostgreSQL").
    database = mkOption {
      type = types.nullOr (types.strMatching "postgres(ql)?://.*");
      default = null;
      example = "postgres://landfall@db.lan:5432/landfall";
      description = ''
        PostgreSQL URL of the state several landfall servers share (`serve --database`);
        null: embedded SQLite in `dataDir`. It lands in the Nix store: no password here
        (use `databaseEnvironmentFile`, or password-less authentication).
      '';
    };
    databaseEnvironmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/landfall-database.env";
      description = ''
        A file with `LANDFALL_DATABASE=postgres://landfall:PASSWORD@db.lan/landfall`
        (systemd `EnvironmentFile`), read by the service: the URL with its password stays
        out of the Nix store. `database`, when set too, wins.
      '';
    };

    # HTTPS for the agent and admin API (docs/security.md, TLS); `port` keeps
    # serving boot scripts and artifacts in clear for the firmware's iPXE.
    tls = {
      port = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 8443;
        description = ''
          HTTPS port (`server.listen_tls` on `listenAddress`): setting it turns TLS
          on. Without `certFile`, the server makes a CA and a certificate in
          `dataDir`/tls at its first start; `landfall ca-fingerprint --data DIR`
          prints the CA's fingerprint for the installer image
          (`landfall.installer.serverCa`) or the kernel line.
        '';
      };
      certFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/landfall/own-tls/server.pem";
        description = "Your own PEM certificate chain, leaf first (`server.tls_cert`); a path on the server, outside the Nix store.";
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/landfall/own-tls/server.key";
        description = "The key of `certFile` (`server.tls_key`); a path on the server, outside the Nix store.";
      };
      sans = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "landfall.lan" "10.0.0.1" ];
        description = "More names of the generated certificate (`server.tls_sans`), besides the hosts of `publicUrl` and `tls.publicUrl`.";
      };
      publicUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://landfall.lan:8443";
        description = "The https URL agents use (`server.public_tls_url`). Default: https:// + the boot URL's host + `tls.port`.";
      };
    };

    dataDir = mkOption {
      type = types.path;
      default = "/var/lib/landfall";
      description = ''
        State directory: the SQLite database (WAL) and the admin token
        (`admin.token`, 0600). Under /var/lib it is created as the service's
        StateDirectory.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "landfall";
      description = "User the server runs as (created when left at the default).";
    };

    group = mkOption {
      type = types.str;
      default = "landfall";
      description = "Group of the server (the data directory is 0750 for it; the admin token stays 0600 for `user`).";
    };

    publicUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "http://10.0.0.1:8080";
      description = ''
        Base URL machines use to reach the server (`server.public_url`). Default: the
        Host header of each boot.ipxe request.
      '';
    };

    netboot = {
      x86_64 = mkOption {
        type = types.nullOr types.package;
        default = null;
        defaultText = lib.literalMD "`landfall.packages.x86_64-linux.netboot` (flake module) where this configuration can build it";
        description = ''
          The x86_64 netboot image directory (iso-module/netboot.nix,
          `system.build.landfallNetboot`: vmlinuz, initrd, netboot.ipxe, cmdline),
          served as ARTIFACTS/x86_64 to machines whose iPXE says `''${buildarch}`
          `x86_64` or `i386` (BIOS undionly.kpxe). Its `cmdline` file (`init=` of
          the image's system and its kernel parameters) is read by the server
          from that directory, so `init=` always belongs to the kernel and initrd
          served.
        '';
      };
      arm64 = mkOption {
        type = types.nullOr types.package;
        default = null;
        defaultText = lib.literalMD "`landfall.packages.aarch64-linux.netboot` (flake module) where this configuration can build it";
        description = "The arm64 netboot image directory, served as ARTIFACTS/arm64 (`\${buildarch}` `arm64`).";
      };
    };

    artifacts = mkOption {
      type = types.nullOr types.path;
      default = netbootArtifacts;
      defaultText = lib.literalMD "a directory with `x86_64` and `arm64` linked to `netboot.x86_64` and `netboot.arm64` (those not null)";
      description = ''
        Directory the server serves as /artifacts/ (`server.artifacts`): per
        architecture (`x86_64/`, `arm64/`, each with `vmlinuz`, `initrd` and, for
        a NixOS netboot image, `cmdline` with its `init=`), or flat for one
        architecture. The server puts the image's `cmdline` on the install kernel
        line, so kernel, initrd and `init=` all come from one directory.
      '';
    };

    layouts = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = lib.literalExpression "./disko-layouts";
      description = ''
        Directory of disko layouts (`NAME.nix`, plain attribute sets as in
        disko-layouts/). Each is rendered to `NAME.json` at build time and the
        rendered directory becomes `server.layouts`. Required when a role or
        machine names a layout.
      '';
    };

    kernelArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "console=ttyS0,115200n8" "landfall.final=poweroff" ];
      description = ''
        Extra words on the install kernel line (`server.kernel_args`), after the
        image's own ARTIFACTS/cmdline. Never the image's `init=`: that comes with
        the artifacts.
      '';
    };

    bootTokenTtl = mkOption {
      type = types.ints.positive;
      default = 3600;
      description = "Lifetime of a boot token in seconds (`server.boot_token_ttl`).";
    };

    eventRetention = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "30d";
      description = ''
        How long the events of an install attempt that is over are kept
        (`server.event_retention`): a duration such as "30d" or "12h" (at
        least "1h"), or "forever". Null: the server's default, 90 days.
      '';
    };

    enroll = {
      unknown = mkOption {
        type = types.enum [ "hold" "install" ];
        default = "hold";
        description = "What a MAC not listed in `machines` gets: held until listed, or installed with `enroll.role`.";
      };
      role = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Role of auto-enrolled machines (required with `unknown = \"install\"`).";
      };
    };

    roles = mkOption {
      type = types.attrsOf (types.submodule roleModule);
      default = { };
      example = lib.literalExpression ''
        {
          workstation = { description = "desk PCs"; layout = "single-disk"; wipe = "always"; };
          server = { layout = "raid1"; };
        }
      '';
      description = "Roles (`[roles.NAME]`); names are `[a-z0-9-]`.";
    };

    machines = mkOption {
      type = types.attrsOf (types.submodule machineModule);
      default = { };
      example = lib.literalExpression ''
        {
          ws-01 = { mac = "52:54:00:12:01:01"; role = "workstation"; };
          srv-01 = { mac = "52:54:00:12:02:01"; role = "server"; layout = "raid1"; };
        }
      '';
      description = "Known machines, keyed by hostname (`[[machines]]`).";
    };

    vault = {
      address = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://vault.example.com:8200";
        description = ''
          Vault/OpenBao address (`[vault] address`). The server is the trusted
          orchestrator: for each install it mints a response-wrapped, single-use
          AppRole secret_id for the machine's role. Null: no `[vault]` section.
        '';
      };
      caFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "PEM of the CA that signs Vault's certificate; the only root trusted, and sent to the agents (required with https).";
      };
      tokenFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/landfall-vault-token";
        description = ''
          File with the server's own Vault token (`update` on
          `auth/APPROLE_MOUNT/role/*/secret-id`), readable by `user`. A string so
          the token never enters the Nix store; read at every mint, so a Vault agent
          may rotate it.
        '';
      };
      insecureHttp = mkOption {
        type = types.bool;
        default = false;
        description = "Allow an http:// address (development only: tokens travel in clear).";
      };
      wrapTtl = mkOption {
        type = types.str;
        default = "120s";
        description = "Lifetime of the wrap token around each secret_id.";
      };
      kvMount = mkOption {
        type = types.str;
        default = "landfall";
        description = "Mount of the KV v2 engine holding the secrets.";
      };
      approleMount = mkOption {
        type = types.str;
        default = "approle";
        description = "Mount of the AppRole auth method.";
      };
    };

    dhcp = {
      mode = mkOption {
        type = types.enum [ "off" "proxy" "full" ];
        default = "off";
        description = ''
          The built-in DHCP (`[netboot] dhcp`): `proxy` answers PXE and UEFI HTTP
          Boot clients with boot options beside the site's DHCP server (UDP 67 and
          4011), `full` hands out addresses from `pool` on an isolated provisioning
          network. `off`: the site's DHCP points here (`landfall dhcp-config`).
          TFTP (UDP 69) serves the iPXE binaries whenever DHCP is on.
        '';
      };
      interface = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "eth1";
        description = "The boot network's interface (required unless `mode` is off).";
      };
      serverAddress = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.77.0.1";
        description = "This server's IPv4 address on the boot network: TFTP next-server, DHCP server id.";
      };
      tftp = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Serve the iPXE binaries over TFTP; default: on when `mode` is not off.";
      };
      pool = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            start = mkOption { type = types.str; example = "10.77.0.100"; description = "First address."; };
            end = mkOption { type = types.str; example = "10.77.0.200"; description = "Last address."; };
            prefixLen = mkOption { type = types.ints.between 8 30; example = 24; description = "Prefix length of the network."; };
            router = mkOption { type = types.nullOr types.str; default = null; description = "Default gateway handed out."; };
            dns = mkOption { type = types.listOf types.str; default = [ ]; description = "DNS servers handed out."; };
            leaseTime = mkOption { type = types.str; default = "1h"; description = "Lease lifetime."; };
          };
        });
        default = null;
        description = "The address pool of `mode = \"full\"` (`[netboot.pool]`); leases persist in the database.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = netbootOn;
        defaultText = lib.literalExpression "DHCP or TFTP on";
        description = "Open the UDP ports that listen on `interface` (all interfaces when it is null): 69 with TFTP, 67 with DHCP, 4011 with proxyDHCP.";
      };
    };

    ipxe = {
      embedChain = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Build the iPXE binaries below with the server's chain script embedded
          (nixpkgs' `ipxe` `embedScript`; ../packages/ipxe-chain.nix): `dhcp`, then
          `chain` to `publicUrl` (else `http://dhcp.serverAddress:port`)/boot.ipxe.
          Such an iPXE goes straight to this server under any DHCP server, and on
          a USB stick (`ipxe.usb`) too. Off: nixpkgs' binaries from the cache,
          which reach the server through DHCP (`dhcp.mode` or `landfall dhcp-config`).
        '';
      };
      bios = mkOption {
        type = types.nullOr types.path;
        default = ipxeDefault "x86_64" "undionly.kpxe";
        defaultText = lib.literalMD "`\${pkgs.ipxe}/undionly.kpxe` when x86_64 is served (`pkgs.pkgsCross.gnu64.ipxe` on aarch64)";
        description = "iPXE for BIOS PXE clients (arch 0).";
      };
      efiX86_64 = mkOption {
        type = types.nullOr types.path;
        default = ipxeDefault "x86_64" "ipxe.efi";
        defaultText = lib.literalMD "`\${pkgs.ipxe}/ipxe.efi` when x86_64 is served (`pkgs.pkgsCross.gnu64.ipxe` on aarch64)";
        description = "iPXE for x86-64 UEFI PXE (arch 7, 9) and HTTP Boot (arch 16) clients.";
      };
      efiArm64 = mkOption {
        type = types.nullOr types.path;
        default = ipxeDefault "arm64" "snp.efi";
        defaultText = lib.literalMD "`\${pkgs.pkgsCross.aarch64-multiplatform.ipxe}/snp.efi` when arm64 is served (`pkgs.ipxe` on aarch64)";
        description = ''
          iPXE for arm64 UEFI PXE (arch 11) and HTTP Boot (arch 19) clients. `snp.efi`
          drives the NIC through the firmware's SNP, as few arm64 NICs have an iPXE
          driver of their own.
        '';
      };
    };

    metrics = {
      tokenFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/landfall-metrics-token";
        description = ''
          File with the bearer token `GET /metrics` requires (`[metrics] token_file`);
          null: `/metrics` is open. A string so the token stays out of the Nix store;
          with `prometheusScrape` the `prometheus` user must be able to read it.
        '';
      };
      plainHttp = mkOption {
        type = types.bool;
        default = cfg.metrics.prometheusScrape && cfg.tls.port != null;
        defaultText = lib.literalExpression "prometheusScrape && tls.port != null";
        description = ''
          With TLS on, serve `/metrics` on the plain-HTTP `port` too (`[metrics] plain_http`):
          the local Prometheus scrapes it there, as it cannot read the CA the server makes
          in `dataDir`.
        '';
      };
      prometheusScrape = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Add the server to this host's Prometheus (`services.prometheus.scrapeConfigs`, job
          `landfall`, target `port` on `listenAddress`, loopback when that is a wildcard),
          with `tokenFile` as its `bearer_token_file`.
        '';
      };
    };

    # `[dashboard]` (server/src/config/dashboard.rs): the web dashboard under
    # /ui/ (landfall's docs/operator-guide.md, "The dashboard").
    dashboard = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Serve the technicians' dashboard under `/ui/` (`[dashboard] enabled`); on the
          HTTPS port when `tls.port` is set. The admin token (`dataDir`/admin.token) logs
          in as an operator; `users` adds password logins.
        '';
      };
      sessionTtl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "12h";
        description = "How long a login lasts (`session_ttl`, 1m to 30d); null: the server's default, 8h.";
      };
      maxFailedLogins = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 10;
        description = ''
          Failed logins allowed per client address and per user name in `loginWindow`
          (`max_failed_logins`); past it every try waits for the window's end. null: 5.
        '';
      };
      loginWindow = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "15m";
        description = "The window of `maxFailedLogins` (`login_window`, 10s to 1d); null: 5m.";
      };
      users = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            role = mkOption {
              type = types.enum [ "viewer" "operator" ];
              description = "`viewer` reads every page; `operator` also retries, reinstalls and approves machines.";
            };
            passwordHashFile = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "/run/secrets/landfall-dashboard-tech";
              description = ''
                File with the user's argon2 hash (PHC string, as `landfall hash-password`
                prints it), readable by `user` (`password_hash_file`). A string so the hash
                stays out of the Nix store; read at every start.
              '';
            };
            passwordHash = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "$argon2id$v=19$m=19456,t=2,p=1$...";
              description = ''
                The argon2 hash itself (`password_hash`). It ends up in the world-readable
                Nix store: prefer `passwordHashFile`.
              '';
            };
          };
        });
        default = { };
        example = lib.literalExpression ''
          {
            tech = { role = "viewer"; passwordHashFile = "/run/secrets/landfall-tech"; };
            lead = { role = "operator"; passwordHashFile = "/run/secrets/landfall-lead"; };
          }
        '';
        description = "Dashboard users by login name (`[[dashboard.users]]`), each with one of `passwordHashFile` or `passwordHash`.";
      };
    };

    webhooks = mkOption {
      type = types.listOf (types.submodule {
        options = {
          url = mkOption {
            type = types.str;
            example = "https://hooks.lan/landfall";
            description = "Where the JSON `POST` of each state change goes.";
          };
          states = mkOption {
            type = types.nullOr (types.listOf types.str);
            default = null;
            example = [ "failed" "compromised" "discovered" ];
            description = "Machine states to tell about; null: failed, compromised, installed, ready, degraded, identity_held.";
          };
          roles = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "Roles to tell about; empty: every machine.";
          };
          secretFile = mkOption {
            type = types.str;
            example = "/run/secrets/landfall-webhook";
            description = "File with the HMAC-SHA256 key of `X-Landfall-Signature` (at least 16 characters), readable by `user`.";
          };
          caFile = mkOption {
            type = types.nullOr types.path;
            default = null;
            description = "PEM CA to trust for an https `url` instead of the public roots.";
          };
        };
      });
      default = [ ];
      description = "Webhooks told of machine state changes (`[[webhooks]]`; landfall's docs/operator-guide.md, \"Webhooks\").";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `landfall serve --check-config` on the rendered landfall.toml at build
        time (skipped with `vault.address`, `metrics.tokenFile`, `webhooks` or a dashboard
        user's `passwordHashFile`: the check reads their token, key and hash files).
        The service checks it again before every start.
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = lib.literalMD "landfall.toml rendered from the options above";
      description = "The generated landfall.toml (read-only; for inspection and tests).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.dhcp.mode == "off" || (cfg.dhcp.interface != null && cfg.dhcp.serverAddress != null);
        message = "services.landfall.dhcp.mode = \"${cfg.dhcp.mode}\" needs services.landfall.dhcp.interface and services.landfall.dhcp.serverAddress.";
      }
      {
        assertion = cfg.dhcp.mode != "full" || cfg.dhcp.pool != null;
        message = "services.landfall.dhcp.mode = \"full\" needs services.landfall.dhcp.pool.";
      }
      {
        assertion = !cfg.ipxe.embedChain || cfg.publicUrl != null || cfg.dhcp.serverAddress != null;
        message = "services.landfall.ipxe.embedChain needs services.landfall.publicUrl (or dhcp.serverAddress): the URL the embedded script chains to.";
      }
      {
        assertion = cfg.enroll.unknown != "install" || cfg.enroll.role != null;
        message = "services.landfall.enroll.unknown = \"install\" needs services.landfall.enroll.role.";
      }
      {
        assertion = cfg.layouts != null
          || lib.all (x: x.layout == null) (lib.attrValues cfg.roles ++ lib.attrValues cfg.machines);
        message = "services.landfall: a role or machine names a layout; set services.landfall.layouts to the directory of disko layouts.";
      }
      {
        assertion = cfg.vault.address == null || cfg.vault.tokenFile != null;
        message = "services.landfall.vault.address needs services.landfall.vault.tokenFile.";
      }
      {
        assertion = lib.all (u: (u.passwordHash == null) != (u.passwordHashFile == null)) (lib.attrValues cfg.dashboard.users);
        message = "services.landfall.dashboard.users: give each user exactly one of passwordHashFile or passwordHash.";
      }
      {
        assertion = lib.all (m: cfg.roles ? ${m.role}) (lib.attrValues cfg.machines);
        message = "services.landfall.machines: every machine's role must be defined in services.landfall.roles.";
      }
    ];

    # nixpkgs nixos/modules/services/monitoring/prometheus/default.nix: scrapeConfigs
    # is a list of promTypes.scrape_config (job_name, static_configs.targets,
    # bearer_token_file); a list option, so this entry joins the host's own.
    services.prometheus.scrapeConfigs = mkIf cfg.metrics.prometheusScrape [
      ({
        job_name = "landfall";
        static_configs = [{ targets = [ "${scrapeHost}:${toString cfg.port}" ]; }];
      } // lib.optionalAttrs (cfg.metrics.tokenFile != null) {
        bearer_token_file = cfg.metrics.tokenFile;
      })
    ];

    users.users = mkIf (cfg.user == "landfall") {
      landfall = {
        isSystemUser = true;
        inherit (cfg) group;
        home = cfg.dataDir;
      };
    };
    users.groups = mkIf (cfg.group == "landfall") { landfall = { }; };

    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall ([ cfg.port ] ++ lib.optional (cfg.tls.port != null) cfg.tls.port);
    # DHCP (67), TFTP (69), the PXE boot server port of proxyDHCP (4011): those that listen.
    networking.firewall.allowedUDPPorts = mkIf (cfg.dhcp.openFirewall && cfg.dhcp.interface == null) netbootPorts;
    networking.firewall.interfaces = mkIf (cfg.dhcp.openFirewall && cfg.dhcp.interface != null) {
      ${cfg.dhcp.interface}.allowedUDPPorts = netbootPorts;
    };

    # A data directory outside /var/lib is not a StateDirectory: create it.
    systemd.tmpfiles.rules = lib.optional (cfg.dataDir != "/var/lib/landfall")
      "d ${cfg.dataDir} 0700 ${cfg.user} ${cfg.group} -";

    systemd.services.landfall = {
      description = "landfall provisioning server";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      serviceConfig = {
        Type = "exec";
        User = cfg.user;
        Group = cfg.group;
        ExecStartPre = "${lib.getExe cfg.package} serve --check-config --config ${configFile} --data ${cfg.dataDir}";
        ExecStart = "${lib.getExe cfg.package} serve --config ${configFile} --data ${cfg.dataDir} --listen ${listen}"
          + lib.optionalString (cfg.database != null) " --database ${lib.escapeShellArg cfg.database}";
        EnvironmentFile = mkIf (cfg.databaseEnvironmentFile != null) cfg.databaseEnvironmentFile;
        Restart = "on-failure";
        RestartSec = 2;
        # Connections: the server keeps its connection cap below this
        # (two descriptors each: a socket and an artifact being sent, 128 kept
        # for the rest), so a boot storm or a slowloris never meets EMFILE.
        # Soft and hard alike: the server then has no setrlimit to call (the
        # filter below denies @resources). A stop waits at most
        # [server.http] shutdown_grace_secs (10 s) for requests in flight.
        LimitNOFILE = 65536;
        StateDirectory = mkIf (cfg.dataDir == "/var/lib/landfall") "landfall";
        StateDirectoryMode = "0700"; # the server enforces 0700 at every start too
        ReadWritePaths = mkIf (cfg.dataDir != "/var/lib/landfall") [ cfg.dataDir ];
        UMask = "0027";

        # Hardening (systemd.exec(5)); the server needs the network and its data dir.
        # Ports below 1024: the HTTP port, or DHCP/TFTP (67, 69, 4011). Binding the
        # DHCP sockets to `dhcp.interface` (SO_BINDTODEVICE) needs no capability
        # since Linux 5.7, so no CAP_NET_RAW.
        AmbientCapabilities = mkIf bindLow [ "CAP_NET_BIND_SERVICE" ];
        CapabilityBoundingSet = if bindLow then "CAP_NET_BIND_SERVICE" else "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = !bindLow;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
      };
    };
  };
}

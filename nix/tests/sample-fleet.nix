# A sample fleet as an operator writes it in `services.landfall` (same attribute
# names). nixcheck renders it with nix/lib/landfall-toml.nix and runs
# `landfall serve --check-config` on the result: it must be accepted.
{
  publicUrl = "http://10.0.0.1:8080";
  # The server refuses an artifacts directory that does not exist; nixcheck
  # creates this one beside the rendered landfall.toml (the module passes the
  # netboot build's store path).
  artifacts = "artifacts";
  kernelArgs = [
    "init=/nix/store/00000000000000000000000000000000-nixos-system-landfall-installer/init"
    "console=ttyS0,115200n8"
    "console=tty1"
    "loglevel=4"
  ];
  bootTokenTtl = 1800;
  # services.landfall.dhcp and .ipxe as the module hands them on (here Debian's
  # ipxe package, which ./x installs; the module's default is nixpkgs' ipxe).
  netbootSection = {
    dhcp = "full";
    interface = "eth1";
    serverAddress = "10.77.0.1";
    tftp = null;
    ipxeBios = "/usr/lib/ipxe/undionly.kpxe";
    ipxeEfiX86_64 = "/usr/lib/ipxe/snponly.efi";
    ipxeEfiArm64 = null;
    pool = {
      start = "10.77.0.100";
      end = "10.77.0.200";
      prefixLen = 24;
      router = "10.77.0.1";
      dns = [ "10.77.0.1" ];
      leaseTime = "1h";
    };
  };
  # The repository's layouts, rendered by the server with nix-instantiate.
  # toString: the absolute path of the checkout, not a copy in the Nix store
  # (the module passes its own store path here).
  layouts = toString ../../disko-layouts;
  # A development Vault: plain http needs insecureHttp. nixcheck writes the
  # token file beside the rendered landfall.toml (relative paths are resolved
  # against the config file's directory).
  vault = {
    address = "http://127.0.0.1:8200";
    insecureHttp = true;
    tokenFile = "vault.token";
    kvMount = "landfall";
  };
  enroll = {
    unknown = "hold";
  };
  # `[metrics]` and `[[webhooks]]`: nixcheck writes the token and key files beside
  # the rendered landfall.toml.
  metrics = {
    tokenFile = "metrics.token";
    plainHttp = false;
  };
  # `[dashboard]`: nixcheck writes the hash file beside the rendered landfall.toml
  # (the module passes users as a list, the attribute name as `name`).
  dashboard = {
    enabled = true;
    sessionTtl = "12h";
    maxFailedLogins = 10;
    loginWindow = "15m";
    users = [
      { name = "tech"; role = "viewer"; passwordHash = null; passwordHashFile = "tech.hash"; }
    ];
  };
  webhooks = [
    {
      url = "https://hooks.lan/landfall";
      states = null;
      roles = [ ];
      secretFile = "webhook.key";
      caFile = null;
    }
    {
      url = "http://10.0.0.5:9000/servers";
      states = [ "failed" "compromised" "discovered" ];
      roles = [ "server" ];
      secretFile = "webhook.key";
      caFile = null;
    }
  ];
  roles = {
    workstation = {
      description = "desktop over RDP/VNC, homes on SMB";
      layout = "simple-efi";
      wipe = "always";
      vault = {
        approle = "landfall-workstation";
        reads = [ "hosts/{hostname}" "roles/workstation" ];
      };
      secretFiles = [
        {
          path = "/var/lib/sops-nix/key.txt";
          from = "kv:hosts/{hostname}#age_key";
        }
        {
          path = "/var/lib/landfall/secrets/smb-credentials";
          from = "kv:roles/workstation#smb_credentials";
          mode = "0600";
          owner = "root";
          group = "root";
        }
      ];
      flake = "git+https://git.lan/fleet#{hostname}";
      checks = [
        { kind = "ssh"; }
        { name = "rdp"; kind = "rdp"; port = 3389; }
        { name = "smb-home-alice"; kind = "smb"; mountpoint = "/home/alice"; write_test = true; }
      ];
    };
    server = {
      description = "hardened SSH";
      layout = "two-disk";
      wipe = "never";
      # Unattended LUKS bound to the machine's TPM2 (two-disk has no LUKS: this exercises
      # the renderer and the server's check of both keys).
      luksUnlock = "tpm2";
      tpm2Pcrs = [ 0 7 ];
      disks = {
        system = "auto";
        data = "auto";
      };
      # Prebuilt closures (each machine names its own) from the fleet's cache.
      cache = "http://cache.lan:5000";
      flake = "git+https://git.lan/fleet#{hostname}";
      checks = [
        { kind = "unit"; unit = "sshd.service"; }
      ];
    };
    "lab-kiosk" = { };
  };
  machines = {
    ws-01 = {
      mac = "52:54:00:12:01:01";
      role = "workstation";
    };
    ws-02 = {
      mac = "52-54-00-12-01-02";
      role = "workstation";
    };
    srv-01 = {
      mac = "52:54:00:12:02:01";
      role = "server";
      disks.data = "/dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0000001";
      system = "/nix/store/00000000000000000000000000000000-nixos-system-srv-01-26.05";
    };
    kiosk = {
      hostname = "kiosk-hall";
      mac = "52:54:00:12:03:01";
      role = "lab-kiosk";
    };
  };
}

# landfall.toml (server/src/config/schema.rs) from the values of `services.landfall`
# (nix/modules/server.nix). builtins only: the module calls it with its option
# values, and nixcheck calls it on nix/tests/sample-fleet.nix without nixpkgs, so
# the file the module writes is the file `landfall serve --check-config` accepts.
#
# Missing attributes take the server's own defaults (they are simply not written);
# empty `disks` maps, `checks` lists and kernel arguments are left out too.
let
  inherit (builtins) attrNames concatStringsSep isList mapAttrs;
  toTOML = import ./toml.nix;

  nonEmpty = v: if v == { } || v == [ ] || v == "" then null else v;
  optString = v: if v == null then null else toString v;
in
cfg:
let
  enroll = cfg.enroll or { };
  machines = cfg.machines or { };
  kernelArgs = cfg.kernelArgs or [ ];
  vault = cfg.vault or { };
  tls = cfg.tls or { };
  # `[netboot]` (services.landfall.dhcp and .ipxe): only what is set.
  nb = cfg.netbootSection or { };
  pool = nb.pool or null;
  metrics = cfg.metrics or { };
  dashboard = cfg.dashboard or { };
  dashboardSection = {
    # true is the server's default: only `false` is written.
    enabled = if (dashboard.enabled or true) then null else false;
    session_ttl = dashboard.sessionTtl or null;
    max_failed_logins = dashboard.maxFailedLogins or null;
    login_window = dashboard.loginWindow or null;
    users = nonEmpty (map
      (u: {
        inherit (u) name role;
        password_hash = u.passwordHash or null;
        password_hash_file = optString (u.passwordHashFile or null);
      })
      (dashboard.users or [ ]));
  };
in
toTOML {
  server = {
    public_url = cfg.publicUrl or null;
    # toString: the module passes the netboot package (a derivation) or a path.
    artifacts = optString (cfg.artifacts or null);
    layouts = optString (cfg.layouts or null);
    kernel_args = nonEmpty (if isList kernelArgs then concatStringsSep " " kernelArgs else kernelArgs);
    boot_token_ttl = cfg.bootTokenTtl or null;
    event_retention = cfg.eventRetention or null;
    # HTTPS (docs/security.md, TLS): `listenTls` is "ADDRESS:PORT" or null.
    listen_tls = tls.listen or null;
    tls_cert = optString (tls.certFile or null);
    tls_key = optString (tls.keyFile or null);
    tls_sans = nonEmpty (tls.sans or [ ]);
    public_tls_url = tls.publicUrl or null;
  };
  enroll = {
    unknown = enroll.unknown or null;
    role = enroll.role or null;
  };
  # `[vault]` only when an address is set.
  vault =
    if (vault.address or null) == null then null else {
      inherit (vault) address;
      ca_file = optString (vault.caFile or null);
      token_file = optString (vault.tokenFile or null);
      insecure_http = vault.insecureHttp or null;
      wrap_ttl = vault.wrapTtl or null;
      kv_mount = vault.kvMount or null;
      approle_mount = vault.approleMount or null;
    };
  roles = mapAttrs
    (_: r: {
      description = r.description or null;
      layout = r.layout or null;
      wipe = r.wipe or null;
      luks_unlock = r.luksUnlock or null;
      # [ ] (the TPM alone) is a value here, not "unset".
      tpm2_pcrs = r.tpm2Pcrs or null;
      disks = nonEmpty (r.disks or { });
      vault = r.vault or null;
      secret_files = nonEmpty (r.secretFiles or [ ]);
      flake = r.flake or null;
      system = r.system or null;
      cache = r.cache or null;
      checks = nonEmpty (r.checks or [ ]);
    })
    (cfg.roles or { });
  netboot =
    if nb == { } then null else {
      dhcp = nb.dhcp or null;
      interface = nb.interface or null;
      server_address = nb.serverAddress or null;
      tftp = nb.tftp or null;
      ipxe_bios = optString (nb.ipxeBios or null);
      ipxe_efi_x86_64 = optString (nb.ipxeEfiX86_64 or null);
      ipxe_efi_arm64 = optString (nb.ipxeEfiArm64 or null);
      pool =
        if pool == null then null else {
          inherit (pool) start end;
          prefix_len = pool.prefixLen;
          router = pool.router or null;
          dns = nonEmpty (pool.dns or [ ]);
          lease_time = pool.leaseTime or null;
        };
    };
  # `[metrics]` only when something is set; `[[webhooks]]` as listed.
  metrics =
    if (metrics.tokenFile or null) == null && !(metrics.plainHttp or false) then null else {
      token_file = optString (metrics.tokenFile or null);
      plain_http = metrics.plainHttp or null;
    };
  # `[dashboard]` only when something differs from the server's defaults;
  # `[[dashboard.users]]` as listed.
  dashboard = if builtins.all (v: v == null) (builtins.attrValues dashboardSection) then null else dashboardSection;
  webhooks = nonEmpty (map
    (w: {
      inherit (w) url;
      states = w.states or null;
      roles = nonEmpty (w.roles or [ ]);
      secret_file = toString w.secretFile;
      ca_file = optString (w.caFile or null);
    })
    (cfg.webhooks or [ ]));
  # Machines are keyed by hostname in Nix; landfall.toml lists them.
  machines = map
    (name:
      let
        m = machines.${name};
      in
      {
        hostname = m.hostname or name;
        inherit (m) mac role;
        layout = m.layout or null;
        disks = nonEmpty (m.disks or { });
        flake = m.flake or null;
        system = m.system or null;
        cache = m.cache or null;
      })
    (attrNames machines);
}

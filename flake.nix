# landfall: zero-touch NixOS from bare metal. See docs/nix.md for every output
# and docs/operator-guide.md for using them.
#
# The inputs are pinned by revision here (docs/nix.md says how each was checked).
# There is no flake.lock in the repository: it was written on a machine without
# access to GitHub. The first `nix flake lock` on a machine with the network
# writes it (the narHash of these revisions); commit it.
{
  description = "landfall: zero-touch NixOS from bare metal (PXE/iPXE, agent, server)";

  inputs = {
    # A commit of the nixos-25.11 release branch (2026-05-10).
    nixpkgs.url = "github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575";
    disko = {
      # disko v1.13.0 (the `latest` tag, 2026-01-20).
      url = "github:nix-community/disko/de5708739256238fb912c62f03988815db89ec9a";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, disko }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # nixosConfigurations names: "iso", "netboot" (x86_64), "iso-aarch64", ...
      configName = variant: system:
        if system == "x86_64-linux" then variant else "${variant}-${lib.head (lib.splitString "-" system)}";

      installerSystem = variant: system: lib.nixosSystem {
        modules = [
          self.nixosModules.installer
          ./iso-module/${variant}.nix
          { nixpkgs.hostPlatform = system; }
        ];
      };

      flakePackages = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system};
    in
    {
      packages = forAllSystems (pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
        in
        rec {
          landfall-agent = pkgs.pkgsStatic.callPackage ./nix/packages/landfall-agent.nix { };
          # `nix build .#agent`: the name docs/operator-guide.md and users type.
          agent = landfall-agent;
          landfall = pkgs.callPackage ./nix/packages/landfall.nix { };
          iso = self.nixosConfigurations.${configName "iso" system}.config.system.build.isoImage;
          netboot = self.nixosConfigurations.${configName "netboot" system}.config.system.build.landfallNetboot;
          # nixpkgs' iPXE with the server's chain script embedded (nix/packages/ipxe-chain.nix):
          # `.override { serverUrl = "http://10.0.0.1:8080"; }` for your server's URL.
          ipxe-chain = pkgs.callPackage ./nix/packages/ipxe-chain.nix { };
          default = landfall;
        });

      nixosModules = {
        # The installer image's agent service (no image type: add iso-module/iso.nix
        # or iso-module/netboot.nix, as nixosConfigurations below do).
        installer = { lib, pkgs, ... }: {
          imports = [ ./iso-module/default.nix ];
          landfall.installer.package = lib.mkDefault (flakePackages pkgs).landfall-agent;
        };

        # services.landfall with this flake's server and netboot images: each
        # architecture's image where this configuration can build it (its own
        # system, the systems it emulates with binfmt, which NixOS adds to
        # nix.settings.extra-platforms, and its remote builders' systems), so a
        # server without an aarch64 builder is not made to build the arm64 image.
        # Set services.landfall.netboot.arm64 = landfall.packages.aarch64-linux.netboot
        # to have it anyway (built elsewhere, copied in).
        server = { config, lib, pkgs, ... }:
          let
            buildable = [ pkgs.stdenv.hostPlatform.system ]
              ++ lib.toList (config.nix.settings.extra-platforms or [ ])
              ++ config.boot.binfmt.emulatedSystems
              ++ lib.optionals config.nix.distributedBuilds
              (lib.concatMap (m: if m.system != null then [ m.system ] else m.systems) config.nix.buildMachines);
            image = system: if lib.elem system buildable then self.packages.${system}.netboot else null;
          in
          {
            imports = [ ./nix/modules/server.nix ];
            services.landfall = {
              package = lib.mkDefault (flakePackages pkgs).landfall;
              netboot = {
                x86_64 = lib.mkDefault (image "x86_64-linux");
                arm64 = lib.mkDefault (image "aarch64-linux");
              };
            };
          };

        # What installed machines import: verify, roles, disks (disko), secrets.
        target = { lib, pkgs, ... }: {
          imports = [
            disko.nixosModules.disko
            ./nix/modules/target
          ];
          landfall.verify.package = lib.mkDefault (flakePackages pkgs).landfall-agent;
        };
      };

      nixosConfigurations = lib.listToAttrs (lib.concatMap
        (system: map
          (variant: lib.nameValuePair (configName variant system) (installerSystem variant system))
          [ "iso" "netboot" ])
        systems);

      checks = forAllSystems (pkgs:
        let
          packages = flakePackages pkgs;
        in
        {
          inherit (packages) landfall landfall-agent netboot ipxe-chain;
        } // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          # BIOS iPXE in QEMU: x86_64 only, like nixpkgs' biosNetboot test.
          netboot-install = pkgs.testers.runNixOSTest (import ./nix/tests/netboot-install.nix {
            inherit self;
          });
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # Rust toolchain and what `./x test` calls (see PACKAGES in ./x for the
          # Debian names of the same tools).
          packages = with pkgs; [
            cargo
            rustc
            rustfmt
            clippy
            rust-analyzer
            pkg-config
            util-linux # libblkid for the blkid crate
            qemu
            OVMF
            ipxe
            cpio
            kmod
            lshw
            nix
            deadnix
            nixpkgs-fmt
          ];
          nativeBuildInputs = [ pkgs.rustPlatform.bindgenHook ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}

# checks.x86_64-linux.netboot-install: a machine with an empty disk PXE-boots the
# flake's netboot image through the server module and reaches `installed`.
#
#   server  services.landfall (nixosModules.server: artifacts/x86_64 = packages.x86_64-linux.netboot)
#           + dnsmasq handing iPXE clients http://SERVER:8080/boot.ipxe
#           (the operator guide's `dhcp-match=set:ipxe,175` setup)
#   client  a bare QEMU machine started with create_machine, as nixpkgs'
#           nixos/tests/boot.nix (makeNetbootTest) does: SeaBIOS, `-boot order=n`,
#           QEMU's own iPXE NIC ROM, an empty virtio disk, on the test VLAN 1.
#
# Called with `pkgs.testers.runNixOSTest` by flake.nix.
{ self }:
{ config, ... }:
let
  pkgs = config.hostPkgs;
  # Not 52:54:00:12:*: the test driver gives every node's NIC 52:54:00:12:VLAN:NODE
  # (`qemuNicMac` in nixos/lib/qemu-common.nix), so the server on VLAN 1 already has
  # 52:54:00:12:01:01. A locally administered address outside that scheme.
  mac = "02:4c:46:00:01:01";
  # The QEMU binary by its path, not through nixos/lib/qemu-common.nix: that is an
  # internal file whose argument set changes between nixpkgs releases.
  startCommand = pkgs.lib.concatStringsSep " " [
    "${pkgs.qemu_test}/bin/qemu-system-x86_64"
    "-machine accel=kvm:tcg"
    "-cpu max"
    "-m 4096"
    "-netdev vde,id=net0,sock=$QEMU_VDE_SOCKET_1"
    "-device virtio-net-pci,netdev=net0,mac=${mac}"
    "-drive file=$NIX_BUILD_TOP/empty-disk.qcow2,if=virtio,format=qcow2"
    "-boot order=n"
  ];
in
{
  name = "landfall-netboot-install";

  nodes.server = { config, pkgs, ... }: {
    imports = [ self.nixosModules.server ];

    virtualisation.memorySize = 1024;

    services.landfall = {
      enable = true;
      openFirewall = true;
      # The agent stays up after `done` so the test reads the final state.
      kernelArgs = [ "landfall.final=none" ];
      layouts = ../../disko-layouts;
      roles.test = {
        description = "netboot VM test";
        # GPT, ESP and ext4 root on the one (empty) disk: the agent partitions it.
        layout = "simple-efi";
        wipe = "always";
      };
      machines.client = {
        inherit mac;
        role = "test";
      };
    };

    # DHCP for the test VLAN; iPXE clients (option 175) get the server's script.
    services.dnsmasq = {
      enable = true;
      resolveLocalQueries = false;
      settings = {
        port = 0; # no DNS
        interface = "eth1";
        bind-interfaces = true;
        dhcp-range = [ "192.168.1.100,192.168.1.200,1h" ];
        dhcp-match = "set:ipxe,175";
        dhcp-boot = "tag:ipxe,http://${config.networking.primaryIPAddress}:${toString config.services.landfall.port}/boot.ipxe";
      };
    };
    networking.firewall.allowedUDPPorts = [ 67 ];

    environment.systemPackages = [ pkgs.curl pkgs.jq ];
  };

  testScript = ''
    import os
    import subprocess

    server.start()
    server.wait_for_unit("landfall.service")
    server.wait_for_unit("dnsmasq.service")
    server.wait_for_open_port(8080)

    with subtest("the install script carries the served netboot image's init= once, and initrd=initrd"):
        script = server.succeed("curl -sf 'http://127.0.0.1:8080/boot.ipxe?mac=${mac}'")
        t.assertIn("initrd=initrd", script)
        # init= is the served image's own, once (from ARTIFACTS/cmdline, not kernel_args).
        t.assertIn("init=${self.packages.${pkgs.stdenv.hostPlatform.system}.netboot.toplevel}/init", script)
        t.assertEqual(script.count("init=/nix/store/"), 1, script)
        server.succeed("curl -sfI http://127.0.0.1:8080/artifacts/x86_64/vmlinuz")
        server.succeed("curl -sfI http://127.0.0.1:8080/artifacts/x86_64/initrd")

    disk = os.path.join(os.environ["NIX_BUILD_TOP"], "empty-disk.qcow2")
    subprocess.run(["${pkgs.qemu_test}/bin/qemu-img", "create", "-f", "qcow2", disk, "8G"], check=True)

    client = create_machine("${startCommand}", name="client")
    client.start()

    with subtest("the client netboots; the agent registers, partitions the empty disk and reports done"):
        admin = "landfall machines --json --token-file /var/lib/landfall/admin.token"
        server.wait_until_succeeds(
            admin + " | jq -e '.[] | select(.hostname == \"client\") | .state == \"installed\"'",
            timeout=1800,
        )
        detail = "landfall machine client --json --token-file /var/lib/landfall/admin.token"
        server.succeed(
            detail + " | jq -e '[.attempts[-1].events[] | select(.step == \"disks\" and .kind == \"finished\")] | length == 1'"
        )
        print(server.succeed("landfall machine client --token-file /var/lib/landfall/admin.token"))

    client.crash()
  '';
}

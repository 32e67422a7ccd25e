#!/bin/sh
# =====================================================================
#  TEST DOUBLE of nixos-install -- NOT the real program.
# =====================================================================
# landfall's VM tests put this busybox sh script on the test image's PATH
# as `nixos-install`, because no NixOS closure can be built on the test
# machine (no Nix daemon, no store, no substituter). It checks what the
# agent's install step must have done before the real nixos-install runs,
# prints lines shaped like real nixos-install / nix output, and writes
# what activation would: /mnt/etc/hostname and /mnt/etc/NIXOS, plus a
# marker /mnt/etc/landfall-test-double.json with its arguments, and, for a
# /mnt/boot, the installed initrd's view (/mnt/boot/landfall-test-initrd).
#
# Contract (exit 2 and an `error:` line when broken):
#   --root /mnt --no-root-passwd --no-channel-copy, and exactly one of
#   --flake REF#ATTR or --system /nix/store/HASH-nixos-system-HOST-VERSION;
#   /mnt is a mount point (/proc/mounts); /mnt/etc/nixos/hardware-configuration.nix
#   exists and is not empty; with --flake /mnt/etc/nixos/flake.nix exists;
#   /mnt/etc/landfall/verify.json has mode 600 in a 700 directory; an active md array
#   (/proc/mdstat) needs boot.swraid.enable and an ARRAY line, an active thin pool
#   (dmsetup table) services.lvm.boot.thin.enable, an f2fs mount under /mnt "f2fs" in
#   boot.supportedFilesystems (recorded as the marker's "storage").
#
# Failure modes, kernel parameter landfall_test.nixos_install=MODE (from
# /proc/cmdline): ok (default), fail-KIND, fail-once-KIND with KIND one of
# eval, build, download, bootloader. fail-once-KIND fails the first run of
# this boot only (remembered in /run), so a retry succeeds (eval fails only
# with --flake: nothing is evaluated for --system). A failure prints
# the error real nix / switch-to-configuration prints and exits 1.
# hold-once (the restart VM test): the first run of this boot stops in the
# middle of its output, creates /run/landfall-test-double.holding and keeps
# printing a line every 0.5 s until it is killed (with the agent); not
# killed within 300 s, it exits 2. Later runs of the boot are `ok`.
#
# LANDFALL_TEST_DOUBLE_PREFIX=DIR (host tests only) reads DIR/proc/..., works
# on DIR/mnt and remembers in DIR/run instead of the real paths;
# LANDFALL_TEST_DOUBLE_HOLD_SECS=N (host tests only) holds N s instead of 300.

set -u
P=${LANDFALL_TEST_DOUBLE_PREFIX:-}
ME="nixos-install (TEST DOUBLE)"

die() {
    echo "error: $ME: $*" >&2
    exit 2
}

# Pause between lines so the agent's progress events are visible.
tick() { sleep 0.2; }

json() { printf '"%s"' "$(printf %s "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# ---- arguments ------------------------------------------------------
args_json=
for a in "$@"; do args_json="$args_json${args_json:+, }$(json "$a")"; done
root= flake= system= no_passwd= no_channel=
while [ $# -gt 0 ]; do
    case "$1" in
    --root | --flake | --system)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
        --root) root=$2 ;;
        --flake)
            [ -z "$flake" ] || die "--flake given twice"
            flake=$2
            ;;
        --system)
            [ -z "$system" ] || die "--system given twice"
            system=$2
            ;;
        esac
        shift 2
        ;;
    --no-root-passwd) no_passwd=1; shift ;;
    --no-channel-copy) no_channel=1; shift ;;
    *) die "unexpected argument '$1' (the agent passes --root, --no-root-passwd, --no-channel-copy and --flake or --system)" ;;
    esac
done

[ "$root" = /mnt ] || die "--root must be /mnt, got '${root:-<missing>}'"
[ -n "$no_passwd" ] || die "--no-root-passwd missing: nixos-install would prompt for a root password"
[ -n "$no_channel" ] || die "--no-channel-copy missing: the installer has no channel to copy"

attr=
if [ -n "$flake" ] && [ -n "$system" ]; then
    die "both --flake and --system given: exactly one of them"
elif [ -n "$flake" ]; then
    case "$flake" in
    ?*#?*) ;;
    *) die "--flake '$flake' has no '#ATTR' (nixos-install needs the nixosConfigurations attribute)" ;;
    esac
    attr=${flake##*#}
    ref=${flake%#*}
    case "$attr" in
    *[!A-Za-z0-9_-]*) die "--flake attribute '$attr' is not a host name" ;;
    esac
elif [ -n "$system" ]; then
    attr=$(echo "$system" | sed -n 's|^/nix/store/[0-9a-z]\{32\}-nixos-system-\(.*\)-[0-9][0-9]\.[0-9][0-9][^/]*$|\1|p')
    [ -n "$attr" ] || die "--system '$system' is not /nix/store/HASH-nixos-system-HOST-VERSION"
else
    die "neither --flake REF#ATTR nor --system /nix/store/... given"
fi

# ---- the target -----------------------------------------------------
mnt=$P/mnt
awk '$2 == "/mnt" { found = 1 } END { exit !found }' "$P/proc/mounts" 2>/dev/null ||
    die "/mnt is not a mount point (not in /proc/mounts): the disk step must mount the target"
[ -s "$mnt/etc/nixos/hardware-configuration.nix" ] ||
    die "/mnt/etc/nixos/hardware-configuration.nix is missing or empty"
if [ -n "$flake" ]; then
    [ -s "$mnt/etc/nixos/flake.nix" ] || die "/mnt/etc/nixos/flake.nix is missing or empty (--flake)"
fi
v=$mnt/etc/landfall/verify.json
[ -f "$v" ] || die "/mnt/etc/landfall/verify.json is missing"
mode=$(stat -c %a "$v")
[ "$mode" = 600 ] || die "/mnt/etc/landfall/verify.json has mode $mode, want 600"
mode=$(stat -c %a "$mnt/etc/landfall")
[ "$mode" = 700 ] || die "/mnt/etc/landfall has mode $mode, want 700"

# ---- the storage stack (issue 16) ----------------------------------
# What the installed system needs to assemble what the agent made, as the real
# nixos-install would build it in: an active md array needs boot.swraid (and an ARRAY
# line in its mdadmConf), a thin pool services.lvm.boot.thin, an f2fs mount under /mnt
# boot.supportedFilesystems (or the initrd cannot mount it). Recorded in the marker.
hw=$mnt/etc/nixos/hardware-configuration.nix
storage=
has() { grep -q "$1" "$hw"; }
for md in $(awk '$2 == ":" && $3 == "active" { print $1 }' "$P/proc/mdstat" 2>/dev/null); do
    has 'boot\.swraid\.enable = true;' ||
        die "md array $md is active but hardware-configuration.nix lacks boot.swraid.enable = true: the installed system would not assemble it"
    has 'ARRAY /dev/md/' ||
        die "md array $md is active but boot.swraid.mdadmConf has no ARRAY line"
    storage="$storage${storage:+, }$(json "md:$md")"
done
if [ -n "$P" ]; then dmtable=$(cat "$P/dmsetup-table" 2>/dev/null); else dmtable=$(dmsetup table 2>/dev/null); fi
if printf '%s\n' "$dmtable" | grep -q ' thin-pool '; then
    has 'services\.lvm\.boot\.thin\.enable = true;' ||
        die "a thin pool is active but hardware-configuration.nix lacks services.lvm.boot.thin.enable = true"
    storage="$storage${storage:+, }$(json lvm-thin)"
fi
for fs in $(awk '$2 ~ "^/mnt(/|$)" { print $3 }' "$P/proc/mounts" | sort -u); do
    case "$fs" in
    f2fs)
        has 'supportedFilesystems = \[.*"f2fs"' ||
            die "an f2fs filesystem is mounted under /mnt but boot.supportedFilesystems lacks \"f2fs\""
        storage="$storage${storage:+, }$(json fs:f2fs)"
        ;;
    esac
done

# ---- the failure mode -----------------------------------------------
fail= hold=
mode=$(tr ' ' '\n' <"$P/proc/cmdline" 2>/dev/null | sed -n 's/^landfall_test\.nixos_install=//p' | tail -n 1)
case "${mode:-ok}" in
ok) ;;
fail-once-*)
    mkdir -p "$P/run"
    state=$P/run/landfall-test-double.failed-once
    if [ ! -e "$state" ]; then
        : >"$state"
        fail=${mode#fail-once-}
    fi
    ;;
fail-*) fail=${mode#fail-} ;;
hold-once)
    mkdir -p "$P/run"
    state=$P/run/landfall-test-double.held-once
    if [ ! -e "$state" ]; then
        : >"$state"
        hold=1
    fi
    ;;
*) die "unknown landfall_test.nixos_install=$mode (ok, fail-KIND, fail-once-KIND, hold-once)" ;;
esac
case "$fail" in
'' | eval | build | download | bootloader) ;;
*) die "unknown failure kind '$fail' in landfall_test.nixos_install=$mode (eval, build, download, bootloader)" ;;
esac
mkdir -p "$P/run"
runs=$(($(cat "$P/run/landfall-test-double.runs" 2>/dev/null || echo 0) + 1))
echo "$runs" >"$P/run/landfall-test-double.runs"

# ---- what nixos-install and nix print -------------------------------
cache=https://cache.nixos.org
ver=24.11.20241201.d2c4ab8
sys=/nix/store/6x3k8mcbqxm0jqz5yn1w4lrf2c9i7hgd-nixos-system-$attr-$ver
drv=/nix/store/jw1v9sbq8r2m0kzx3lcn5d7yafi4h6gp-nixos-system-$attr-$ver.drv
etc_drv=/nix/store/q2dfw0cjnk7x1b9l4rvm6s3zgh8ay5ip-etc.drv

if [ -n "$flake" ]; then
    echo "building the flake in $ref..."
    tick
    if [ "$fail" = eval ]; then
        cat >&2 <<EOF
error:
       … while evaluating the attribute 'config.system.build.toplevel'
         at /nix/store/8gk1rqxd0n3m5hwavj2c7b9s4lzfy6pi-source/nixos/modules/system/activation/top-level.nix:71:5:
       … while evaluating the option \`services.openssh.settings':

       error: The option \`services.openssh.setings' does not exist. Definition values:
       - In \`/nix/store/a1vdk9xmcqz3b6n0yj2s5rfl8wh7pg4i-source/hosts/$attr.nix'
EOF
        exit 1
    fi
    cat >&2 <<EOF
these 2 derivations will be built:
  $etc_drv
  $drv
these 214 paths will be fetched (287.62 MiB download, 1.21 GiB unpacked):
EOF
fi
tick
if [ -n "$hold" ]; then
    # Mid-install until killed: the restart test's watcher sees the file and
    # kills the agent, and this run with it.
    : >"$P/run/landfall-test-double.holding"
    secs=${LANDFALL_TEST_DOUBLE_HOLD_SECS:-300}
    i=0
    while [ "$i" -lt $((secs * 2)) ]; do
        i=$((i + 1))
        echo "$ME: hold-once: holding mid-install until killed ($i)"
        sleep 0.5
    done
    die "hold-once: not killed within $secs s (nothing killed the agent mid-install)"
fi
for path in /nix/store/0k9x7dzqk0wbmvj2m1ln3xrwgr0i9xsa-glibc-2.40-36 \
    /nix/store/c5hy2w8dlq0r9mkbzfnxs3g1vj7ai4p6-linux-6.6.63 \
    /nix/store/l8f2hq0w6zkc3xm9rvj4sy1pdg5ab7ni-systemd-256.8; do
    if [ "$fail" = download ]; then
        h=${path#/nix/store/}
        echo "error: unable to download '$cache/nar/${h%%-*}.nar.xz': Couldn't resolve host name (6)" >&2
        exit 1
    fi
    echo "copying path '$path' from '$cache'..." >&2
    tick
done
if [ -n "$flake" ]; then
    echo "building '$etc_drv'..." >&2
    tick
    if [ "$fail" = build ]; then
        cat >&2 <<EOF
error: builder for '$etc_drv' failed with exit code 1;
       last 3 log lines:
       > building '/build/etc'
       > ln: failed to create symbolic link '/build/etc/ssh/sshd_config': No such file or directory
       > error: cannot link /etc/ssh/sshd_config
       For full logs, run 'nix log $etc_drv'.
error: 1 dependencies of derivation '$drv' failed to build
EOF
        exit 1
    fi
    echo "building '$drv'..." >&2
    tick
fi

# What activation leaves behind (the double writes it directly).
mkdir -p "$mnt/etc"
: >"$mnt/etc/NIXOS"
echo "$attr" >"$mnt/etc/hostname"

echo "installing the boot loader..."
tick
if [ "$fail" = bootloader ]; then
    cat >&2 <<EOF
Installing for i386-pc platform.
/nix/store/r4c7yd2ip0b9kxz1m6s3lwfhq8v5gna0-grub-2.12/sbin/grub-install: error: unable to identify a filesystem in hostdisk//dev/vda; safety check can't be performed.
Failed to install bootloader
EOF
    exit 1
fi
# The initrd the bootloader install puts on /boot, as stage 1 would see it: the real one
# appends each boot.initrd.secrets file (append-initrd-secrets, which fails when a source
# is missing) and bakes in boot.initrd.luks.devices and fileSystems."/". The double writes
# that view, read from the generated hardware configuration, to
# /mnt/boot/landfall-test-initrd: `stage1` (lines `luks NAME DEVICE METHOD`,
# `root DEVICE FSTYPE OPTIONS`, `secret PATH`) and secrets/PATH. The first-boot stand-in
# boots from it. METHOD is the keyFile's path; or `tpm2` when crypttabExtraOpts holds
# tpm2-device=auto and boot.initrd.systemd.enable = true (nixpkgs luksroot.nix reads
# crypttabExtraOpts only with systemd stage 1: the scripted initrd would ignore it); else
# `-` (a passphrase prompt).
if awk '$2 == "/mnt/boot" { found = 1 } END { exit !found }' "$P/proc/mounts" 2>/dev/null; then
    initrd=$mnt/boot/landfall-test-initrd
    rm -rf "$initrd"
    mkdir -p "$initrd/secrets"
    awk '
    function value(l) { sub(/^[^=]*= "?/, "", l); sub(/"?;$/, "", l); return l }
    { l = $0; sub(/^ +/, "", l) }
    l ~ /^boot\.initrd\.secrets\."/ { p = l; sub(/^boot\.initrd\.secrets\."/, "", p); sub(/" = null;$/, "", p); print "secret", p; next }
    l ~ /^boot\.initrd\.systemd\.enable = true;$/ { systemd = 1; next }
    sect == "" && l ~ /^boot\.initrd\.luks\.devices = \{$/ { sect = "luks"; depth = 1; next }
    sect == "" && l ~ /^fileSystems = \{$/ { sect = "fs"; depth = 1; next }
    sect == "" { next }
    l ~ /= \{$/ {
        depth++
        if (depth == 2) { name = l; sub(/ = \{$/, "", name); gsub(/"/, "", name); dev = ""; key = "-"; tpm2 = 0; fstype = ""; opts = "" }
        next
    }
    l ~ /^\};$/ {
        if (depth == 2 && sect == "luks") { nluks++; luks[nluks] = name " " dev " " key; tpm[nluks] = tpm2 }
        if (depth == 2 && sect == "fs" && name == "/") print "root", dev, fstype, opts
        depth--
        if (depth == 0) sect = ""
        next
    }
    depth == 2 && l ~ /^device = / { dev = value(l) }
    depth == 2 && l ~ /^keyFile = / { key = value(l) }
    depth == 2 && l ~ /^crypttabExtraOpts = \[.*"tpm2-device=auto"/ { tpm2 = 1 }
    depth == 2 && l ~ /^fsType = / { fstype = value(l) }
    depth == 2 && l ~ /^options = \[/ { opts = l; sub(/^options = \[ */, "", opts); sub(/ *\];$/, "", opts); gsub(/" "/, ",", opts); gsub(/"/, "", opts) }
    END {
        for (i = 1; i <= nluks; i++) {
            e = luks[i]
            if (tpm[i] && systemd && e ~ / -$/) sub(/ -$/, " tpm2", e)
            print "luks", e
        }
    }
    ' "$mnt/etc/nixos/hardware-configuration.nix" >"$initrd/stage1"
    while read -r kind path; do
        [ "$kind" = secret ] || continue
        [ -f "$mnt$path" ] || {
            echo "error: failed to create initrd secrets: boot.initrd.secrets names $path, which /mnt$path does not hold" >&2
            echo "Failed to install bootloader" >&2
            exit 1
        }
        mkdir -p "$initrd/secrets${path%/*}"
        cp "$mnt$path" "$initrd/secrets$path"
    done <"$initrd/stage1"
fi
echo "setting up /etc..."
if [ -d "$P/sys/firmware/efi" ]; then
    echo "Created \"/boot/EFI/systemd\"."
    echo "Copied \"/nix/store/l8f2hq0w6zkc3xm9rvj4sy1pdg5ab7ni-systemd-256.8/lib/systemd/boot/efi/systemd-bootx64.efi\" to \"/boot/EFI/systemd/systemd-bootx64.efi\"."
else
    echo "Installing for i386-pc platform."
    echo "Installation finished. No error reported."
fi
tick

{
    printf '{"double": "nixos-install", "args": [%s]' "$args_json"
    printf ', "flake": '
    if [ -n "$flake" ]; then json "$flake"; else printf null; fi
    printf ', "system": '
    if [ -n "$system" ]; then json "$system"; else printf null; fi
    printf ', "attr": '
    json "$attr"
    printf ', "toplevel": '
    json "${system:-$sys}"
    printf ', "storage": [%s]' "$storage"
    printf ', "run": %s}\n' "$runs"
} >"$mnt/etc/landfall-test-double.json"

echo "installation finished!"
exit 0

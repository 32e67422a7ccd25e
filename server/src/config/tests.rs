use super::*;
use landfall_proto::{Check, InstallTarget, LuksUnlock, WipePolicy};

/// A disko layout as `nix-instantiate --eval --strict --json` renders one.
/// Two disks, `main` and `extra`, so a role's `disks` can name both.
pub(crate) const LAYOUT_JSON: &str = r#"{"disko":{"devices":{"disk":{"main":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"root":{"size":"100%","content":{"type":"filesystem","format":"ext4","mountpoint":"/"}}}}},"extra":{"type":"disk","device":"","content":{"type":"gpt","partitions":{"srv":{"size":"100%","content":{"type":"filesystem","format":"xfs","mountpoint":"/srv"}}}}}}}}}"#;

/// Validate against a config directory holding `layouts/single-disk.json`
/// and `layouts/raid1.nix` (rendered by the real nix-instantiate).
fn check_in(text: &str) -> (Result<Settings>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    std::fs::create_dir(&layouts).unwrap();
    std::fs::create_dir(dir.path().join("artifacts")).unwrap();
    std::fs::write(layouts.join("single-disk.json"), LAYOUT_JSON).unwrap();
    std::fs::write(
        layouts.join("raid1.nix"),
        r#"{ disko.devices.disk.a = { type = "disk"; device = "/dev/sda"; content = { type = "gpt"; partitions.root = { size = "100%"; content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; }; }; }; }; }"#,
    )
    .unwrap();
    let r = Config::parse(text).and_then(|c| c.validate(dir.path()));
    (r, dir)
}

fn check(text: &str) -> Result<Settings> {
    check_in(text).0
}

fn err(text: &str) -> String {
    format!("{:#}", check(text).unwrap_err())
}

const GOOD: &str = r#"
[server]
public_url = "http://10.0.0.1:8080/"
artifacts = "artifacts"
kernel_args = "console=ttyS0,115200"
boot_token_ttl = 600

[enroll]
unknown = "hold"

[roles.workstation]
description = "desk"
layout = "single-disk"
wipe = "always"

[roles.server]

[[machines]]
mac = "52-54-00-AB-CD-01"
hostname = "ws-01"
role = "workstation"

[[machines]]
mac = "52:54:00:ab:cd:02"
hostname = "srv-01"
role = "server"
layout = "raid1"
"#;

#[test]
fn good_config_is_accepted_and_resolved() {
    let s = check(GOOD).unwrap();
    assert_eq!(s.public_url.as_deref(), Some("http://10.0.0.1:8080"));
    assert!(s.artifacts.as_ref().unwrap().ends_with("artifacts"));
    assert_eq!(s.boot_token_ttl, 600);
    let a = s.assignment_for("52:54:00:ab:cd:01").unwrap();
    assert_eq!(a.hostname, "ws-01");
    assert_eq!(a.layout.as_deref(), Some("single-disk"));
    assert_eq!(a.wipe, WipePolicy::Always);
    let b = s.assignment_for("52:54:00:ab:cd:02").unwrap();
    assert_eq!(b.layout.as_deref(), Some("raid1"));
    assert_eq!(b.wipe, WipePolicy::Never);
    assert!(s.assignment_for("52:54:00:00:00:09").is_none());
}

#[test]
fn luks_unlock_comes_from_the_role_and_defaults_to_the_initrd_key() {
    let text = GOOD.replace(
        "[roles.server]\n",
        "[roles.server]\nluks_unlock = \"prompt\"\n",
    );
    let s = check(&text).unwrap();
    let ws = s.assignment_for("52:54:00:ab:cd:01").unwrap();
    assert_eq!(ws.luks_unlock, LuksUnlock::InitrdKey);
    let srv = s.assignment_for("52:54:00:ab:cd:02").unwrap();
    assert_eq!(srv.luks_unlock, LuksUnlock::Prompt);
    let e = err(&GOOD.replace(
        "[roles.server]\n",
        "[roles.server]\nluks_unlock = \"tpm3\"\n",
    ));
    assert!(e.contains("luks_unlock") && e.contains("initrd_key"), "{e}");
}

#[test]
fn layouts_are_loaded_and_disks_merged_into_the_assignment() {
    let text = format!(
        "{GOOD}\n[roles.workstation.disks]\nmain = \"auto\"\nextra = \"/dev/sdb\"\n"
    )
    .replace(
        "hostname = \"ws-01\"\nrole = \"workstation\"\n",
        "hostname = \"ws-01\"\nrole = \"workstation\"\ndisks = { main = \"/dev/disk/by-id/nvme-X_1\" }\n",
    );
    let s = check(&text).unwrap();
    let a = s.assignment_for("52:54:00:ab:cd:01").unwrap();
    let want: serde_json::Value = serde_json::from_str(LAYOUT_JSON).unwrap();
    assert_eq!(a.disko.as_ref(), Some(&want));
    assert_eq!(
        a.disks["main"], "/dev/disk/by-id/nvme-X_1",
        "the machine's entry wins"
    );
    assert_eq!(a.disks["extra"], "/dev/sdb", "the role's entry stays");
    // raid1.nix went through nix-instantiate.
    let b = s.assignment_for("52:54:00:ab:cd:02").unwrap();
    assert_eq!(
        b.disko.unwrap()["disko"]["devices"]["disk"]["a"]["device"],
        "/dev/sda"
    );
}

#[test]
fn a_missing_or_broken_layout_or_disk_entry_is_refused_at_start() {
    let e = err(&GOOD.replace("layout = \"raid1\"", "layout = \"nope\""));
    assert!(e.contains("machine srv-01.layout = \"nope\""), "{e}");
    assert!(e.contains("no layout nope.nix or nope.json"), "{e}");
    let e = err(&format!(
        "{GOOD}\n[roles.workstation.disks]\nmain = \"/etc/passwd\"\n"
    ));
    assert!(e.contains("roles.workstation.disks.main"), "{e}");
    assert!(e.contains("must be \"auto\" or a device path"), "{e}");
    let (r, dir) = check_in(GOOD);
    assert!(r.is_ok());
    std::fs::write(dir.path().join("layouts/raid1.nix"), "{ disko = ").unwrap();
    let e = format!(
        "{:#}",
        Config::parse(GOOD)
            .unwrap()
            .validate(dir.path())
            .unwrap_err()
    );
    assert!(
        e.contains("nix-instantiate") && e.contains("raid1.nix"),
        "{e}"
    );
    std::fs::write(dir.path().join("layouts/raid1.nix"), "{ x = 1; }").unwrap();
    let e = format!(
        "{:#}",
        Config::parse(GOOD)
            .unwrap()
            .validate(dir.path())
            .unwrap_err()
    );
    assert!(e.contains("raid1.nix: (layout): no `disko.devices`"), "{e}");
    // The agent's parser refuses what the agent would refuse, with the field's path.
    std::fs::write(
        dir.path().join("layouts/raid1.nix"),
        r#"{ disko.devices.disk.a = { type = "disk"; content = { type = "gpt"; partitions.root = { size = "12X"; }; }; }; }"#,
    )
    .unwrap();
    let e = format!(
        "{:#}",
        Config::parse(GOOD)
            .unwrap()
            .validate(dir.path())
            .unwrap_err()
    );
    assert!(
        e.contains("machine srv-01.layout = \"raid1\"")
            && e.contains("disko.devices.disk.a.content.partitions.root.size")
            && e.contains("is not a size"),
        "{e}"
    );
    // A `disks` key the layout does not have.
    let e = err(&format!(
        "{GOOD}\n[roles.workstation.disks]\nmian = \"auto\"\n"
    ));
    assert!(
        e.contains("roles.workstation.disks.mian")
            && e.contains("its disks: extra, main")
            && e.contains("rename the key"),
        "{e}"
    );
    // The role's keys are checked against a machine's own layout too.
    let e = err(&format!("{GOOD}\n[roles.server.disks]\nmain = \"auto\"\n"));
    assert!(
        e.contains("roles.server.disks (for machine srv-01).main")
            && e.contains("layout \"raid1\" has no disk \"main\""),
        "{e}"
    );
    // A configured artifacts directory that does not exist.
    let e = err(&GOOD.replace("artifacts = \"artifacts\"", "artifacts = \"netboot\""));
    assert!(
        e.contains("server.artifacts") && e.contains("is not a directory"),
        "{e}"
    );
}

#[test]
fn demo_installs_everyone() {
    let s = Config::demo().validate(Path::new(".")).unwrap();
    let a = s.assignment_for("52:54:00:12:34:56").unwrap();
    assert_eq!(a.hostname, "demo-123456");
    assert_eq!(a.role, "demo");
}

#[test]
fn duplicate_mac_is_refused() {
    let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "r"
[[machines]]
mac = "52-54-00-00-00-01"
hostname = "b"
role = "r"
"#);
    assert!(
        e.contains("machines[1].mac") && e.contains("listed twice"),
        "{e}"
    );
}

#[test]
fn duplicate_hostname_is_refused() {
    let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "r"
[[machines]]
mac = "52:54:00:00:00:02"
hostname = "a"
role = "r"
"#);
    assert!(
        e.contains("machines[1].hostname") && e.contains("already used"),
        "{e}"
    );
}

#[test]
fn bad_hostname_is_refused() {
    let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "Bad_Name;reboot"
role = "r"
"#);
    assert!(e.contains("machines[0].hostname"), "{e}");
}

#[test]
fn bad_mac_is_refused() {
    let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:01"
hostname = "a"
role = "r"
"#);
    assert!(
        e.contains("machines[0].mac") && e.contains("aa:bb:cc:dd:ee:ff"),
        "{e}"
    );
}

#[test]
fn unknown_role_is_refused() {
    let e = err(r#"
[roles.r]
[[machines]]
mac = "52:54:00:00:00:01"
hostname = "a"
role = "nope"
"#);
    assert!(
        e.contains("machines[0].role") && e.contains("[roles.nope]"),
        "{e}"
    );
    let e = err("[enroll]\nunknown = \"install\"\nrole = \"ghost\"\n");
    assert!(e.contains("enroll.role"), "{e}");
    let e = err("[enroll]\nunknown = \"install\"\n");
    assert!(e.contains("needs enroll.role"), "{e}");
}

#[test]
fn bad_role_name_is_refused() {
    let e = err("[roles.\"Web Server\"]\n");
    assert!(
        e.contains("[roles.Web Server]") && e.contains("role name"),
        "{e}"
    );
    let e = err("[roles.r]\nlayout = \"../etc/passwd\"\n");
    assert!(e.contains("roles.r.layout"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    for (text, key) in [
        ("[server]\npublic_ur = \"http://x\"\n", "public_ur"),
        ("colour = 1\n", "colour"),
        ("[roles.r]\nwipe_disks = true\n", "wipe_disks"),
        (
            "[roles.r]\n[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\nrole = \"r\"\nhost = \"x\"\n",
            "host",
        ),
    ] {
        let e = err(text);
        assert!(e.contains("unknown field") && e.contains(key), "{e}");
    }
    let e = err("[enroll]\nunknown = \"maybe\"\n");
    assert!(e.contains("unknown variant"), "{e}");
    let e = err("[roles.r]\nwipe = \"sometimes\"\n");
    assert!(e.contains("unknown variant"), "{e}");
}

#[test]
fn kernel_args_and_public_url_are_checked() {
    let e = err("[server]\nkernel_args = \"quiet\\nchain http://evil\"\n");
    assert!(e.contains("server.kernel_args"), "{e}");
    let e = err("[server]\npublic_url = \"http://x y\"\n");
    assert!(e.contains("server.public_url"), "{e}");
    let e = err("[server]\npublic_url = \"ftp://x\"\n");
    assert!(e.contains("server.public_url"), "{e}");
    let e = err("[server]\nboot_token_ttl = 0\n");
    assert!(e.contains("server.boot_token_ttl"), "{e}");
}

#[test]
fn the_database_is_a_postgres_url_or_unset() {
    assert_eq!(
        check("").unwrap().database,
        None,
        "SQLite in the data directory"
    );
    let s = check("[server]\ndatabase = \"postgres://landfall:pw@db.lan/landfall\"\n").unwrap();
    assert_eq!(
        s.database,
        Some(crate::store::Database::Postgres(
            "postgres://landfall:pw@db.lan/landfall".into()
        ))
    );
    let e = err("[server]\ndatabase = \"mysql://root:pw@db.lan/x\"\n");
    assert!(
        e.contains("server.database") && e.contains("postgres://"),
        "{e}"
    );
    assert!(!e.contains(":pw@"), "no password in the message: {e}");
}

/// `[vault]` with a token file beside the config.
fn vault_cfg(extra: &str) -> String {
    format!(
        r#"
[vault]
address = "http://127.0.0.1:8200"
token_file = "vault.token"
insecure_http = true
{extra}
[roles.ws.vault]
approle = "workstation"
reads = ["hosts/{{hostname}}", "roles/{{role}}"]

[[roles.ws.secret_files]]
path = "/var/lib/sops-nix/key.txt"
from = "kv:hosts/{{hostname}}#age_key"

[[roles.ws.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "kv:hosts/{{hostname}}#ssh_host_ed25519_key"
mode = "0400"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"
"#
    )
}

fn vault_check(text: &str) -> Result<Settings> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault.token"), "s.servertoken\n").unwrap();
    Config::parse(text).and_then(|c| c.validate(dir.path()))
}

fn vault_err(text: &str) -> String {
    format!("{:#}", vault_check(text).unwrap_err())
}

#[test]
fn vault_section_and_secret_files_are_validated_and_expanded() {
    let s = vault_check(&vault_cfg("wrap_ttl = \"30s\"")).unwrap();
    let v = s.vault.as_ref().unwrap();
    assert_eq!(v.wrap_ttl, Duration::from_secs(30));
    assert_eq!(
        (v.kv_mount.as_str(), v.approle_mount.as_str()),
        ("landfall", "approle")
    );
    let a = s.assignment_for("52:54:00:00:00:01").unwrap();
    assert_eq!(a.secret_files.len(), 2);
    assert_eq!(a.secret_files[0].from, "kv:hosts/ws-01#age_key");
    assert_eq!(a.secret_files[0].mode, "0600");
    assert_eq!(a.secret_files[1].mode, "0400");
    assert!(
        a.vault.is_none(),
        "the wrap token is minted at hello, not here"
    );
    assert_eq!(expand_template("roles/{role}", "ws-01", "ws"), "roles/ws");
}

#[test]
fn vault_agent_address_defaults_to_address_and_is_checked_alike() {
    let s = vault_check(&vault_cfg("")).unwrap();
    let v = s.vault.as_ref().unwrap();
    assert_eq!(v.agent_address, "http://127.0.0.1:8200");
    let s = vault_check(&vault_cfg("agent_address = \"http://10.0.2.2:8200/\"")).unwrap();
    let v = s.vault.as_ref().unwrap();
    assert_eq!(v.address, "http://127.0.0.1:8200");
    assert_eq!(v.agent_address, "http://10.0.2.2:8200");
    let e = vault_err(&vault_cfg("agent_address = \"ftp://x\""));
    assert!(
        e.contains("agent_address = \"ftp://x\" must start with https://"),
        "{e}"
    );
}

#[test]
fn vault_refusals_name_the_key_and_the_fix() {
    let base = vault_cfg("");
    let e = vault_err(&base.replace("insecure_http = true\n", ""));
    assert!(
        e.contains("plain http") && e.contains("insecure_http"),
        "{e}"
    );
    let e = vault_err(&base.replace("http://127.0.0.1:8200", "https://vault:8200"));
    assert!(e.contains("ca_file is required"), "{e}");
    let e = vault_err(&format!(
        "{}\nca_file = \"vault.token\"\n",
        base.replace("http://127.0.0.1:8200", "https://vault:8200")
            .replace("insecure_http = true\n", "")
            .split("\n[roles")
            .next()
            .unwrap()
    ));
    assert!(e.contains("no PEM certificate"), "{e}");
    let e = vault_err(&vault_cfg("wrap_ttl = \"2h\""));
    assert!(e.contains("wrap_ttl"), "{e}");
    let e = vault_err(&base.replace("vault.token", "missing.token"));
    assert!(
        e.contains("token_file") && e.contains("missing.token"),
        "{e}"
    );
    for (from, to, want) in [
        ("/var/lib/sops-nix/key.txt", "var/lib/key", "absolute"),
        (
            "/var/lib/sops-nix/key.txt",
            "/var/../etc/shadow",
            "absolute",
        ),
        ("mode = \"0400\"", "mode = \"0999\"", "octal"),
        ("mode = \"0400\"", "mode = \"01777\"", "octal"),
        (
            "kv:hosts/{hostname}#age_key",
            "vault:hosts/x#k",
            "kv:PATH#KEY",
        ),
        (
            "kv:hosts/{hostname}#age_key",
            "kv:other/{hostname}#k",
            "not among",
        ),
        ("\"hosts/{hostname}\", ", "\"../{hostname}\", ", "segment"),
        ("approle = \"workstation\"", "approle = \"a/b\"", "approle"),
    ] {
        let e = vault_err(&base.replace(from, to));
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
    let e = vault_err(&base.replace(
        "path = \"/etc/ssh/ssh_host_ed25519_key\"",
        "path = \"/var/lib/sops-nix/key.txt\"",
    ));
    assert!(e.contains("listed twice"), "{e}");
    let no_vault = base.split("[roles.ws.vault]").nth(1).unwrap();
    let e = vault_err(&format!("[roles.ws.vault]{no_vault}"));
    assert!(e.contains("needs a [vault] section"), "{e}");
}

#[test]
fn bundle_secret_files_need_no_vault_and_do_not_mix() {
    let bundle_role = r#"
[[roles.ws.secret_files]]
path = "/etc/ssh/ssh_host_ed25519_key"
from = "bundle:hosts/{hostname}/ssh_host_ed25519_key"
mode = "0400"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"
"#;
    let s = vault_check(bundle_role).unwrap();
    assert!(s.vault.is_none());
    let a = s.assignment_for("52:54:00:00:00:01").unwrap();
    assert_eq!(
        a.secret_files[0].from,
        "bundle:hosts/ws-01/ssh_host_ed25519_key"
    );
    for bad in [
        "bundle:",
        "bundle:/etc/x",
        "bundle:a/../b",
        "bundle:a//b",
        "bundle:a b",
    ] {
        let e =
            vault_err(&bundle_role.replace("bundle:hosts/{hostname}/ssh_host_ed25519_key", bad));
        assert!(e.contains("relative path inside the bundle"), "{bad}: {e}");
    }
    let mixed = vault_cfg("").replace(
        "kv:hosts/{hostname}#age_key",
        "bundle:hosts/{hostname}/age_key",
    );
    assert!(vault_err(&mixed).contains("mixes"), "{}", vault_err(&mixed));
    let kv_without_vault = bundle_role.replace(
        "bundle:hosts/{hostname}/ssh_host_ed25519_key",
        "kv:hosts/{hostname}#k",
    );
    let e = vault_err(&kv_without_vault);
    assert!(
        e.contains("need roles.ws.vault") && e.contains("bundle:PATH"),
        "{e}"
    );
}

const INSTALL: &str = r#"
[roles.ws]
flake = "git+https://git.lan/fleet?ref=main#{hostname}"

[[roles.ws.checks]]
kind = "ssh"

[[roles.ws.checks]]
name = "rdp"
kind = "rdp"
port = 3390

[[roles.ws.checks]]
name = "home"
kind = "smb"
mountpoint = "/home/alice"

[roles.srv]
flake = "git+https://git.lan/fleet#{role}-{hostname}"
cache = "http://cache.lan:5000"

[[machines]]
mac = "52:54:00:00:00:01"
hostname = "ws-01"
role = "ws"

[[machines]]
mac = "52:54:00:00:00:02"
hostname = "srv-01"
role = "srv"
system = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-srv-01-26.05"

[[machines]]
mac = "52:54:00:00:00:03"
hostname = "srv-02"
role = "srv"
flake = "path:/srv/fleet#srv-02"
"#;

#[test]
fn install_target_and_checks_reach_the_assignment() {
    let s = check(INSTALL).unwrap();
    let a = s.assignment_for("52:54:00:00:00:01").unwrap();
    assert_eq!(
        a.install,
        Some(InstallTarget::Flake {
            flake: "git+https://git.lan/fleet?ref=main#ws-01".into()
        })
    );
    assert_eq!(a.checks.len(), 3);
    assert_eq!(
        a.checks[0].check,
        Check::Ssh {
            host: "localhost".into(),
            port: 22
        }
    );
    assert_eq!(a.checks[0].display_name(), "ssh");
    assert_eq!(
        a.checks[1].check,
        Check::Rdp {
            host: "localhost".into(),
            port: 3390
        }
    );
    assert_eq!(
        a.checks[2].check,
        Check::Smb {
            mountpoint: "/home/alice".into(),
            write_test: true
        }
    );
    // The machine's system with the role's cache and (expanded) flake.
    let b = s.assignment_for("52:54:00:00:00:02").unwrap();
    assert_eq!(
        b.install,
        Some(InstallTarget::System {
            path: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-srv-01-26.05".into(),
            cache: "http://cache.lan:5000".into(),
            flake: Some("git+https://git.lan/fleet#srv-srv-01".into()),
        })
    );
    assert!(b.checks.is_empty());
    // The machine's own flake over the role's; no system: a flake install.
    let c = s.assignment_for("52:54:00:00:00:03").unwrap();
    assert_eq!(
        c.install,
        Some(InstallTarget::Flake {
            flake: "path:/srv/fleet#srv-02".into()
        })
    );
    // complete() fills a bare (database) assignment the same way.
    let mut bare = s.role_assignment_checked("ws", "ws-09").unwrap();
    assert!(bare.install.is_none() && bare.checks.is_empty());
    s.complete(&mut bare, "52:54:00:00:00:09");
    assert_eq!(
        bare.install.as_ref().and_then(|t| t.flake()),
        Some("git+https://git.lan/fleet?ref=main#ws-09")
    );
    assert_eq!(bare.checks, a.checks);
    // No install keys: no target (the agent stops after configuring).
    let d = check(GOOD).unwrap();
    assert!(d
        .assignment_for("52:54:00:ab:cd:01")
        .unwrap()
        .install
        .is_none());
}

#[test]
fn install_keys_are_validated_with_the_field_named() {
    for (from, to, want) in [
        (
            "?ref=main#{hostname}\"",
            "?ref=main\"",
            "roles.ws.flake = \"git+https://git.lan/fleet?ref=main\": must be REF#ATTR",
        ),
        (
            "?ref=main#{hostname}\"",
            "?ref=main#\"",
            "non-empty attribute",
        ),
        (
            "\"git+https://git.lan/fleet?ref=main#",
            "\"#",
            "non-empty attribute",
        ),
        (
            "?ref=main#{hostname}\"",
            "?ref=main#{host}\"",
            "not allowed",
        ),
        ("?ref=main#{hostname}\"", "?ref=main#${x}\"", "not allowed"),
        ("?ref=main#{hostname}\"", "?ref=main#a b\"", "not allowed"),
        (
            "?ref=main#{hostname}\"",
            "?ref=main#a/b\"",
            "attribute after '#'",
        ),
        (
            "system = \"/nix/store/",
            "system = \"/usr/",
            "machines[1].system = \"/usr/",
        ),
        (
            "-nixos-system-srv-01-26.05",
            "",
            "must start with /nix/store/",
        ),
        (
            "-nixos-system-srv-01-26.05",
            "-nixos-system-srv-01/bin",
            "one store path",
        ),
        (
            "http://cache.lan:5000",
            "cache.lan:5000",
            "roles.srv.cache = \"cache.lan:5000\" is not a plain http(s) URL",
        ),
        ("http://cache.lan:5000", "ftp://cache", "roles.srv.cache"),
        (
            "cache = \"http://cache.lan:5000\"\n",
            "",
            "machines[1].system needs a binary cache",
        ),
        (
            "flake = \"path:/srv/fleet#srv-02\"",
            "flake = \"path:/srv/fleet#srv-02\"\ncache = \"x\"",
            "machines[2].cache",
        ),
    ] {
        assert!(INSTALL.contains(from), "{from}");
        let e = err(&INSTALL.replacen(from, to, 1));
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
    let e =
        err("[roles.r]\nsystem = \"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a\"\n");
    assert!(e.contains("roles.r.system needs roles.r.cache"), "{e}");
    // A machine's system with its own cache is complete.
    let ok = INSTALL
        .replace("cache = \"http://cache.lan:5000\"\n", "")
        .replace(
            "26.05\"\n",
            "26.05\"\ncache = \"https://cache.example.org/\"\n",
        );
    let s = check(&ok).unwrap();
    assert!(matches!(
        s.assignment_for("52:54:00:00:00:02").unwrap().install,
        Some(InstallTarget::System { ref cache, .. }) if cache == "https://cache.example.org/"
    ));
}

#[test]
fn checks_are_parsed_strictly() {
    let role = |checks: &str| format!("[roles.ws]\n{checks}");
    let e = err(&role(
        "[[roles.ws.checks]]\nkind = \"ssh\"\n[[roles.ws.checks]]\nkind = \"teleport\"\n",
    ));
    assert!(
        e.contains("roles.ws.checks[1].kind = \"teleport\" is not a check kind")
            && e.contains("ssh, rdp, vnc, smb, tcp, unit, path, hostname"),
        "{e}"
    );
    let e = err(&role("[[roles.ws.checks]]\nname = \"x\"\n"));
    assert!(e.contains("roles.ws.checks[0].kind is missing"), "{e}");
    let e = err(&role("[[roles.ws.checks]]\nkind = 3\n"));
    assert!(
        e.contains("roles.ws.checks[0].kind = 3 must be a string"),
        "{e}"
    );
    let e = err(&role("[[roles.ws.checks]]\nkind = \"ssh\"\nprot = 22\n"));
    assert!(
        e.contains("roles.ws.checks[0].prot: unknown field for a ssh check")
            && e.contains("host")
            && e.contains("port"),
        "{e}"
    );
    let e = err(&role("[[roles.ws.checks]]\nkind = \"smb\"\n"));
    assert!(
        e.contains("roles.ws.checks[0]") && e.contains("mountpoint"),
        "{e}"
    );
    let e = err(&role(
        "[[roles.ws.checks]]\nkind = \"tcp\"\nport = \"ssh\"\n",
    ));
    assert!(e.contains("roles.ws.checks[0]"), "{e}");
    let e = err(&role(
        "[[roles.ws.checks]]\nkind = \"ssh\"\n[[roles.ws.checks]]\nkind = \"ssh\"\nport = 2222\n",
    ));
    assert!(
        e.contains("roles.ws.checks[1]") && e.contains("already used by roles.ws.checks[0]"),
        "{e}"
    );
    for (check, want) in [
        ("kind = \"tcp\"\nport = 0", "port = 0"),
        ("kind = \"ssh\"\nhost = \"a b\"", "host = \"a b\""),
        ("kind = \"unit\"\nunit = \"--help\"", "unit = \"--help\""),
        ("kind = \"path\"\npath = \"etc/x\"", "absolute path"),
        (
            "kind = \"smb\"\nmountpoint = \"home\"",
            "mountpoint = \"home\"",
        ),
        (
            "kind = \"hostname\"\nexpected = \"Bad_Name\"",
            "expected = \"Bad_Name\"",
        ),
    ] {
        let e = err(&role(&format!("[[roles.ws.checks]]\n{check}\n")));
        assert!(
            e.contains("roles.ws.checks[0]") && e.contains(want),
            "{check}: {e}"
        );
    }
    let s = check(&role(
        "[[roles.ws.checks]]\nkind = \"unit\"\nunit = \"sshd.service\"\n\
         [[roles.ws.checks]]\nkind = \"tcp\"\nhost = \"10.0.0.5\"\nport = 445\n\
         [[roles.ws.checks]]\nkind = \"path\"\npath = \"/srv\"\n\
         [[roles.ws.checks]]\nkind = \"hostname\"\nexpected = \"ws-01\"\n\
         [[roles.ws.checks]]\nkind = \"vnc\"\n\
         [[roles.ws.checks]]\nname = \"smb-home\"\nkind = \"smb\"\nmountpoint = \"/home/a\"\nwrite_test = false\n",
    ))
    .unwrap();
    let kinds: Vec<&str> = s.checks["ws"].iter().map(|c| c.check.kind()).collect();
    assert_eq!(kinds, ["unit", "tcp", "path", "hostname", "vnc", "smb"]);
    assert_eq!(
        s.checks["ws"][5].check,
        Check::Smb {
            mountpoint: "/home/a".into(),
            write_test: false
        }
    );
}

#[test]
fn tpm2_unlock_takes_its_pcrs_from_the_role_checked_and_defaults_to_pcr_7() {
    let role = |extra: &str| {
        GOOD.replace(
            "[roles.server]\n",
            &format!("[roles.server]\nluks_unlock = \"tpm2\"\n{extra}"),
        )
    };
    let srv = |text: &str| {
        check(text)
            .unwrap()
            .assignment_for("52:54:00:ab:cd:02")
            .unwrap()
    };
    let a = srv(&role(""));
    assert_eq!((a.luks_unlock, a.tpm2_pcrs), (LuksUnlock::Tpm2, vec![7]));
    assert_eq!(srv(&role("tpm2_pcrs = [0, 7, 23]\n")).tpm2_pcrs, [0, 7, 23]);
    assert!(srv(&role("tpm2_pcrs = []\n")).tpm2_pcrs.is_empty());
    for bad in ["[24]", "[-1]", "[7, 99]"] {
        let e = err(&role(&format!("tpm2_pcrs = {bad}\n")));
        assert!(
            e.contains("roles.server.tpm2_pcrs") && e.contains("0 to 23"),
            "{bad}: {e}"
        );
    }
    let e = err(&GOOD.replace("[roles.server]\n", "[roles.server]\ntpm2_pcrs = [7]\n"));
    assert!(
        e.contains("roles.server.tpm2_pcrs") && e.contains("luks_unlock = \"tpm2\""),
        "{e}"
    );
}

#[test]
fn tls_names_come_from_the_urls_the_listen_address_and_tls_sans() {
    let s = Config::parse(
        "[server]\npublic_url = \"http://boot.lan:8080\"\n\
         public_tls_url = \"https://[fd00::1]:8443\"\n\
         listen_tls = \"10.0.0.1:8443\"\ntls_sans = [\"10.0.0.1\", \"landfall.lan\"]\n",
    )
    .unwrap()
    .validate(Path::new("."))
    .unwrap();
    let tls = s.tls.unwrap();
    assert_eq!(tls.listen, "10.0.0.1:8443".parse().unwrap());
    assert_eq!(tls.public_url.as_deref(), Some("https://[fd00::1]:8443"));
    // In order, each once.
    assert_eq!(
        tls.cert,
        crate::tls::CertSource::Generated {
            sans: vec![
                "boot.lan".into(),
                "fd00::1".into(),
                "10.0.0.1".into(),
                "landfall.lan".into()
            ]
        }
    );
    // Nothing to name: the loopback names, so a local test still verifies.
    let s = Config::parse("[server]\nlisten_tls = \"0.0.0.0:8443\"\n")
        .unwrap()
        .validate(Path::new("."))
        .unwrap();
    assert_eq!(
        s.tls.unwrap().cert,
        crate::tls::CertSource::Generated {
            sans: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
        }
    );
    // TLS off by default.
    assert!(Config::parse("")
        .unwrap()
        .validate(Path::new("."))
        .unwrap()
        .tls
        .is_none());
}

#[test]
fn url_host_strips_scheme_port_path_and_brackets() {
    use super::url_host;
    assert_eq!(
        url_host("http://10.0.0.1:8080").as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(url_host("https://[::1]:8443/x").as_deref(), Some("::1"));
    assert_eq!(url_host("http://host.lan/p").as_deref(), Some("host.lan"));
    assert_eq!(url_host("nope"), None);
}

/// `[netboot]` with a BIOS iPXE written into the config directory.
fn netboot_check(section: &str) -> Result<Settings> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("undionly.kpxe"), b"ipxe").unwrap();
    Config::parse(&format!("[roles.demo]\n{section}")).and_then(|c| c.validate(dir.path()))
}

fn netboot_err(section: &str) -> String {
    format!("{:#}", netboot_check(section).unwrap_err())
}

#[test]
fn netboot_defaults_to_off_and_modes_are_checked() {
    let s = netboot_check("").unwrap();
    assert_eq!(s.netboot.dhcp, DhcpMode::Off);
    assert!(!s.netboot.tftp);
    let s = netboot_check(
        "[netboot]\ndhcp = \"proxy\"\ninterface = \"eth1\"\nserver_address = \"10.77.0.1\"\nipxe_bios = \"undionly.kpxe\"\n",
    )
    .unwrap();
    assert_eq!(s.netboot.dhcp, DhcpMode::Proxy);
    assert!(s.netboot.tftp, "TFTP runs with DHCP by default");
    assert!(s.netboot.ipxe_bios.unwrap().is_absolute());
    let s = netboot_check(
        "[netboot]\ndhcp = \"full\"\ninterface = \"eth1\"\nserver_address = \"10.77.0.1\"\nipxe_bios = \"undionly.kpxe\"\n[netboot.pool]\nstart = \"10.77.0.100\"\nend = \"10.77.0.200\"\nprefix_len = 24\nlease_time = \"2h\"\n",
    )
    .unwrap();
    let pool = s.netboot.pool.unwrap();
    assert_eq!(pool.lease_time, Duration::from_secs(7200));
    // The same config, DHCP off from the command line: still valid.
    let mut n = netboot_check("[netboot]\nipxe_bios = \"undionly.kpxe\"\n")
        .unwrap()
        .netboot;
    let e = n.set_mode(DhcpMode::Proxy, None).unwrap_err().to_string();
    assert!(e.contains("netboot.interface is required"), "{e}");
}

#[test]
fn netboot_refusals_name_the_field_and_the_fix() {
    let base = "[netboot]\ninterface = \"eth1\"\nserver_address = \"10.77.0.1\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "[netboot]\ndhcp = \"proxy\"\nipxe_bios = \"missing.kpxe\"\n",
            "netboot.ipxe_bios: ",
        ),
        (
            "[netboot]\ndhcp = \"proxy\"\ninterface = \"eth1\"\n",
            "netboot.server_address is required",
        ),
        ("[netboot]\ndhcp = \"weird\"\n", "unknown variant `weird`"),
        (
            "[netboot]\ninterface = \"eth 1\"\n",
            "netboot.interface = \"eth 1\"",
        ),
        ("[netboot]\ntftp = true\n", "none is configured"),
    ];
    for (text, want) in cases {
        let e = netboot_err(text);
        assert!(e.contains(want), "{text}: {e}");
    }
    let e = netboot_err("[netboot]\ndhcp = \"proxy\"\nipxe_bios = \"missing.kpxe\"\n");
    assert!(
        e.contains("missing.kpxe") && e.contains("`ipxe` package"),
        "{e}"
    );
    let full = |pool: &str| {
        netboot_err(&format!(
            "{base}dhcp = \"full\"\nipxe_bios = \"undionly.kpxe\"\n{pool}"
        ))
    };
    assert!(full("").contains("needs [netboot.pool]"));
    for (pool, want) in [
        (
            "start = \"10.77.0.200\"\nend = \"10.77.0.100\"\nprefix_len = 24",
            "is after end",
        ),
        (
            "start = \"10.77.0.100\"\nend = \"10.78.0.100\"\nprefix_len = 24",
            "not in one /24",
        ),
        (
            "start = \"10.77.1.100\"\nend = \"10.77.1.200\"\nprefix_len = 24",
            "not in the pool's network",
        ),
        (
            "start = \"10.77.0.1\"\nend = \"10.77.0.200\"\nprefix_len = 24",
            "contains server_address",
        ),
        (
            "start = \"10.77.0.100\"\nend = \"10.77.0.200\"\nprefix_len = 33",
            "prefix_len = 33",
        ),
        (
            "start = \"10.77.0.100\"\nend = \"10.77.0.200\"\nprefix_len = 24\nlease_time = \"5s\"",
            "under a minute",
        ),
    ] {
        let e = full(&format!("[netboot.pool]\n{pool}\n"));
        assert!(e.contains(want), "{pool}: {e}");
    }
}

#[test]
fn event_retention_is_a_duration_of_an_hour_or_more_or_forever() {
    let retention = |text: &str| check(text).unwrap().event_retention;
    assert_eq!(
        retention(""),
        Some(super::validate::DEFAULT_EVENT_RETENTION),
        "90 days by default"
    );
    assert_eq!(
        retention("[server]\nevent_retention = \"30d\"\n"),
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_eq!(retention("[server]\nevent_retention = \"forever\"\n"), None);
    for (v, words) in [
        ("soon", &["server.event_retention", "\"soon\"", "30d"][..]),
        ("5m", &["server.event_retention", "under an hour"]),
        ("", &["server.event_retention"]),
    ] {
        let e = err(&format!("[server]\nevent_retention = \"{v}\"\n"));
        for w in words {
            assert!(e.contains(w), "{v}: {e}");
        }
    }
}

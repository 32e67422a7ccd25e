//! The age bundle (offline secrets path) against Debian's `age` CLI and GNU
//! tar, both ways; the console prompt driven through a real pty; malicious
//! tar entries; and a canary search of everything the agent prints.
//!
//! Needs `age` and `tar` on PATH (`./x test` installs Debian's `age`) and
//! python3 (its `pty` module types the passphrase into the age CLI, which
//! only reads one from its controlling terminal).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use landfall_agent::secrets::{self, bundle, IdentitySource};

const AGENT: &str = env!("CARGO_BIN_EXE_landfall-agent");
const CANARY_KEY: &str = "CANARY-bundle-ssh-key-9e41d07b";
const CANARY_LUKS: &str = "CANARY-bundle-luks-3a77f2c5";
const PASS: &str = "CANARY-pass-correct-horse-51c0";
const WRONG: [&str; 3] = [
    "CANARY-wrong-one-a1",
    "CANARY-wrong-two-b2",
    "CANARY-wrong-three-c3",
];

/// Every distinctive value that must never be printed.
fn canaries() -> Vec<&'static str> {
    let mut v = vec![CANARY_KEY, CANARY_LUKS, PASS];
    v.extend(WRONG);
    v
}

fn assert_no_canary(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for c in canaries() {
        assert!(!text.contains(c), "{what} shows {c}:\n{text}");
    }
}

/// A directory of secrets: hosts/ws-01/ssh_host_ed25519_key (30 bytes), luks.key (27 bytes).
fn secrets_dir(root: &Path) -> PathBuf {
    let d = root.join("src");
    std::fs::create_dir_all(d.join("hosts/ws-01")).unwrap();
    std::fs::write(d.join("hosts/ws-01/ssh_host_ed25519_key"), CANARY_KEY).unwrap();
    std::fs::write(d.join("luks.key"), CANARY_LUKS).unwrap();
    d
}

const LISTING: &str = "        30  hosts/ws-01/ssh_host_ed25519_key\n        27  luks.key\n";

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// age CLI present, or the test is skipped loudly (CI installs it via ./x).
fn need_age() -> bool {
    let ok = have("age") && have("age-keygen");
    if !ok {
        eprintln!("SKIP: the age CLI is not installed (apt-get install age, or ./x test)");
    }
    ok
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The agent CLI with tracing at TRACE on stderr; stdout and stderr
/// searched for canaries.
fn agent(args: &[&str]) -> Output {
    let o = Command::new(AGENT)
        .args(args)
        .env("LANDFALL_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_no_canary("agent stdout", &o.stdout);
    assert_no_canary("agent stderr", &o.stderr);
    o
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("key.txt");
    run(Command::new("age-keygen").arg("-o").arg(&key));
    let o = run(Command::new("age-keygen").arg("-y").arg(&key));
    (key, String::from_utf8(o.stdout).unwrap().trim().to_owned())
}

/// Types `pass` at each passphrase prompt of an age CLI run under a pty.
const PTY_DRIVER: &str = r#"
import os, pty, sys
pw = sys.argv[1].encode() + b"\n"
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out, answered = b"", 0
while True:
    try:
        d = os.read(fd, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
    asked = out.count(b"Enter passphrase") + out.count(b"Confirm passphrase")
    while answered < asked:
        os.write(fd, pw)
        answered += 1
sys.stderr.write(out.decode(errors="replace"))
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
"#;

fn age_with_passphrase(pass: &str, args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new("python3");
    c.arg("-c").arg(PTY_DRIVER).arg(pass).arg("age").args(args);
    run(&mut c)
}

fn gnu_tar(src: &Path, out: &Path) {
    run(Command::new("tar")
        .arg("--format=ustar")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

fn extracted(tar_file: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(into)
        .arg("-xf")
        .arg(tar_file));
    assert_eq!(
        std::fs::read_to_string(into.join("hosts/ws-01/ssh_host_ed25519_key")).unwrap(),
        CANARY_KEY
    );
    assert_eq!(
        std::fs::read_to_string(into.join("luks.key")).unwrap(),
        CANARY_LUKS
    );
}

#[test]
fn bundles_made_by_the_age_cli_open_in_the_agent() {
    if !need_age() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = secrets_dir(d.path());
    let tarf = d.path().join("s.tar");
    gnu_tar(&src, &tarf);

    // X25519 recipient.
    let (key, recipient) = keygen(d.path());
    let by_key = d.path().join("key.age");
    run(Command::new("age")
        .arg("-r")
        .arg(&recipient)
        .arg("-o")
        .arg(&by_key)
        .arg(&tarf));
    let o = agent(&[
        "bundle",
        "list",
        by_key.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), LISTING);
    let b = secrets::open_bundle(&by_key, &IdentitySource::IdentityFile(key.clone())).unwrap();
    assert_eq!(b.get("luks.key").unwrap().expose(), CANARY_LUKS.as_bytes());

    // Passphrase (scrypt), typed into age's own prompt.
    let by_pass = d.path().join("pass.age");
    age_with_passphrase(
        PASS,
        &[
            "-p".as_ref(),
            "-o".as_ref(),
            by_pass.as_os_str(),
            tarf.as_os_str(),
        ],
    );
    let pf = d.path().join("pass");
    std::fs::write(&pf, format!("{PASS}\n")).unwrap();
    let o = agent(&[
        "bundle",
        "list",
        by_pass.to_str().unwrap(),
        "--passphrase-file",
        pf.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), LISTING);

    // The wrong kind of key for each: clear errors.
    let o = agent(&[
        "bundle",
        "list",
        by_pass.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("encrypted to a passphrase"),
        "{e}"
    );
    let (other, _) = keygen(&d.path().join("k2").tap_mkdir());
    let o = agent(&[
        "bundle",
        "list",
        by_key.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("none of the identities"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn bundles_made_by_the_agent_open_with_the_age_cli() {
    if !need_age() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = secrets_dir(d.path());
    let (key, recipient) = keygen(d.path());

    let by_key = d.path().join("key.age");
    let o = agent(&[
        "bundle",
        "create",
        "--from",
        src.to_str().unwrap(),
        "--recipient",
        &recipient,
        "-o",
        by_key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = d.path().join("key.tar");
    run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(&out)
        .arg(&by_key));
    extracted(&out, &d.path().join("x1"));
    // Plain ustar, regular files only, as documented.
    let listing = run(Command::new("tar").arg("-tvf").arg(&out));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().all(|l| l.starts_with("-rw-------")),
        "{listing}"
    );

    let pf = d.path().join("pass");
    std::fs::write(&pf, format!("{PASS}\n")).unwrap();
    let by_pass = d.path().join("pass.age");
    let o = agent(&[
        "bundle",
        "create",
        "--from",
        src.to_str().unwrap(),
        "--passphrase-file",
        pf.to_str().unwrap(),
        "-o",
        by_pass.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = d.path().join("pass.tar");
    age_with_passphrase(
        PASS,
        &[
            "-d".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            by_pass.as_os_str(),
        ],
    );
    extracted(&out, &d.path().join("x2"));

    // Operator errors are clear.
    let o = agent(&[
        "bundle",
        "create",
        "--from",
        src.to_str().unwrap(),
        "--recipient",
        "age1nope",
        "-o",
        "/dev/null",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("not an age X25519 public key"),
        "{e}"
    );
}

/// A pty whose output is collected by a thread.
struct Pty {
    master: File,
    slave: Option<OwnedFd>,
    path: PathBuf,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    fn new() -> Self {
        let p = nix::pty::openpty(None, None).unwrap();
        let path = nix::unistd::ttyname(&p.slave).unwrap();
        let master = File::from(p.master);
        let mut r = master.try_clone().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            // EIO once every slave fd is closed.
            while let Ok(n @ 1..) = r.read(&mut buf) {
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            slave: Some(p.slave),
            path,
            out,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Wait until `needle` was printed `n` times.
    fn wait_for(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.text().matches(needle).count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "waited for {n} x {needle:?}; the terminal shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, s: &str) {
        self.master.write_all(format!("{s}\r").as_bytes()).unwrap();
    }

    /// Close our slave end and return everything the terminal showed.
    fn finish(mut self) -> String {
        drop(self.slave.take());
        self.reader.take().unwrap().join().unwrap();
        self.text()
    }
}

fn passphrase_bundle(d: &Path) -> PathBuf {
    let src = secrets_dir(d);
    let pf = d.join("pass");
    std::fs::write(&pf, PASS).unwrap();
    let bytes = bundle::create(
        &src,
        &bundle::Recipients::Passphrase(bundle::read_passphrase_file(&pf).unwrap()),
    )
    .unwrap();
    let f = d.join("secrets.age");
    std::fs::write(&f, bytes).unwrap();
    f
}

const PROMPT: &str = "landfall: passphrase for ";

#[test]
fn prompt_on_a_pty_wrong_twice_then_right() {
    let d = tempfile::tempdir().unwrap();
    let f = passphrase_bundle(d.path());
    let mut pty = Pty::new();
    let child = Command::new(AGENT)
        .args(["bundle", "list"])
        .arg(&f)
        .arg("--prompt-tty")
        .arg(&pty.path)
        .env("LANDFALL_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pty.wait_for(PROMPT, 1);
    pty.type_line(WRONG[0]);
    pty.wait_for("(2 tries left)", 1);
    pty.wait_for(PROMPT, 2);
    pty.type_line(WRONG[1]);
    pty.wait_for("(1 try left)", 1);
    pty.wait_for(PROMPT, 3);
    pty.type_line(PASS);
    let o = child.wait_with_output().unwrap();
    let term = pty.finish();
    assert!(
        o.status.success(),
        "{}\n{term}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), LISTING);
    let what = f.display().to_string();
    assert!(
        term.contains(&format!(
            "landfall: wrong passphrase for {what} (2 tries left)"
        )),
        "{term}"
    );
    assert!(
        term.contains(&format!("landfall: {what} unlocked")),
        "{term}"
    );
    // Echo was off: nothing typed shows; echo is back on afterwards.
    assert_no_canary("the terminal", term.as_bytes());
    assert_no_canary("agent stdout", &o.stdout);
    assert_no_canary("agent stderr (TRACE)", &o.stderr);
}

#[test]
fn prompt_on_a_pty_wrong_three_times_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let f = passphrase_bundle(d.path());
    let mut pty = Pty::new();
    let before = nix::sys::termios::tcgetattr(pty.slave.as_ref().unwrap()).unwrap();
    let child = Command::new(AGENT)
        .args(["bundle", "list"])
        .arg(&f)
        .arg("--prompt-tty")
        .arg(&pty.path)
        .env("LANDFALL_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (i, w) in WRONG.iter().enumerate() {
        pty.wait_for(PROMPT, i + 1);
        pty.type_line(w);
    }
    let o = child.wait_with_output().unwrap();
    let after = nix::sys::termios::tcgetattr(pty.slave.as_ref().unwrap()).unwrap();
    assert_eq!(before.local_flags, after.local_flags, "echo restored");
    let term = pty.finish();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "nothing listed");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("wrong passphrase for") && e.contains("3 tries failed, nothing was decrypted"),
        "{e}"
    );
    assert!(
        term.contains("(1 try left)") && term.contains("3 tries failed"),
        "{term}"
    );
    assert_no_canary("the terminal", term.as_bytes());
    assert_no_canary("agent stderr (TRACE)", &o.stderr);
}

#[test]
fn prompt_on_two_terminals_the_first_answer_wins() {
    let d = tempfile::tempdir().unwrap();
    let f = passphrase_bundle(d.path());
    let screen = Pty::new();
    let mut serial = Pty::new();
    let child = Command::new(AGENT)
        .args(["bundle", "list"])
        .arg(&f)
        .arg("--prompt-tty")
        .arg(&screen.path)
        .arg("--prompt-tty")
        .arg(&serial.path)
        .env("LANDFALL_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    screen.wait_for(PROMPT, 1);
    serial.wait_for(PROMPT, 1);
    serial.type_line(PASS);
    let o = child.wait_with_output().unwrap();
    let (screen, serial) = (screen.finish(), serial.finish());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), LISTING);
    for term in [&screen, &serial] {
        assert!(term.contains("unlocked"), "{term}");
        assert_no_canary("a terminal", term.as_bytes());
    }
    assert_no_canary("agent stderr (TRACE)", &o.stderr);
}

/// A tar with raw entry names (no checks), encrypted to `recipient`.
fn raw_bundle(
    entries: &[(&str, tar::EntryType, &str)],
    recipient: &age::x25519::Recipient,
) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, ty, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*ty);
        h.set_mode(0o600);
        if matches!(ty, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name_literal(data).unwrap();
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        t.extend_from_slice(h.as_bytes());
        if !matches!(ty, tar::EntryType::Symlink | tar::EntryType::Link) {
            t.extend_from_slice(data.as_bytes());
            t.resize(t.len().div_ceil(512) * 512, 0);
        }
    }
    t.resize(t.len() + 1024, 0);
    let enc =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
    let mut w = enc.wrap_output(Vec::new()).unwrap();
    w.write_all(&t).unwrap();
    w.finish().unwrap()
}

#[test]
fn malicious_entries_are_refused() {
    use age::secrecy::ExposeSecret;
    use tar::EntryType::{Block, Directory, Link, Regular, Symlink};
    let d = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let key = d.path().join("key.txt");
    std::fs::write(&key, id.to_string().expose_secret()).unwrap();
    let src = IdentitySource::IdentityFile(key);
    let r = id.to_public();
    let ok = raw_bundle(
        &[
            ("./", Directory, ""),
            ("./a/", Directory, ""),
            ("./a/b", Regular, "v"),
        ],
        &r,
    );
    assert_eq!(
        bundle::open_bytes(&ok, "ok.age", &src).unwrap().entries(),
        vec![("a/b", 1)]
    );
    for (entries, want) in [
        (vec![("/etc/shadow", Regular, "x")], "absolute path"),
        (vec![("a/../../etc/shadow", Regular, "x")], ".. component"),
        (vec![("../x", Regular, "x")], ".. component"),
        (vec![("link", Symlink, "/etc/shadow")], "is a symbolic link"),
        (vec![("hard", Link, "/etc/shadow")], "is a hard link"),
        (vec![("dev", Block, "")], "is a device"),
        (
            vec![("a", Regular, "1"), ("./a", Regular, "2")],
            "appears twice",
        ),
    ] {
        let b = raw_bundle(&entries, &r);
        let e = format!("{:#}", bundle::open_bytes(&b, "bad.age", &src).unwrap_err());
        assert!(
            e.contains(want) && e.contains("bad.age"),
            "{entries:?}: {e}"
        );
    }

    // A real tar (GNU tar) with a symlink in it, via the age CLI.
    if !need_age() {
        return;
    }
    let s = secrets_dir(d.path());
    std::os::unix::fs::symlink("/etc/shadow", s.join("shadow")).unwrap();
    let tarf = d.path().join("s.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&s)
        .arg("-cf")
        .arg(&tarf)
        .arg("."));
    let (k, recipient) = keygen(&d.path().join("k").tap_mkdir());
    let f = d.path().join("l.age");
    run(Command::new("age")
        .arg("-r")
        .arg(&recipient)
        .arg("-o")
        .arg(&f)
        .arg(&tarf));
    let o = agent(&[
        "bundle",
        "list",
        f.to_str().unwrap(),
        "--identity",
        k.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("\"./shadow\" is a symbolic link"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
    // bundle create refuses the symlink too.
    let o = agent(&[
        "bundle",
        "create",
        "--from",
        s.to_str().unwrap(),
        "--recipient",
        &recipient,
        "-o",
        "/dev/null",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn a_bundle_feeds_place_like_vault() {
    let d = tempfile::tempdir().unwrap();
    let f = passphrase_bundle(d.path());
    let pf = d.path().join("pass");
    let b = secrets::open_bundle(&f, &IdentitySource::PassphraseFile(pf)).unwrap();
    let file = |path: &str, from: &str| landfall_proto::SecretFile {
        path: path.into(),
        from: from.into(),
        mode: "0600".into(),
        owner: "root".into(),
        group: "root".into(),
    };
    let files = [file(
        "/etc/ssh/ssh_host_ed25519_key",
        "bundle:hosts/ws-01/ssh_host_ed25519_key",
    )];
    let fetched = b.into_fetched(&files).unwrap();
    assert!(!format!("{fetched:?}").contains("CANARY"));
    let root = d.path().join("mnt");
    std::fs::create_dir(&root).unwrap();
    let placed = secrets::place(&root, &fetched).unwrap();
    assert_eq!(placed.len(), 1);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key")).unwrap(),
        CANARY_KEY
    );
    // A reference the bundle does not hold fails before anything is placed.
    let b =
        secrets::open_bundle(&f, &IdentitySource::PassphraseFile(d.path().join("pass"))).unwrap();
    let e = b
        .into_fetched(&[file("/x", "bundle:nope")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the bundle has no file \"nope\"") && e.contains("luks.key"),
        "{e}"
    );
}

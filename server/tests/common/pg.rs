//! A throwaway PostgreSQL cluster for the tests: Debian's `postgresql`
//! (`initdb`, `pg_ctl`), in a tempdir, run as an unprivileged user
//! (`nobody` when the tests run as root), on 127.0.0.1 and a free port,
//! started once per test binary; each test gets its own database. A watchdog
//! stops the cluster and removes its directory when the test binary exits.
//!
//! `LANDFALL_TEST_DATABASE=postgres` runs the in-process servers of the
//! suite ([`super::Server`]) on it; unset (or `sqlite`): SQLite.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use landfall_cmd::Cmd;

pub struct Cluster {
    pub port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The database the suite's servers use: a fresh PostgreSQL database when
/// `LANDFALL_TEST_DATABASE=postgres`, else `None` (SQLite).
pub fn suite_database() -> Option<String> {
    match std::env::var("LANDFALL_TEST_DATABASE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => Some(new_database()),
        Ok(other) => {
            panic!("LANDFALL_TEST_DATABASE={other:?}: write postgres (or sqlite, the default)")
        }
    }
}

/// A new, empty database on the test cluster: its URL.
pub fn new_database() -> String {
    let c = CLUSTER.get_or_init(start);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let port = c.port;
    let admin = format!("postgres://landfall@127.0.0.1:{port}/postgres");
    let n = name.clone();
    // The sync client runs its own runtime: not on a tokio worker.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {n}")).unwrap();
    })
    .join()
    .unwrap();
    format!("postgres://landfall@127.0.0.1:{port}/{name}")
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql (it is in ./x PACKAGES)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

/// `cmd` as the cluster's user: `nobody` when we are root.
fn as_user(root: bool, program: &Path) -> Cmd {
    if root {
        Cmd::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(program)
    } else {
        Cmd::new(program)
    }
}

fn start() -> Cluster {
    let bin = bindir();
    let root = nix::unistd::geteuid().is_root();
    let dir = tempfile::Builder::new()
        .prefix("landfall-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if root {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(&dir, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .unwrap();
    }
    let data = dir.join("data");
    as_user(root, &bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "landfall",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .run_blocking()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=400",
        dir.display()
    );
    as_user(root, &bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-o", &opts, "start"])
        .run_blocking()
        .unwrap();
    // The watchdog: when this test binary is gone, stop the cluster.
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D {data} stop -m immediate; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let watchdog = if root {
        Cmd::new("runuser").args(["-u", "nobody", "--", "setsid", "sh", "-c", &script])
    } else {
        Cmd::new("setsid").args(["sh", "-c", &script])
    };
    std::mem::forget(
        watchdog
            .spawn(std::process::Stdio::null(), std::process::Stdio::null())
            .unwrap(),
    );
    Cluster { port }
}

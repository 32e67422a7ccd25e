//! A software TPM 2.0 for a VM: `swtpm` (Debian: swtpm, swtpm-tools) with its state in a
//! directory of the test, attached to QEMU through the emulator backend and a CRB device
//! (Debian's kernel has tpm_crb built in). The state outlives the process: start another
//! `Swtpm` on the same directory for the machine's next boot (QEMU tells swtpm to shut down
//! when it exits), and the TPM is the same, as a machine's own chip would be.
//!
//! Lifetime: a [`Swtpm`] kills its process when dropped (and `setpriv --pdeathsig KILL`
//! ends it with the thread that started it), like [`crate::Vm`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use landfall_cmd::Cmd;

pub const SWTPM: &str = "swtpm";

pub struct Swtpm {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Swtpm {
    /// Start swtpm on `state_dir` (created when missing; an empty one is a new TPM) and
    /// wait until its control socket exists.
    pub fn start(state_dir: &Path) -> Result<Swtpm> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let socket = state_dir.join("swtpm.sock");
        let log = state_dir.join("swtpm.log");
        let _ = fs::remove_file(&socket);
        let child = Cmd::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", SWTPM, "socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=1", log.display()))
            .spawn(Stdio::null(), Stdio::null())
            .context("starting swtpm (Debian: apt-get install swtpm swtpm-tools)")?;
        let mut t = Swtpm { child, socket, log };
        let t0 = Instant::now();
        while !t.socket.exists() {
            if let Some(st) = t.child.try_wait()? {
                bail!(
                    "swtpm exited ({st}) before its socket appeared:\n{}",
                    t.log()
                );
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "swtpm's socket {} did not appear in 10 s",
                    t.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t)
    }

    /// QEMU arguments that give the machine this TPM (append to `VmSpec::extra_args`).
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
        ]
    }

    /// swtpm's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

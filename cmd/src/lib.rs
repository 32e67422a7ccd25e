//! THE command runner: every external program the workspace starts (the
//! agent, the server's layout renderer, xtask, the VM test harness) goes
//! through [`Cmd`]. Errors carry the command line (shell-quoted) and the tail
//! of stderr; input that may be secret goes to stdin, never argv, and is
//! never logged.
//!
//! The agent runs programs with the async API ([`Cmd::run`],
//! [`Cmd::run_lines`]); tools and tests with the blocking one
//! ([`Cmd::run_blocking`], [`Cmd::status_blocking`], [`Cmd::output_blocking`],
//! [`Cmd::spawn`] for long-running children). Every run counts as a wait on
//! the outside in [`timing`].
//!
//! Beside it: the one retry helper ([`retry`]) and the one Nix renderer
//! ([`nix`]).

pub mod nix;
pub mod retry;
pub mod timing;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How much of stderr an error keeps.
const STDERR_TAIL: usize = 2048;

/// A command to run. Build with [`Cmd::new`], then `.run()` or `.run_lines()`.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    dir: Option<PathBuf>,
}

/// The output of a command that exited 0.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// A command that could not run or exited non-zero.
#[derive(Debug, thiserror::Error)]
#[error("`{cmdline}` {what}{}", stderr_suffix(.stderr_tail))]
pub struct CmdError {
    pub cmdline: String,
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stderr_tail: String,
}

fn stderr_suffix(tail: &str) -> String {
    let t = tail.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(":\n{t}")
    }
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            env: Vec::new(),
            env_clear: false,
            dir: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Start the program with only the variables given by [`Cmd::env`].
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// The working directory of the program (default: ours).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Bytes to feed on stdin (keys, passphrases). Never part of any message.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The program as given (a name looked up on PATH, or a path).
    pub fn program(&self) -> &std::ffi::OsStr {
        &self.program
    }

    /// The command line as shown in logs and errors.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The std command: program, arguments, environment, directory, and
    /// stdin piped when there is input, else null.
    fn std_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        if self.env_clear {
            c.env_clear();
        }
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.std_command());
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn error(&self, what: String, status: Option<ExitStatus>, stderr: &str) -> CmdError {
        CmdError {
            cmdline: self.display(),
            what,
            status,
            stderr_tail: tail(stderr, STDERR_TAIL).to_owned(),
        }
    }

    fn start_error(&self, e: std::io::Error) -> CmdError {
        self.error(format!("could not start: {e}"), None, "")
    }

    fn wait_error(&self, e: std::io::Error, stderr: &str) -> CmdError {
        self.error(format!("could not be waited for: {e}"), None, stderr)
    }

    /// `Ok` for exit status 0, else the error with the status and stderr's tail.
    fn check(&self, status: ExitStatus, stderr: &str) -> Result<(), CmdError> {
        if status.success() {
            Ok(())
        } else {
            Err(self.error(format!("failed ({status})"), Some(status), stderr))
        }
    }

    /// Run to completion; an exit status other than 0 is an error.
    pub async fn run(self) -> Result<Output, CmdError> {
        tracing::debug!(cmd = %self.display(), "running");
        let _waiting = crate::timing::waiting();
        let mut child = self.command().spawn().map_err(|e| self.start_error(e))?;
        if let Some(data) = &self.stdin {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // A program that exits without reading all input is judged by its status.
            let _ = stdin.write_all(data).await;
            drop(stdin);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.wait_error(e, ""))?;
        self.checked(out)
    }

    /// Run, handing every line of stdout and stderr to `on_line` as it comes
    /// (for progress). Returns when the program exits; non-zero is an error.
    pub async fn run_lines(self, mut on_line: impl FnMut(Stream, &str)) -> Result<(), CmdError> {
        tracing::debug!(cmd = %self.display(), "running (streaming)");
        let _waiting = crate::timing::waiting();
        let mut child = self.command().spawn().map_err(|e| self.start_error(e))?;
        if let Some(data) = self.stdin.clone() {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            tokio::spawn(async move {
                let _ = stdin.write_all(&data).await;
            });
        }
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut tail = String::new();
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                l = out.next_line(), if out_open => match l {
                    Ok(Some(l)) => on_line(Stream::Stdout, &l),
                    _ => out_open = false,
                },
                l = err.next_line(), if err_open => match l {
                    Ok(Some(l)) => {
                        on_line(Stream::Stderr, &l);
                        tail.push_str(&l);
                        tail.push('\n');
                        if tail.len() > 4 * STDERR_TAIL {
                            tail.drain(..tail.len() - STDERR_TAIL);
                        }
                    }
                    _ => err_open = false,
                },
            }
        }
        let status = child.wait().await.map_err(|e| self.wait_error(e, &tail))?;
        self.check(status, &tail)
    }

    /// A finished program's output as text, when its exit status is 0.
    fn checked(&self, out: std::process::Output) -> Result<Output, CmdError> {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.check(out.status, &stderr)?;
        Ok(Output { stdout, stderr })
    }

    /// Blocking: run to completion with stdout and stderr captured, whatever
    /// the exit status (the caller judges it); an error only when the program
    /// could not be started or waited for.
    pub fn output_blocking(self) -> Result<std::process::Output, CmdError> {
        self.capture()
    }

    fn capture(&self) -> Result<std::process::Output, CmdError> {
        tracing::debug!(cmd = %self.display(), "running");
        let _waiting = crate::timing::waiting();
        let mut child = self
            .std_command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.start_error(e))?;
        if let Some(data) = self.stdin.clone() {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // A thread, so a program writing much before it reads cannot block us both.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        child.wait_with_output().map_err(|e| self.wait_error(e, ""))
    }

    /// Blocking [`Cmd::run`]: to completion; an exit status other than 0 is an error.
    pub fn run_blocking(self) -> Result<Output, CmdError> {
        let out = self.capture()?;
        self.checked(out)
    }

    /// Blocking, stdout as bytes (a decompressed file); non-zero exit is an error.
    pub fn run_bytes_blocking(self) -> Result<Vec<u8>, CmdError> {
        let out = self.capture()?;
        self.check(out.status, &String::from_utf8_lossy(&out.stderr))?;
        Ok(out.stdout)
    }

    /// Blocking, stdout and stderr going where ours go (a build's progress on
    /// the terminal); a non-zero exit is an error (without a stderr tail: it
    /// was shown).
    pub fn status_blocking(self) -> Result<(), CmdError> {
        tracing::debug!(cmd = %self.display(), "running (output shown)");
        let _waiting = crate::timing::waiting();
        let status = self
            .std_command()
            .stdin(Stdio::null())
            .status()
            .map_err(|e| self.start_error(e))?;
        self.check(status, "")
    }

    /// Start a long-running child (a VM, a server) with stdin null and
    /// stdout/stderr as given; the caller waits for or kills it. Input set
    /// with [`Cmd::stdin`] is not fed here.
    pub fn spawn(
        self,
        stdout: impl Into<Stdio>,
        stderr: impl Into<Stdio>,
    ) -> Result<std::process::Child, CmdError> {
        tracing::debug!(cmd = %self.display(), "starting");
        self.std_command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| self.start_error(e))
    }
}

/// The last `max` bytes of `s`, from a char boundary.
pub fn tail(s: &str, max: usize) -> &str {
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_names_the_command_and_keeps_stderr() {
        let e = Cmd::new("sh")
            .args(["-c", "echo out; echo 'bad thing' >&2; exit 3", "x y"])
            .run()
            .await
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("`sh -c "), "{s}");
        assert!(s.contains("'x y'"), "{s}");
        assert!(s.contains("exit status: 3"), "{s}");
        assert!(s.ends_with("bad thing"), "{s}");
        assert_eq!(e.status.and_then(|s| s.code()), Some(3));
    }

    #[tokio::test]
    async fn missing_program_is_a_clear_error() {
        let e = Cmd::new("/nonexistent/mkfs.nothing")
            .run()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("could not start"), "{e}");
        assert!(e.to_string().contains("/nonexistent/mkfs.nothing"), "{e}");
    }

    #[tokio::test]
    async fn stdin_is_fed_and_not_shown() {
        let c = Cmd::new("cat").stdin(b"s3cret-key".to_vec());
        assert!(!c.display().contains("s3cret"));
        assert_eq!(c.run().await.unwrap().stdout, "s3cret-key");
    }

    #[tokio::test]
    async fn lines_are_streamed_in_order_per_stream() {
        let mut seen = Vec::new();
        Cmd::new("sh")
            .args(["-c", "for i in 1 2 3; do echo o$i; echo e$i >&2; done"])
            .run_lines(|s, l| seen.push((s, l.to_owned())))
            .await
            .unwrap();
        let outs: Vec<_> = seen
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect();
        let errs: Vec<_> = seen
            .iter()
            .filter(|(s, _)| *s == Stream::Stderr)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(outs, ["o1", "o2", "o3"]);
        assert_eq!(errs, ["e1", "e2", "e3"]);
    }

    #[test]
    fn blocking_runs_fail_alike_and_feed_stdin() {
        let e = Cmd::new("sh")
            .args(["-c", "echo 'bad thing' >&2; exit 3", "x y"])
            .run_blocking()
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("`sh -c "), "{s}");
        assert!(s.contains("'x y'"), "{s}");
        assert!(s.contains("exit status: 3"), "{s}");
        assert!(s.ends_with("bad thing"), "{s}");
        let out = Cmd::new("cat")
            .stdin(b"s3cret-key".to_vec())
            .run_blocking()
            .unwrap();
        assert_eq!(out.stdout, "s3cret-key");
        let e = Cmd::new("/nonexistent/tool").status_blocking().unwrap_err();
        assert!(e.to_string().contains("could not start"), "{e}");
        let dir = Cmd::new("pwd").current_dir("/").run_blocking().unwrap();
        assert_eq!(dir.stdout.trim(), "/");
        let out = Cmd::new("sh")
            .args(["-c", "printf x; exit 2"])
            .output_blocking()
            .unwrap();
        assert_eq!((out.status.code(), &out.stdout[..]), (Some(2), &b"x"[..]));
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 10), "ab");
        assert_eq!(tail("aé", 1), "");
    }
}

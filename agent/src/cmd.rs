//! THE command runner: every external program the agent starts goes through
//! [`Cmd`]. Errors carry the command line and the tail of stderr; input that
//! may be secret goes to stdin, never argv, and is never logged.

use std::ffi::OsString;
use std::fmt;
use std::process::{ExitStatus, Stdio};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How much of stderr an error keeps.
const STDERR_TAIL: usize = 2048;

/// A command to run. Build with [`Cmd::new`], then `.run()` or `.run_lines()`.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
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

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn error(&self, what: String, status: Option<ExitStatus>, stderr: &str) -> CmdError {
        let start = stderr.len().saturating_sub(STDERR_TAIL);
        let start = (start..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(stderr.len());
        CmdError {
            cmdline: self.display(),
            what,
            status,
            stderr_tail: stderr[start..].to_owned(),
        }
    }

    /// Run to completion; an exit status other than 0 is an error.
    pub async fn run(self) -> Result<Output, CmdError> {
        tracing::debug!(cmd = %self.display(), "running");
        let _waiting = crate::timing::waiting();
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| self.error(format!("could not start: {e}"), None, ""))?;
        if let Some(data) = &self.stdin {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // A program that exits without reading all input is judged by its status.
            let _ = stdin.write_all(data).await;
            drop(stdin);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.error(format!("could not be waited for: {e}"), None, ""))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(self.error(
                format!("failed ({})", out.status),
                Some(out.status),
                &stderr,
            ));
        }
        Ok(Output { stdout, stderr })
    }

    /// Run, handing every line of stdout and stderr to `on_line` as it comes
    /// (for progress). Returns when the program exits; non-zero is an error.
    pub async fn run_lines(self, mut on_line: impl FnMut(Stream, &str)) -> Result<(), CmdError> {
        tracing::debug!(cmd = %self.display(), "running (streaming)");
        let _waiting = crate::timing::waiting();
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| self.error(format!("could not start: {e}"), None, ""))?;
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
        let status = child
            .wait()
            .await
            .map_err(|e| self.error(format!("could not be waited for: {e}"), None, &tail))?;
        if !status.success() {
            return Err(self.error(format!("failed ({status})"), Some(status), &tail));
        }
        Ok(())
    }

    /// Run and parse stdout as JSON into `T`.
    pub async fn run_json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let shown = self.display();
        let out = self.run().await?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing the JSON output of `{shown}`"))
    }
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

    #[tokio::test]
    async fn json_output_is_parsed() {
        let v: serde_json::Value = Cmd::new("echo")
            .arg(r#"{"a":[1,2]}"#)
            .run_json()
            .await
            .unwrap();
        assert_eq!(v["a"][1], 2);
    }
}

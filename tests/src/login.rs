//! A `tokctl login --json` running in the background, read event by event, so a test can
//! act as the user (at the IdP, or at the daemon's loopback listener) while it waits.

use crate::env::TestEnv;
use crate::error::{Error, Result};
use crate::proc;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A running `tokctl login … --json`. Killed on drop if still running.
pub struct LoginSession {
    child: Child,
    events: mpsc::Receiver<Value>,
    stderr: proc::SharedText,
    seen: Vec<Value>,
}

impl LoginSession {
    /// Starts `tokctl login <args> --json` in `env`, writing `stdin` (a password) to it.
    pub fn start(env: &TestEnv, args: &[&str], stdin: Option<&[u8]>) -> Result<LoginSession> {
        let mut cmd = env.cmd("tokctl");
        cmd.arg("login")
            .args(args)
            .arg("--json")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("starting tokctl login", e))?;
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("stdin was piped");
            let input = input.to_vec();
            thread::spawn(move || {
                let _ = w.write_all(&input);
            });
        }
        let (tx, events) = mpsc::channel();
        let out = child.stdout.take().expect("stdout was piped");
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // Every stdout line of `--json` must be one JSON object; anything else is
                // passed on as a string so the test fails on it visibly.
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = proc::SharedText::default();
        let err = child.stderr.take().expect("stderr was piped");
        // Ends by itself at the client's exit.
        drop(proc::drain_to(err, stderr.clone()));
        Ok(LoginSession {
            child,
            events,
            stderr,
            seen: Vec::new(),
        })
    }

    /// Waits for the next event line, up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Value> {
        let v = self
            .events
            .recv_timeout(timeout)
            .map_err(|_| Error::Timeout {
                what: format!(
                    "the next `tokctl login` event (seen so far: {:?}; stderr: {})",
                    self.seen,
                    self.stderr()
                ),
                after: timeout,
            })?;
        self.seen.push(v.clone());
        Ok(v)
    }

    /// Waits for the first event named `name`, skipping others (which stay in [`Self::seen`]).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let v = self.next_event(left)?;
            if v["event"] == name {
                return Ok(v);
            }
        }
    }

    /// Every event read so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// What the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the client to exit, reading the remaining events; returns its status.
    pub fn finish(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(status) = proc::wait_timeout(&mut self.child, timeout) else {
            proc::kill_child(&mut self.child);
            return Err(Error::Timeout {
                what: format!("`tokctl login` to finish (stderr: {})", self.stderr()),
                after: timeout,
            });
        };
        // The reader thread ends at EOF; collect what it still holds.
        while let Ok(v) = self.events.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(v);
        }
        Ok(status)
    }
}

impl Drop for LoginSession {
    fn drop(&mut self) {
        proc::kill_child(&mut self.child);
    }
}

//! Process helpers: signals by pid, children that die with their owner, bounded runs.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The signals tests send to fixtures and to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    /// SIGSTOP: freeze the process (an unresponsive peer, a suspended laptop).
    Stop,
    /// SIGCONT: let a stopped process run again.
    Cont,
    /// SIGTERM: ask the process to exit.
    Term,
    /// SIGKILL: end it now.
    Kill,
    /// SIGHUP: conventionally, reload.
    Hup,
    /// SIGINT: as if Ctrl-C was pressed.
    Int,
}

impl Sig {
    fn raw(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            Sig::Stop => Signal::Stop,
            Sig::Cont => Signal::Cont,
            Sig::Term => Signal::Term,
            Sig::Kill => Signal::Kill,
            Sig::Hup => Signal::Hup,
            Sig::Int => Signal::Int,
        }
    }
}

/// Sends `sig` to the process `pid`.
pub fn signal(pid: u32, sig: Sig) -> Result<()> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| Error::Setup(format!("invalid pid {pid}")))?;
    rustix::process::kill_process(raw, sig.raw())
        .map_err(|e| Error::io(format!("sending {sig:?} to pid {pid}"), e.into()))
}

/// True while `pid` names a process that has not exited (zombies count as exited).
///
/// Every thread is looked at, not only the group leader: after a SIGKILL the leader can
/// turn zombie while other threads are still exiting and still hold the process's files
/// (a daemon's singleton lock, its socket) for a moment.
pub fn is_alive(pid: u32) -> bool {
    let running = |stat_path: &std::path::Path| match std::fs::read_to_string(stat_path) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.flatten().any(|t| running(&t.path().join("stat"))),
        Err(_) => running(std::path::Path::new(&format!("/proc/{pid}/stat"))),
    }
}

/// Waits until `pid` has exited, up to `timeout`; true when it did.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !is_alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    !is_alive(pid)
}

/// Ends a process that is not our child: SIGTERM, then SIGKILL after `grace`.
pub(crate) fn terminate_pid(pid: u32, grace: Duration) {
    if !is_alive(pid) {
        return;
    }
    // A stopped process cannot act on SIGTERM until continued.
    let _ = signal(pid, Sig::Cont);
    let _ = signal(pid, Sig::Term);
    if !wait_gone(pid, grace) {
        let _ = signal(pid, Sig::Kill);
        wait_gone(pid, Duration::from_secs(2));
    }
}

/// Ends one of our children: SIGTERM, then SIGKILL after `grace`, and reaps it.
pub(crate) fn terminate_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    let _ = signal(pid, Sig::Cont);
    let _ = signal(pid, Sig::Term);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills and reaps a child right away.
pub(crate) fn kill_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Shared, growing text buffer filled by a reader thread.
pub type SharedText = Arc<Mutex<String>>;

/// Drains `reader` into a shared buffer (capped so a chatty process cannot eat memory);
/// the returned channel disconnects at end of input.
pub fn drain_to(reader: impl Read + Send + 'static, into: SharedText) -> mpsc::Receiver<()> {
    const CAP: usize = 4 << 20;
    let (done_tx, done) = mpsc::channel::<()>();
    thread::spawn(move || {
        let _done_tx = done_tx;
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut s = into.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < CAP {
                        s.push_str(&line);
                    }
                }
            }
        }
    });
    done
}

/// Reads lines from `reader` on a thread: the first goes to the returned channel, every
/// later one to `rest`.
pub(crate) fn first_line_then(
    reader: impl Read + Send + 'static,
    mut rest: impl FnMut(String) + Send + 'static,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut first = true;
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = line.trim_end_matches(['\r', '\n']).to_string();
                    if first {
                        first = false;
                        let _ = tx.send(l);
                    } else {
                        rest(l);
                    }
                }
            }
        }
    });
    rx
}

/// Runs `cmd` to completion with `stdin` fed to it, killing it after `timeout`.
///
/// stdout and stderr are captured whatever the command's own settings were.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {program}"), e))?;
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin was piped");
        let input = input.to_vec();
        // A command that never reads its stdin must not block us: write on a thread.
        thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let out = read_all_on_thread(child.stdout.take().expect("stdout was piped"));
    let err = read_all_on_thread(child.stderr.take().expect("stderr was piped"));
    let Some(status) = wait_timeout(&mut child, timeout) else {
        kill_child(&mut child);
        return Err(Error::Timeout {
            what: format!("`{program}` to finish"),
            after: timeout,
        });
    };
    // A process it started (a daemon that did not detach its stdio) can keep the pipes
    // open after it exits; `$(tokctl get)` in a shell would hang the same way.
    let grace = Duration::from_secs(3);
    let (stdout, stderr) = match (out.recv_timeout(grace), err.recv_timeout(grace)) {
        (Ok(o), Ok(e)) => (o, e),
        _ => {
            return Err(Error::protocol(
                format!("`{program}`"),
                "exited but its stdout or stderr stayed open: a process it started kept them",
            ))
        }
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all_on_thread(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Waits for `child` to exit, up to `timeout`.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

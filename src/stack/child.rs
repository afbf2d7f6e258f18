//! Running a role as a child process, for tests, benches and tools: one harness instead of one
//! per test file.
//!
//! A role binds before it serves and then logs one line, on the [`LISTENING`] target, saying
//! where: `<role> listening on <addr>` (catalogue, TCS, demo shard) or `edge listening` (the
//! edge, whose proxy ports come from its config). [`Child::start`] returns once that line is
//! logged, with the address it names, so a caller neither polls nor picks a port: port 0 works
//! across the process boundary. A restart must bind the address the first start got (an
//! argument `IP:0` is rewritten to it; a config file must name it): a port 0 picked from the
//! ephemeral range may be taken meanwhile by an outgoing connection, so a caller that restarts
//! roles gives them ports outside it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a role may take to bind (a loaded machine starts a dozen at once).
const START_WITHIN: Duration = Duration::from_secs(60);

/// The log target of the lines that say a role listens (and that a TCS is ready): always
/// let through to a child's stderr, whatever the caller's log filter.
pub const LISTENING: &str = "tenant_edge::listening";

/// What a TCS logs once its view trails the catalogue by at most `max_lag` (its `/readyz`).
pub const TCS_READY: &str = crate::tcs::READY_LINE;

/// How long a role may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Why a child role did not start.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The process could not be spawned.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The role's name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It exited, or said nothing, before saying it listens (or a restart bound elsewhere);
    /// run with `TEST_LOG=info` to see its log.
    #[error("{name} never said it listens where expected (exited, bound elsewhere, or silent for {START_WITHIN:?}); TEST_LOG=info shows its log")]
    NotListening {
        /// The role's name.
        name: String,
    },
}

/// A role running as a child process of `bin`, killed when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    /// A second line to wait for after the listening one (a TCS's "ready").
    until: Option<String>,
    process: Option<std::process::Child>,
    addr: Option<SocketAddr>,
}

/// What the reader thread saw.
enum Said {
    Listening(Option<SocketAddr>),
    Marker,
}

impl Child {
    /// Starts `bin` with `args` (a role's command line) and returns once it says it listens.
    /// Its log goes to this process's stderr when `TEST_LOG` is set (as the `RUST_LOG` filter).
    pub fn start(bin: &Path, name: &str, args: &[&str]) -> Result<Child, ChildError> {
        Self::start_until(bin, name, args, None)
    }

    /// [`Child::start`], then also waits for a line containing `until` (for a TCS, the line
    /// saying its view caught up: [`TCS_READY`]).
    pub fn start_until(
        bin: &Path,
        name: &str,
        args: &[&str],
        until: Option<&str>,
    ) -> Result<Child, ChildError> {
        let mut child = Child {
            name: name.to_owned(),
            bin: bin.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            until: until.map(str::to_owned),
            process: None,
            addr: None,
        };
        child.spawn(true)?;
        Ok(child)
    }

    fn spawn(&mut self, until: bool) -> Result<(), ChildError> {
        let shown = std::env::var("TEST_LOG").ok();
        // The line that says the role listens has a target of its own: always let it through.
        let filter = format!("{},{LISTENING}=info", shown.as_deref().unwrap_or("warn"));
        let mut process = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(if shown.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ChildError::Spawn {
                name: self.name.clone(),
                source,
            })?;
        let (said, listening) = mpsc::channel();
        let Some(stderr) = process.stderr.take() else {
            return Err(self.not_listening(process));
        };
        let name = self.name.clone();
        let until = self.until.clone().filter(|_| until);
        let mut marker_seen = until.is_none();
        std::thread::spawn(move || {
            // Read to the end, so the child never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if shown.is_some() {
                    eprintln!("[{name}] {line}");
                }
                if !line.contains(LISTENING) {
                    continue;
                }
                if until.as_deref().is_some_and(|m| line.contains(m)) {
                    let _ = said.send(Said::Marker);
                } else if let Some(addr) = listening_on(&line) {
                    let _ = said.send(Said::Listening(addr));
                }
            }
        });
        // At once when the process dies (the sender is dropped with the reader).
        let deadline = Instant::now() + START_WITHIN;
        let mut listening_seen = false;
        while !(listening_seen && marker_seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match listening.recv_timeout(left) {
                Ok(Said::Listening(addr)) => {
                    listening_seen = true;
                    match (self.addr, addr) {
                        (None, addr) => self.addr = addr,
                        // A restart that bound elsewhere would leave its clients at the old URL.
                        (Some(old), Some(new)) if old != new => {
                            return Err(self.not_listening(process));
                        }
                        _ => {}
                    }
                }
                Ok(Said::Marker) => marker_seen = true,
                Err(_) => return Err(self.not_listening(process)),
            }
        }
        self.process = Some(process);
        Ok(())
    }

    fn not_listening(&self, mut process: std::process::Child) -> ChildError {
        let _ = process.kill();
        let _ = process.wait();
        ChildError::NotListening {
            name: self.name.clone(),
        }
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address its line named (the first start's, kept across restarts); `None` for the
    /// edge, whose addresses come from its config.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// `http://<addr>`, for a role that said its address.
    pub fn url(&self) -> String {
        self.addr.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(std::process::Child::id)
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// SIGTERM, then waits for the exit; true when it exited cleanly within 10 s (otherwise it
    /// is killed).
    pub fn terminate(&mut self) -> bool {
        self.signal_term();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once (the role drains; see [`Child::wait_exit`]).
    pub fn signal_term(&self) {
        if let Some(p) = &self.process {
            let _ = Command::new("kill").args(["-TERM", &p.id().to_string()]).status();
        }
    }

    /// Waits up to 10 s for the process to exit; true when it exited cleanly (otherwise it is
    /// killed). True when it is not running.
    pub fn wait_exit(&mut self) -> bool {
        let Some(mut p) = self.process.take() else {
            return true;
        };
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            match p.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = p.kill();
        let _ = p.wait();
        false
    }

    /// Whether the process has exited (or was never started), without waiting.
    pub fn exited(&mut self) -> bool {
        self.process
            .as_mut()
            .is_none_or(|p| !matches!(p.try_wait(), Ok(None)))
    }

    /// Kills it and starts the same command again, on the address the first start bound (a
    /// `:0` in its arguments becomes that port); returns once it listens (the second line of
    /// [`Child::start_until`] is not waited for: a TCS restarted without its catalogue serves
    /// its snapshot but never catches up).
    pub fn restart(&mut self) -> Result<(), ChildError> {
        self.respawn(false)
    }

    /// [`Child::restart`], returning once the second line of [`Child::start_until`] is seen
    /// too (an edge that is ready: tenants cached from its file, or a change stream live).
    pub fn restart_ready(&mut self) -> Result<(), ChildError> {
        self.respawn(true)
    }

    fn respawn(&mut self, until: bool) -> Result<(), ChildError> {
        self.kill();
        if let Some(addr) = self.addr {
            let any = format!("{}:0", addr.ip());
            for arg in &mut self.args {
                if *arg == any {
                    *arg = addr.to_string();
                }
            }
        }
        self.spawn(until)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `Some(addr)` when `line` is a role saying it listens (`None` inside for the edge, which
/// names no single address), else `None`.
fn listening_on(line: &str) -> Option<Option<SocketAddr>> {
    if let Some((_, rest)) = line.split_once(" listening on ") {
        return rest.split_whitespace().next()?.parse().ok().map(Some);
    }
    line.contains("edge listening").then_some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_names_the_address() {
        let line = "2026-12-02T03:37:25Z  INFO tenant_edge::listening: catalogue listening on 127.0.0.1:7000";
        assert_eq!(listening_on(line), Some(Some("127.0.0.1:7000".parse().unwrap())));
        let tcs = "INFO tenant_edge::tcs: tcs us-east-1 listening on 127.0.0.1:40001";
        assert_eq!(listening_on(tcs), Some(Some("127.0.0.1:40001".parse().unwrap())));
        let edge = "INFO tenant_edge::edge: edge listening http=127.0.0.1:8080 admin=127.0.0.1:9900";
        assert_eq!(listening_on(edge), Some(None));
        assert_eq!(listening_on("INFO tenant_edge::tcs: view snapshot loaded"), None);
        assert_eq!(listening_on("x listening on nowhere"), None);
    }
}

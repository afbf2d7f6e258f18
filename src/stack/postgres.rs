//! A real PostgreSQL server for tests, benches and the stack: `initdb` into a directory of the
//! caller's, `postgres` on a free loopback port, ready when it says so on its log (nothing
//! polls it), stopped when dropped. A standby of it comes from `pg_basebackup -R`.
//!
//! The binaries come from `$PG_BINDIR`, else Debian's newest `/usr/lib/postgresql/*/bin`, else
//! the `PATH`. PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
//! user (Debian's package creates it), which then owns the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, StackError};

/// How long a server may take to start (initdb excluded) or to stop.
const WITHIN: Duration = Duration::from_secs(60);
/// The superuser `initdb` creates; every connection of the stack and the tests uses it.
pub const USER: &str = "postgres";

/// A PostgreSQL server started by this process, stopped (fast shutdown) when dropped.
#[derive(Debug)]
pub struct PgServer {
    data: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    /// A directory of its own, removed once the server stopped.
    scratch: Option<PathBuf>,
    /// The shell that runs the server and stops it once its standard input closes: when this
    /// handle drops the pipe, or when this process exits, even killed.
    watchdog: Option<Watchdog>,
}

#[derive(Debug)]
struct Watchdog {
    shell: std::process::Child,
    /// Closing it (dropping it) tells the shell to stop the server.
    stdin: Option<std::process::ChildStdin>,
}

/// Runs `"$0" "$@"` (the server) with the shell's standard input kept aside; once that input
/// closes, stops the server (fast shutdown), waits for it, and removes `$SCRATCH` when set.
const WATCHDOG: &str = r#"exec 3<&0 0</dev/null
"$0" "$@" &
pid=$!
read -r _ <&3
kill -INT "$pid" 2>/dev/null
wait "$pid"
if [ -n "$SCRATCH" ]; then rm -rf "$SCRATCH"; fi"#;

impl PgServer {
    /// `initdb` into `dir/data` (trust authentication, loopback only) and starts the server
    /// with `settings` (`-c name=value`) on a free port. As root, `dir` becomes the `postgres`
    /// user's, and its parents must let others traverse them (a temporary directory does).
    pub fn start(dir: &Path, settings: &[(&str, &str)]) -> Result<Self, StackError> {
        let data = dir.join("data");
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
        own(dir)?;
        initdb(&data)?;
        Self::launch(data, settings, None)
    }

    /// A server in a fresh directory of its own under the system's temporary directory,
    /// removed once the server has stopped: when dropped, or when this process exits however
    /// it exits (a process-wide server of a test binary is never dropped).
    pub fn scratch(settings: &[(&str, &str)]) -> Result<Self, StackError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tenant-edge-pg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| super::io_err(&dir, e))?;
        own(&dir)?;
        let data = dir.join("data");
        if let Err(e) = initdb(&data) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Self::launch(data, settings, Some(dir))
    }

    /// A streaming standby of `primary` in `dir/data` (`pg_basebackup -R`), started with
    /// `settings`. For a synchronous one, start the primary with
    /// `synchronous_standby_names = '*'`.
    pub fn standby_of(primary: &PgServer, dir: &Path, settings: &[(&str, &str)]) -> Result<Self, StackError> {
        let data = dir.join("data");
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
        own(dir)?;
        run(
            &mut db_command(
                "pg_basebackup",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    USER,
                    "-R",
                    "--checkpoint=fast",
                    "--wal-method=stream",
                ],
            ),
            "pg_basebackup",
        )?;
        Self::launch(data, settings, None)
    }

    fn launch(
        data: PathBuf,
        settings: &[(&str, &str)],
        scratch: Option<PathBuf>,
    ) -> Result<Self, StackError> {
        let mut server = PgServer {
            data,
            port: free_port(),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            scratch,
            watchdog: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again (after [`PgServer::kill`]) on the same port and directory.
    pub fn restart(&mut self) -> Result<(), StackError> {
        let mut args = vec![
            "-D".to_owned(),
            self.data.to_string_lossy().into_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-k".to_owned(),
            self.data.to_string_lossy().into_owned(),
            "-c".to_owned(),
            "logging_collector=off".to_owned(),
        ];
        for (name, value) in &self.settings {
            args.push("-c".to_owned());
            args.push(format!("{name}={value}"));
        }
        let mut script = vec![
            WATCHDOG.to_owned(),
            bin("postgres").to_string_lossy().into_owned(),
        ];
        script.extend(args);
        let script: Vec<&str> = script.iter().map(String::as_str).collect();
        let mut shell = as_db_user(Path::new("sh"), &[&["-c"], &script[..]].concat());
        if let Some(dir) = &self.scratch {
            shell.env("SCRATCH", dir);
        }
        let mut shell = shell
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StackError::Part(format!("cannot start postgres: {e}")))?;
        let stdin = shell.stdin.take();
        let stderr = shell
            .stderr
            .take()
            .ok_or_else(|| StackError::Part("postgres: no stderr".into()))?;
        // "ready to accept connections", or "... read-only connections" on a standby.
        let said = super::ready_line(
            stderr,
            "postgres",
            "database system is ready to accept".to_owned(),
        );
        self.watchdog = Some(Watchdog { shell, stdin });
        said.recv_timeout(WITHIN).map_err(|_| {
            StackError::Part(format!(
                "postgres on port {} never said it is ready (TEST_LOG=1 shows its log)",
                self.port
            ))
        })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// A connection URL for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's process id (the postmaster's, from its pid file) while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.watchdog.as_ref()?;
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Kills the server at once (SIGKILL to the postmaster), as a crash would.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        self.stop();
    }

    /// Promotes a standby to primary and waits until it is.
    pub fn promote(&self) -> Result<(), StackError> {
        run(
            &mut db_command("pg_ctl", &["promote", "-w", "-D", &self.data.to_string_lossy()]),
            "pg_ctl promote",
        )
    }

    /// One server for this whole process, started at the first call (fsync off: for tests,
    /// whose databases need not outlive a power cut; a crash of the server itself loses
    /// nothing), stopped and removed when the process exits. Give each test its own database
    /// ([`PgServer::fresh_database`]).
    pub fn shared() -> Result<&'static PgServer, StackError> {
        static SHARED: std::sync::OnceLock<Result<PgServer, String>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                PgServer::scratch(&[("fsync", "off"), ("max_connections", "200")]).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| StackError::Part(e.clone()))
    }

    /// Creates a database no one used yet and returns its URL.
    pub fn fresh_database(&self) -> Result<String, StackError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!("t{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs `sql` (statements, no results) as the superuser in database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<(), StackError> {
        run(
            &mut db_command(
                "psql",
                &[
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    db,
                    "-c",
                    sql,
                ],
            ),
            "psql",
        )
    }

    /// Stops the server (fast shutdown: open transactions are rolled back) and waits.
    pub fn stop(&mut self) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        drop(watchdog.stdin.take());
        let deadline = std::time::Instant::now() + WITHIN;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = watchdog.shell.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = watchdog.shell.kill();
        let _ = watchdog.shell.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether PostgreSQL's binaries can be found (for a clear error before anything starts).
pub fn available() -> bool {
    bin("initdb").is_file() || which("initdb").is_some()
}

/// The path of PostgreSQL binary `name`.
fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir).join(name);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max();
    match newest {
        Some(v) => PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/{name}")),
        None => which(name).unwrap_or_else(|| PathBuf::from(name)),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command running PostgreSQL binary `name`; as root, as the `postgres` user.
fn db_command(name: &str, args: &[&str]) -> Command {
    as_db_user(&bin(name), args)
}

/// A command running `program`; as root, as the `postgres` user (setpriv execs it, so it is
/// the child itself, not a grandchild).
fn as_db_user(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", USER, "--regid", USER, "--init-groups", "--"])
            .arg(program)
            .args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn initdb(data: &Path) -> Result<(), StackError> {
    run(
        &mut db_command(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                "--no-sync",
            ],
        ),
        "initdb",
    )
}

/// As root, hands `dir` to the `postgres` user (PostgreSQL wants its directories its own).
fn own(dir: &Path) -> Result<(), StackError> {
    if !is_root() {
        return Ok(());
    }
    run(
        Command::new("chown").args([&format!("{USER}:{USER}"), &*dir.to_string_lossy()]),
        "chown",
    )?;
    // The server must reach its directory; changing the modes of the caller's directories
    // behind its back is not ours to do, so say which one is in the way.
    for parent in dir.ancestors().skip(1) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(parent) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(StackError::Part(format!(
                "PostgreSQL runs as the {USER} user, which cannot reach {}: {} is not traversable by others",
                dir.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), StackError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        StackError::Part(format!(
            "cannot run {what} ({}): {e}; is PostgreSQL installed?",
            cmd.get_program().to_string_lossy()
        ))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StackError::Part(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

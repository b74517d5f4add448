//! A private PostgreSQL server for one test: Debian's binaries, a fresh cluster in a temporary
//! directory, listening on a free 127.0.0.1 port (its unix socket in that directory too), with
//! `trust` authentication. The tests start and stop it; nothing relies on the package's service.
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root: then every PostgreSQL
//! program runs as the `postgres` system user (set on the child itself, so that the PID we
//! signal is the server's, not a wrapper's).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::PATIENCE;

/// How often readiness and exit are polled: no signal exists for either but asking again.
const POLL: Duration = Duration::from_millis(20);

/// A running (or stopped) PostgreSQL server; stopped by its PID and removed when dropped.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// `(uid, gid)` to run PostgreSQL's programs as, when the tests run as root.
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl Postgres {
    /// `initdb`, then the server; returns once it accepts connections.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = rustix::process::geteuid()
            .is_root()
            .then(|| (id("-u"), id("-g")));
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown data dir");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free port")
            .port();
        let mut pg = Postgres {
            dir,
            bin: bin_dir(),
            port,
            user,
            server: None,
        };
        let out = pg
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--no-sync"])
            .args(["--encoding=UTF8", "--no-locale", "--pgdata"])
            .arg(pg.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        pg
    }

    /// Starts the server again on the same data directory and port; returns once it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "PostgreSQL is already running");
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // A test's data is thrown away: durability only costs time.
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.server = Some(server);
        self.wait_ready();
    }

    /// Polls `pg_isready` until the server accepts connections, failing the test if the server
    /// exits or takes longer than [`PATIENCE`].
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-t", "1", "-d", "postgres"])
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return;
            }
            let server = self.server.as_mut().expect("started");
            if let Some(status) = server.try_wait().expect("try_wait") {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// A connection string for the server's `postgres` database, over TCP.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Fast shutdown (SIGINT to the server's PID: it ends every session), then waits for it.
    pub fn stop(&mut self) {
        let mut server = self.server.take().expect("PostgreSQL is running");
        signal(&server, Signal::INT);
        let deadline = Instant::now() + PATIENCE;
        while server.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "postgres did not stop within {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// How many sessions the server has with `application_name`.
    pub fn connections(&self, application_name: &str) -> usize {
        self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :'app'",
            &[("app", application_name)],
        )
        .parse()
        .expect("a count")
    }

    /// Runs one SQL statement through `psql`, with `vars` as psql variables (`:'name'` quotes
    /// one as a literal); its unaligned output, trimmed.
    pub fn query(&self, sql: &str, vars: &[(&str, &str)]) -> String {
        let mut psql = self.command("psql");
        psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", "postgres", "-d", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()]);
        for (name, value) in vars {
            psql.arg("-v").arg(format!("{name}={value}"));
        }
        // Through stdin: psql substitutes variables there, not in `-c`.
        let mut child = psql
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{sql};").expect("write to psql");
        drop(stdin);
        let out = child.wait_with_output().expect("psql output");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// One of PostgreSQL's programs, as the user it must run as, in the server's directory
    /// (initdb warns about a working directory its user cannot enter).
    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Immediate shutdown: the data is thrown away with the directory next.
            signal(&server, Signal::QUIT);
            let deadline = Instant::now() + PATIENCE;
            while matches!(server.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = server.kill();
                    let _ = server.wait();
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

fn signal(server: &Child, signal: Signal) {
    kill_process(Pid::from_child(server), signal).expect("signal postgres");
}

/// Debian's `/usr/lib/postgresql/VERSION/bin` (the newest, if several are installed).
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL under /usr/lib/postgresql/*/bin: run tests/deps.sh")
}

/// `id FLAG postgres`: the `postgres` system user's uid (`-u`) or gid (`-g`).
fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "no postgres user (tests/deps.sh installs PostgreSQL, which makes it)"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

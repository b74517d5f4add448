//! Test harness: runs the real `effe-host` binary with a real effe on 127.0.0.1 (a free port
//! chosen by the kernel), waits for its `listening` line (no fixed sleeps), and talks to it
//! over real sockets with hyper's client (HTTP/1.1 or h2c, one connection per request).
//!
//! The binaries come from the same target directory as the test binary: build the workspace
//! first (`make test` does).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;

pub mod postgres;
pub mod swap;
pub mod tls;

/// How long a host may take to become ready, or to exit, before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `target/<profile>`: where cargo put this test binary's siblings.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_owned()
}

fn artifact(name: &str) -> PathBuf {
    let path = artifacts().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (make test, or cargo build --workspace)",
        path.display()
    );
    path
}

/// The effe-host binary; `EFFE_TEST_HOST_BIN` runs the suite against another build (an
/// older one, to see a regression test fail).
pub fn host_bin() -> PathBuf {
    match std::env::var_os("EFFE_TEST_HOST_BIN") {
        Some(path) => PathBuf::from(path),
        None => artifact("effe-host"),
    }
}

/// The stand-in for a host built against effe-abi 0.1.0 (tests/compat, built by `make test`).
pub fn compat_host_bin() -> PathBuf {
    artifact("compat-host-0-1-0")
}

/// A private copy of effe `name` (`hello`, `echo`, `fixture-lifecycle`, …) in `dir`, mode 0755,
/// so that the permission check passes whatever the umask of the build was.
pub fn plugin_in(dir: &Path, name: &str) -> PathBuf {
    let file = format!("lib{}.so", name.replace('-', "_"));
    let dest = dir.join(&file);
    fs::copy(artifact(&file), &dest).expect("copy plugin");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    dest
}

/// What a finished host printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A command line for effe-host, with its own temporary directory.
pub struct HostCmd {
    cmd: Command,
    pub dir: TempDir,
}

impl HostCmd {
    /// `effe-host --plugin <copy of name>` listening on 127.0.0.1:0, syslog off.
    pub fn new(plugin: &str) -> HostCmd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = plugin_in(dir.path(), plugin);
        HostCmd::with_path(&path, dir)
    }

    /// `effe-host --plugin path`, listening on 127.0.0.1:0, syslog off.
    pub fn with_path(path: &Path, dir: TempDir) -> HostCmd {
        HostCmd::configure(Command::new(host_bin()), path, dir)
    }

    /// `effe-host --plugin <copy of name>` with at most `limit` open file descriptors
    /// (`ulimit -n`, then exec: the PID is the host's).
    pub fn with_fd_limit(plugin: &str, limit: u32) -> HostCmd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = plugin_in(dir.path(), plugin);
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(host_bin());
        HostCmd::configure(sh, &path, dir)
    }

    /// The hello effe on one network thread, listening, with `spare` file descriptors beyond
    /// the fewest it starts with (a count that depends on the build, so it is searched for):
    /// `spare` connections are served, the next ones find the host out of descriptors.
    pub fn hello_short_of_descriptors(spare: u32) -> Host {
        let start = |limit| {
            HostCmd::with_fd_limit("hello", limit)
                .args(["--threads", "1", "--admin-listen", "off"])
                .start()
        };
        let fewest = (10..64)
            .find(|limit| {
                let host = start(*limit);
                let said =
                    host.wait_stderr(|s| s.contains("listening") || s.contains("effe-host: "));
                said.contains("listening")
            })
            .expect("no descriptor limit let the host start");
        let mut host = start(fewest + spare);
        host.wait_listening();
        host
    }

    fn configure(mut cmd: Command, path: &Path, dir: TempDir) -> HostCmd {
        cmd.arg("--plugin")
            .arg(path)
            // Through the environment, so that tests can still pass the flags.
            .env("EFFE_LISTEN", "127.0.0.1:0")
            .env("EFFE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("EFFE_SYSLOG", "off")
            .env("EFFE_LOG", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        HostCmd { cmd, dir }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// A path inside this host's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs to completion (for hosts that must refuse to start).
    pub fn run(mut self) -> Finished {
        let child = self.cmd.spawn().expect("spawn effe-host");
        let deadline = Instant::now() + PATIENCE;
        let output = wait_output(child, deadline);
        drop(self.dir);
        output
    }

    /// Starts the host and waits until it is listening.
    pub fn spawn(self) -> Host {
        let mut host = self.start();
        host.wait_listening();
        host
    }

    /// Starts the host without waiting for it to listen (see [`Host::wait_listening`]).
    pub fn start(mut self) -> Host {
        let mut child = self.cmd.spawn().expect("spawn effe-host");
        let stderr = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            loop {
                line.clear();
                let done = matches!(reader.read_line(&mut line), Ok(0) | Err(_));
                let (text, cv) = &*sink;
                let mut text = text.lock().unwrap();
                if done {
                    text.push_str("\n<eof>");
                    cv.notify_all();
                    return;
                }
                text.push_str(&line);
                cv.notify_all();
            }
        });
        Host {
            child,
            stderr,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            dir: self.dir,
        }
    }
}

fn wait_output(mut child: Child, deadline: Instant) -> Finished {
    loop {
        if let Some(_status) = child.try_wait().expect("try_wait") {
            let out = child.wait_with_output().expect("output");
            return Finished {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("effe-host did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running effe-host; killed (by PID) if a test ends without stopping it.
pub struct Host {
    child: Child,
    stderr: Arc<(Mutex<String>, Condvar)>,
    pub addr: SocketAddr,
    /// The admin listener, when on.
    pub admin: Option<SocketAddr>,
    pub dir: TempDir,
}

impl Host {
    /// Waits for the `listening` line and takes the address from it.
    pub fn wait_listening(&mut self) {
        let line = self.wait_stderr(|s| s.contains("listening") || s.ends_with("<eof>"));
        self.addr = line
            .split("listening addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("effe-host did not start:\n{line}"));
        self.admin = line
            .split("listening addr=")
            .nth(1)
            .and_then(|rest| rest.split(" admin=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let admin = self.admin.expect("the admin listener is on");
        send(admin, Proto::Http1, get(path)).await
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the host wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits until stderr satisfies `pred` (or the host's stderr closes); returns it.
    pub fn wait_stderr(&self, pred: impl Fn(&str) -> bool) -> String {
        let (text, cv) = &*self.stderr;
        let guard = text.lock().unwrap();
        let (guard, timeout) = cv
            .wait_timeout_while(guard, PATIENCE, |t| !pred(t) && !t.ends_with("<eof>"))
            .unwrap();
        assert!(!timeout.timed_out(), "stderr never matched:\n{}", *guard);
        guard.clone()
    }

    /// Sends SIGTERM (to this host's PID only).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits for the host to exit; returns its status and all of its stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let stderr = self.wait_stderr(|t| t.ends_with("<eof>"));
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "effe-host did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`, `KILL`) to this host's PID only. With kill(2)
    /// itself: a machine without procps has no `kill` program (a shell's is a builtin).
    pub fn signal(&self, signal: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let signal = match signal {
            "HUP" => Signal::HUP,
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "KILL" => Signal::KILL,
            other => panic!("no such signal in the harness: {other}"),
        };
        kill_process(Pid::from_child(&self.child), signal).expect("kill");
    }

    /// SIGTERM, then wait.
    pub fn stop(self) -> (ExitStatus, String) {
        self.sigterm();
        self.wait()
    }

    /// `GET path` over HTTP/1.1.
    pub async fn get(&self, path: &str) -> Reply {
        send(self.addr, Proto::Http1, get(path)).await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The wire protocol of a test request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2: prior knowledge on cleartext, or as ALPN chose on TLS.
    Http2,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A `GET path` request with the `Host` an HTTP/1.1 request needs, for clients used directly
/// (hyper's client does not add one; [`send`] does).
pub fn get_h1(path: &str) -> http::Request<Full<Bytes>> {
    let mut req = get(path);
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_static("localhost"),
    );
    req
}

/// A `GET path` request with no body.
pub fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends `req` on a new connection to `addr`; a host that does not answer within [`PATIENCE`]
/// fails the test instead of hanging it.
pub async fn send(addr: SocketAddr, proto: Proto, req: http::Request<Full<Bytes>>) -> Reply {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        send_on(stream, addr, proto, req).await
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("no response from {addr} within {PATIENCE:?}"))
}

/// Sends `req` over an established connection (TCP or TLS), speaking `proto`.
pub async fn send_on<S>(
    stream: S,
    addr: SocketAddr,
    proto: Proto,
    mut req: http::Request<Full<Bytes>>,
) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let resp = match proto {
        Proto::Http1 => {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
            tokio::spawn(conn);
            req.headers_mut()
                .insert(http::header::HOST, addr.to_string().parse().unwrap());
            tx.send_request(req).await.expect("h1 request")
        }
        Proto::Http2 => {
            let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            let uri = format!("http://{addr}{}", req.uri());
            *req.uri_mut() = uri.parse().unwrap();
            tx.send_request(req).await.expect("h2 request")
        }
    };
    reply(resp).await
}

/// Collects a whole response.
pub async fn reply(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// The lifecycle log of a `fixture-lifecycle` effe, in its own directory so that it outlives
/// the host.
pub struct EventLog {
    _dir: TempDir,
    pub path: PathBuf,
}

impl EventLog {
    pub fn new() -> EventLog {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events");
        EventLog { _dir: dir, path }
    }
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for EventLog {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Lines of a lifecycle log written by the `fixture-lifecycle` effe.
pub fn events(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How many events start with `prefix` (`"start "`, `"stop "`, `"init"`).
pub fn count(events: &[String], prefix: &str) -> usize {
    events.iter().filter(|e| e.starts_with(prefix)).count()
}

/// Polls `path` until `pred` holds on its events (bounded by [`PATIENCE`]). The effe writes
/// the file from its own threads; there is no other signal to wait on.
pub fn wait_events(path: &Path, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ev = events(path);
        if pred(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "lifecycle never matched: {ev:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Where the `fixture-lifecycle` effe checks in when told to hold a call (`/hold?PORT`,
/// `FIXTURE_INIT_HOLD`, `FIXTURE_START_HOLD`): each call in progress is one connection here.
pub struct Holds {
    listener: tokio::net::TcpListener,
}

/// One held call: it returns when this is released (or dropped).
pub struct Held {
    /// What the call said it is: `init`, `start N`, `ctx N`.
    pub who: String,
    stream: tokio::net::TcpStream,
}

impl Holds {
    pub async fn new() -> Holds {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind holds");
        Holds { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Waits (at most [`PATIENCE`]) for the next call to check in.
    pub async fn next(&self) -> Held {
        use tokio::io::AsyncBufReadExt;
        let check_in = async {
            let (stream, _) = self.listener.accept().await.expect("accept hold");
            let mut reader = tokio::io::BufReader::new(stream);
            let mut who = String::new();
            reader.read_line(&mut who).await.expect("hold says who");
            Held {
                who: who.trim_end().to_owned(),
                stream: reader.into_inner(),
            }
        };
        tokio::time::timeout(PATIENCE, check_in)
            .await
            .expect("no held call checked in")
    }
}

impl Held {
    /// Lets the held call return.
    pub async fn release(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(b"x").await;
    }
}

/// The value of the sample `series` (a metric name with its labels, exactly as exposed) in a
/// `/metrics` scrape.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
        .parse()
        .unwrap()
}

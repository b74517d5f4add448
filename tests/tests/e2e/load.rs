//! Refusing to start: each load failure and usage error with its exit code and one-line
//! message; what the flags accept; `--info`, `--help`.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use effe_tests::{plugin_in, send, Finished, HostCmd, Proto, PATIENCE};

/// The host's own error: exactly one line, `effe-host: …`, last on stderr.
fn one_line_error(out: &Finished) -> String {
    let line = out
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(line.starts_with("effe-host: "), "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr.matches("effe-host: ").count(),
        1,
        "stderr: {}",
        out.stderr
    );
    line
}

fn refused(cmd: HostCmd, code: i32, needles: &[&str]) -> String {
    let out = cmd.run();
    assert_eq!(out.code(), Some(code), "stderr: {}", out.stderr);
    let line = one_line_error(&out);
    for n in needles {
        assert!(line.contains(n), "{line:?} lacks {n:?}");
    }
    assert!(!out.stderr.contains("listening"));
    line
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libgone.so");
    let cmd = HostCmd::with_path(&path, tempfile::tempdir().unwrap());
    refused(cmd, 3, &[path.to_str().unwrap(), "No such file"]);
}

#[test]
fn not_a_shared_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libtext.so");
    fs::write(&path, "this is not ELF\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let cmd = HostCmd::with_path(&path, dir);
    let line = refused(cmd, 4, &["libtext.so", "not a loadable shared library: "]);
    // The loader's own message names the file too: the line names it once.
    assert_eq!(line.matches("libtext.so").count(), 1, "{line}");
    assert!(line.starts_with(&format!(
        "effe-host: cannot load plugin {}: not a loadable shared library: ",
        path.display()
    )));
    assert!(!line.contains("/proc/self/fd"), "{line}");
}

#[test]
fn library_without_the_root_module() {
    refused(
        HostCmd::new("fixture-no-effe"),
        5,
        &["libfixture_no_effe.so", "no effe root module"],
    );
}

#[test]
fn incompatible_abi() {
    refused(
        HostCmd::new("fixture-abi-mismatch"),
        6,
        &["libfixture_abi_mismatch.so", "incompatible effe ABI"],
    );
}

#[test]
fn writable_by_group_or_others_unless_allowed() {
    for mode in [0o775, 0o757] {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_in(dir.path(), "hello");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let cmd = HostCmd::with_path(&path, dir);
        refused(
            cmd,
            7,
            &[
                "libhello.so",
                "writable by group or others",
                "--allow-insecure-plugin",
            ],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = plugin_in(dir.path(), "hello");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let out = HostCmd::with_path(&path, dir)
        .args(["--allow-insecure-plugin", "--info"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

/// The tests run as root: root may chown, and the host's own uid is 0.
const NOBODY: u32 = 65534;

#[test]
fn owned_by_another_user_unless_allowed() {
    let refuse = || {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_in(dir.path(), "hello");
        std::os::unix::fs::chown(&path, Some(NOBODY), None).expect("chown (tests run as root)");
        HostCmd::with_path(&path, dir)
    };
    refused(
        refuse(),
        7,
        &[
            "libhello.so",
            "owned by uid 65534, not by root or the host's user (uid 0)",
            "--allow-insecure-plugin",
        ],
    );
    let out = refuse().args(["--allow-insecure-plugin", "--info"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn directory_others_can_write_or_own_unless_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let path = plugin_in(dir.path(), "hello");
    let shown = dir.path().canonicalize().unwrap().display().to_string();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        HostCmd::with_path(&path, dir),
        7,
        &[
            &format!("its directory {shown} is writable by group or others (mode 777"),
            "--allow-insecure-plugin",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let path = plugin_in(dir.path(), "hello");
    let shown = dir.path().canonicalize().unwrap().display().to_string();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), None).expect("chown (tests run as root)");
    refused(
        HostCmd::with_path(&path, dir),
        7,
        &[&format!(
            "its directory {shown} is owned by uid 65534, not by root or the host's user (uid 0)"
        )],
    );

    // Like /tmp: with the sticky bit, only an entry's owner may rename or delete it.
    let dir = tempfile::tempdir().unwrap();
    let path = plugin_in(dir.path(), "hello");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let out = HostCmd::with_path(&path, dir).args(["--info"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn info_prints_metadata_as_json() {
    let out = HostCmd::new("hello").args(["--info"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["name"], "hello");
    assert_eq!(info["version"], "0.1.0");
    assert_eq!(
        info["description"],
        "Answers 200 'Hello from effe': the smallest effe, and the benchmark one"
    );
    assert_eq!(info["abi_version"], "0.1.2");
    assert_eq!(info["nonblocking"], true);
    assert_eq!(info["panic"], "unwind");
    assert_eq!(info["stream_request_body"], false);
    assert_eq!(
        info["interfaces"],
        serde_json::json!(["effe-abi/run@2", "effe-abi/meta@1", "effe-abi/log@1"])
    );
}

#[test]
fn info_does_not_call_init() {
    let log = effe_tests::EventLog::new();
    let out = HostCmd::new("fixture-lifecycle")
        .env("EFFE_LIFECYCLE_LOG", &log.path)
        .args(["--info"])
        .run();
    assert_eq!(out.code(), Some(0));
    assert!(!log.exists(), "init ran for --info");
}

#[test]
fn init_failure_or_panic_exits_before_serving() {
    for (how, message) in [
        ("error", "init failed: fixture init error"),
        ("panic", "init panicked: fixture init panic"),
    ] {
        let log = effe_tests::EventLog::new();
        let cmd = HostCmd::new("fixture-lifecycle")
            .env("FIXTURE_INIT", how)
            .env("EFFE_LIFECYCLE_LOG", &log.path);
        let line = refused(cmd, 8, &["fixture-lifecycle", message]);
        assert_reported(
            &line,
            &format!("effe-host: effe fixture-lifecycle: {message}"),
            how,
        );
        assert_eq!(
            effe_tests::events(&log),
            ["init"],
            "no Start after a failed Init"
        );
    }
}

#[test]
fn start_failure_at_boot_exits() {
    for (how, message) in [
        ("error", "failed: fixture start error"),
        ("panic", "panicked: fixture start panic"),
    ] {
        let cmd = HostCmd::new("fixture-lifecycle").env("FIXTURE_START", how);
        let line = refused(cmd, 9, &[message]);
        let expected =
            format!("effe-host: effe fixture-lifecycle: a start for --min-contexts {message}");
        assert_reported(&line, &expected, how);
    }
}

/// `line` is `expected`, and for a panic, the place the effe panicked at too.
fn assert_reported(line: &str, expected: &str, how: &str) {
    if how != "panic" {
        return assert_eq!(line, expected);
    }
    let place = line
        .strip_prefix(expected)
        .and_then(|rest| rest.strip_prefix(" (at plugins/fixture-lifecycle/src/lib.rs:"))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not {expected:?} (at …)"));
    assert!(place.split(':').all(|n| n.parse::<u32>().is_ok()), "{line}");
}

#[test]
fn contexts_started_before_a_failed_boot_start_are_stopped() {
    let log = effe_tests::EventLog::new();
    let cmd = HostCmd::new("fixture-lifecycle")
        .env("FIXTURE_START", "error-after-2")
        .env("EFFE_LIFECYCLE_LOG", &log.path)
        .args(["--min-contexts", "3"]);
    refused(cmd, 9, &["fixture start error"]);
    assert_two_started_and_stopped(&log, "");
}

/// Init, two Starts, then a Stop for each (in any order: Stops run concurrently), nothing else.
fn assert_two_started_and_stopped(log: &std::path::Path, context: &str) {
    let mut ev = effe_tests::events(log);
    assert_eq!(ev[..3], ["init", "start 1", "start 2"], "{ev:?}{context}");
    ev[3..].sort();
    assert_eq!(
        ev[3..],
        ["stop 1", "stop 2"],
        "every Start that succeeded has its Stop{context}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let cmd = HostCmd::new("hello").args(["--min-contexts", "5", "--max-contexts", "2"]);
    refused(
        cmd,
        2,
        &["--min-contexts (5) is larger than --max-contexts (2)"],
    );
}

/// A refusal with exit 2 whose one line is exactly `line`.
fn usage_error(cmd: HostCmd, line: &str) {
    assert_eq!(refused(cmd, 2, &[]), line);
}

#[test]
fn clap_errors_are_one_line_with_exit_2() {
    usage_error(
        HostCmd::new("hello").args(["--thread", "2"]),
        "effe-host: unexpected argument '--thread' found (did you mean '--threads'?)",
    );
    usage_error(
        HostCmd::new("hello").args(["--queue-timeout", "soon"]),
        "effe-host: invalid value 'soon' for '--queue-timeout <DURATION>': expected a duration \
         such as 500ms, 2s, 1m",
    );
    usage_error(
        HostCmd::new("hello").env("EFFE_CALL_MODE", "inlin"),
        "effe-host: invalid value 'inlin' for '--call-mode <MODE>': expected one of auto, \
         inline, thread (did you mean 'inline'?) (from EFFE_CALL_MODE)",
    );
    usage_error(
        HostCmd::new("hello").args(["--tls-key", "key.pem"]),
        "effe-host: the following required arguments were not provided: --tls-cert <PEM> (or \
         set EFFE_TLS_CERT)",
    );
    let out = without_plugin(&[]);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert_eq!(
        one_line_error(&out),
        "effe-host: the following required arguments were not provided: --plugin <PATH> (or \
         set EFFE_PLUGIN)"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn help_and_version_still_print_and_exit_0() {
    let out = without_plugin(&["--help"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for needle in [
        "Usage: effe-host",
        "EFFE_LOG",
        "yes/no",
        "KiB",
        "Exit codes:",
        "   2  usage error",
        "  16  shutdown incomplete",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no {needle:?} in\n{}",
            out.stdout
        );
    }
    let out = without_plugin(&["--version"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("effe-host "), "{}", out.stdout);
}

/// effe-host with only `args` (no `--plugin`, no `EFFE_PLUGIN`), bounded by [`PATIENCE`].
fn without_plugin(args: &[&str]) -> Finished {
    let child = std::process::Command::new(effe_tests::host_bin())
        .args(args)
        .env_remove("EFFE_PLUGIN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn effe-host");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("effe-host (pid {pid}) did not exit within {PATIENCE:?}"))
        .expect("effe-host output");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn booleans_take_the_usual_spellings() {
    for value in ["true", "1", "yes", "YES", "on", "On"] {
        let out = HostCmd::new("hello").env("EFFE_INFO", value).run();
        assert_eq!(out.code(), Some(0), "EFFE_INFO={value}: {}", out.stderr);
        let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(info["name"], "hello");
    }
    usage_error(
        HostCmd::new("hello").env("EFFE_INFO", "maybe"),
        "effe-host: invalid value 'maybe' for '--info': expected true/false, 1/0, yes/no or \
         on/off (from EFFE_INFO)",
    );
    // A false one is false: the insecure plugin is refused.
    for (value, code) in [("no", 7), ("yes", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let path = plugin_in(dir.path(), "hello");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let out = HostCmd::with_path(&path, dir)
            .env("EFFE_ALLOW_INSECURE_PLUGIN", value)
            .env("EFFE_INFO", "1")
            .run();
        assert_eq!(out.code(), Some(code), "{value}: {}", out.stderr);
    }
}

#[test]
fn zero_timeouts_are_refused() {
    for flag in [
        "--tls-handshake-timeout",
        "--queue-timeout",
        "--idle-timeout",
        "--stop-timeout",
    ] {
        usage_error(
            HostCmd::new("hello").args([flag, "0s"]),
            &format!("effe-host: invalid value '0s' for '{flag} <DURATION>': must be more than 0"),
        );
    }
    usage_error(
        HostCmd::new("hello").env("EFFE_TLS_HANDSHAKE_TIMEOUT", "0ms"),
        "effe-host: invalid value '0ms' for '--tls-handshake-timeout <DURATION>': must be more \
         than 0 (from EFFE_TLS_HANDSHAKE_TIMEOUT)",
    );
    usage_error(
        HostCmd::new("hello").args(["--shutdown-timeout", "2y"]),
        "effe-host: invalid value '2y' for '--shutdown-timeout <DURATION>': too long: at most 1 \
         year",
    );
    usage_error(
        HostCmd::new("hello").args(["--max-contexts", "0"]),
        "effe-host: invalid value '0' for '--max-contexts <N>': must be at least 1",
    );
    // 0 means "do not wait" for the shutdown, "nobody waits for a busy Context" for the queue.
    let out = HostCmd::new("hello")
        .args(["--shutdown-timeout", "0", "--max-queue", "0", "--info"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn sizes_without_a_known_unit_are_refused() {
    usage_error(
        HostCmd::new("hello").args(["--max-body-size", "6XB"]),
        "effe-host: invalid value '6XB' for '--max-body-size <SIZE>': expected bytes, or a \
         number with B, KB, MB, GB, KiB, MiB or GiB (e.g. 6MiB)",
    );
    let out = HostCmd::new("hello")
        .args(["--max-body-size", "6MiB", "--info"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

/// A port that was free a moment ago (bound, then released).
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_takes_a_bare_port_or_colon_port() {
    for form in ["", ":"] {
        let port = free_port();
        let host = HostCmd::new("hello")
            .args(["--listen", &format!("{form}{port}")])
            .spawn();
        assert_eq!(
            host.addr,
            SocketAddr::from(([0, 0, 0, 0], port)),
            "{form}{port}"
        );
        let on_loopback = SocketAddr::from(([127, 0, 0, 1], port));
        let reply = send(on_loopback, Proto::Http1, effe_tests::get("/")).await;
        assert_eq!(reply.status, 200);
        assert!(host.stop().0.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_resolves_a_host_name() {
    let host = HostCmd::new("hello")
        .args(["--listen", "localhost:0"])
        .spawn();
    assert!(host.addr.ip().is_loopback(), "{}", host.addr);
    assert_ne!(host.addr.port(), 0);
    assert_eq!(host.get("/").await.status, 200);
    assert!(host.stop().0.success());
}

#[test]
fn listen_addresses_that_are_not_one_are_refused() {
    usage_error(
        HostCmd::new("hello").args(["--listen", "localhost"]),
        "effe-host: invalid value 'localhost' for '--listen <ADDR>': no port: expected PORT, \
         :PORT, HOST:PORT or [IPv6]:PORT, such as 8080, :8080, localhost:8080, [::1]:8080",
    );
    usage_error(
        HostCmd::new("hello").args(["--listen", "::1:8080"]),
        "effe-host: invalid value '::1:8080' for '--listen <ADDR>': an IPv6 address needs \
         brackets, such as [::1]:8080",
    );
    usage_error(
        HostCmd::new("hello").args(["--listen", ":80800"]),
        "effe-host: invalid value ':80800' for '--listen <ADDR>': invalid port '80800': expected \
         0 to 65535",
    );
}

#[test]
fn listen_failure_has_its_own_code() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cmd = HostCmd::new("hello").args(["--listen", &addr]);
    refused(cmd, 10, &[&format!("cannot listen on {addr}")]);
}

#[test]
fn contexts_started_before_a_later_setup_failure_are_stopped() {
    // A descriptor limit that lets Init, the boot Starts and the listeners through, but not the
    // runtime of a further network thread: searched, since the count depends on the build.
    let mut failed_after_boot = 0;
    for limit in 10..48 {
        let log = effe_tests::EventLog::new();
        let mut host = HostCmd::with_fd_limit("fixture-lifecycle", limit)
            .env("EFFE_LIFECYCLE_LOG", &log.path)
            .args(["--threads", "4", "--min-contexts", "2"])
            .start();
        let said = host.wait_stderr(|s| s.contains("listening") || s.contains("effe-host: "));
        if said.contains("listening") {
            // Enough descriptors for everything: the search is over.
            host.wait_listening();
            assert!(host.stop().0.success());
            break;
        }
        let (status, stderr) = host.wait();
        if !stderr.contains("cannot start the runtime") {
            continue;
        }
        failed_after_boot += 1;
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_two_started_and_stopped(&log, &format!(" (fd limit {limit})\n{stderr}"));
    }
    assert!(
        failed_after_boot > 0,
        "no limit made a network thread fail after boot"
    );
}

#[test]
fn the_checked_descriptor_is_the_one_loaded_and_stays_open() {
    let host = HostCmd::new("hello").spawn();
    let plugin = host.dir.path().join("libhello.so").canonicalize().unwrap();
    // The library was loaded through /proc/self/fd/N of the descriptor the checks ran on: that
    // descriptor stays open, so the name the loader knows never names another file.
    let fds = fs::read_dir(format!("/proc/{}/fd", host.pid())).unwrap();
    let open: Vec<_> = fds
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .collect();
    assert!(open.contains(&plugin), "{plugin:?} not among {open:?}");
    let maps = fs::read_to_string(format!("/proc/{}/maps", host.pid())).unwrap();
    assert!(maps.contains(plugin.to_str().unwrap()), "not mapped");
    assert!(host.stop().0.success());
}

#[test]
fn admin_listen_takes_what_listen_takes_or_off() {
    for ok in ["off", ":0", "127.0.0.1:0", "localhost:0"] {
        let out = HostCmd::new("hello")
            .args(["--admin-listen", ok, "--info"])
            .run();
        assert_eq!(out.code(), Some(0), "{ok}: {}", out.stderr);
    }
    let cmd = HostCmd::new("hello").args(["--admin-listen", "nope"]);
    refused(cmd, 2, &["--admin-listen \"nope\": no port"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_host_listens_on_is_refused_unless_reuse_port() {
    let first = HostCmd::new("hello").spawn();
    let addr = first.addr.to_string();
    // Both listen with SO_REUSEPORT: without the check the second would join silently.
    let out = refused(
        HostCmd::new("hello").args(["--listen", &addr]),
        10,
        &[&addr],
    );
    assert!(out.contains("--reuse-port"), "{out}");

    let second = HostCmd::new("hello")
        .args(["--listen", &addr, "--reuse-port"])
        .spawn();
    assert_eq!(second.addr, first.addr);
    let (status, stderr) = first.stop();
    assert!(status.success(), "{stderr}");
    // The port is the second host's alone now.
    assert_eq!(second.get("/").await.status, 200);
}

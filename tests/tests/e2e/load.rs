//! Refusing to start: each load failure with its exit code and one-line message; `--info`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use effe_tests::{plugin_in, Finished, HostCmd};

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
    refused(cmd, 4, &["libtext.so", "not a loadable shared library"]);
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
    assert_eq!(info["abi_version"], "0.1.1");
    assert_eq!(info["nonblocking"], true);
    assert_eq!(info["interfaces"], serde_json::json!(["effe-abi/run@2"]));
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
        assert_eq!(
            line,
            format!("effe-host: effe fixture-lifecycle: {message}")
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
    let cmd = HostCmd::new("fixture-lifecycle").env("FIXTURE_START", "error");
    refused(
        cmd,
        9,
        &[
            "start of the minimum Contexts failed",
            "fixture start error",
        ],
    );
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
    let out = HostCmd::new("hello")
        .args(["--queue-timeout", "soon"])
        .run();
    assert_eq!(out.code(), Some(2));
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

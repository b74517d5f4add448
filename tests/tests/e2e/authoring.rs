//! Writing an effe as an author does: `effe-host new` scaffolds a crate outside this
//! repository, cargo builds and tests it, the real host serves it; `effe-host check` says what
//! a library is, or why the host would refuse it; and panic = "abort" is refused at compile
//! time (export_effe!) and at load time (meta@1).
//!
//! The cargo runs use target directories of their own under this workspace's target/
//! (`scaffold`, `abort-check`), never the workspace's own: no lock is shared with the cargo that
//! runs these tests, and reruns find the dependencies already built. They run one at a time
//! (the machines have two cores) and are bounded by [`CARGO_PATIENCE`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use effe_tests::{host_bin, plugin_in, Finished, HostCmd, PATIENCE};
use serde_json::Value;

/// A cold build of a new effe compiles abi_stable and friends: about 40 s on an idle two-core
/// machine, several times that beside the rest of the suite.
const CARGO_PATIENCE: Duration = Duration::from_secs(900);

/// One cargo at a time from this module.
static CARGO: Mutex<()> = Mutex::new(());

/// This workspace's target directory: the test binary is target/<profile>/deps/e2e-<hash>.
fn target_root() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("test binary in target/<profile>/deps")
        .to_owned()
}

/// Runs `child` to completion within `patience`; past it, kills its process group (`child`
/// leads one: cargo's compilers go too) and fails the test.
fn bounded(mut cmd: Command, patience: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(patience) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            use rustix::process::{kill_process_group, Pid, Signal};
            let group = Pid::from_raw(pid as i32).expect("a child's pid is positive");
            let _ = kill_process_group(group, Signal::KILL);
            panic!("{what} did not finish within {patience:?}");
        }
    }
}

/// `cargo ARGS` in `dir`, building into `target_dir`, bounded by [`CARGO_PATIENCE`]. What this
/// test's own cargo set for it (a target directory, make's jobserver) is not passed on.
fn cargo(dir: &Path, target_dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER");
    bounded(cmd, CARGO_PATIENCE, &format!("cargo {}", args.join(" ")))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(out: &Output, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stderr}\n{}",
        out.status,
        text(&out.stdout)
    );
    stderr
}

/// `--offline` when the registry cache already holds every crate the workspace in `dir`
/// needs, so that a machine without a network builds it; else nothing: cargo downloads what is
/// missing.
fn offline(dir: &Path, target_dir: &Path) -> Option<&'static str> {
    cargo(dir, target_dir, &["fetch", "--offline"])
        .status
        .success()
        .then_some("--offline")
}

/// `effe-host ARGS` in `dir`, to completion.
fn effe_host(dir: &Path, args: &[&str]) -> Finished {
    effe_host_with(dir, args, &[])
}

/// `effe-host ARGS` in `dir` with `env` added, to completion.
fn effe_host_with(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Finished {
    let mut cmd = Command::new(host_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("EFFE_PLUGIN")
        .env_remove("EFFE_ALLOW_INSECURE_PLUGIN");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = bounded(cmd, PATIENCE, "effe-host");
    Finished {
        status: out.status,
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// A refusal: `code`, and exactly one line on stderr, `effe-host: …`, holding `needles`.
fn refused(out: &Finished, code: i32, needles: &[&str]) -> String {
    assert_eq!(out.code(), Some(code), "stderr: {}", out.stderr);
    let stderr = out.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("effe-host: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
    stderr.to_owned()
}

/// `effe-host check --plugin PATH`'s JSON, which must exit 0.
fn check(path: &Path) -> Value {
    let dir = path.parent().expect("the library's directory");
    let out = effe_host(dir, &["check", "--plugin", path.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one JSON object: {}",
        out.stdout
    );
    serde_json::from_str(&out.stdout).expect("check prints JSON")
}

/// A private copy of `built` in `dir`, mode 0755, as the host's trust checks want it.
fn private_copy(built: &Path, dir: &Path) -> PathBuf {
    assert!(
        built.exists(),
        "{} is missing: make test-cargo builds it",
        built.display()
    );
    let copy = dir.join(built.file_name().unwrap());
    fs::copy(built, &copy).expect("copy the library");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

#[test]
fn a_new_effe_builds_tests_and_serves_outside_the_workspace() {
    let _one_cargo = CARGO.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().expect("tempdir");
    let out = effe_host(home.path(), &["new", "hello-author"]);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let krate = home.path().join("hello-author");
    for said in [
        "Made the effe hello-author in hello-author",
        "effe-abi/",
        "cargo test",
        "cargo build --release",
        "--plugin target/release/libhello_author.so",
    ] {
        assert!(
            out.stdout.contains(said),
            "{said:?} not in:\n{}",
            out.stdout
        );
    }
    let readme = fs::read_to_string(krate.join("README.md")).unwrap();
    for command in [
        "cargo test",
        "cargo build --release",
        "effe-host --plugin target/release/libhello_author.so",
        "effe-host check --plugin target/release/libhello_author.so",
        "make image EFFE_SO=/path/to/hello-author/target/release/libhello_author.so",
    ] {
        assert!(readme.contains(command), "README lacks {command:?}");
    }
    assert_eq!(
        fs::read_to_string(krate.join(".gitignore")).unwrap(),
        "/target\n"
    );
    assert!(krate.join("effe-abi/src/lib.rs").exists());

    // As an author would: build and test in the crate, with its own Cargo.toml only.
    let target = target_root().join("scaffold");
    let offline = offline(&krate, &target);
    let mut build = vec!["build"];
    build.extend(offline);
    let stderr = succeeded(&cargo(&krate, &target, &build), "cargo build");
    // `#![forbid(unsafe_code)]` and `#![warn(missing_docs)]` hold, and the crate is clean.
    assert!(!stderr.contains("warning"), "{stderr}");
    let mut test = vec!["test"];
    test.extend(offline);
    let tested = cargo(&krate, &target, &test);
    let stderr = succeeded(&tested, "cargo test");
    assert!(!stderr.contains("warning"), "{stderr}");
    let stdout = text(&tested.stdout);
    assert!(
        stdout.contains("test result: ok. 1 passed; 0 failed"),
        "the unit test ran: {stdout}"
    );

    let served = tempfile::tempdir().expect("tempdir");
    let lib = private_copy(&target.join("debug/libhello_author.so"), served.path());
    let info = check(&lib);
    assert_eq!(info["name"], "hello-author");
    assert_eq!(info["panic"], "unwind");
    assert_eq!(info["abi_version"], info["host_abi_version"], "{info}");

    let host = HostCmd::with_path(&lib, served).spawn();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime.block_on(host.get("/?name=author"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), "Hello, author!\n");
    let reply = runtime.block_on(host.get("/?name="));
    assert_eq!(reply.status, 400, "{reply:?}");
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
}

#[test]
fn new_refuses_a_bad_name_and_a_directory_in_use() {
    let home = tempfile::tempdir().expect("tempdir");
    for (name, why) in [
        ("1st", "starts with an ASCII letter"),
        ("my effe", "' ' cannot be in a crate name"),
        ("fn", "Rust keyword"),
        ("effe-abi", "depends on effe-abi"),
    ] {
        let out = effe_host(home.path(), &["new", name]);
        refused(&out, 2, &["invalid effe name", why]);
    }
    assert_eq!(
        fs::read_dir(home.path()).unwrap().count(),
        0,
        "nothing made"
    );

    let taken = home.path().join("taken");
    fs::create_dir(&taken).unwrap();
    fs::write(taken.join("notes.txt"), "mine").unwrap();
    let out = effe_host(home.path(), &["new", "greet", "--path", "taken"]);
    refused(&out, 2, &["taken", "not empty"]);
    assert_eq!(fs::read_dir(&taken).unwrap().count(), 1, "nothing added");
    assert_eq!(fs::read_to_string(taken.join("notes.txt")).unwrap(), "mine");

    let out = effe_host(home.path(), &["new", "greet", "--path", "taken/notes.txt"]);
    refused(&out, 2, &["notes.txt", "it is a file"]);
    let out = effe_host(
        home.path(),
        &["new", "greet", "--effe-abi", "path:/nonexistent/effe-abi"],
    );
    refused(
        &out,
        2,
        &["--effe-abi path:/nonexistent/effe-abi", "cannot open it"],
    );
    let out = effe_host(home.path(), &["new", "greet", "--effe-abi", "crates.io"]);
    refused(&out, 2, &["expected vendor, path:DIR or git:URL[#REV]"]);
    // A command comes before the serving flags, never among them.
    let out = effe_host(home.path(), &["--plugin", "libx.so", "new", "greet"]);
    refused(&out, 2, &["'new' cannot be used with '--plugin <PATH>'"]);
    assert!(!home.path().join("greet").exists());

    // An empty directory is as good as none.
    let empty = home.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let out = effe_host(home.path(), &["new", "greet", "--path", "empty"]);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(empty.join("Cargo.toml").exists() && empty.join("src/lib.rs").exists());
}

#[test]
fn check_prints_what_the_host_would_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = check(&plugin_in(dir.path(), "hello"));
    assert_eq!(info["name"], "hello");
    assert_eq!(info["version"], "0.1.0");
    assert_eq!(
        info["description"],
        "Answers 200 'Hello from effe': the smallest effe, and the benchmark one"
    );
    assert!(info["host_abi_version"]
        .as_str()
        .unwrap()
        .starts_with("0.1."));
    assert_eq!(info["abi_version"], info["host_abi_version"], "{info}");
    assert_eq!(info["nonblocking"], true);
    assert_eq!(info["panic"], "unwind");
    let interfaces = info["interfaces"].as_array().unwrap();
    assert!(interfaces.contains(&"effe-abi/meta@1".into()), "{info}");
    // What `--info`, its old name, says too.
    let old = HostCmd::new("hello").args(["--info"]).run();
    assert_eq!(old.code(), Some(0), "{}", old.stderr);
    let old: Value = serde_json::from_str(&old.stdout).expect("--info JSON");
    for (key, value) in old.as_object().unwrap() {
        assert_eq!(&info[key], value, "{key}");
    }

    // Init is not called.
    let log = effe_tests::EventLog::new();
    plugin_in(dir.path(), "fixture-lifecycle");
    let out = effe_host_with(
        dir.path(),
        &["check", "--plugin", "libfixture_lifecycle.so"],
        &[("EFFE_LIFECYCLE_LOG", &log.path)],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!log.exists(), "init ran for check");

    // What an effe built against effe-abi 0.1.0 cannot say: it still loads.
    let info = check(&plugin_in(dir.path(), "compat-effe-0-1-0"));
    assert_eq!(info["abi_version"], "0.1.0");
    assert_eq!(info["panic"], "unknown");
}

#[test]
fn check_fails_with_the_load_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gone = dir.path().join("libgone.so");
    let out = effe_host(dir.path(), &["check", "--plugin", gone.to_str().unwrap()]);
    refused(&out, 3, &["libgone.so", "No such file"]);
    assert!(out.stdout.is_empty());

    let text = dir.path().join("libtext.so");
    fs::write(&text, "this is not ELF\n").unwrap();
    let out = effe_host(dir.path(), &["check", "--plugin", "libtext.so"]);
    refused(&out, 4, &["libtext.so", "not a loadable shared library"]);

    let lib = plugin_in(dir.path(), "hello");
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o666)).unwrap();
    let out = effe_host(dir.path(), &["check", "--plugin", "libhello.so"]);
    refused(&out, 7, &["writable by group or others"]);
    let out = effe_host(
        dir.path(),
        &[
            "check",
            "--plugin",
            "libhello.so",
            "--allow-insecure-plugin",
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    let out = effe_host(dir.path(), &["check"]);
    refused(&out, 2, &["--plugin <PATH>", "EFFE_PLUGIN"]);
}

/// The fixture built with panic = "abort" and exported by hand (tests/abort/effe).
fn abort_effe(dir: &Path) -> PathBuf {
    private_copy(&target_root().join("abort/debug/libabort_effe.so"), dir)
}

#[test]
fn an_effe_built_with_panic_abort_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = abort_effe(dir.path());
    let out = effe_host(dir.path(), &["check", "--plugin", lib.to_str().unwrap()]);
    let line = refused(&out, 6, &["libabort_effe.so", "panic = \"abort\""]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let out = HostCmd::with_path(&lib, dir).run();
    let served = refused(&out, 6, &["libabort_effe.so", "panic = \"abort\""]);
    assert_eq!(served, line, "check and the host refuse alike");
}

#[test]
fn export_effe_does_not_compile_under_panic_abort() {
    let _one_cargo = CARGO.lock().unwrap_or_else(|e| e.into_inner());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("abort");
    let target = target_root().join("abort-check");
    let package = ["-p", "abort-macro-effe"];
    let mut args = vec!["check", "--message-format", "short"];
    args.extend(offline(&workspace, &target));
    args.extend(package);
    let out = cargo(&workspace, &target, &args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "it compiled:\n{stderr}");
    assert!(
        stderr.contains("macro/src/lib.rs")
            && stderr.contains(
                "error: an effe must be built with panic = \"unwind\" (the default): under \
                 \"abort\", its first panic would end the whole host"
            ),
        "not export_effe!'s refusal:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("error: ").count(),
        2,
        "only that error:\n{stderr}"
    );
}

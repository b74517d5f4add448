//! Compatibility both ways with effe-abi 0.1.0 as released: an effe built against it
//! (`compat-effe-0-1-0`) served by the current effe-host, and current effes run by a host built
//! against it (`compat-host-0-1-0`). Both fixtures live in tests/compat, on a frozen copy of
//! effe-abi 0.1.0.

use std::process::{Command, Stdio};
use std::sync::mpsc;

use bytes::Bytes;
use effe_tests::{compat_host_bin, plugin_in, send, HostCmd, Proto, PATIENCE};
use http_body_util::Full;
use serde_json::Value;

const OLD_EFFE: &str = "compat-effe-0-1-0";

/// What `compat-host-0-1-0` reported for one request.
struct OldHostRun {
    /// Its one line of JSON.
    report: Value,
    stderr: String,
}

impl OldHostRun {
    /// The values of response header `name`, in order.
    fn header(&self, name: &str) -> Vec<&str> {
        self.report["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().expect("header value"))
            .collect()
    }

    fn body(&self) -> &str {
        self.report["body"].as_str().expect("body")
    }
}

/// Runs `compat-host-0-1-0` on a private copy of effe `effe` with `args` (`METHOD TARGET
/// [NAME:VALUE ...] [--body TEXT]`), bounded by [`PATIENCE`]; it must get as far as `run`.
fn run_in_old_host(effe: &str, args: &[&str]) -> OldHostRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = plugin_in(dir.path(), effe);
    let child = Command::new(compat_host_bin())
        .arg(&lib)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn compat-host-0-1-0");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("compat-host-0-1-0 output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("compat-host-0-1-0 did not exit within {PATIENCE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    let report = serde_json::from_str(&stdout).expect("compat-host-0-1-0 prints JSON");
    drop(dir);
    OldHostRun { report, stderr }
}

fn request(method: &str, target: &str, id: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(target)
        .header("x-request-id", id)
        .header("x-custom", "from the client")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effe_built_against_effe_abi_0_1_0_loads_and_serves() {
    let info = HostCmd::new(OLD_EFFE).args(["--info"]).run();
    assert_eq!(info.code(), Some(0), "{}", info.stderr);
    let info: Value = serde_json::from_str(&info.stdout).expect("--info JSON");
    assert_eq!(info["name"], OLD_EFFE);
    assert_eq!(info["abi_version"], "0.1.0");
    assert_eq!(
        info["interfaces"],
        serde_json::json!([]),
        "the baseline only"
    );
    assert_eq!(info["nonblocking"], false);

    // One Context at a time, so that the Context number shows start, run and stop at work.
    let host = HostCmd::new(OLD_EFFE)
        .args(["--min-contexts", "1", "--max-contexts", "1"])
        .spawn();
    for (proto, version) in [(Proto::Http1, "HTTP/1.1"), (Proto::Http2, "HTTP/2.0")] {
        let id = format!("compat-{proto:?}");
        let req = request("POST", "/a/b?status=201&x=1", &id, "twelve bytes");
        let reply = send(host.addr, proto, req).await;
        assert_eq!(reply.status, 201, "{proto:?}: {reply:?}");
        assert_eq!(reply.headers["x-compat"], "0.1.0", "{proto:?}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let json = reply.json();
        assert_eq!(json["method"], "POST", "{json}");
        assert_eq!(json["path"], "/a/b");
        assert_eq!(json["query"], "status=201&x=1");
        assert_eq!(json["version"], version);
        assert_eq!(json["request_id"], id.as_str());
        assert_eq!(json["body_len"], 12);
        assert_eq!(json["ctx"], 1, "{json}");
        let headers = json["headers"].as_array().unwrap();
        assert!(
            headers.contains(&serde_json::json!(["x-custom", "from the client"])),
            "{json}"
        );
        assert!(json["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let reply = host.get("/plain").await;
    assert_eq!(reply.status, 200);

    let reply = send(
        host.addr,
        Proto::Http1,
        request("GET", "/error", "old-err", ""),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.headers["x-request-id"], "old-err");
    host.wait_stderr(|s| s.contains("compat effe error in ctx 1"));

    // The old effe's panic firewall holds in the new host: 500, that Context is retired and
    // the next one serves.
    let reply = send(
        host.addr,
        Proto::Http2,
        request("GET", "/panic", "old-panic", ""),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.headers["x-request-id"], "old-panic");
    let reply = host.get("/after").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["ctx"],
        2,
        "a new Context replaced the panicked one"
    );

    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn current_effes_run_in_a_host_built_against_effe_abi_0_1_0() {
    let hello = run_in_old_host("hello", &["GET", "/"]);
    assert_eq!(hello.report["run_error"], Value::Null, "{}", hello.report);
    assert_eq!(hello.report["status"], 200);
    assert_eq!(hello.body(), "Hello from effe");
    assert_eq!(hello.header("content-type"), ["text/plain"]);
    assert_eq!(hello.report["info"]["name"], "hello");
    assert!(hello.stderr.is_empty(), "{}", hello.stderr);

    let echo = run_in_old_host(
        "echo",
        &[
            "POST",
            "/p?q=1",
            "x-test:yes",
            "--body",
            "sent by an old host",
        ],
    );
    assert_eq!(echo.report["run_error"], Value::Null, "{}", echo.report);
    assert_eq!(echo.report["status"], 200);
    let json: Value = serde_json::from_str(echo.body()).expect("echo answers JSON");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/p");
    assert_eq!(json["query"], "q=1");
    assert_eq!(json["body"], "sent by an old host");
    let headers = json["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["name"] == "x-test" && h["value"] == "yes"),
        "{json}"
    );
}

#[test]
fn the_0_1_0_host_runs_the_0_1_0_effe() {
    let run = run_in_old_host(
        OLD_EFFE,
        &["PUT", "/x?status=202", "x-a:1", "--body", "abc"],
    );
    assert_eq!(run.report["run_error"], Value::Null, "{}", run.report);
    assert_eq!(run.report["info"]["abi_version"], "0.1.0");
    assert_eq!(run.report["info"]["nonblocking"], false);
    assert_eq!(run.report["status"], 202);
    assert_eq!(run.header("x-compat"), ["0.1.0"]);
    let json: Value = serde_json::from_str(run.body()).expect("JSON body");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["body_len"], 3);
    assert_eq!(json["headers"], serde_json::json!([["x-a", "1"]]));
    assert_eq!(json["ctx"], 1);

    let failed = run_in_old_host(OLD_EFFE, &["GET", "/error"]);
    assert_eq!(failed.report["run_error"], "compat effe error in ctx 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_capability_degrades_gracefully_in_an_older_host() {
    // The current host has set_header: the effe's replacement wins.
    let host = HostCmd::new("fixture-lifecycle").spawn();
    let reply = host.get("/set-header").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let values: Vec<_> = reply.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["2"], "{reply:?}");
    assert_eq!(reply.text(), "replaced");
    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");

    // A host built against 0.1.0 has no set_header: the effe is told so and keeps what it had.
    let old = run_in_old_host("fixture-lifecycle", &["GET", "/set-header"]);
    assert_eq!(old.report["run_error"], Value::Null, "{}", old.report);
    assert_eq!(old.header("x-a"), ["1"], "{}", old.report);
    assert!(old.body().starts_with("kept:"), "{}", old.report);
}

#[test]
fn errors_with_a_status_retiring_and_logging_degrade_in_an_older_host() {
    // Without call@1 the response cannot be reset: what was written stays, and the error is a
    // plain one (the 0.1.0 host logs it); the current host answers 404 (`sdk::`).
    let old = run_in_old_host("fixture-lifecycle", &["GET", "/status?404"]);
    assert_eq!(
        old.report["run_error"], "fixture status 404",
        "{}",
        old.report
    );
    assert_eq!(old.report["status"], 201, "{}", old.report);
    assert_eq!(old.body(), "partial");
    // Nothing to retire with: an error like any other.
    let old = run_in_old_host("fixture-lifecycle", &["GET", "/retire"]);
    assert_eq!(
        old.report["run_error"], "fixture broken connection",
        "{}",
        old.report
    );
    // No log@1 either: the effe's records go to its stderr, from info up.
    let old = run_in_old_host("fixture-lifecycle", &["GET", "/log"]);
    assert_eq!(old.report["status"], 200, "{}", old.report);
    assert!(
        old.stderr
            .contains("ERROR fixture_lifecycle: fixture log ERROR in ctx 1"),
        "{}",
        old.stderr
    );
    assert!(
        old.stderr
            .contains("INFO fixture_lifecycle: fixture log INFO"),
        "{}",
        old.stderr
    );
    assert!(!old.stderr.contains("fixture log DEBUG"), "{}", old.stderr);
}

#[test]
fn streaming_effes_work_unstreamed_in_an_older_host() {
    // No stream@1: flush does nothing, and the events come whole when Run returns.
    let old = run_in_old_host("sse", &["GET", "/?3"]);
    assert_eq!(old.report["run_error"], Value::Null, "{}", old.report);
    assert_eq!(old.report["status"], 200, "{}", old.report);
    assert_eq!(old.body(), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    // The body was read whole by the host: body_reader reads it from memory.
    let old = run_in_old_host("digest", &["POST", "/", "--body", "abc"]);
    assert_eq!(old.report["run_error"], Value::Null, "{}", old.report);
    assert_eq!(
        old.body(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3\n",
        "{}",
        old.report
    );
}

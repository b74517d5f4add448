//! The todo effe on a real PostgreSQL server (its own, per test): CRUD over HTTP/1.1 and h2c;
//! never more connections than `--max-contexts` under load, none once idle; a database restart
//! fails requests (logged, never hung) until the broken Contexts are retired and fresh ones
//! connect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use effe_tests::postgres::Postgres;
use effe_tests::{send, Host, HostCmd, Proto, Reply, PATIENCE};
use http_body_util::Full;
use serde_json::json;

/// The `application_name` the effe's connections carry.
const APP: &str = "effe-todo";

fn todo_host(pg: &Postgres) -> HostCmd {
    HostCmd::new("todo").env("TODO_DATABASE_URL", pg.url())
}

fn request(method: &str, path: &str, body: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn call(host: &Host, method: &str, path: &str, body: &str) -> Reply {
    send(host.addr, Proto::Http1, request(method, path, body)).await
}

/// Polls `pred` (there is no signal but asking again) until it holds, within [`PATIENCE`].
fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_over_http1_and_h2c() {
    let pg = Postgres::start();
    let host = todo_host(&pg).spawn();

    let created = call(&host, "POST", "/todos", r#"{"title":"buy milk"}"#).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.headers["content-type"], "application/json");
    let todo = created.json();
    assert_eq!(todo["title"], "buy milk");
    assert_eq!(todo["done"], false);
    let path = format!("/todos/{}", todo["id"]);
    assert_eq!(created.headers["location"], path.as_str());

    let listed = call(&host, "GET", "/todos", "").await;
    assert_eq!((listed.status, listed.json()), (200, json!([todo])));
    let fetched = send(host.addr, Proto::Http2, request("GET", &path, "")).await;
    assert_eq!(fetched.version, http::Version::HTTP_2);
    assert_eq!((fetched.status, fetched.json()), (200, todo.clone()));

    let patched = call(&host, "PATCH", &path, r#"{"done":true}"#).await;
    let done = json!({"id": todo["id"], "title": "buy milk", "done": true});
    assert_eq!((patched.status, patched.json()), (200, done.clone()));
    // In the database itself, not only in the answers.
    assert_eq!(pg.query("SELECT title, done FROM todos", &[]), "buy milk|t");

    assert_eq!(call(&host, "DELETE", &path, "").await.status, 204);
    for method in ["GET", "DELETE"] {
        let gone = call(&host, method, &path, "").await;
        assert_eq!((gone.status, gone.text().as_str()), (404, "no such todo"));
    }
    assert_eq!(call(&host, "GET", "/todos", "").await.json(), json!([]));
    assert_eq!(call(&host, "POST", "/todos", "{").await.status, 400);
    assert_eq!(call(&host, "GET", "/elsewhere", "").await.status, 404);
    let refused = call(&host, "PUT", &path, "{}").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.headers["allow"], "GET, PATCH, DELETE");

    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    // A client's mistakes are answers, not failures.
    assert!(!stderr.contains("failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_no_more_connections_than_contexts_and_none_once_idle() {
    const CLIENTS: usize = 32;
    const SAMPLES: usize = 20;
    let pg = Arc::new(Postgres::start());
    // The queue timeout is long enough for 32 clients waiting on 4 Contexts.
    let host = todo_host(&pg)
        .args(["--min-contexts", "0", "--max-contexts", "4"])
        .args(["--idle-timeout", "300ms", "--queue-timeout", "20s"])
        .spawn();
    let host = Arc::new(host);
    assert_eq!(
        pg.connections(APP),
        0,
        "no Context before the first request"
    );

    // The load lasts until the sampler has looked often enough (each client bounded too).
    let sampled = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (host, sampled) = (host.clone(), sampled.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !sampled.load(Ordering::Relaxed) && statuses.len() < 1000 {
                    let body = format!(r#"{{"title":"client {n}"}}"#);
                    statuses.push(call(&host, "POST", "/todos", &body).await.status);
                }
                statuses
            })
        })
        .collect();
    let sampler = {
        let (pg, sampled) = (pg.clone(), sampled.clone());
        tokio::task::spawn_blocking(move || {
            let samples: Vec<usize> = (0..SAMPLES).map(|_| pg.connections(APP)).collect();
            sampled.store(true, Ordering::Relaxed);
            samples
        })
    };
    let load = async {
        let mut statuses = Vec::new();
        for client in clients {
            statuses.extend(client.await.unwrap());
        }
        (statuses, sampler.await.unwrap())
    };
    let (statuses, samples) = tokio::time::timeout(PATIENCE, load)
        .await
        .expect("the load did not end");

    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let most = samples.iter().max().copied().unwrap_or_default();
    assert!(
        most <= 4,
        "more connections than --max-contexts: {samples:?}"
    );
    assert!(
        most > 1,
        "the load never used more than one Context: {samples:?}"
    );
    let rows = pg.query("SELECT count(*) FROM todos", &[]);
    assert_eq!(rows, statuses.len().to_string());

    // Idle past --idle-timeout with --min-contexts 0: every Context stopped, every connection
    // closed. The server's own count is the signal.
    let pg_idle = pg.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("connections closed when idle", || {
            pg_idle.connections(APP) == 0
        })
    })
    .await
    .unwrap();
    let host = Arc::into_inner(host).expect("clients done");
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_fails_requests_then_fresh_contexts_recover() {
    let mut pg = Postgres::start();
    let host = todo_host(&pg).args(["--max-contexts", "4"]).spawn();
    // A few Contexts, each with its connection.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            send(
                host.addr,
                Proto::Http1,
                request("POST", "/todos", r#"{"title":"x"}"#),
            )
        })
        .collect();
    for reply in concurrently(warm).await {
        assert_eq!(reply.status, 201);
    }

    pg.stop();
    // Each Context's connection is broken; none can start: every request fails, none hangs
    // (`send` is bounded), and the host keeps serving.
    for _ in 0..8 {
        let reply = call(&host, "GET", "/todos", "").await;
        assert!(reply.status >= 500, "{} {}", reply.status, reply.text());
    }
    let stderr = host.wait_stderr(|s| s.contains("run failed: "));
    assert!(stderr.contains("effe=todo"), "{stderr}");

    pg.start_again();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = call(&host, "GET", "/todos", "").await;
        if reply.status == 200 {
            break;
        }
        assert!(reply.status >= 500, "{} {}", reply.status, reply.text());
        assert!(Instant::now() < deadline, "no recovery within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every Context now has a live connection: a burst succeeds whole.
    let burst: Vec<_> = (0..8)
        .map(|_| send(host.addr, Proto::Http1, request("GET", "/todos", "")))
        .collect();
    for reply in concurrently(burst).await {
        assert_eq!(reply.status, 200);
    }
    let open = pg.connections(APP);
    assert!((1..=4).contains(&open), "{open} connections");

    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("stop failed"), "{stderr}");
}

/// Awaits every future, concurrently.
async fn concurrently<F: std::future::Future<Output = Reply> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<Reply> {
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

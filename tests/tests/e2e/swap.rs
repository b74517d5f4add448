//! A new version swapped in on the same port with `--reuse-port` under steady HTTP/1.1
//! keep-alive and HTTP/2 load: no request fails, and the answers move from v1 to v2.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use effe_tests::swap::client;
use effe_tests::{HostCmd, Proto, PATIENCE};

const V1: &str = "Hello from effe"; // hello
const V2: &str = "ok\n"; // fixture-response

/// Waits (bounded) until `total` has grown by `more`.
async fn after(total: &AtomicUsize, more: usize) {
    let until = total.load(Ordering::Relaxed) + more;
    let began = Instant::now();
    while total.load(Ordering::Relaxed) < until {
        assert!(began.elapsed() < PATIENCE, "the load stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_port_swap_under_load_fails_no_request() {
    let v1 = HostCmd::new("hello").spawn();
    let addr = v1.addr;
    let (stop, total) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..8)
        .map(|i| if i < 6 { Proto::Http1 } else { Proto::Http2 })
        .map(|proto| {
            tokio::spawn(client(
                addr,
                proto,
                Duration::ZERO,
                stop.clone(),
                total.clone(),
            ))
        })
        .collect();
    after(&total, 2_000).await;

    let v2 = HostCmd::new("fixture-response")
        .args(["--listen", &addr.to_string(), "--reuse-port"])
        .spawn();
    after(&total, 2_000).await;
    let (status, stderr) = v1.stop();
    assert!(status.success(), "{stderr}");
    after(&total, 4_000).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = Vec::new();
    for c in clients {
        seen.push(tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap());
    }
    let failed: Vec<_> = seen.iter().flat_map(|s| &s.failed).collect();
    let answers =
        |body: &str| -> usize { seen.iter().map(|s| s.bodies.get(body).unwrap_or(&0)).sum() };
    let (from_v1, from_v2) = (answers(V1), answers(V2));
    eprintln!(
        "swap: {from_v1} answers from v1, {from_v2} from v2, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(from_v1 > 0 && from_v2 > 0);
    assert_eq!(
        from_v1 + from_v2,
        seen.iter().flat_map(|s| s.bodies.values()).sum::<usize>()
    );
    for s in &seen {
        assert_eq!(s.last.as_deref(), Some(V2), "a client still on v1: {s:?}");
    }
    let (status, stderr) = v2.stop();
    assert!(status.success(), "{stderr}");
}

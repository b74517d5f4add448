//! `effe-swap-load ADDR h1|h2 CONNS RATE SECONDS`: a steady load through a version swap, for
//! the deployment checks (tests/deploy/docker_check), which have no HTTP/2 client that opens a
//! new connection after a GOAWAY. Prints `warm` after the first second, then one JSON line:
//! answers by the first 24 characters of their body, the failed requests and why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use effe_tests::swap::client;
use effe_tests::Proto;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, proto, conns, rate, seconds] = &args[..] else {
        eprintln!("usage: effe-swap-load ADDR h1|h2 CONNS RATE SECONDS");
        std::process::exit(2);
    };
    let addr = addr.parse().expect("ADDR");
    let proto = match proto.as_str() {
        "h1" => Proto::Http1,
        "h2" => Proto::Http2,
        other => panic!("h1 or h2, not {other}"),
    };
    let conns: u32 = conns.parse().expect("CONNS");
    let rate: f64 = rate.parse().expect("RATE");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let pace = Duration::from_secs_f64(f64::from(conns) / rate);
    let (stop, total) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(client(addr, proto, pace, stop.clone(), total.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("warm");
    tokio::time::sleep(Duration::from_secs_f64(seconds - 1.0)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut bodies, mut failed) = (serde_json::Map::new(), Vec::new());
    for c in clients {
        let seen = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("a client ended")
            .expect("a client ran");
        for (body, n) in seen.bodies {
            // Enough to tell the versions apart; echo's answers differ further on.
            let key: String = body.chars().take(24).collect();
            let count = bodies.entry(key).or_insert(0.into());
            *count = (count.as_u64().unwrap_or(0) + n as u64).into();
        }
        failed.extend(seen.failed);
    }
    let summary = serde_json::json!({
        "requests": total.load(Ordering::Relaxed),
        "bodies": bodies,
        "failed": failed,
    });
    println!("{summary}");
}

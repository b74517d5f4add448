//! One request through the ABI and the Context pool, without the network: what loading an effe
//! in-process costs per call. Needs the hello effe built in release
//! (`cargo build --release -p hello`; `make bench` does it).
//!
//! - `abi_call`: `Plugin::run` alone (request view, the `extern "C"` call, the response sink).
//! - `pool_round_trip`: acquire an idle Context and give it back.
//! - `pool_and_call`: both, as the host does per request in inline mode.
//!
//! Each iteration drops its response, as the host does once it is written: a bench that handed
//! the responses back to divan would keep a whole sample of them alive, overflow malloc's
//! per-thread cache and time glibc's slow paths instead of ours.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use effe_abi::abi::ResponseBuffer;
use effe_host::invoke::Effes;
use effe_host::metrics::{Build, Metrics};
use effe_host::plugin::{Call, Plugin};
use effe_host::pool::{Lease, Pool, PoolConfig};

// The host's allocator (see main.rs): what it costs per call is part of the figure.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

struct Fixture {
    plugin: Plugin,
    pool: Pool<Effes>,
    parts: http::request::Parts,
    body: Bytes,
    _runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = target.join("release/libhello.so");
        let plugin = Plugin::load(&path, true)
            .unwrap_or_else(|e| panic!("{e} (build it: cargo build --release -p hello)"));
        plugin.init().expect("init");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = PoolConfig {
            min: 1,
            max: 1,
            queue_timeout: Duration::from_secs(1),
            max_queue: 1,
            idle_timeout: Duration::from_secs(3600),
        };
        let metrics = std::sync::Arc::new(Metrics::new(
            1,
            Build {
                effe: "hello",
                effe_version: "",
                effe_abi: "",
            },
        ));
        let pool = Pool::new(
            Effes::new(plugin, metrics),
            config,
            runtime.handle().clone(),
        );
        pool.fill().expect("start");
        let (parts, ()) = http::Request::get("/bench?x=1")
            .header("host", "127.0.0.1:8080")
            .header("user-agent", "wrk")
            .body(())
            .unwrap()
            .into_parts();
        Fixture {
            plugin,
            pool,
            parts,
            body: Bytes::new(),
            _runtime: runtime,
        }
    })
}

/// Acquires without a runtime: with an idle Context the future is ready on its first poll.
fn acquire(pool: &Pool<Effes>) -> Lease<Effes> {
    let mut fut = std::pin::pin!(pool.acquire());
    match fut
        .as_mut()
        .poll(&mut TaskContext::from_waker(Waker::noop()))
    {
        Poll::Ready(lease) => lease.expect("idle Context"),
        Poll::Pending => panic!("no idle Context"),
    }
}

fn call(f: &Fixture, lease: &mut Lease<Effes>) -> ResponseBuffer {
    let call = Call {
        parts: &f.parts,
        body: &f.body,
        peer_addr: "127.0.0.1:40000",
        request_id: "0123abcd-1",
        deadline_ms: Some(1_764_412_345_678),
        client: None,
    };
    let mut out = ResponseBuffer::new();
    f.plugin.run(lease.context(), &call, &mut out).expect("run");
    out
}

#[divan::bench]
fn abi_call(bencher: divan::Bencher) {
    let f = fixture();
    let mut lease = acquire(&f.pool);
    bencher.bench_local(|| drop(call(f, &mut lease)));
}

#[divan::bench]
fn pool_round_trip(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench_local(|| drop(acquire(&f.pool)));
}

#[divan::bench]
fn pool_and_call(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench_local(|| {
        let mut lease = acquire(&f.pool);
        drop(call(f, &mut lease));
    });
}

//! The network side: one thread per `--threads`, each with a current-thread runtime and its own
//! SO_REUSEPORT listener; one task per connection (HTTP/1.1 or HTTP/2: prior knowledge on
//! cleartext, ALPN on TLS, the TLS handshake inside the task); SIGHUP reloads the certificate;
//! SIGTERM/SIGINT stop accepting, drain, and stop every Context.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::cli::{CallMode, Config};
use crate::drain::Drain;
use crate::error::Fatal;
use crate::invoke::{App, ConnService, Effes, RequestIds};
use crate::log::RunLog;
use crate::plugin::Plugin;
use crate::pool::Pool;
use crate::tls::Tls;

/// A single-threaded runtime: one per network thread. Tasks never migrate between threads,
/// which spares the work-stealing scheduler's bookkeeping on every wake-up.
fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_current_thread()
        // Run calls (thread mode), Starts and Stops: bounded by the pool, plus headroom.
        .max_blocking_threads(config.pool.max * 2 + 16)
        .enable_all()
        .build()
        .map_err(|e| Fatal::Runtime(format!("cannot start the runtime: {e}")))
}

/// `threads` listening sockets on `addr`, sharing it through SO_REUSEPORT: the kernel spreads
/// new connections over them, one per network thread, with no hand-off between threads.
fn bind(addr: SocketAddr, threads: usize) -> Result<Vec<std::net::TcpListener>, Fatal> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(threads);
    for _ in 0..threads {
        // The first socket settles the port (`:0` picks one); the others join it.
        let at = listeners.first().map_or(Ok(addr), |l| l.local_addr());
        let socket = at
            .and_then(|at| {
                let socket = if at.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.set_reuseport(true)?;
                socket.bind(at)?;
                socket.listen(1024)
            })
            .and_then(|l| l.into_std());
        listeners.push(socket.map_err(|e| Fatal::Listen(addr, e))?);
    }
    Ok(listeners)
}

/// Starts the minimum Contexts, listens on every network thread, serves until SIGTERM/SIGINT,
/// drains, stops every Context.
pub fn run(config: Config, plugin: Plugin, tls: Option<Tls>) -> Result<(), Fatal> {
    let runtime = runtime(&config)?;
    let result = runtime.block_on(serve(config, plugin, tls));
    // A Run stuck past the shutdown deadline must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(config: Config, plugin: Plugin, tls: Option<Tls>) -> Result<(), Fatal> {
    let info = plugin.info();
    // Installed first, so that a signal during boot is a clean shutdown, not a kill.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let sighup = signal(SignalKind::hangup()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let tls = tls.map(Arc::new);
    tokio::spawn(reload_on_sighup(sighup, tls.clone()));

    let call_mode = config.call_mode.unwrap_or(if info.nonblocking {
        CallMode::Inline
    } else {
        CallMode::Thread
    });
    // The pool's own tasks (Starts, Stops, maintenance) live on this, the main, runtime.
    let pool = Pool::new(
        Effes::new(plugin),
        config.pool.clone(),
        tokio::runtime::Handle::current(),
    );
    let filler = pool.clone();
    let filled = tokio::task::spawn_blocking(move || filler.fill())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = filled {
        // The Contexts that did start are stopped before the host exits.
        pool.close(Instant::now() + config.shutdown_timeout).await;
        return Err(Fatal::BootStart(info.name.to_owned(), e));
    }

    let listeners = match bind(config.listen, config.threads) {
        Ok(l) => l,
        Err(e) => {
            pool.close(Instant::now() + config.shutdown_timeout).await;
            return Err(e);
        }
    };
    let addr = listeners[0]
        .local_addr()
        .map_err(|e| Fatal::Listen(config.listen, e))?;
    let app = Arc::new(App {
        plugin,
        pool: pool.clone(),
        call_mode,
        max_body_size: config.max_body_size,
        run_log: RunLog::connect(config.syslog.clone(), info.name),
        ids: RequestIds::new(),
    });
    tokio::spawn(pool.clone().maintain());

    // The shutdown deadline, once a signal came.
    let (stop_tx, stop_rx) = watch::channel(None::<Instant>);
    let mut listeners = listeners.into_iter();
    let main_listener = listeners.next().expect("at least one network thread");
    let mut others = Vec::new();
    for (i, listener) in listeners.enumerate() {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (app, tls, stop) = (app.clone(), tls.clone(), stop_rx.clone());
        let thread_runtime = runtime(&config)?;
        std::thread::Builder::new()
            .name(format!("effe-net-{}", i + 1))
            .spawn(move || {
                thread_runtime.block_on(network_thread(listener, app, tls, stop));
                thread_runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = done_tx.send(());
            })
            .map_err(|e| Fatal::Runtime(format!("cannot start a network thread: {e}")))?;
        others.push(done_rx);
    }
    let main_thread = tokio::spawn(network_thread(main_listener, app, tls.clone(), stop_rx));
    tracing::info!(
        %addr,
        tls = tls.as_ref().map_or("off".to_owned(), |t| t.describe()),
        effe = info.name,
        version = info.version,
        call = ?call_mode,
        threads = config.threads,
        min_contexts = config.pool.min,
        max_contexts = config.pool.max,
        "listening"
    );

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    let deadline = Instant::now() + config.shutdown_timeout;
    tracing::info!(
        signal = signal_name,
        "shutting down: draining in-flight requests"
    );
    let _ = stop_tx.send(Some(deadline));
    let _ = main_thread.await;
    for done in others {
        let _ = done.await;
    }
    let left = pool.close(deadline).await;
    if left > 0 {
        return Err(Fatal::Runtime(format!(
            "{left} Context(s) still in Run at the shutdown deadline; exiting without stopping them"
        )));
    }
    tracing::info!("all Contexts stopped; bye");
    Ok(())
}

/// One network thread: accepts on its own listener until the shutdown deadline is set, then
/// lets its connections finish their in-flight requests (until the deadline).
async fn network_thread(
    listener: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "network thread cannot use its listener");
            return;
        }
    };
    let stopped = async {
        let _ = stop.wait_for(Option::is_some).await;
    };
    let drain = accept_loop(listener, app, tls, stopped).await;
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    if tokio::time::timeout_at(deadline.into(), drain.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline");
    }
}

/// On SIGHUP, re-reads the TLS certificate and key; a bad pair is refused and the old one kept.
async fn reload_on_sighup(mut sighup: tokio::signal::unix::Signal, tls: Option<Arc<Tls>>) {
    while sighup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    "SIGHUP: TLS certificate reload refused, keeping the current one: {e}"
                ),
            },
        }
    }
}

/// The protocol builders, made once and cloned into each connection task.
#[derive(Clone)]
struct Builders {
    /// Cleartext: HTTP/1.1, or HTTP/2 when the client opens with the h2 preface.
    auto: auto::Builder<TokioExecutor>,
    /// TLS: the protocol is the one ALPN chose (hyper-util's auto builder would ignore it).
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        auto.http2().timer(TokioTimer::new());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Builders { auto, http1, http2 }
    }
}

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts until `shutdown` resolves; returns the connections to drain.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Arc<Drain> {
    let builders = Builders::new();
    let drain = Drain::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer: Arc<str> = peer.to_string().into();
        let service = ConnService {
            app: app.clone(),
            peer,
        };
        let drain = drain.clone();
        let builders = builders.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builders
                        .auto
                        .serve_connection(TokioIo::new(stream), service);
                    drain.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    // The handshake runs here, in the connection's own task, bounded: a client
                    // that never finishes it holds nothing but this task.
                    let handshake = tls.acceptor().accept(stream);
                    let stream =
                        match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(stream);
                    if h2 {
                        let conn = builders.http2.serve_connection(io, service);
                        drain.watch(conn).await.map_err(Into::into)
                    } else {
                        let conn = builders.http1.serve_connection(io, service);
                        drain.watch(conn).await.map_err(Into::into)
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drain
}

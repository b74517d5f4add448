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
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::access::AccessLog;
use crate::admin::{self, Health};
use crate::cli::{CallMode, Config};
use crate::drain::Drain;
use crate::error::Fatal;
use crate::idle::quiet_within;
use crate::invoke::{App, ConnGauge, ConnService, Effes, RequestIds};
use crate::log::RunLog;
use crate::metrics::{Build, Metrics};
use crate::plugin::Plugin;
use crate::pool::Pool;
use crate::tls::{ClientCert, Tls};
use crate::write_timeout::WriteTimeout;

/// A single-threaded runtime: one per network thread (the main one also runs the pool's tasks
/// and the signal handlers). Tasks never migrate between threads, which spares the
/// work-stealing scheduler's bookkeeping on every wake-up.
pub fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_current_thread()
        // Run calls (thread mode), Starts and Stops: bounded by the pool, plus headroom.
        .max_blocking_threads(config.pool.max * 2 + 16)
        .enable_all()
        .build()
        .map_err(|e| Fatal::Runtime(format!("cannot start the runtime: {e}")))
}

/// `threads` listening sockets on `addr`, sharing it through SO_REUSEPORT: the kernel spreads
/// new connections over them, one per network thread, with no hand-off between threads.
///
/// SO_REUSEPORT would also let this host join a port another process listens on, and split
/// its traffic: only with `reuse_port` (a swap on purpose). Otherwise a port any socket holds
/// is refused, as a plain bind would.
fn bind(
    addr: SocketAddr,
    threads: usize,
    reuse_port: bool,
) -> Result<Vec<std::net::TcpListener>, Fatal> {
    if !reuse_port && addr.port() != 0 {
        held_elsewhere(addr)?;
    }
    if reuse_port {
        migrate_queued_connections();
    }
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

/// For a swap with `--reuse-port`: when the old host closes its listener, the connections in
/// its accept queue are reset, unless Linux (5.14 and later) moves them to another listener of
/// the port, which `net.ipv4.tcp_migrate_req` turns on (for this network namespace). Measured
/// with wrk over 16 connections: 0 to 6 failed requests per swap without it, none with it.
fn migrate_queued_connections() {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(KNOB) {
        Ok(on) if on.trim() == "1" => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(KNOB, "1") {
                tracing::warn!(
                    error = %e,
                    "--reuse-port: cannot turn on net.ipv4.tcp_migrate_req: connections queued \
                     on a host's listener when it closes will be reset; set it with sysctl"
                );
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "--reuse-port: no net.ipv4.tcp_migrate_req (Linux before 5.14?): connections queued \
             on a host's listener when it closes will be reset"
        ),
    }
}

/// Fails if another socket holds `addr`: a bind without SO_REUSEPORT, undone at once, is
/// refused by any listener on it, SO_REUSEPORT or not.
fn held_elsewhere(addr: SocketAddr) -> Result<(), Fatal> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| Fatal::Listen(addr, e))?;
    // SO_REUSEADDR: a connection of an earlier host still in TIME_WAIT is no holder.
    socket
        .set_reuseaddr(true)
        .map_err(|e| Fatal::Listen(addr, e))?;
    match socket.bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Fatal::Listen(
            addr,
            std::io::Error::new(
                e.kind(),
                "address in use by another socket (--reuse-port joins it on purpose)",
            ),
        )),
        Err(e) => Err(Fatal::Listen(addr, e)),
        Ok(()) => Ok(()),
    }
}

/// The signals the host handles, registered before the effe is loaded: from then on SIGHUP
/// never kills the process (a reload asked for during boot happens once serving starts), and
/// SIGTERM/SIGINT during boot shut down cleanly as soon as the host is up.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Must run inside `runtime`'s context.
    pub fn install() -> Result<Signals, Fatal> {
        let on =
            |kind| signal(kind).map_err(|e| Fatal::Runtime(format!("cannot handle signals: {e}")));
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }
}

/// Starts the minimum Contexts, listens on every network thread, serves until SIGTERM/SIGINT,
/// drains, stops every Context.
pub fn run(
    runtime: tokio::runtime::Runtime,
    config: Config,
    plugin: Plugin,
    tls: Option<Tls>,
    signals: Signals,
    init_took: Duration,
) -> Result<(), Fatal> {
    let result = runtime.block_on(serve(config, plugin, tls, signals, init_took));
    // Whatever is still running now (a Run, Start or Stop past its deadline, reported above)
    // must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(
    config: Config,
    plugin: Plugin,
    tls: Option<Tls>,
    signals: Signals,
    init_took: Duration,
) -> Result<(), Fatal> {
    let info = plugin.info();
    let Signals { term, int, hup } = signals;
    let tls = tls.map(Arc::new);
    tokio::spawn(reload_on_sighup(hup, tls.clone()));

    let metrics = Arc::new(Metrics::new(
        config.threads,
        Build {
            effe: info.name,
            effe_version: info.version,
            effe_abi: info.abi_version,
        },
    ));
    metrics.init_took(init_took);
    let health = Arc::new(Health::new(config.threads, config.max_quarantined));
    // The pool's own tasks (backoff timers, maintenance) live on this, the main, runtime.
    let pool = Pool::new(
        Effes::new(plugin, metrics.clone()),
        config.pool.clone(),
        tokio::runtime::Handle::current(),
    );
    // Up before the minimum Contexts start, so that probes read "starting", not a refusal.
    let admin = match config.admin_listen {
        None => None,
        Some(addr) => Some(start_admin(addr, &health, &metrics, &pool).await?),
    };
    let run_log = Arc::new(RunLog::connect(config.syslog.clone(), info.name));
    crate::log::route_effe_errors(run_log.clone());
    let access = match config.access_log {
        None => None,
        Some(format) => Some(Arc::new(AccessLog::start(format).map_err(|e| {
            Fatal::Runtime(format!("cannot start the access log thread: {e}"))
        })?)),
    };
    let filler = pool.clone();
    let served = match tokio::task::spawn_blocking(move || filler.fill())
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    {
        Err(e) => Err(Fatal::BootStart(info.name.to_owned(), e)),
        Ok(()) => {
            let shared = Shared {
                pool: &pool,
                run_log: &run_log,
                metrics: &metrics,
                health: &health,
                admin,
                access: access.clone(),
            };
            listen_and_serve(&config, plugin, shared, tls, (term, int)).await
        }
    };
    // However serving ended, every Context that started is stopped before the host exits.
    let drain_deadline = *served.as_ref().unwrap_or(&Instant::now());
    let unstopped = pool.close(drain_deadline.into(), config.stop_timeout).await;
    // What effes reported and syslog has not taken yet is delivered (or put on stderr) first.
    run_log.close(Duration::from_secs(2));
    if let Some(access) = &access {
        access.close();
    }
    match served {
        Err(fatal) => {
            if unstopped.total() > 0 {
                tracing::error!("{}", Fatal::Unstopped(unstopped));
            }
            Err(fatal)
        }
        Ok(_) if unstopped.total() > 0 => Err(Fatal::Unstopped(unstopped)),
        Ok(_) => {
            tracing::info!("all Contexts stopped; bye");
            Ok(())
        }
    }
}

/// Binds the admin listener and serves it on this runtime until the process ends.
async fn start_admin(
    addr: SocketAddr,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    pool: &Pool<Effes>,
) -> Result<SocketAddr, Fatal> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Listen(addr, e))?;
    let bound = listener.local_addr().map_err(|e| Fatal::Listen(addr, e))?;
    let (scraped, probed) = (pool.clone(), pool.clone());
    let state = Arc::new(admin::Admin {
        health: health.clone(),
        registry: crate::metrics::registry(metrics.clone(), move || scraped.stats()),
        pool: Box::new(move || probed.stats()),
    });
    tokio::spawn(admin::serve(listener, state));
    Ok(bound)
}

/// What serving shares with the rest of the host.
struct Shared<'a> {
    pool: &'a Pool<Effes>,
    run_log: &'a Arc<RunLog>,
    metrics: &'a Arc<Metrics>,
    health: &'a Arc<Health>,
    /// Where the admin listener listens, if on.
    admin: Option<SocketAddr>,
    access: Option<Arc<AccessLog>>,
}

/// Binds, serves until SIGTERM/SIGINT, then drains the connections of every network thread.
/// Returns the drain deadline.
async fn listen_and_serve(
    config: &Config,
    plugin: Plugin,
    shared: Shared<'_>,
    tls: Option<Arc<Tls>>,
    (mut sigterm, mut sigint): (Signal, Signal),
) -> Result<Instant, Fatal> {
    let Shared {
        pool,
        run_log,
        metrics,
        health,
        admin,
        access,
    } = shared;
    let info = plugin.info();
    let call_mode = config.call_mode.unwrap_or(if info.nonblocking {
        CallMode::Inline
    } else {
        CallMode::Thread
    });
    let listeners = bind(config.listen, config.threads, config.reuse_port)?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|e| Fatal::Listen(config.listen, e))?;
    let app = Arc::new(App {
        plugin,
        pool: pool.clone(),
        call_mode,
        max_body_size: config.max_body_size,
        run_log: run_log.clone(),
        ids: RequestIds::new(),
        metrics: metrics.clone(),
        timeout: config.timeout,
        access,
        http: config.http.clone(),
        body_read_timeout: config.body_read_timeout,
        write_timeout: config.write_timeout,
        max_connections: config.max_connections,
        connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        capped: std::sync::atomic::AtomicBool::new(false),
        draining: std::sync::atomic::AtomicBool::new(false),
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
        let health = health.clone();
        let started = runtime(config).and_then(|thread_runtime| {
            std::thread::Builder::new()
                .name(format!("effe-net-{}", i + 1))
                .spawn(move || {
                    let me = Thread {
                        index: i + 1,
                        health,
                    };
                    thread_runtime.block_on(network_thread(me, listener, app, tls, stop));
                    thread_runtime.shutdown_timeout(Duration::from_millis(100));
                    let _ = done_tx.send(());
                })
                .map_err(|e| Fatal::Runtime(format!("cannot start a network thread: {e}")))
        });
        if let Err(fatal) = started {
            // The threads already running stop at once.
            let _ = stop_tx.send(Some(Instant::now()));
            for done in others {
                let _ = done.await;
            }
            return Err(fatal);
        }
        others.push(done_rx);
    }
    let me = Thread {
        index: 0,
        health: health.clone(),
    };
    let main_thread = tokio::spawn(network_thread(
        me,
        main_listener,
        app.clone(),
        tls.clone(),
        stop_rx,
    ));
    tracing::info!(
        %addr,
        tls = tls.as_ref().map_or("off".to_owned(), |t| t.describe()),
        effe = info.name,
        version = info.version,
        call = ?call_mode,
        threads = config.threads,
        min_contexts = config.pool.min,
        max_contexts = config.pool.max,
        admin = %admin.map_or("off".to_owned(), |a| a.to_string()),
        "listening"
    );
    health.booted();

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    health.draining();
    if !config.shutdown_delay.is_zero() {
        tracing::info!(
            signal = signal_name,
            delay = %humantime::format_duration(config.shutdown_delay),
            "shutting down: not ready, still serving for the shutdown delay"
        );
        tokio::select! {
            () = tokio::time::sleep(config.shutdown_delay) => {}
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    let deadline = Instant::now() + config.shutdown_timeout;
    app.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        signal = signal_name,
        "shutting down: draining in-flight requests"
    );
    let _ = stop_tx.send(Some(deadline));
    let _ = main_thread.await;
    for done in others {
        let _ = done.await;
    }
    Ok(deadline)
}

/// One network thread: accepts on its own listener until the shutdown deadline is set, then
/// lets its connections finish their in-flight requests (until the deadline).
/// A network thread's place in the host.
struct Thread {
    /// 0 for the main thread; also its metrics shard.
    index: usize,
    health: Arc<Health>,
}

async fn network_thread(
    me: Thread,
    listener: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    // Liveness: this thread's runtime still runs tasks.
    let Thread { index, health } = me;
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(admin::BEAT);
        loop {
            beat.tick().await;
            health.beat(index);
        }
    });
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
    let drain = accept_loop(listener, app, tls, index, stopped).await;
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    if tokio::time::timeout_at(deadline.into(), drain.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline");
    }
}

/// On SIGHUP, re-reads the TLS certificate and key; a bad pair is refused and the old one kept.
async fn reload_on_sighup(mut sighup: Signal, tls: Option<Arc<Tls>>) {
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
    /// TLS HTTP/1.1 connections that begin during the drain: one request, then close.
    http1_last: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// What the protocol builders enforce (see the flags of the same names).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_streams: u32,
    pub h2_ping_interval: Option<Duration>,
}

fn http1_limits(http1: &mut hyper::server::conn::http1::Builder, limits: &HttpLimits) {
    // half_close: a client that shuts down its side after sending its request still gets
    // the answer (hyper's default would abort the request in progress).
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size)
        .half_close(true);
    // hyper keeps 100 header slots on the stack; any other count is a heap allocation per
    // request, so only asked for when it differs.
    if limits.max_headers != 100 {
        http1.max_headers(limits.max_headers);
    }
}

fn http2_limits(
    http2: &mut hyper::server::conn::http2::Builder<TokioExecutor>,
    limits: &HttpLimits,
) {
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    if let Some(every) = limits.h2_ping_interval {
        http2.keep_alive_interval(every).keep_alive_timeout(every);
    }
}

impl Builders {
    fn new(limits: &HttpLimits) -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        {
            let mut h1 = auto.http1();
            h1.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_size)
                .half_close(true);
            if limits.max_headers != 100 {
                h1.max_headers(limits.max_headers);
            }
            let mut h2 = auto.http2();
            h2.timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_streams)
                .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
            if let Some(every) = limits.h2_ping_interval {
                h2.keep_alive_interval(every).keep_alive_timeout(every);
            }
        }
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1_limits(&mut http1, limits);
        let mut http1_last = http1.clone();
        http1_last.keep_alive(false);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2_limits(&mut http2, limits);
        Builders {
            auto,
            http1,
            http1_last,
            http2,
        }
    }
}

/// Accepts until `shutdown` resolves; returns the connections to drain.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    thread: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Arc<Drain> {
    let builders = Builders::new(&app.http);
    let drain = Drain::new();
    let mut refused = AcceptFailures::default();
    tokio::pin!(shutdown);
    let mut closing = false;
    loop {
        let (stream, peer) = if closing {
            // Shutdown: the connections already in the kernel's queue would be reset when the
            // listener closes; they are served instead (their requests answered with
            // `connection: close`), then the loop ends.
            match tokio::select! {
                biased;
                accepted = listener.accept() => accepted.ok(),
                () = std::future::ready(()) => None,
            } {
                Some(conn) => conn,
                None => break,
            }
        } else {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    closing = true;
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(conn) => {
                        refused.recovered();
                        conn
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: the connection stays in the
                        // kernel's queue; wait, longer each time, instead of spinning on it.
                        let pause = refused.failed(&e);
                        tokio::select! {
                            biased;
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(pause) => continue,
                        }
                    }
                },
            }
        };
        // A place among --max-connections: at the cap this thread accepts nothing more (the
        // kernel's backlog holds the newcomers) until a connection closes. Taken after accept,
        // not before: with one listener per thread, a place held by a thread that has no
        // connection waiting could starve another that has. So up to one connection per
        // network thread may wait, accepted, beyond the cap.
        let place = match app.connections.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) if closing => break,
            Err(_) => tokio::select! {
                biased;
                () = &mut shutdown => break,
                place = at_the_cap(&app) => place,
            },
        };
        let _ = stream.set_nodelay(true);
        let peer: Arc<str> = peer.to_string().into();
        tracing::debug!(peer = %peer, "accepted");
        let mut service = ConnService {
            app: app.clone(),
            peer,
            shard: thread,
            conn: ConnGauge::new(app.metrics.clone(), tls.is_some()),
            client: None,
        };
        let metrics = app.metrics.clone();
        let admitted = drain.admit();
        let builders = builders.clone();
        let tls = tls.clone();
        let gauge = service.conn.clone();
        let (first, idle) = (app.http.header_read_timeout, app.http.keep_alive_timeout);
        // A client that stops reading cannot hold the connection (TLS writes included).
        let stream = WriteTimeout::new(stream, app.write_timeout);
        tokio::spawn(async move {
            let _place = place;
            let result = match tls {
                None => {
                    let conn = builders
                        .auto
                        .serve_connection(TokioIo::new(stream), service);
                    quiet_within(
                        admitted.watch(conn.into_owned(), gauge.clone()),
                        gauge,
                        first,
                        idle,
                    )
                    .await
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
                                metrics.tls_handshake_failed();
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                metrics.tls_handshake_failed();
                                return;
                            }
                        };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    // Once per connection: its requests borrow it.
                    service.client = ClientCert::of(stream.get_ref().1);
                    let io = TokioIo::new(stream);
                    if admitted.stopping() {
                        // Accepted before the signal, handshake done during the drain. Boxed:
                        // rare, and it would otherwise make every connection's task larger.
                        Box::pin(serve_late(
                            builders,
                            io,
                            service,
                            h2,
                            tls.handshake_timeout(),
                        ))
                        .await
                    } else if h2 {
                        // hyper's HTTP/2 server waits for the preface without a limit.
                        let conn = builders.http2.serve_connection(io, service);
                        quiet_within(admitted.watch(conn, gauge.clone()), gauge, first, idle)
                            .await
                            .map_err(Into::into)
                    } else {
                        let conn = builders.http1.serve_connection(io, service);
                        quiet_within(admitted.watch(conn, gauge.clone()), gauge, first, idle)
                            .await
                            .map_err(Into::into)
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %chain(&*e), "connection ended with an error");
            }
        });
    }
    drain
}

/// An error and its sources on one line (hyper's errors say what failed, their sources why).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Failed accepts (out of file descriptors, mostly), as episodes: one warning when one
/// begins, one line when it ends (an accept a second or more after the last failure: a host
/// short of descriptors flaps between one accept and the next failure, and must not log each).
/// Between failures a pause that doubles from 10 ms to 1 s: never a spin.
#[derive(Default)]
struct AcceptFailures {
    /// Failures in a row, for the pause.
    in_a_row: u32,
    /// In the episode: its failures, and the last one's time.
    episode: Option<(u64, Instant)>,
}

impl AcceptFailures {
    #[cold]
    #[inline(never)]
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        let failures = match self.episode {
            None => {
                tracing::warn!(
                    %error,
                    "cannot accept connections (out of file descriptors?): retrying, open \
                     connections are still served"
                );
                1
            }
            Some((failures, _)) => failures + 1,
        };
        self.episode = Some((failures, Instant::now()));
        self.in_a_row = self.in_a_row.saturating_add(1);
        let pause = Duration::from_millis(10) * (1 << self.in_a_row.min(7).saturating_sub(1));
        pause.min(Duration::from_secs(1))
    }

    fn recovered(&mut self) {
        self.in_a_row = 0;
        if self.episode.is_some() {
            self.maybe_over();
        }
    }

    #[cold]
    #[inline(never)]
    fn maybe_over(&mut self) {
        if let Some((failures, last)) = self.episode {
            if last.elapsed() >= Duration::from_secs(1) {
                tracing::info!(failures, "accepting connections again");
                self.episode = None;
            }
        }
    }
}

/// Waits at the connection cap until a place frees; says so once per episode.
#[cold]
#[inline(never)]
async fn at_the_cap(app: &App) -> tokio::sync::OwnedSemaphorePermit {
    // One warning per episode, whichever thread reaches the cap first.
    if !app.capped.swap(true, std::sync::atomic::Ordering::Relaxed) {
        app.metrics.connection_cap_reached();
        tracing::warn!(
            max_connections = app.max_connections,
            "at --max-connections: not accepting until a connection closes"
        );
    }
    let place = app
        .connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    if app.capped.swap(false, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("below --max-connections again: accepting");
    }
    place
}

/// Serves a TLS connection that was accepted before the shutdown signal but finished its
/// handshake during the drain: its client has not been able to send a request yet, so closing
/// it at once (as the drain does with idle connections) would drop that request. HTTP/1.1
/// gets one request, then the connection closes; HTTP/2 gets its graceful GOAWAY once its
/// first request arrives (or after `patience`), so the streams opened before it are served.
async fn serve_late<I>(
    builders: Builders,
    io: I,
    service: ConnService,
    h2: bool,
    patience: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if !h2 {
        return Ok(builders.http1_last.serve_connection(io, service).await?);
    }
    let first = service.conn.clone();
    let conn = builders.http2.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => return Ok(served?),
        _ = tokio::time::timeout(patience, first.arrived()) => {}
    }
    conn.as_mut().graceful_shutdown();
    Ok(conn.await?)
}

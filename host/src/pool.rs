//! The Context pool: the host's concurrency limit and the heart of the effe lifecycle.
//!
//! Invariants (all state lives under one mutex, held only for a few pointer moves):
//! - `live` counts Contexts started or being started and not yet handed to `stop`; it never
//!   exceeds `max`.
//! - A Context is owned by exactly one of: the idle stack, a [`Lease`] (one request), a grant in
//!   flight to a waiter, or a stop task. It is never used by two requests at once.
//! - Every Context that `start` returned reaches `stop` exactly once: when idle past the
//!   timeout (down to `min`), after its request asked to retire it (a panic), or at close.
//! - Waiters are served in FIFO order. A grant sent to a waiter that has gone away (timed out,
//!   client disconnected) comes back and goes to the next one; nothing is lost.
//!
//! Idle Contexts are reused most-recently-used first, so that the least used ones age out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

/// Makes and closes Contexts. `start` and `stop` may block; the pool calls them on blocking
/// threads.
pub trait Manager: Send + Sync + 'static {
    type Context: Send + 'static;
    fn start(&self) -> Result<Self::Context, String>;
    fn stop(&self, ctx: Self::Context);
}

/// Pool settings (see the flags of the same names).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub min: usize,
    pub max: usize,
    pub queue_timeout: Duration,
    pub max_queue: usize,
    pub idle_timeout: Duration,
}

impl PoolConfig {
    /// How often the pool looks for idle Contexts: a quarter of the idle timeout, between 10 ms
    /// and 1 s. A Context is stopped after between `idle_timeout` and `idle_timeout` plus one
    /// period of idleness.
    fn tick_period(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Whole periods in the idle timeout.
    fn idle_ticks(&self) -> u64 {
        (self.idle_timeout.as_nanos() / self.tick_period().as_nanos()).max(1) as u64
    }
}

/// Why no Context could be had. Every one of them is a 503 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    #[error("no Context became free within the queue timeout")]
    QueueTimeout,
    #[error("too many requests are waiting for a Context")]
    QueueFull,
    #[error("starting a Context failed: {0}")]
    StartFailed(String),
    #[error("the host is shutting down")]
    Closed,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

enum Grant<C> {
    /// A Context for the waiter's exclusive use.
    Ready(C),
    /// Room for one more Context (already counted in `live`): the waiter starts it.
    Start,
    /// Starting failed; the waiter answers 503.
    Failed(String),
}

/// What `try_acquire` decided.
enum Next<M: Manager> {
    Ready(M::Context),
    /// A slot in `live` is reserved for the caller to start a Context in.
    Start,
    Wait(Waiting<M>),
}

struct State<C> {
    /// Each with the maintenance tick at which it became idle.
    idle: VecDeque<(C, u64)>,
    /// Maintenance ticks so far: the pool's clock for idleness (no clock read per request).
    tick: u64,
    live: usize,
    stopping: usize,
    waiters: VecDeque<oneshot::Sender<Grant<C>>>,
    backoff: Duration,
    backoff_until: Option<Instant>,
    closed: bool,
}

struct Inner<M: Manager> {
    manager: M,
    config: PoolConfig,
    runtime: Handle,
    state: Mutex<State<M::Context>>,
    /// Signalled whenever `live` or `stopping` drops, for `close` to wait on.
    drained: Notify,
}

/// A cheaply clonable handle to the pool.
pub struct Pool<M: Manager> {
    inner: Arc<Inner<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

/// Exclusive use of one Context; gives it back to the pool when dropped.
pub struct Lease<M: Manager> {
    ctx: Option<M::Context>,
    pool: Arc<Inner<M>>,
    retire: bool,
}

impl<M: Manager> Lease<M> {
    /// The Context.
    pub fn context(&mut self) -> &mut M::Context {
        self.ctx
            .as_mut()
            .expect("a lease holds its Context until dropped")
    }

    /// Stop this Context instead of reusing it (its Run panicked: its state is suspect).
    pub fn retire(&mut self) {
        self.retire = true;
    }
}

impl<M: Manager> Drop for Lease<M> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.pool.release(ctx, !self.retire);
        }
    }
}

/// A waiter's end of a grant. If the waiter goes away (timeout, cancelled request), whatever
/// was granted to it in the meantime goes back to the pool.
struct Waiting<M: Manager> {
    rx: oneshot::Receiver<Grant<M::Context>>,
    pool: Arc<Inner<M>>,
}

impl<M: Manager> Drop for Waiting<M> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(grant) = self.rx.try_recv() {
            self.pool.reclaim(grant);
        }
    }
}

impl<M: Manager> Pool<M> {
    /// A pool with no Contexts yet; call [`fill`](Self::fill) to start the minimum.
    pub fn new(manager: M, config: PoolConfig, runtime: Handle) -> Self {
        Pool {
            inner: Arc::new(Inner {
                manager,
                config,
                runtime,
                state: Mutex::new(State {
                    idle: VecDeque::new(),
                    tick: 0,
                    live: 0,
                    stopping: 0,
                    waiters: VecDeque::new(),
                    backoff: Duration::ZERO,
                    backoff_until: None,
                    closed: false,
                }),
                drained: Notify::new(),
            }),
        }
    }

    /// Starts `min` Contexts on the calling thread. Fails on the first Start that fails (the
    /// ones already started stay in the pool and are stopped at close).
    pub fn fill(&self) -> Result<(), String> {
        for _ in 0..self.inner.config.min {
            self.inner.lock().live += 1;
            match self.inner.manager.start() {
                Ok(ctx) => self.inner.release(ctx, true),
                Err(e) => {
                    self.inner.lock().live -= 1;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Waits for exclusive use of a Context: an idle one, a new one if below `max`, or the next
    /// one released, in FIFO order, for at most the queue timeout.
    pub async fn acquire(&self) -> Result<Lease<M>, AcquireError> {
        let inner = &self.inner;
        let grant = match inner.try_acquire()? {
            Next::Ready(ctx) => return Ok(inner.lease(ctx)),
            Next::Start => Grant::Start,
            Next::Wait(waiting) => {
                inner
                    .wait(waiting, Some(inner.config.queue_timeout))
                    .await?
            }
        };
        match grant {
            Grant::Ready(ctx) => Ok(inner.lease(ctx)),
            Grant::Start => inner.start_for_waiter().await,
            Grant::Failed(e) => Err(AcquireError::StartFailed(e)),
        }
    }

    /// An idle Context, if one is free right now; never waits, never starts one. The fast path
    /// for inline effes: a request that gets one needs no future of its own.
    pub fn try_idle(&self) -> Option<Lease<M>> {
        let ctx = {
            let mut st = self.inner.lock();
            if st.closed {
                return None;
            }
            st.idle.pop_back()?.0
        };
        Some(self.inner.lease(ctx))
    }

    /// Stops idle Contexts past the idle timeout (down to `min`) and starts Contexts up to
    /// `min` when some were retired. Runs until the pool closes.
    pub async fn maintain(self) {
        let mut tick = tokio::time::interval(self.inner.config.tick_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.inner.maintain_once() {
                return;
            }
        }
    }

    /// Refuses new requests, stops every idle Context, then waits (at most until `deadline`)
    /// for busy and starting ones to come back and be stopped. Returns how many Contexts were
    /// still out at the deadline.
    pub async fn close(&self, deadline: Instant) -> usize {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            st.closed = true;
            // Dropping the senders wakes every waiter with "closed".
            st.waiters.clear();
            let idle: Vec<_> = st.idle.drain(..).map(|(ctx, _)| ctx).collect();
            drop(st);
            for ctx in idle {
                inner.stop_later(ctx);
            }
        }
        loop {
            let notified = inner.drained.notified();
            {
                let st = inner.lock();
                if st.live == 0 && st.stopping == 0 {
                    return 0;
                }
                if Instant::now() >= deadline {
                    return st.live;
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// (live, idle) Contexts, for logs and tests.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let st = self.inner.lock();
        (st.live, st.idle.len())
    }
}

impl<M: Manager> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, State<M::Context>> {
        // Nothing panics while holding the lock; recover rather than cascade if it ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous part of `acquire`, under the lock.
    fn try_acquire(self: &Arc<Self>) -> Result<Next<M>, AcquireError> {
        let mut st = self.lock();
        if st.closed {
            return Err(AcquireError::Closed);
        }
        if let Some((ctx, _)) = st.idle.pop_back() {
            return Ok(Next::Ready(ctx));
        }
        let backing_off = st.backoff_until.is_some_and(|t| Instant::now() < t);
        if st.live < self.config.max && !backing_off {
            st.live += 1;
            return Ok(Next::Start);
        }
        if st.live == 0 {
            // Backing off after failed Starts, with no Context that could come free.
            return Err(AcquireError::StartFailed(
                "backing off after failed starts".into(),
            ));
        }
        if st.waiters.len() >= self.config.max_queue {
            st.waiters.retain(|w| !w.is_closed());
            if st.waiters.len() >= self.config.max_queue {
                return Err(AcquireError::QueueFull);
            }
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(tx);
        Ok(Next::Wait(Waiting {
            rx,
            pool: self.clone(),
        }))
    }

    fn lease(self: &Arc<Self>, ctx: M::Context) -> Lease<M> {
        Lease {
            ctx: Some(ctx),
            pool: self.clone(),
            retire: false,
        }
    }

    async fn wait(
        &self,
        mut waiting: Waiting<M>,
        timeout: Option<Duration>,
    ) -> Result<Grant<M::Context>, AcquireError> {
        let received = match timeout {
            Some(t) => match tokio::time::timeout(t, &mut waiting.rx).await {
                Ok(r) => r,
                Err(_) => return Err(AcquireError::QueueTimeout),
            },
            None => (&mut waiting.rx).await,
        };
        received.map_err(|_| AcquireError::Closed)
    }

    /// Starts a Context for the caller, who already holds a slot in `live`. The Start runs in
    /// its own task so that, if the caller goes away, the new Context still reaches the pool.
    async fn start_for_waiter(self: &Arc<Self>) -> Result<Lease<M>, AcquireError> {
        let (tx, rx) = oneshot::channel();
        self.spawn_start(Some(tx));
        let waiting = Waiting {
            rx,
            pool: self.clone(),
        };
        match self.wait(waiting, None).await? {
            Grant::Ready(ctx) => Ok(self.lease(ctx)),
            Grant::Failed(e) => Err(AcquireError::StartFailed(e)),
            Grant::Start => unreachable!("a start task grants a Context or a failure"),
        }
    }

    /// Starts one Context (its slot already counted in `live`) on a blocking thread, and gives
    /// it to `to`, or to the pool if `to` is gone or absent.
    fn spawn_start(self: &Arc<Self>, to: Option<oneshot::Sender<Grant<M::Context>>>) {
        let inner = self.clone();
        self.runtime.spawn(async move {
            let starter = inner.clone();
            let started = tokio::task::spawn_blocking(move || starter.manager.start())
                .await
                .unwrap_or_else(|e| Err(format!("start task failed: {e}")));
            match started {
                Ok(ctx) => {
                    inner.lock().backoff = Duration::ZERO;
                    match to {
                        Some(tx) => {
                            if let Err(Grant::Ready(ctx)) = tx.send(Grant::Ready(ctx)) {
                                inner.release(ctx, true);
                            }
                        }
                        None => inner.release(ctx, true),
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "effe start failed");
                    inner.start_failed();
                    if let Some(tx) = to {
                        let _ = tx.send(Grant::Failed(e));
                    }
                }
            }
        });
    }

    fn start_failed(&self) {
        let mut st = self.lock();
        st.live -= 1;
        st.backoff = (st.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
        st.backoff_until = Some(Instant::now() + st.backoff);
        if st.live == 0 {
            // Nothing can come free for the waiters: fail them now rather than at their timeout.
            for w in st.waiters.drain(..) {
                let _ = w.send(Grant::Failed("no Context could be started".into()));
            }
        }
        drop(st);
        self.drained.notify_waiters();
    }

    /// Takes back a Context after a request: to the first waiter, else to the idle stack. A
    /// Context to retire (or any, once closed) is stopped, and its slot offered to a waiter.
    fn release(self: &Arc<Self>, ctx: M::Context, healthy: bool) {
        let mut st = self.lock();
        if !healthy || st.closed {
            drop(st);
            return self.retire(ctx);
        }
        if st.waiters.is_empty() {
            let tick = st.tick;
            st.idle.push_back((ctx, tick));
            return;
        }
        let mut ctx = ctx;
        while let Some(w) = st.waiters.pop_front() {
            match w.send(Grant::Ready(ctx)) {
                Ok(()) => return,
                Err(Grant::Ready(back)) => ctx = back,
                Err(_) => unreachable!("send returns what it was given"),
            }
        }
        let tick = st.tick;
        st.idle.push_back((ctx, tick));
    }

    /// Stops `ctx` and offers its slot (unless closed). Out of the per-request path.
    #[cold]
    #[inline(never)]
    fn retire(self: &Arc<Self>, ctx: M::Context) {
        let closed = {
            let mut st = self.lock();
            st.live -= 1;
            st.stopping += 1;
            st.closed
        };
        self.spawn_stop(ctx);
        if !closed {
            self.offer_slot();
        }
    }

    /// A slot came free: let the first waiter start a Context in it, or keep `min` Contexts.
    fn offer_slot(self: &Arc<Self>) {
        let mut st = self.lock();
        let backing_off = st.backoff_until.is_some_and(|t| Instant::now() < t);
        if st.closed || backing_off || st.live >= self.config.max {
            return;
        }
        st.live += 1;
        while let Some(w) = st.waiters.pop_front() {
            if w.send(Grant::Start).is_ok() {
                return;
            }
        }
        if st.live <= self.config.min {
            drop(st);
            self.spawn_start(None);
        } else {
            st.live -= 1;
        }
    }

    /// Puts back what a vanished waiter was granted.
    fn reclaim(self: &Arc<Self>, grant: Grant<M::Context>) {
        match grant {
            Grant::Ready(ctx) => self.release(ctx, true),
            Grant::Start => {
                self.lock().live -= 1;
                self.offer_slot();
                self.drained.notify_waiters();
            }
            Grant::Failed(_) => {}
        }
    }

    fn stop_later(self: &Arc<Self>, ctx: M::Context) {
        {
            let mut st = self.lock();
            st.live -= 1;
            st.stopping += 1;
        }
        self.spawn_stop(ctx);
    }

    /// Stops `ctx` on a blocking thread; `stopping` was already counted.
    fn spawn_stop(self: &Arc<Self>, ctx: M::Context) {
        let inner = self.clone();
        self.runtime.spawn_blocking(move || {
            inner.manager.stop(ctx);
            inner.lock().stopping -= 1;
            inner.drained.notify_waiters();
        });
    }

    /// One maintenance pass (one tick of the pool's clock); false once the pool is closed.
    fn maintain_once(self: &Arc<Self>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.tick += 1;
        let now = st.tick;
        let idle_ticks = self.config.idle_ticks();
        let mut expired = Vec::new();
        while st.live > self.config.min {
            match st.idle.front() {
                Some((_, since)) if now - since > idle_ticks => {
                    let (ctx, _) = st.idle.pop_front().expect("front exists");
                    st.live -= 1;
                    st.stopping += 1;
                    expired.push(ctx);
                }
                _ => break,
            }
        }
        let below_min = st.live < self.config.min;
        drop(st);
        for ctx in expired {
            self.spawn_stop(ctx);
        }
        if below_min {
            self.offer_slot();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counting {
        started: AtomicUsize,
        stopped: AtomicUsize,
        fail: AtomicBool,
    }

    impl Manager for Arc<Counting> {
        type Context = usize;
        fn start(&self) -> Result<usize, String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("nope".into());
            }
            Ok(self.started.fetch_add(1, Ordering::SeqCst))
        }
        fn stop(&self, _: usize) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pool(min: usize, max: usize, queue_ms: u64) -> (Pool<Arc<Counting>>, Arc<Counting>) {
        let m = Arc::new(Counting::default());
        let config = PoolConfig {
            min,
            max,
            queue_timeout: Duration::from_millis(queue_ms),
            max_queue: 8,
            idle_timeout: Duration::from_millis(50),
        };
        (Pool::new(m.clone(), config, Handle::current()), m)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn grows_to_max_then_queues_fifo() {
        let (pool, m) = pool(1, 2, 5_000);
        pool.fill().unwrap();
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        assert_eq!(m.started.load(Ordering::SeqCst), 2);
        let (p1, p2) = (pool.clone(), pool.clone());
        let first = tokio::spawn(async move { p1.acquire().await.map(|mut l| *l.context()) });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { p2.acquire().await.map(|mut l| *l.context()) });
        tokio::task::yield_now().await;
        drop(a);
        assert_eq!(first.await.unwrap(), Ok(0));
        drop(b);
        assert!(second.await.unwrap().is_ok());
        assert_eq!(m.started.load(Ordering::SeqCst), 2, "never more than max");
        assert_eq!(pool.close(far()).await, 0);
        assert_eq!(m.stopped.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn queue_timeout_then_nothing_lost() {
        let (pool, m) = pool(0, 1, 20);
        let held = pool.acquire().await.unwrap();
        assert_eq!(pool.acquire().await.err(), Some(AcquireError::QueueTimeout));
        drop(held);
        assert_eq!(pool.counts(), (1, 1));
        pool.close(far()).await;
        assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retired_context_is_stopped_and_replaced_up_to_min() {
        let (pool, m) = pool(1, 2, 1_000);
        pool.fill().unwrap();
        let mut lease = pool.acquire().await.unwrap();
        lease.retire();
        drop(lease);
        // The replacement starts in a task: poll until it is idle.
        for _ in 0..1000 {
            if pool.counts() == (1, 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.counts(), (1, 1));
        let mut l = pool.acquire().await.unwrap();
        assert_eq!(*l.context(), 1);
        drop(l);
        pool.close(far()).await;
        assert_eq!(
            m.started.load(Ordering::SeqCst),
            m.stopped.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn idle_contexts_shrink_to_min() {
        let (pool, m) = pool(1, 3, 1_000);
        pool.fill().unwrap();
        let leases = [
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        ];
        drop(leases);
        assert_eq!(pool.counts(), (3, 3));
        // Idle for exactly the timeout's worth of ticks: not yet.
        let ticks = pool.inner.config.idle_ticks();
        for _ in 0..ticks {
            pool.inner.maintain_once();
        }
        assert_eq!(pool.counts(), (3, 3));
        // One more tick, and all but the minimum are stopped.
        pool.inner.maintain_once();
        assert_eq!(pool.counts(), (1, 1));
        pool.close(far()).await;
        assert_eq!(m.stopped.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failed_start_is_reported_and_backs_off() {
        let (pool, m) = pool(0, 2, 1_000);
        m.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        m.fail.store(false, Ordering::SeqCst);
        // Inside the backoff window nothing is started.
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        assert_eq!(m.started.load(Ordering::SeqCst), 0);
        assert_eq!(pool.counts(), (0, 0));
    }

    #[tokio::test]
    async fn cancelled_waiter_gives_its_grant_back() {
        let (pool, _m) = pool(0, 1, 5_000);
        let held = pool.acquire().await.unwrap();
        let p = pool.clone();
        let waiter = tokio::spawn(async move { p.acquire().await.map(drop) });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(pool.counts(), (1, 1));
    }
}

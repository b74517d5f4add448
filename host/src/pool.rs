//! The Context pool: the host's concurrency limit and the heart of the effe lifecycle.
//!
//! Invariants (all state lives under one mutex, held only for a few pointer moves):
//! - `live` counts Contexts started or being started and not yet handed to `stop`; it never
//!   exceeds `max`. `starting` counts the Starts in flight among them.
//! - A Context is owned by exactly one of: the idle stack, a [`Lease`] (one request), a grant in
//!   flight to a waiter, or a stop task. It is never used by two requests at once.
//! - Every Context that `start` returned reaches `stop` exactly once: when idle past the
//!   timeout (down to `min`), after its request asked to retire it (a panic), or at close. A
//!   Start hands its Context over on the thread it ran on, so no runtime has to be alive (or
//!   idle) for the Context to reach its owner.
//! - Waiters are served in FIFO order, and a newcomer never starts a Context while a waiter is
//!   queued. A grant sent to a waiter that has gone away (timed out, client disconnected) comes
//!   back and goes to the next one; nothing is lost.
//! - A request waits at most the queue timeout in all, including for a Start made for it; a
//!   Context that arrives later goes to the pool.
//! - After a failed Start the pool backs off: no Start for 100 ms, doubling per failed window
//!   (not per failure: concurrent failures open one window) up to 10 s; a success resets it.
//!   When a window ends, free slots go to the queued waiters first.
//!
//! Idle Contexts are reused most-recently-used first, so that the least used ones age out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
// The pool's clock: tokio's, so that tests can pause and advance it.
use tokio::time::Instant;

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

/// The pool's state at one moment, for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Started or starting, not yet stopping.
    pub live: usize,
    pub idle: usize,
    pub starting: usize,
    pub stopping: usize,
    /// Busy with a Run that overran its deadline (among `live`, not idle, not starting).
    pub quarantined: usize,
    /// Requests queued for a Context.
    pub waiting: usize,
    /// Inside a backoff window after failed Starts.
    pub backing_off: bool,
    pub closed: bool,
}

impl PoolStats {
    /// Contexts lent to a request (or granted to one, on the way to it), quarantined ones not
    /// included.
    pub fn busy(&self) -> usize {
        self.live - self.idle - self.starting - self.quarantined
    }
}

/// What [`Pool::close`] could not stop by its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unstopped {
    /// Contexts still lent to a request (a Run that has not returned).
    pub in_run: usize,
    /// Starts that have not returned.
    pub starting: usize,
    /// Stops that have not returned.
    pub stopping: usize,
}

impl Unstopped {
    pub fn total(&self) -> usize {
        self.in_run + self.starting + self.stopping
    }
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
    starting: usize,
    stopping: usize,
    /// Lent to a Run that overran its deadline: never reused, stopped when the Run returns.
    quarantined: usize,
    waiters: VecDeque<oneshot::Sender<Grant<C>>>,
    backoff: Duration,
    backoff_until: Option<Instant>,
    closed: bool,
}

impl<C> State<C> {
    fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|t| Instant::now() < t)
    }
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
    quarantined: bool,
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

    /// Its request gave up on its Run (the deadline passed) and [`Pool::quarantine_begun`] was
    /// called: when this lease ends, the Context is stopped and leaves the quarantine.
    pub fn end_quarantine(&mut self) {
        self.retire = true;
        self.quarantined = true;
    }
}

impl<M: Manager> Drop for Lease<M> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            if self.quarantined {
                self.pool.lock().quarantined -= 1;
            }
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
                    starting: 0,
                    stopping: 0,
                    quarantined: 0,
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
            {
                let mut st = self.inner.lock();
                st.live += 1;
                st.starting += 1;
            }
            let started = self.inner.manager.start();
            self.inner.lock().starting -= 1;
            match started {
                Ok(ctx) => self.inner.release(ctx, true),
                Err(e) => {
                    self.inner.lock().live -= 1;
                    self.inner.drained.notify_waiters();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Waits for exclusive use of a Context: an idle one, a new one if below `max`, or the next
    /// one released, in FIFO order, for at most the queue timeout in all.
    pub async fn acquire(&self) -> Result<Lease<M>, AcquireError> {
        let inner = &self.inner;
        let next = inner.try_acquire()?;
        if let Next::Ready(ctx) = next {
            return Ok(inner.lease(ctx));
        }
        // Read the clock only once the fast path is ruled out.
        let deadline = Instant::now() + inner.config.queue_timeout;
        let grant = match next {
            Next::Ready(_) => unreachable!("handled above"),
            Next::Start => Grant::Start,
            Next::Wait(waiting) => inner.wait(waiting, deadline).await?,
        };
        match grant {
            Grant::Ready(ctx) => Ok(inner.lease(ctx)),
            Grant::Start => inner.start_for_waiter(deadline).await,
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

    /// Refuses new requests and stops every idle Context at once. Contexts still lent to a
    /// request, or still starting, are stopped as they come back, until `drain_deadline`; then
    /// Stops (and whatever else returns meanwhile) get `stop_grace` more. Returns what was
    /// still not stopped at the end: nothing, on a clean shutdown.
    pub async fn close(&self, drain_deadline: Instant, stop_grace: Duration) -> Unstopped {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            st.closed = true;
            // Dropping the senders wakes every waiter with "closed".
            st.waiters.clear();
            let idle: Vec<_> = st.idle.drain(..).map(|(ctx, _)| ctx).collect();
            drop(st);
            for ctx in idle {
                inner.retire(ctx);
            }
        }
        // Runs and Starts have until the drain deadline to come back; their Stops, like the
        // idle ones', get the grace period on top, however late the drain ended.
        let stop_deadline = drain_deadline.max(Instant::now()) + stop_grace;
        loop {
            let notified = inner.drained.notified();
            {
                let st = inner.lock();
                if st.live == 0 && st.stopping == 0 {
                    return Unstopped::default();
                }
                if Instant::now() >= stop_deadline {
                    return Unstopped {
                        in_run: st.live - st.starting,
                        starting: st.starting,
                        stopping: st.stopping,
                    };
                }
            }
            let _ = tokio::time::timeout_at(stop_deadline, notified).await;
        }
    }

    /// The state now (takes the lock: for scrapes and probes, not for the request path).
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        PoolStats {
            live: st.live,
            idle: st.idle.len(),
            starting: st.starting,
            stopping: st.stopping,
            quarantined: st.quarantined,
            waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
            backing_off: st.backing_off(),
            closed: st.closed,
        }
    }

    /// A request gave up on the Run of one of its Contexts (its deadline passed): that Context
    /// is quarantined until its lease calls [`Lease::end_quarantine`] and ends.
    pub fn quarantine_begun(&self) {
        self.inner.lock().quarantined += 1;
    }

    /// Undoes [`quarantine_begun`](Self::quarantine_begun): the Run returned in time after all.
    pub fn quarantine_cancelled(&self) {
        self.inner.lock().quarantined -= 1;
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
        if !st.waiters.is_empty() {
            // Slots may have come free (a backoff ended) before anyone offered them: the
            // waiters get them first; the newcomer queues behind them.
            self.grant_slots(&mut st);
        }
        let backing_off = st.backing_off();
        if st.waiters.is_empty() && st.live < self.config.max && !backing_off {
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
            quarantined: false,
        }
    }

    async fn wait(
        &self,
        mut waiting: Waiting<M>,
        deadline: Instant,
    ) -> Result<Grant<M::Context>, AcquireError> {
        match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
            Ok(received) => received.map_err(|_| AcquireError::Closed),
            // Dropping `waiting` takes back anything granted meanwhile.
            Err(_) => Err(AcquireError::QueueTimeout),
        }
    }

    /// Starts a Context for the caller, who already holds a slot in `live`, and waits for it
    /// until `deadline`. The Start runs on its own thread: if the caller gives up (or goes
    /// away), the new Context still reaches the pool.
    async fn start_for_waiter(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<Lease<M>, AcquireError> {
        let (tx, rx) = oneshot::channel();
        self.spawn_start(Some(tx));
        let waiting = Waiting {
            rx,
            pool: self.clone(),
        };
        match self.wait(waiting, deadline).await? {
            Grant::Ready(ctx) => Ok(self.lease(ctx)),
            Grant::Failed(e) => Err(AcquireError::StartFailed(e)),
            Grant::Start => unreachable!("a Start grants a Context or a failure"),
        }
    }

    /// Starts one Context (its slot already counted in `live`) on a blocking thread and, on
    /// that same thread, gives it to `to`, or to the pool if `to` is gone or absent.
    fn spawn_start(self: &Arc<Self>, to: Option<oneshot::Sender<Grant<M::Context>>>) {
        self.lock().starting += 1;
        let inner = self.clone();
        self.runtime.spawn_blocking(move || {
            let started = inner.manager.start();
            inner.finish_start(started, to);
        });
    }

    fn finish_start(
        self: &Arc<Self>,
        started: Result<M::Context, String>,
        to: Option<oneshot::Sender<Grant<M::Context>>>,
    ) {
        match started {
            Ok(ctx) => {
                {
                    let mut st = self.lock();
                    st.starting -= 1;
                    st.backoff = Duration::ZERO;
                    st.backoff_until = None;
                }
                match to {
                    None => self.release(ctx, true),
                    Some(tx) => {
                        if let Err(Grant::Ready(ctx)) = tx.send(Grant::Ready(ctx)) {
                            self.release(ctx, true);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!("effe start {e}");
                self.start_failed();
                if let Some(tx) = to {
                    let _ = tx.send(Grant::Failed(e));
                }
            }
        }
    }

    /// A Start failed: free its slot and back off. Failures that land inside an open backoff
    /// window (concurrent Starts) do not lengthen it.
    fn start_failed(self: &Arc<Self>) {
        let mut st = self.lock();
        st.starting -= 1;
        st.live -= 1;
        let window = if st.backing_off() {
            None
        } else {
            st.backoff = (st.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
            let until = Instant::now() + st.backoff;
            st.backoff_until = Some(until);
            Some(until)
        };
        if st.live == 0 {
            // Nothing can come free for the waiters: fail them now rather than at their timeout.
            for w in st.waiters.drain(..) {
                let _ = w.send(Grant::Failed("no Context could be started".into()));
            }
        }
        drop(st);
        self.drained.notify_waiters();
        if let Some(until) = window {
            // When the window ends, its free slots go to whoever queued meanwhile.
            let inner = self.clone();
            self.runtime.spawn(async move {
                tokio::time::sleep_until(until).await;
                inner.offer_slots();
            });
        }
    }

    /// Takes back a Context after a request: to the first waiter, else to the idle stack. A
    /// Context to retire (or any, once closed) is stopped, and its slot offered to a waiter.
    fn release(self: &Arc<Self>, ctx: M::Context, healthy: bool) {
        let mut st = self.lock();
        if !healthy || st.closed {
            drop(st);
            return self.retire(ctx);
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
        {
            let mut st = self.lock();
            st.live -= 1;
            st.stopping += 1;
        }
        self.spawn_stop(ctx);
        self.offer_slots();
    }

    /// Free slots go to the queued waiters, in order (each starts a Context), then Contexts
    /// are started up to `min`. Nothing while closed or backing off.
    fn offer_slots(self: &Arc<Self>) {
        let mut st = self.lock();
        self.grant_slots(&mut st);
        let mut to_start = 0;
        while st.live < self.config.min && !st.closed && !st.backing_off() {
            st.live += 1;
            to_start += 1;
        }
        drop(st);
        for _ in 0..to_start {
            self.spawn_start(None);
        }
    }

    /// Gives each free slot to the next waiter still waiting.
    fn grant_slots(&self, st: &mut State<M::Context>) {
        while st.live < self.config.max && !st.closed && !st.backing_off() {
            let Some(w) = st.waiters.pop_front() else {
                return;
            };
            if w.send(Grant::Start).is_ok() {
                st.live += 1;
            }
        }
    }

    /// Puts back what a vanished waiter was granted.
    fn reclaim(self: &Arc<Self>, grant: Grant<M::Context>) {
        match grant {
            Grant::Ready(ctx) => self.release(ctx, true),
            Grant::Start => {
                self.lock().live -= 1;
                self.offer_slots();
                self.drained.notify_waiters();
            }
            Grant::Failed(_) => {}
        }
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
            self.offer_slots();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Condvar;
    use std::task::{Context as TaskContext, Poll, Waker};

    /// Bounds every wait in these tests: a bug fails the test instead of hanging it.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A gate that Starts or Stops wait at while it is closed, counting who arrived.
    #[derive(Default)]
    struct Gate {
        state: Mutex<(bool, usize)>,
        cv: Condvar,
    }

    impl Gate {
        fn close(&self) {
            self.state.lock().unwrap().0 = true;
        }

        fn open(&self) {
            self.state.lock().unwrap().0 = false;
            self.cv.notify_all();
        }

        fn pass(&self) {
            let mut st = self.state.lock().unwrap();
            st.1 += 1;
            self.cv.notify_all();
            while st.0 {
                st = self.cv.wait(st).unwrap();
            }
        }

        /// Blocks until `n` callers have arrived at the gate.
        fn wait_arrived(&self, n: usize) {
            let st = self.state.lock().unwrap();
            let (_guard, timeout) = self
                .cv
                .wait_timeout_while(st, PATIENCE, |st| st.1 < n)
                .unwrap();
            assert!(!timeout.timed_out(), "never {n} at the gate");
        }
    }

    #[derive(Default)]
    struct Counting {
        started: AtomicUsize,
        stopped: AtomicUsize,
        fail: AtomicBool,
        start_gate: Gate,
        stop_gate: Gate,
    }

    /// Opens both gates when a test ends, passing or failing, so that no Start or Stop thread
    /// is left blocked (the runtime would wait for it forever).
    struct OpenAtEnd(Arc<Counting>);

    impl Drop for OpenAtEnd {
        fn drop(&mut self) {
            self.0.start_gate.open();
            self.0.stop_gate.open();
        }
    }

    impl Manager for Arc<Counting> {
        type Context = usize;
        fn start(&self) -> Result<usize, String> {
            self.start_gate.pass();
            if self.fail.load(Ordering::SeqCst) {
                return Err("nope".into());
            }
            Ok(self.started.fetch_add(1, Ordering::SeqCst))
        }
        fn stop(&self, _: usize) {
            self.stop_gate.pass();
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn config(min: usize, max: usize, queue_ms: u64) -> PoolConfig {
        PoolConfig {
            min,
            max,
            queue_timeout: Duration::from_millis(queue_ms),
            max_queue: 8,
            idle_timeout: Duration::from_millis(50),
        }
    }

    fn pool(min: usize, max: usize, queue_ms: u64) -> (Pool<Arc<Counting>>, Arc<Counting>) {
        let m = Arc::new(Counting::default());
        let pool = Pool::new(m.clone(), config(min, max, queue_ms), Handle::current());
        (pool, m)
    }

    fn far() -> Instant {
        Instant::now() + PATIENCE
    }

    const GRACE: Duration = Duration::from_secs(30);

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::pin::Pin::new(f).poll(&mut TaskContext::from_waker(Waker::noop()))
    }

    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(PATIENCE, f)
            .await
            .expect("bounded wait")
    }

    fn backoff(pool: &Pool<Arc<Counting>>) -> (Duration, Option<Instant>) {
        let st = pool.inner.lock();
        (st.backoff, st.backoff_until)
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
        assert_eq!(pool.close(far(), GRACE).await, Unstopped::default());
        assert_eq!(m.stopped.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn queue_timeout_then_nothing_lost() {
        let (pool, m) = pool(0, 1, 20);
        let held = pool.acquire().await.unwrap();
        assert_eq!(pool.acquire().await.err(), Some(AcquireError::QueueTimeout));
        drop(held);
        assert_eq!(pool.counts(), (1, 1));
        pool.close(far(), GRACE).await;
        assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retired_context_is_stopped_and_replaced_up_to_min() {
        let (pool, m) = pool(1, 1, 5_000);
        pool.fill().unwrap();
        let mut lease = pool.acquire().await.unwrap();
        lease.retire();
        drop(lease);
        // The slot is refilled at once (min 1); with max 1 this request waits for that
        // replacement, which is Context 1.
        let mut l = bounded(pool.acquire()).await.unwrap();
        assert_eq!(*l.context(), 1);
        drop(l);
        assert_eq!(pool.close(far(), GRACE).await, Unstopped::default());
        assert_eq!(m.started.load(Ordering::SeqCst), 2);
        assert_eq!(m.stopped.load(Ordering::SeqCst), 2);
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
        pool.close(far(), GRACE).await;
        assert_eq!(m.stopped.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_start_is_reported_and_backs_off() {
        let (pool, m) = pool(0, 2, 1_000);
        m.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        m.fail.store(false, Ordering::SeqCst);
        // Inside the backoff window (the clock is paused) nothing is started.
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        assert_eq!(m.started.load(Ordering::SeqCst), 0);
        assert_eq!(pool.counts(), (0, 0));
        // Past it, a Start is tried again, succeeds, and clears the backoff.
        tokio::time::sleep(BACKOFF_FIRST).await;
        let lease = pool.acquire().await.unwrap();
        assert_eq!(m.started.load(Ordering::SeqCst), 1);
        assert_eq!(backoff(&pool), (Duration::ZERO, None));
        drop(lease);
    }

    #[tokio::test]
    async fn a_waiter_dropped_after_its_grant_gives_the_context_back() {
        let (pool, _m) = pool(0, 1, 5_000);
        let held = pool.acquire().await.unwrap();
        let mut waiter = Box::pin(pool.acquire());
        assert!(poll_once(&mut waiter).is_pending(), "queued");
        // The Context is granted to the waiter, which goes away before it looks.
        drop(held);
        drop(waiter);
        assert_eq!(pool.counts(), (1, 1), "the grant came back to the pool");
        let mut lease = pool.acquire().await.unwrap();
        assert_eq!(*lease.context(), 0);
    }

    #[tokio::test]
    async fn a_waiter_cancelled_before_any_grant_leaves_nothing_behind() {
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

    #[tokio::test(start_paused = true)]
    async fn waiters_queued_during_a_backoff_get_the_slots_when_it_ends_before_newcomers() {
        let (pool, m) = pool(0, 2, 60_000);
        let held = pool.acquire().await.unwrap();
        m.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        m.fail.store(false, Ordering::SeqCst);
        // Backing off, one Context alive: this request queues.
        let p = pool.clone();
        let waiter = tokio::spawn(async move { p.acquire().await });
        tokio::task::yield_now().await;
        // The window ends; a newcomer arrives.
        tokio::time::sleep(BACKOFF_FIRST).await;
        let p = pool.clone();
        let newcomer = tokio::spawn(async move { p.acquire().await.map(|mut l| *l.context()) });
        // The waiter gets the free slot (a new Context), well before its queue timeout...
        let mut got = bounded(waiter).await.unwrap().unwrap();
        assert_eq!(*got.context(), 1);
        // ...and the newcomer, behind it, gets the next Context released.
        assert_eq!(
            m.started.load(Ordering::SeqCst),
            2,
            "the newcomer started none"
        );
        drop(held);
        assert_eq!(bounded(newcomer).await.unwrap(), Ok(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_queued_during_a_backoff_gets_a_slot_when_it_ends() {
        let (pool, m) = pool(0, 2, 60_000);
        let _held = pool.acquire().await.unwrap();
        m.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            pool.acquire().await,
            Err(AcquireError::StartFailed(_))
        ));
        m.fail.store(false, Ordering::SeqCst);
        // No newcomer comes to notice that the window ended: the pool itself offers the slot,
        // long before the queue timeout.
        let before = Instant::now();
        let mut got = bounded(pool.acquire()).await.unwrap();
        assert_eq!(*got.context(), 1);
        assert!(before.elapsed() <= BACKOFF_FIRST, "{:?}", before.elapsed());
    }

    #[tokio::test]
    async fn a_hung_start_is_bounded_by_the_queue_timeout() {
        let (pool, m) = pool(0, 1, 50);
        let _open = OpenAtEnd(m.clone());
        m.start_gate.close();
        let waited = bounded(pool.acquire()).await;
        assert_eq!(waited.err(), Some(AcquireError::QueueTimeout));
        // The Context that arrives late goes to the pool (and is stopped at close).
        m.start_gate.open();
        assert_eq!(pool.close(far(), GRACE).await, Unstopped::default());
        assert_eq!(m.started.load(Ordering::SeqCst), 1);
        assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_failed_starts_open_one_backoff_window() {
        let (pool, m) = pool(0, 4, 5_000);
        let _open = OpenAtEnd(m.clone());
        m.start_gate.close();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let p = pool.clone();
                tokio::spawn(async move { p.acquire().await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        m.start_gate.wait_arrived(4);
        m.fail.store(true, Ordering::SeqCst);
        m.start_gate.open();
        for t in tasks {
            assert!(matches!(
                bounded(t).await.unwrap(),
                Err(AcquireError::StartFailed(_))
            ));
        }
        assert_eq!(
            backoff(&pool).0,
            BACKOFF_FIRST,
            "doubled once, not per failure"
        );
    }

    #[tokio::test]
    async fn a_start_hands_its_context_over_without_the_pools_runtime() {
        // A runtime that nothing drives: as busy as the main network thread can ever be.
        let stalled = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m = Arc::new(Counting::default());
        let pool = Pool::new(m.clone(), config(0, 1, 60_000), stalled.handle().clone());
        let lease = bounded(pool.acquire()).await.unwrap();
        drop(lease);
        assert_eq!(pool.counts(), (1, 1));
        stalled.shutdown_background();
    }

    #[tokio::test]
    async fn close_gives_stops_a_grace_period_after_the_drain_deadline() {
        let (pool, m) = pool(1, 1, 1_000);
        let _open = OpenAtEnd(m.clone());
        pool.fill().unwrap();
        m.stop_gate.close();
        // The drain deadline has passed already; the Stop still gets its grace period.
        let p = pool.clone();
        let closing = tokio::spawn(async move { p.close(Instant::now(), GRACE).await });
        tokio::task::yield_now().await;
        m.stop_gate.wait_arrived(1);
        assert!(!closing.is_finished(), "close returned before the Stop did");
        m.stop_gate.open();
        assert_eq!(bounded(closing).await.unwrap(), Unstopped::default());
        assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_reports_what_it_could_not_stop_by_kind() {
        let (pool, m) = pool(0, 3, 50);
        let _open = OpenAtEnd(m.clone());
        let in_run = pool.acquire().await.unwrap();
        let stopping = pool.acquire().await.unwrap();
        m.start_gate.close();
        let hung = pool.acquire().await.err();
        assert_eq!(hung, Some(AcquireError::QueueTimeout), "its Start hangs");
        m.stop_gate.close();
        let p = pool.clone();
        let closing =
            tokio::spawn(async move { p.close(Instant::now(), Duration::from_millis(50)).await });
        drop(stopping);
        assert_eq!(
            bounded(closing).await.unwrap(),
            Unstopped {
                in_run: 1,
                starting: 1,
                stopping: 1
            }
        );
        m.start_gate.open();
        m.stop_gate.open();
        drop(in_run);
    }

    #[tokio::test]
    async fn a_quarantined_context_keeps_its_slot_until_its_run_returns_then_stops() {
        let (pool, m) = pool(0, 1, 50);
        let mut lease = pool.acquire().await.unwrap();
        pool.quarantine_begun();
        let stats = pool.stats();
        assert_eq!((stats.live, stats.quarantined, stats.busy()), (1, 1, 0));
        // Its slot is taken: nobody else gets a Context meanwhile.
        assert_eq!(pool.acquire().await.err(), Some(AcquireError::QueueTimeout));
        // The Run returns: the Context is stopped, never reused, and the slot is free.
        lease.end_quarantine();
        drop(lease);
        assert_eq!(pool.close(far(), GRACE).await, Unstopped::default());
        assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
        let stats = pool.stats();
        assert_eq!((stats.live, stats.quarantined), (0, 0));
    }
}

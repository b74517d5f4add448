//! Closes connections that go quiet: one that sends no request within the header read timeout
//! (hyper-util's protocol sniffing and hyper's wait for the HTTP/2 preface have no limit of
//! their own), and one with no request in progress for the idle timeout (keep-alive; a GOAWAY
//! on HTTP/2, after which its client opens a new connection).
//!
//! A connection is polled several times per request, and a timer polled each time measured
//! about 1,000 instructions per request. So the timer is polled with a waker of its own, which
//! only raises a flag and wakes the connection's task: a poll looks at the flag, and at the
//! timer only when it has rung.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;
use tokio::time::Sleep;

use crate::drain::Watched;
use crate::invoke::ConnGauge;

/// `conn`, closed at once if no request comes within `first`, and gracefully once no request
/// has been in progress on it for `idle` (at once if it is still open and idle after as long
/// again).
pub(crate) fn quiet_within<C: GracefulConnection>(
    conn: Watched<C>,
    gauge: Arc<ConnGauge>,
    first: Duration,
    idle: Duration,
) -> Quiet<C> {
    let alarm = Arc::new(Alarm::default());
    Quiet {
        conn,
        // The first look when either limit could be due: nothing resets the timer when the
        // first request comes.
        timer: Box::pin(tokio::time::sleep_until(
            (gauge.born() + first.min(idle)).into(),
        )),
        first,
        asked: false,
        alarm_waker: Waker::from(alarm.clone()),
        alarm,
        gauge,
        idle,
    }
}

pub(crate) struct Quiet<C: GracefulConnection> {
    conn: Watched<C>,
    timer: Pin<Box<Sleep>>,
    /// Asked to close gracefully, for being idle.
    asked: bool,
    alarm: Arc<Alarm>,
    /// Wakes `alarm`: the waker the timer is polled with.
    alarm_waker: Waker,
    gauge: Arc<ConnGauge>,
    first: Duration,
    idle: Duration,
}

/// Raised by the timer; wakes the connection's task, whose waker does not change once it runs.
#[derive(Default)]
struct Alarm {
    rang: AtomicBool,
    task: OnceLock<Waker>,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rang.store(true, Ordering::Release);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

/// What a rung timer means.
enum Verdict {
    /// No first request in time: close now.
    Close,
    /// Idle for the whole timeout: close gracefully.
    Idle,
    /// Look again then.
    Later(Instant),
}

impl<C: GracefulConnection> Quiet<C> {
    fn verdict(&self, now: Instant) -> Verdict {
        if !self.gauge.seen() {
            let due = self.gauge.born() + self.first;
            return if now >= due {
                Verdict::Close
            } else {
                Verdict::Later(due)
            };
        }
        match self.gauge.idle_since() {
            // A request in progress: it counts as activity when it ends.
            None => Verdict::Later(now + self.idle),
            Some(since) if now >= since + self.idle => Verdict::Idle,
            Some(since) => Verdict::Later(since + self.idle),
        }
    }

    /// Polls the timer with the alarm's waker; `true` if it has rung already.
    fn arm(&mut self) -> bool {
        let mut cx = Context::from_waker(&self.alarm_waker);
        self.timer.as_mut().poll(&mut cx).is_ready()
    }

    fn set(&mut self, at: Instant) -> bool {
        self.timer.as_mut().reset(at.into());
        self.arm()
    }

    /// The timer rang: close the connection, or set the timer again. `true` to close now.
    #[cold]
    #[inline(never)]
    fn rang(&mut self) -> bool {
        loop {
            match self.verdict(Instant::now()) {
                Verdict::Close => {
                    tracing::debug!("no request within the header read timeout: closed");
                    return true;
                }
                Verdict::Idle if self.asked => {
                    // HTTP/2's graceful close waits for the peer to answer a PING: a peer
                    // that is gone would keep the connection for ever.
                    tracing::debug!("still open an idle timeout after a graceful close: closed");
                    return true;
                }
                Verdict::Idle => {
                    tracing::debug!("idle for the idle timeout: closing");
                    self.asked = true;
                    self.conn.close_gracefully();
                    if !self.set(Instant::now() + self.idle) {
                        return false;
                    }
                }
                Verdict::Later(at) => {
                    if !self.set(at) {
                        return false;
                    }
                }
            }
        }
    }
}

impl<C: GracefulConnection> Future for Quiet<C> {
    type Output = Result<(), C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let rang = if this.alarm.task.get().is_none() {
            // First poll: the alarm learns whom to wake, then the timer is registered.
            let _ = this.alarm.task.set(cx.waker().clone());
            this.arm()
        } else {
            this.alarm.rang.swap(false, Ordering::AcqRel)
        };
        if rang && this.rang() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.conn).poll(cx)
    }
}

//! Graceful shutdown of connections that costs nothing while serving.
//!
//! An HTTP/1.x connection that is idle when shutdown starts is not closed at once: its client
//! may be sending its next request right now, and would find the connection closed under it.
//! It lingers for [`LINGER`]; a request that comes meanwhile is answered with `connection:
//! close` (the app adds it while draining), after which hyper closes the connection.
//!
//! hyper-util's `GracefulShutdown` polls a watch channel every time a connection is polled;
//! for HTTP/2, where a connection is polled several times per request, that lock-and-compare
//! measured about 1.3 µs per request on one CPU. Here a connection looks at an atomic flag
//! instead, and registers for the shutdown wake-up once, on its first poll: its task's waker
//! does not change afterwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::invoke::ConnGauge;

/// How long an idle HTTP/1.x connection stays open once shutdown starts.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The connections of one network thread.
#[derive(Default)]
pub struct Drain {
    stopping: AtomicBool,
    /// Woken once, when shutdown starts.
    stop: Arc<Notify>,
    live: AtomicUsize,
    /// Woken when the last connection ends after shutdown started.
    empty: Notify,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Counts a connection from the moment it is accepted, before any TLS handshake: shutdown
    /// waits for it too, so a client whose handshake ends during the drain is still served.
    pub fn admit(self: &Arc<Self>) -> Admitted {
        self.live.fetch_add(1, Ordering::Relaxed);
        Admitted {
            drain: self.clone(),
        }
    }

    /// Asks every connection to finish its in-flight requests and close, then waits until they
    /// all have.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
        loop {
            let empty = self.empty.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            empty.await;
        }
    }
}

/// One accepted connection, counted by its [`Drain`] until dropped.
pub struct Admitted {
    drain: Arc<Drain>,
}

impl Admitted {
    /// Whether shutdown has started.
    pub fn stopping(&self) -> bool {
        self.drain.stopping.load(Ordering::Acquire)
    }

    /// Serves `conn` until it ends, closing it gracefully when shutdown starts.
    pub(crate) fn watch<C: GracefulConnection>(self, conn: C, gauge: Arc<ConnGauge>) -> Watched<C> {
        Watched {
            conn: Box::pin(conn),
            stop: Some(Box::pin(self.drain.stop.clone().notified_owned())),
            registered: false,
            lingering: None,
            gauge,
            admitted: self,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.drain.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.empty.notify_waiters();
        }
    }
}

/// A connection that closes gracefully when its [`Drain`] shuts down.
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    /// `None` once the connection was told to shut down.
    stop: Option<Pin<Box<OwnedNotified>>>,
    registered: bool,
    /// Shutdown started while it was an idle HTTP/1.x connection: closed when this ends.
    lingering: Option<Pin<Box<Sleep>>>,
    gauge: Arc<ConnGauge>,
    admitted: Admitted,
}

impl<C: GracefulConnection> Watched<C> {
    /// Asks the connection to finish what is in flight and close, unless it was asked already.
    pub fn close_gracefully(&mut self) {
        if self.stop.take().is_some() {
            self.conn.as_mut().graceful_shutdown();
        }
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if let Some(stop) = this.stop.as_mut() {
            // Poll the notification only to register (first poll) or once it has fired.
            if !this.registered || this.admitted.stopping() {
                this.registered = true;
                let fired = stop.as_mut().poll(cx).is_ready();
                if fired || this.admitted.stopping() {
                    if !this.gauge.is_h2() && this.gauge.idle_since().is_some() {
                        this.stop = None;
                        this.lingering = Some(Box::pin(tokio::time::sleep(LINGER)));
                    } else {
                        this.close_gracefully();
                    }
                }
            }
        }
        if let Some(linger) = this.lingering.as_mut() {
            if linger.as_mut().poll(cx).is_ready() {
                this.lingering = None;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

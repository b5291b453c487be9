//! The driver: runs the model on tokio. [`Shared`] holds the state behind
//! one mutex and applies every call at the current virtual time; [`drive`]
//! is the task that wakes for the next due event; [`runtime_problem`] says
//! when the current runtime would run the model in real time.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use p2p_core::PeerId;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::state::{ConnId, Effect, State};

/// Makes the handle of one side of a connection (0: the dialer's, 1: the
/// acceptor's) to the peer with the given id.
pub(crate) type ConnectionMaker =
    fn(Arc<Shared>, ConnId, usize, PeerId) -> Arc<dyn p2p_core::Connection>;

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) epoch: Instant,
    /// Handles for new connections, from the provider layer above.
    connection: ConnectionMaker,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the driver notice that the network is gone and exit.
        self.notify.notify_one();
    }
}

impl Shared {
    pub(crate) fn new(state: State, epoch: Instant, connection: ConnectionMaker) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(state),
            notify: Arc::new(Notify::new()),
            epoch,
            connection,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        p2p_core::sync::lock(&self.state)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs `f` on the state at the current virtual time, then performs the
    /// effects it produced (outside the lock) and wakes the driver if
    /// events were scheduled.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let now = self.now_ns();
        let (r, effects, scheduled) = {
            let mut st = self.lock();
            // Events already due happen before this call, in time order.
            st.run_due(now);
            st.now = now;
            let r = f(&mut st);
            (
                r,
                std::mem::take(&mut st.effects),
                std::mem::take(&mut st.scheduled),
            )
        };
        self.perform(effects);
        if scheduled {
            self.notify.notify_one();
        }
        r
    }

    fn perform(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Accept { tx, conn, remote } => {
                    let handle = (self.connection)(self.clone(), conn, 1, remote);
                    // A full or dropped listener drops the handle, which
                    // closes the connection for the dialer.
                    let _ = tx.try_send(handle);
                }
                Effect::Reply { tx, result } => {
                    let result = result
                        .map(|(conn, remote)| (self.connection)(self.clone(), conn, 0, remote));
                    let _ = tx.send(result);
                }
                Effect::Abort(handles) => handles.iter().for_each(AbortHandle::abort),
                Effect::Hooks(hooks) => hooks.into_iter().for_each(|h| h()),
            }
        }
    }
}

/// The driver task: processes due events, then sleeps until the next one
/// or until new work is scheduled.
pub(crate) async fn drive(weak: Weak<Shared>, notify: Arc<Notify>, epoch: Instant) {
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let next = {
            let Some(sh) = weak.upgrade() else { return };
            let (next, effects) = {
                let mut st = sh.lock();
                let next = st.run_due(sh.now_ns());
                (next, std::mem::take(&mut st.effects))
            };
            sh.perform(effects);
            next
        };
        match next {
            Some(t) => {
                sleep.as_mut().reset(epoch + Duration::from_nanos(t));
                tokio::select! {
                    biased;
                    () = notify.notified() => {}
                    () = &mut sleep => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

/// What is wrong with the current tokio runtime for a simulation, if
/// anything: the model needs a current-thread runtime with paused time.
/// On any other runtime the driver sleeps in real time, threads interleave
/// events, and every run gives another trace.
pub(crate) fn runtime_problem() -> Option<&'static str> {
    let Ok(handle) = Handle::try_current() else {
        return Some("there is no tokio runtime here");
    };
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return Some("this tokio runtime is multi-thread");
    }
    if tokio_clock_runs() == Some(true) {
        return Some("this tokio runtime's time is not paused");
    }
    None
}

/// Whether tokio's clock follows the real one here; `None` if the real
/// clock did not move within a bounded spin, so it cannot be told.
///
/// Tokio has no "is time paused" query. Paused time stands still between
/// awaits: it moves only by `tokio::time::advance` or when the runtime has
/// nothing to do, and neither can happen in the middle of this synchronous
/// function. Unpaused, `tokio::time::Instant::now` reads the real monotonic
/// clock. So: read tokio's clock, wait until the real clock has moved on,
/// read tokio's clock again. Unpaused, the second read comes strictly after
/// the first in real time and differs from it; paused, it is equal.
fn tokio_clock_runs() -> Option<bool> {
    let virtual_before = Instant::now();
    // Real time on purpose: to tell whether tokio's clock is virtual.
    #[allow(clippy::disallowed_methods)]
    let real_before = std::time::Instant::now();
    for _ in 0..1_000_000 {
        #[allow(clippy::disallowed_methods)]
        let real_now = std::time::Instant::now();
        if real_now > real_before {
            return Some(Instant::now() != virtual_before);
        }
        std::hint::spin_loop();
    }
    None
}

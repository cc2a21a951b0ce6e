//! Time as guests see it: the WASI clocks, the `sleep` and `next-signal` timeouts of the
//! control imports, and the deadline of a run.
//!
//! A host uses [`SystemClock`]. Tests use a [`VirtualClock`] that stands still until the test
//! advances it, so a guest that sleeps for an hour or waits for a signal with a timeout is
//! tested at once and the same way every time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// A source of time for guests.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary start.
    fn monotonic(&self) -> Duration;
    /// The wall clock, as a duration since the Unix epoch.
    fn wall(&self) -> Duration;
    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Real time: tokio's timers and the system clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }

    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Time that moves only when [`VirtualClock::advance`] is called.
#[derive(Clone, Default)]
pub struct VirtualClock {
    state: Arc<Mutex<Virtual>>,
}

#[derive(Default)]
struct Virtual {
    elapsed: Duration,
    wall_start: Duration,
    sleepers: BTreeMap<(Duration, u64), oneshot::Sender<()>>,
    next: u64,
}

impl VirtualClock {
    /// A clock at zero, whose wall clock starts at the real current time.
    pub fn new() -> Self {
        let clock = Self::default();
        clock.lock().wall_start = SystemClock.wall();
        clock
    }

    /// Moves time forward by `by`, waking every sleep that ends within it.
    pub fn advance(&self, by: Duration) {
        let woken = {
            let mut state = self.lock();
            state.elapsed += by;
            let now = state.elapsed;
            let later = state.sleepers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut state.sleepers, later)
        };
        for (_, wake) in woken {
            let _ = wake.send(());
        }
    }

    /// How many sleeps are waiting for time to move.
    pub fn sleepers(&self) -> usize {
        self.lock().sleepers.len()
    }

    fn lock(&self) -> MutexGuard<'_, Virtual> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for VirtualClock {
    fn monotonic(&self) -> Duration {
        self.lock().elapsed
    }

    fn wall(&self) -> Duration {
        let state = self.lock();
        state.wall_start + state.elapsed
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            return Box::pin(async {});
        }
        let (wake, woken) = oneshot::channel();
        {
            let mut state = self.lock();
            let at = state.elapsed + duration;
            state.next += 1;
            let key = (at, state.next);
            state.sleepers.insert(key, wake);
        }
        Box::pin(async move {
            let _ = woken.await;
        })
    }
}

/// A [`Clock`] as WASI's wall and monotonic clocks.
pub(crate) struct WasiClock(pub(crate) Arc<dyn Clock>);

impl HostWallClock for WasiClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.wall()
    }
}

impl HostMonotonicClock for WasiClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.monotonic().as_nanos()).unwrap_or(u64::MAX)
    }
}

//! Time as guests see it: the WASI clocks, and the `sleep` and `next-signal` timeouts of the
//! control imports. The host's own limits (deadline, CPU, progress rate) keep real time.
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
    /// Completes once `duration` has passed on this clock: a guest's wait.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// Completes once `duration` has passed on this clock: the host's own timer, which a test
    /// does not wait for (e.g. recording coalesced progress).
    fn timer(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleep(duration)
    }
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

/// A waiting sleep: whom to wake, and whether a guest waits on it.
struct Sleeper {
    wake: oneshot::Sender<()>,
    guest: bool,
}

#[derive(Default)]
struct Virtual {
    elapsed: Duration,
    wall_start: Duration,
    sleepers: BTreeMap<(Duration, u64), Sleeper>,
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
        for (_, sleeper) in woken {
            let _ = sleeper.wake.send(());
        }
    }

    /// How many guest sleeps (and timed waits) are waiting for time to move.
    pub fn sleepers(&self) -> usize {
        self.lock().sleepers.values().filter(|s| s.guest).count()
    }

    fn register(&self, duration: Duration, guest: bool) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            return Box::pin(async {});
        }
        let (wake, woken) = oneshot::channel();
        let key = {
            let mut state = self.lock();
            let at = state.elapsed + duration;
            state.next += 1;
            let key = (at, state.next);
            state.sleepers.insert(key, Sleeper { wake, guest });
            key
        };
        let registration = Registration {
            state: Arc::clone(&self.state),
            key,
        };
        Box::pin(async move {
            let _registration = registration;
            let _ = woken.await;
        })
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
        self.register(duration, true)
    }

    fn timer(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.register(duration, false)
    }
}

/// A sleep's place among the sleepers, given up when the sleep ends or is dropped.
struct Registration {
    state: Arc<Mutex<Virtual>>,
    key: (Duration, u64),
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.sleepers.remove(&self.key);
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

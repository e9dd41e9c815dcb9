//! Time as the engine sees it. Every deadline (will delay, session expiry, message expiry)
//! is computed from a [`Clock`], so tests drive time with a [`ManualClock`] instead of
//! sleeping. The wall-clock time ([`Clock::wall`]) only stamps hub events.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// A source of "now". The engine never reads the system time directly.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;

    /// The calendar time, for the `time` of hub events.
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to: tests advance it and call `Engine::tick`. Its
/// wall time moves with it, from the calendar time it was made at.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
    start: Instant,
    wall_start: SystemTime,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        let start = Instant::now();
        Self {
            now: Arc::new(Mutex::new(start)),
            start,
            wall_start: SystemTime::now(),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }

    fn wall(&self) -> SystemTime {
        self.wall_start + (self.now() - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now() - start, Duration::from_secs(5));
        let shared = clock.clone();
        shared.advance(Duration::from_secs(1));
        assert_eq!(clock.now() - start, Duration::from_secs(6));
        let wall = clock.wall();
        clock.advance(Duration::from_millis(1500));
        assert_eq!(
            clock.wall().duration_since(wall).ok(),
            Some(Duration::from_millis(1500))
        );
    }
}

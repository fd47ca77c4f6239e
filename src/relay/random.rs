//! Random bytes for the relay (query IDs, 0x20 letter case), drawn from the system in batches so a
//! query costs no system call of its own. If the system's source fails, no bytes are handed out:
//! there is no predictable fallback, the query fails instead (RFC 5452 §9.2).

/// Where random bytes come from: [`system`] in dnlb; a fixed stream in fuzzing and tests.
pub type Fill = fn(&mut [u8]) -> Result<(), getrandom::Error>;

/// The operating system's random source.
pub fn system(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// Bytes drawn per refill: enough for about a hundred queries with 0x20 on.
const POOL: usize = 4096;

/// A pool of random bytes, refilled from a [`Fill`] when used up.
pub struct Random {
    fill: Fill,
    pool: Box<[u8; POOL]>,
    /// Bytes before this offset are used (or were never filled).
    used: usize,
}

impl Random {
    /// A pool filled once now: an error here means the source does not work at all.
    pub fn new(fill: Fill) -> Result<Random, getrandom::Error> {
        let mut pool = Box::new([0u8; POOL]);
        fill(&mut pool[..])?;
        Ok(Random { fill, pool, used: 0 })
    }

    /// Fills `out` with unused random bytes; `None` (and `out` untouched) when the source fails.
    /// `out` may be at most the pool's size.
    pub fn fill(&mut self, out: &mut [u8]) -> Option<()> {
        if out.len() > POOL {
            return None;
        }
        if POOL - self.used < out.len() {
            // Mark the pool spent first: on failure nothing in it is handed out again.
            self.used = POOL;
            (self.fill)(&mut self.pool[..]).ok()?;
            self.used = 0;
        }
        out.copy_from_slice(&self.pool[self.used..self.used + out.len()]);
        self.used += out.len();
        Some(())
    }

    /// A random 16-bit number (a query ID).
    pub fn u16(&mut self) -> Option<u16> {
        let mut b = [0u8; 2];
        self.fill(&mut b)?;
        Some(u16::from_be_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    static BROKEN: AtomicBool = AtomicBool::new(false);
    static NEXT: AtomicU8 = AtomicU8::new(0);

    fn counting(buf: &mut [u8]) -> Result<(), getrandom::Error> {
        if BROKEN.load(Ordering::Relaxed) {
            return Err(getrandom::Error::UNEXPECTED);
        }
        buf.fill(NEXT.fetch_add(1, Ordering::Relaxed));
        Ok(())
    }

    #[test]
    fn a_failing_source_hands_out_nothing() {
        let mut r = Random::new(counting).unwrap();
        let first = r.u16().unwrap();
        for _ in 0..POOL / 2 - 1 {
            assert_eq!(r.u16(), Some(first), "the first pool is used up before a refill");
        }
        BROKEN.store(true, Ordering::Relaxed);
        assert_eq!(r.u16(), None, "the pool is spent and the source fails: nothing");
        assert_eq!(r.u16(), None, "and no stale bytes afterwards either");
        BROKEN.store(false, Ordering::Relaxed);
        assert!(r.u16().is_some_and(|v| v != first), "a working source refills");
        assert!(r.fill(&mut [0u8; POOL + 1]).is_none());
    }

    #[test]
    fn the_system_source_works() {
        let mut r = Random::new(system).unwrap();
        let ids: std::collections::HashSet<u16> = (0..1000).filter_map(|_| r.u16()).collect();
        assert!(ids.len() > 950, "{} distinct IDs of 1000", ids.len());
    }
}

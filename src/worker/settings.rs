//! The settings a reload changes under running workers: the relay's and rate limiting's.
//!
//! ```text
//!  reload ─► SettingsHandle::publish ─► generation + 1
//!  worker, per batch and per tick: generation moved? ─► load, apply (Relay::reconfigure, a new Limiter)
//! ```
//!
//! A worker reads one atomic per batch; the settings themselves only when they changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{RelayConfig, RrlConfig};

/// What the workers apply in place.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// The relay's settings; a worker that started without a relay keeps none (and one that
    /// started with one keeps it: adding or removing `[relay]` needs a restart).
    pub relay: Option<Arc<RelayConfig>>,
    /// Response rate limiting; `None`: off.
    pub rrl: Option<RrlConfig>,
}

/// The current [`WorkerSettings`], shared by every worker.
#[derive(Debug)]
pub struct SettingsHandle {
    generation: AtomicU64,
    settings: ArcSwap<WorkerSettings>,
}

impl SettingsHandle {
    /// A handle holding `settings`, generation 0; the handle stamps every later publish.
    pub fn new(settings: WorkerSettings) -> Arc<SettingsHandle> {
        Arc::new(SettingsHandle { generation: AtomicU64::new(0), settings: ArcSwap::from_pointee(settings) })
    }

    /// Increases by one per publish.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings now.
    pub fn load(&self) -> Arc<WorkerSettings> {
        self.settings.load_full()
    }

    /// Makes `settings` current; each worker applies them at its next batch or tick.
    pub fn publish(&self, settings: WorkerSettings) {
        self.settings.store(Arc::new(settings));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

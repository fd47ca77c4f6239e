//! Telling a service manager (systemd, `Type=notify`) how dnlb is doing, through `sd_notify`.
//!
//! ```text
//!  run() ─► locks, Server::start (every socket bound), prober spawned, privileges dropped
//!        ─► ready()                    READY=1, STATUS=serving ...
//!  main loop, every watchdog_interval() while workers live and the prober is not stalled
//!        ─► watchdog()                 WATCHDOG=1   (no ping: systemd kills and restarts dnlb)
//!  reload ─► reloading() ... ready()   RELOADING=1 + MONOTONIC_USEC, then READY=1
//! ```
//!
//! Every function is a no-op that succeeds when `NOTIFY_SOCKET` is unset (dnlb not started by a
//! service manager). A failed send is returned, never fatal by itself: the caller logs it.

use std::time::Duration;

use sd_notify::NotifyState;

/// Why a notification did not reach the service manager. Our environment's fault: the socket in
/// `NOTIFY_SOCKET` is gone or refuses us.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Sending the datagram (or reading the monotonic clock for it) failed.
    #[error("cannot notify the service manager ({what}): {source}")]
    Send {
        /// The notification that was being sent.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Sends `states`, naming the notification `what` in an error.
fn send(what: &'static str, states: &[NotifyState]) -> Result<(), NotifyError> {
    sd_notify::notify(states).map_err(|source| NotifyError::Send { what, source })
}

/// READY=1 with a one-line `status` for `systemctl status`: the service is up (or a reload is
/// done). Sent once every listen socket is bound and the first snapshot is published.
pub fn ready(status: &str) -> Result<(), NotifyError> {
    send("READY=1", &[NotifyState::Ready, NotifyState::Status(status)])
}

/// RELOADING=1 with the current CLOCK_MONOTONIC time, as `Type=notify-reload` requires (and
/// `Type=notify` accepts); follow it with [`ready`] once the new configuration is in force.
pub fn reloading() -> Result<(), NotifyError> {
    let now = NotifyState::monotonic_usec_now()
        .map_err(|source| NotifyError::Send { what: "RELOADING=1 (reading CLOCK_MONOTONIC)", source })?;
    send("RELOADING=1", &[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")])
}

/// WATCHDOG=1: dnlb is alive and serving fresh answers.
pub fn watchdog() -> Result<(), NotifyError> {
    send("WATCHDOG=1", &[NotifyState::Watchdog])
}

/// STOPPING=1: dnlb is shutting down on request.
pub fn stopping() -> Result<(), NotifyError> {
    send("STOPPING=1", &[NotifyState::Stopping])
}

/// How often to send [`watchdog`]: half of `WATCHDOG_USEC` (as sd_watchdog_enabled(3) advises),
/// or `None` when the service manager set no watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(half).filter(|d| !d.is_zero())
}

/// Half of a watchdog timeout: the ping interval that survives one late wake-up.
fn half(timeout: Duration) -> Duration {
    timeout / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_twice_per_timeout() {
        assert_eq!(half(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(half(Duration::from_micros(1)), Duration::from_nanos(500));
    }
}

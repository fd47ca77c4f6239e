//! What a running instance shows an operator, gathered once into one plain value that three
//! readers render: `dnlb status` (text, [`super::report`]), `dnlb status --json` and
//! `/status.json` (this value, serialised), and the status page ([`super::page`]). Pure: the
//! configuration, the prober's reports, the snapshot, the counters and the clocks are passed in.
//!
//! ```text
//!  View { config, reports, snapshot, counters (summed), reloads, now, wall }
//!      ─► gather ─► Status { services ─► servers ─► history, edge, relay, reloads }
//!                      ├─► report::status_text   (dnlb status [--history])
//!                      ├─► serde_json            (dnlb status --json, /status.json)
//!                      └─► page::render          (GET / on the metrics listener)
//! ```
//!
//! Names are the configuration's (`round-robin`, `serve-all`, `up`), RCODEs dig's (`NOERROR`).
//! Times are given twice: as seconds ago (for people) and as Unix time (for tools).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::RecordType;
use serde::Serialize;

use super::report::{answered, ask, View};
use crate::config::ServiceConfig;
use crate::counters::Totals;
use crate::probe::health::State;
use crate::probe::history::Change;
use crate::probe::ServerReport;

/// Everything the status readers show.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// dnlb's version.
    pub version: &'static str,
    /// When this was gathered (Unix seconds).
    pub generated_unix: f64,
    /// Generation of the answers served.
    pub generation: u64,
    /// Seconds since the answers served were built.
    pub snapshot_age_seconds: f64,
    /// Seconds since the prober's loop last went round; `None` when probing is off.
    pub prober_heartbeat_age_seconds: Option<f64>,
    /// Per service, in configuration order.
    pub services: Vec<ServiceStatus>,
    /// The workers' counters since the start: what clients asked and got.
    pub edge: Option<EdgeSummary>,
    /// The relay's counters since the start; `None` without a `[relay]` (or counters).
    pub relay: Option<RelaySummary>,
    /// How the reloads went.
    pub reloads: ReloadCounts,
    /// The fleet (`[cluster]`), if this instance is in one.
    pub cluster: Option<serde_json::Value>,
    /// The fleet's lines of `dnlb status`.
    #[serde(skip)]
    pub cluster_text: Option<String>,
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Its selection policy, as the configuration spells it.
    pub policy: &'static str,
    /// Its all-down policy, as the configuration spells it.
    pub all_down: &'static str,
    /// Whether no server is healthy and undrained now, so its answers follow `all_down`.
    pub all_down_now: bool,
    /// Its A answer now (for a client no `[[sites]]` prefix matches).
    pub answer: Vec<String>,
    /// Per server and transport.
    pub servers: Vec<ServerStatus>,
}

/// One server on one transport.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Address and port.
    pub address: String,
    /// The transport probed.
    pub transport: &'static str,
    /// Its `site`, if it has one.
    pub site: Option<String>,
    /// Its health as answered: `unknown`, `up` or `down` (in a fleet, the combined verdicts).
    pub state: &'static str,
    /// Its health as this instance's own probes see it.
    pub own_state: &'static str,
    /// Whether this instance probes it (in a fleet, another member may).
    pub probed_here: bool,
    /// Whether it is in the answers: `in`, `out`, or `drained`.
    pub serving: &'static str,
    /// Seconds since its health last changed.
    pub since_seconds: Option<f64>,
    /// When its health last changed (Unix seconds).
    pub changed_unix: Option<f64>,
    /// What decided the last change of its health.
    pub why: Option<&'static str>,
    /// Smoothed probe round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last final SIP status code.
    pub last_code: Option<u16>,
    /// Times its health changed since it was first probed (carried over reloads).
    pub flips: u64,
    /// Flaps (up to down or back) in the last hour (5-minute steps).
    pub flaps_1h: u32,
    /// Flaps in the last day (1-hour steps).
    pub flaps_24h: u32,
    /// Why the last probe failed, if it did.
    pub failure: Option<&'static str>,
    /// Drained by an operator or the configuration.
    pub drained: bool,
    /// The RFC 7339 reduction it asks for, in percent.
    pub overload_percent: Option<u8>,
    /// Whether its UDP probes go out as copies (loss seen on its path lately).
    pub loss_copies: bool,
    /// Its last changes, oldest first (`None` when not asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ChangeStatus>>,
}

/// One change of a server's history.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeStatus {
    /// When (Unix seconds).
    pub at_unix: f64,
    /// How long ago, in seconds.
    pub ago_seconds: f64,
    /// Health before.
    pub from: &'static str,
    /// Health after.
    pub to: &'static str,
    /// Drained after the change.
    pub drained: bool,
    /// What decided it.
    pub why: &'static str,
    /// Its smoothed RTT then, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its last code then.
    pub last_code: Option<u16>,
    /// Its RFC 7339 reduction then, in percent (0: none).
    pub overload_percent: u8,
}

/// What clients asked and got, all workers together, since the start.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeSummary {
    /// DNS messages received.
    pub queries: u64,
    /// Replies by RCODE, as dig names them.
    pub responses: BTreeMap<&'static str, u64>,
    /// Messages dropped without a reply (malformed, no buffer, rate limit, ...).
    pub dropped: u64,
    /// Replies sent with TC=1.
    pub truncated: u64,
    /// Rate-limited replies sent truncated.
    pub rrl_slipped: u64,
    /// Rate-limited replies dropped.
    pub rrl_dropped: u64,
    /// TCP connections open now.
    pub tcp_open: u64,
    /// TCP connections accepted.
    pub tcp_accepted: u64,
    /// TCP connections closed to make room for a new one (the table was full).
    pub tcp_evicted: u64,
}

/// The relay, all workers together, since the start.
#[derive(Debug, Clone, Serialize)]
pub struct RelaySummary {
    /// Relayed queries answered from the cache.
    pub cache_hits: u64,
    /// Relayed queries sent upstream or joined to one in flight.
    pub cache_misses: u64,
    /// Queries sent upstream (retries and health checks included).
    pub upstream_queries: u64,
    /// Upstream exchanges that timed out.
    pub upstream_timeouts: u64,
    /// SERVFAILs and ICMP errors from upstreams.
    pub upstream_errors: u64,
    /// Replies refused as forged (wrong source, ID, question or letter case).
    pub forged: u64,
    /// Upstream exchanges in flight now.
    pub pending: u64,
    /// Relayed names answered stale (RFC 8767) while the upstreams failed or were slow.
    pub stale_answers: u64,
    /// Cached answers asked upstream again before they expired (prefetch).
    pub prefetches: u64,
}

/// How the reloads went, read once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReloadCounts {
    /// Reloads that put a configuration in place.
    pub succeeded: u64,
    /// Reloads refused (the running configuration stayed).
    pub failed: u64,
    /// Whether the last one succeeded (also true before any).
    pub last_ok: bool,
    /// When the configuration in force was put in place (Unix seconds).
    pub last_success_unix: f64,
}

impl ReloadCounts {
    /// The counts of `reloads`, loaded now.
    pub fn read(reloads: &super::running::Reloads) -> ReloadCounts {
        use std::sync::atomic::Ordering::Relaxed;
        ReloadCounts {
            succeeded: reloads.succeeded.load(Relaxed),
            failed: reloads.failed.load(Relaxed),
            last_ok: reloads.last_ok.load(Relaxed) != 0,
            last_success_unix: reloads.last_success_unix_ms.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// `at` (on the monotonic clock) in Unix seconds, given that `now` is `wall`.
pub fn unix(at: Instant, now: Instant, wall: SystemTime) -> f64 {
    let wall = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    wall.saturating_sub(now.saturating_duration_since(at)).as_secs_f64()
}

/// Milliseconds of `d`.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether `report` probes `server` of service `s`.
pub fn probes(report: &ServerReport, s: &ServiceConfig, server: &crate::config::SipServer) -> bool {
    *report.service == *s.name
        && report.addr.ip() == server.address
        && report.addr.port() == server.port_for(report.transport)
}

/// Whether `report`'s server is in the answers from health (up and not drained).
fn serving(report: &ServerReport) -> &'static str {
    match (report.drained, answered(report)) {
        (true, _) => "drained",
        (false, State::Up) => "in",
        (false, _) => "out",
    }
}

/// One history entry for readers.
fn change(c: &Change, now: Instant, wall: SystemTime) -> ChangeStatus {
    ChangeStatus {
        at_unix: unix(c.at, now, wall),
        ago_seconds: now.saturating_duration_since(c.at).as_secs_f64(),
        from: c.from.name(),
        to: c.to.name(),
        drained: c.drained,
        why: c.why,
        rtt_ms: c.rtt_us.map(|us| f64::from(us) / 1000.0),
        last_code: c.code,
        overload_percent: c.overload,
    }
}

/// Everything [`Status`] holds, from `v`; each server's history only if `history`.
pub fn gather(v: &View<'_>, history: bool) -> Status {
    let mut services = Vec::with_capacity(v.config.services.len());
    for s in &v.config.services {
        let answer: Vec<String> = ask(&v.snapshot, &s.name, RecordType::A, None)
            .map(|m| m.answers.iter().map(|r| r.data.to_string()).collect())
            .unwrap_or_default();
        let mut servers = Vec::new();
        for r in v.reports.iter().filter(|r| *r.service == *s.name) {
            let site = s.servers.iter().find(|server| probes(r, s, server)).and_then(|server| server.site.clone());
            let flaps = r.history.flaps(v.now);
            servers.push(ServerStatus {
                address: r.addr.to_string(),
                transport: r.transport.name(),
                site,
                state: answered(r).name(),
                own_state: r.state.name(),
                probed_here: r.fleet.is_none_or(|(_, probing)| probing),
                serving: serving(r),
                since_seconds: r.changed.map(|(at, _)| v.now.saturating_duration_since(at).as_secs_f64()),
                changed_unix: r.changed.map(|(at, _)| unix(at, v.now, v.wall)),
                why: r.changed.map(|(_, why)| why),
                rtt_ms: r.rtt.map(ms),
                last_code: r.last_code,
                flips: r.flips,
                flaps_1h: flaps.hour,
                flaps_24h: flaps.day,
                failure: r.failure,
                drained: r.drained,
                overload_percent: r.overload,
                loss_copies: r.lossy,
                history: history.then(|| r.history.changes().map(|c| change(c, v.now, v.wall)).collect()),
            });
        }
        // Probing off: every server counts as healthy, so none is ever all down.
        let all_down_now = !servers.is_empty() && servers.iter().all(|server| server.serving != "in");
        services.push(ServiceStatus {
            name: s.name.clone(),
            policy: s.policy.name(),
            all_down: s.all_down.name(),
            all_down_now,
            answer,
            servers,
        });
    }
    let fleet = v.fleet.map(|h| crate::cluster::report::status(h, v.config));
    let (cluster_text, cluster) = fleet.map_or((None, None), |(t, j)| (Some(t), Some(j)));
    let edge = v.totals.map(|t| edge(&t));
    let relay = v.totals.filter(|_| v.config.relay.is_some()).map(|t| relay(&t));
    Status {
        version: env!("CARGO_PKG_VERSION"),
        generated_unix: unix(v.now, v.now, v.wall),
        generation: v.snapshot.generation(),
        snapshot_age_seconds: v.now.saturating_duration_since(v.snapshot.built_at).as_secs_f64(),
        prober_heartbeat_age_seconds: v.heartbeat.map(|h| h.as_secs_f64()),
        services,
        edge,
        relay,
        reloads: v.reloads,
        cluster,
        cluster_text,
    }
}

/// The edge summary of `t`.
fn edge(t: &Totals) -> EdgeSummary {
    EdgeSummary {
        queries: t.queries,
        responses: t.responses_by_rcode().into_iter().collect(),
        dropped: t.dropped_by_reason().iter().map(|(_, n)| n).sum(),
        truncated: t.truncated,
        rrl_slipped: t.rrl_slipped,
        rrl_dropped: t.rrl_dropped,
        tcp_open: t.tcp_open,
        tcp_accepted: t.tcp_accepted,
        tcp_evicted: t.tcp_closed_evicted,
    }
}

/// The relay summary of `t`.
fn relay(t: &Totals) -> RelaySummary {
    RelaySummary {
        cache_hits: t.relay_cache_hits,
        cache_misses: t.relayed,
        upstream_queries: t.relay_forwarded,
        upstream_timeouts: t.relay_timeouts,
        upstream_errors: t.relay_upstream_errors,
        forged: t.relay_forged + t.relay_case_mismatch,
        pending: t.relay_pending,
        stale_answers: t.relay_stale_answers,
        prefetches: t.relay_prefetches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_become_unix_times() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(unix(now, now, wall), 1_800_000_000.0);
        assert_eq!(unix(now - Duration::from_millis(1500), now, wall), 1_799_999_998.5);
        assert_eq!(unix(now + Duration::from_secs(5), now, wall), 1_800_000_000.0, "never in the future");
        assert_eq!(unix(now - Duration::from_secs(10), now, UNIX_EPOCH), 0.0, "never before the epoch");
    }

    /// The page's "dropped" is the sum of every reason `dnlb_dropped_total` has, the XDP
    /// backend's bad frames included.
    #[test]
    fn dropped_counts_every_reason_the_metrics_have() {
        let t = Totals { dropped: 1, drop_oversize: 2, drop_bad_frame: 4, rrl_dropped: 8, ..Totals::default() };
        assert_eq!(edge(&t).dropped, 15);
    }
}

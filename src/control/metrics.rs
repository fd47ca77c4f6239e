//! The Prometheus endpoint: `GET /metrics` on `[metrics] listen`, served by thread `dnlb-metrics`,
//! with the status page (`GET /`, [`super::page`]) and its data (`GET /status.json`, the schema of
//! `dnlb status --json`) beside it, read from the same sources. Read-only: no request changes
//! anything.
//!
//! ```text
//!  workers ── single-writer atomics (CounterBlocks) ─┐
//!  prober  ── ProbeStatus atomics + report mutex ────┼─► scrape(): a fresh prometheus::Registry
//!  SnapshotHandle::load() (generation, built_at) ────┘     filled from loads ─► text format 0.0.4
//!
//!  listener::Serving (many clients at once, each ≤ MAX_REQUEST bytes, REQUEST_TIME to send its
//!  request, REQUEST_TIME to take the reply; `allow`; max_connections, the least recently
//!  progressing closed for a new one) ─► httparse ─► 200 (GET /metrics, /, /status.json) · 404 ·
//!  405 · 400 · 431
//! ```
//!
//! A scrape costs the workers nothing: it only loads the atomics they already keep and locks the
//! prober's report list, which the prober refreshes once per interval. The exposition is written
//! by the `prometheus` crate's text encoder (format 0.0.4, what `promtool check metrics` reads);
//! requests are parsed by `httparse`. The connections are served by [`super::listener`], so a
//! client that sends garbage, nothing, or a byte now and then delays no other client's scrape and
//! can never make the endpoint grow or stop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpListener;
use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::listener::{Cut, Limits, Response, Service, Serving};
use super::report::View;
use super::running::{Reloads, RunningView};
use super::status::{self, ReloadCounts, Status};
use crate::config::{Config, MetricsConfig, DEFAULT_MAX_CONNECTIONS};
use crate::counters::{CounterBlocks, Totals};
use crate::probe::health::State;
use crate::probe::ProbeView;
use crate::snapshot::SnapshotHandle;

/// The most request bytes read (request line and headers); a longer request gets 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request whole, and again to take its reply.
pub const REQUEST_TIME: Duration = Duration::from_secs(2);
/// The most headers a request may carry.
const MAX_HEADERS: usize = 32;

/// Why the endpoint could not start or a scrape could not be written. Our environment's fault
/// (the address is taken, no thread) or a bug in the metric definitions; never a client's.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("cannot listen for metrics on {addr}: {reason}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the operating system said (in the message, not chained, so it is said once).
        reason: io::Error,
    },
    /// The poll instance or the thread could not be created.
    #[error("cannot start the metrics endpoint: {0}")]
    Io(#[from] io::Error),
    /// A metric could not be defined or encoded (a bad name: our bug).
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// What a scrape reads: every source is shared with its writer, and read with loads only.
#[derive(Clone)]
pub struct Sources {
    /// The workers' counter blocks, one per worker (label `worker`: the block's index).
    pub counters: CounterBlocks,
    /// What runs: the prober, if probing is on (a reload swaps in the new one).
    pub running: RunningView,
    /// The answers the workers serve.
    pub snapshots: SnapshotHandle,
}

/// A running metrics endpoint.
pub struct MetricsServer {
    serving: Serving,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `listen` and starts thread `dnlb-metrics` with the default bounds and no `allow`
    /// list; fails before the thread starts if the address cannot be bound.
    pub fn start(listen: SocketAddr, sources: Sources) -> Result<MetricsServer, MetricsError> {
        let config = MetricsConfig { listen, allow: Vec::new(), max_connections: DEFAULT_MAX_CONNECTIONS };
        MetricsServer::start_with(&config, sources)
    }

    /// Binds `config.listen` and starts thread `dnlb-metrics` serving the clients `config.allow`
    /// lets in, `config.max_connections` at once.
    pub fn start_with(config: &MetricsConfig, sources: Sources) -> Result<MetricsServer, MetricsError> {
        let listen = config.listen;
        let listener = TcpListener::bind(listen).map_err(|reason| MetricsError::Bind { addr: listen, reason })?;
        let addr = listener.local_addr()?;
        let limits = Limits {
            max_connections: config.max_connections,
            max_request: MAX_REQUEST,
            read_time: REQUEST_TIME,
            write_time: REQUEST_TIME,
            allow: config.allow.clone(),
        };
        let serving = Serving::start("dnlb-metrics", listener, Http { sources }, limits)?;
        Ok(MetricsServer { serving, addr })
    }

    /// The address the endpoint listens on (the configured one, with the port the kernel chose
    /// if it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(self) {
        self.serving.shutdown();
    }
}

/// HTTP/1.1, one `GET /metrics` per connection.
struct Http {
    sources: Sources,
}

impl Service for Http {
    fn whole(&self, request: &[u8]) -> bool {
        route(request).is_some()
    }

    fn answer(&self, request: &[u8], cut: Cut) -> Option<Response> {
        let route = match (route(request), cut) {
            (Some(route), _) => route,
            (None, Cut::Full) => Route::TooLarge,
            // The client went away before its request was whole: no one to answer.
            (None, _) => return None,
        };
        Some(Response::Now(reply(route, &self.sources)))
    }
}

/// What a request asked for, as far as the endpoint cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (or `HEAD`, which gets the headers only): the exposition.
    Metrics {
        /// Whether the body is wanted (not for `HEAD`).
        body: bool,
    },
    /// `GET /`: the status page.
    Page {
        /// Whether the body is wanted (not for `HEAD`).
        body: bool,
    },
    /// `GET /status.json`: what `dnlb status --json` prints (`?history=1`: with histories).
    StatusJson {
        /// Whether the body is wanted (not for `HEAD`).
        body: bool,
        /// Whether each server's history is wanted.
        history: bool,
    },
    /// Another path.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP request.
    BadRequest,
    /// Headers longer than [`MAX_REQUEST`].
    TooLarge,
}

/// The whole reply to a request for `route`.
fn reply(route: Route, sources: &Sources) -> Vec<u8> {
    let (status, content_type, body) = match route {
        Route::Metrics { .. } => match scrape(sources) {
            Ok(text) => ("200 OK", TextEncoder::new().format_type().to_string(), text),
            Err(e) => {
                tracing::error!("metrics: {e}");
                ("500 Internal Server Error", "text/plain".to_string(), format!("{e}\n"))
            }
        },
        Route::Page { .. } => {
            ("200 OK", "text/html; charset=utf-8".to_string(), super::page::render(&status_of(sources, true)))
        }
        Route::StatusJson { history, .. } => {
            let json = serde_json::to_string_pretty(&status_of(sources, history)).unwrap_or_default();
            ("200 OK", "application/json".to_string(), json + "\n")
        }
        Route::NotFound => ("404 Not Found", "text/plain".to_string(), "try /, /status.json or /metrics\n".to_string()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain".to_string(), "use GET\n".to_string()),
        Route::BadRequest => ("400 Bad Request", "text/plain".to_string(), "not an HTTP request\n".to_string()),
        Route::TooLarge => {
            ("431 Request Header Fields Too Large", "text/plain".to_string(), "request too large\n".to_string())
        }
    };
    // HEAD gets the length a GET would, and no body.
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !matches!(
        route,
        Route::Metrics { body: false } | Route::Page { body: false } | Route::StatusJson { body: false, .. }
    ) {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Where a request goes, or `None` while its headers are incomplete.
fn route(request: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Route::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            // The path without a query string: Prometheus may add parameters.
            let (path, query) = req.path.unwrap_or("").split_once('?').unwrap_or((req.path.unwrap_or(""), ""));
            let history = query.split('&').any(|p| p == "history=1" || p == "history=true");
            Some(match (req.method.unwrap_or(""), path) {
                ("GET", "/metrics") => Route::Metrics { body: true },
                ("HEAD", "/metrics") => Route::Metrics { body: false },
                ("GET", "/") => Route::Page { body: true },
                ("HEAD", "/") => Route::Page { body: false },
                ("GET", "/status.json") => Route::StatusJson { body: true, history },
                ("HEAD", "/status.json") => Route::StatusJson { body: false, history },
                // Read-only: nothing here changes the instance.
                (_, "/metrics" | "/" | "/status.json") => Route::MethodNotAllowed,
                _ => Route::NotFound,
            })
        }
    }
}

/// What the status page and `/status.json` show, read from the same sources as a scrape: the
/// running configuration and prober, the snapshot, the workers' counters and the reloads.
pub fn status_of(sources: &Sources, history: bool) -> Status {
    let running = sources.running.load();
    let reports = running
        .prober
        .as_ref()
        .map(|p| match p.status().servers.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
        .unwrap_or_default();
    let view = View {
        config: &running.config,
        reports: &reports,
        snapshot: sources.snapshots.current(),
        heartbeat: running.prober.as_ref().map(ProbeView::heartbeat_age),
        now: Instant::now(),
        wall: SystemTime::now(),
        totals: Some(Totals::sum(&sources.counters)),
        reloads: ReloadCounts::read(sources.running.reloads()),
        fleet: running.fleet.as_ref(),
    };
    status::gather(&view, history)
}

/// The exposition of everything dnlb counts, in the Prometheus text format.
pub fn scrape(sources: &Sources) -> Result<String, MetricsError> {
    let mut m = Metrics::default();
    workers(&mut m, &sources.counters)?;
    let running = sources.running.load();
    if let Some(f) = &running.fleet {
        fleet(&mut m, f)?;
    }
    if let Some(p) = &running.prober {
        prober(&mut m, p, &running.config)?;
    }
    m.gauge("dnlb_tcp_connections_max", "The most TCP connections open at once (server.tcp_max_connections).")?
        .with_label_values(&[] as &[&str])
        .set(running.config.server.tcp_max_connections as f64);
    reloads(&mut m, sources.running.reloads())?;
    let snapshot = sources.snapshots.load();
    m.gauge("dnlb_snapshot_generation", "Generation of the answers served (each probe publish adds one).")?
        .with_label_values(&[] as &[&str])
        .set(snapshot.generation() as f64);
    m.gauge("dnlb_snapshot_age_seconds", "Seconds since the answers served were built.")?
        .with_label_values(&[] as &[&str])
        .set(snapshot.built_at.elapsed().as_secs_f64());
    m.gauge_with("dnlb_build_info", "dnlb's version; always 1.", &["version"])?
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    let mut text = String::new();
    TextEncoder::new().encode_utf8(&m.registry.gather(), &mut text)?;
    Ok(text)
}

/// A registry built for one scrape.
#[derive(Default)]
struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers `c` and returns it to be filled.
    fn add<C: Collector + Clone + 'static>(&mut self, c: C) -> Result<C, MetricsError> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter with these label names.
    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A gauge without labels.
    fn gauge(&mut self, name: &str, help: &str) -> Result<GaugeVec, MetricsError> {
        self.gauge_with(name, help, &[])
    }

    /// A gauge with these label names.
    fn gauge_with(&mut self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
        self.add(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// An integer gauge with these label names.
    fn int_gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }
}

/// A value for the `prometheus` crate's integer metrics (which hold `i64` and `u64`).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Per worker: one series per counter, labelled `worker` and, where one metric has several
/// causes, by `rcode`, `reason` or `qtype`.
fn workers(m: &mut Metrics, blocks: &CounterBlocks) -> Result<(), MetricsError> {
    let queries =
        m.counter("dnlb_queries_total", "DNS messages received (UDP datagrams and TCP messages).", &["worker"])?;
    let qtypes = m.counter(
        "dnlb_queries_by_qtype_total",
        "Parsed queries by question type class (address: A and AAAA).",
        &["worker", "qtype"],
    )?;
    let responses = m.counter("dnlb_responses_total", "Replies sent, by RCODE.", &["worker", "rcode"])?;
    let dropped =
        m.counter("dnlb_dropped_total", "Messages dropped without a reply, by reason.", &["worker", "reason"])?;
    let truncated = m.counter("dnlb_truncated_total", "Replies sent with TC=1.", &["worker"])?;
    let io_errors = m.counter("dnlb_io_errors_total", "Receive or send errors from the kernel.", &["worker"])?;
    let rrl_slipped =
        m.counter("dnlb_rrl_slipped_total", "UDP responses over the rate limit sent truncated.", &["worker"])?;
    let relay = m.counter("dnlb_relay_events_total", "Relay events, by kind (see README).", &["worker", "event"])?;
    let relay_misses = m.counter(
        "dnlb_relay_cache_misses_total",
        "Relayed queries not answered from the cache (sent upstream or joined to one in flight).",
        &["worker"],
    )?;
    let relay_hits =
        m.counter("dnlb_relay_cache_hits_total", "Relayed queries answered from the cache.", &["worker"])?;
    let relay_upstream_queries = m.counter(
        "dnlb_relay_upstream_queries_total",
        "Queries sent upstream, retries and health checks included.",
        &["worker"],
    )?;
    let relay_timeouts =
        m.counter("dnlb_relay_upstream_timeouts_total", "Upstream exchanges that timed out.", &["worker"])?;
    let relay_pending = m.int_gauge("dnlb_relay_pending", "Upstream exchanges in flight now.", &["worker"])?;
    let relay_waiting =
        m.int_gauge("dnlb_relay_waiting_clients", "Clients waiting on upstream exchanges now.", &["worker"])?;
    let cache_entries = m.int_gauge("dnlb_relay_cache_entries", "Answers in the relay's cache now.", &["worker"])?;
    let cache_bytes = m.int_gauge("dnlb_relay_cache_bytes", "Bytes the relay's cache holds now.", &["worker"])?;
    let backend = m.int_gauge(
        "dnlb_worker_backend",
        "1 for each worker, labelled with its I/O backend (uring, portable, xdp).",
        &["worker", "backend"],
    )?;
    let tcp_accepted = m.counter("dnlb_tcp_connections_accepted_total", "TCP connections accepted.", &["worker"])?;
    let tcp_open = m.int_gauge("dnlb_tcp_connections_open", "TCP connections open now.", &["worker"])?;
    let tcp_refused = m.counter(
        "dnlb_tcp_connections_refused_total",
        "TCP connections refused: the client held its per-worker limit.",
        &["worker"],
    )?;
    let tcp_accept_errors =
        m.counter("dnlb_tcp_accept_errors_total", "accept() failures (EMFILE and kin).", &["worker"])?;
    let tcp_closed =
        m.counter("dnlb_tcp_connections_closed_total", "TCP connections closed, by reason.", &["worker", "reason"])?;
    for (i, block) in blocks.iter().enumerate() {
        // One block's sum is that block's values: the same loads `Totals` makes on exit.
        let t = Totals::sum(std::slice::from_ref(block));
        let w = i.to_string();
        let w = w.as_str();
        queries.with_label_values(&[w]).inc_by(t.queries);
        if let Some(b) = block.backend.get() {
            backend.with_label_values(&[w, b]).set(1);
        }
        for (qtype, v) in [
            ("address", t.qtype_address),
            ("srv", t.qtype_srv),
            ("naptr", t.qtype_naptr),
            ("any", t.qtype_any),
            ("other", t.qtype_other),
        ] {
            qtypes.with_label_values(&[w, qtype]).inc_by(v);
        }
        for (rcode, v) in t.responses_by_rcode() {
            responses.with_label_values(&[w, rcode]).inc_by(v);
        }
        for (reason, v) in t.dropped_by_reason() {
            dropped.with_label_values(&[w, reason]).inc_by(v);
        }
        truncated.with_label_values(&[w]).inc_by(t.truncated);
        io_errors.with_label_values(&[w]).inc_by(t.io_errors);
        rrl_slipped.with_label_values(&[w]).inc_by(t.rrl_slipped);
        relay_misses.with_label_values(&[w]).inc_by(t.relayed);
        relay_hits.with_label_values(&[w]).inc_by(t.relay_cache_hits);
        relay_upstream_queries.with_label_values(&[w]).inc_by(t.relay_forwarded);
        relay_timeouts.with_label_values(&[w]).inc_by(t.relay_timeouts);
        for (event, v) in [
            ("forged", t.relay_forged),
            ("case_mismatch", t.relay_case_mismatch),
            ("late", t.relay_late),
            ("oversize", t.relay_oversize),
            ("tcp_retry", t.relay_tcp_retries),
            ("random_failure", t.relay_random_failures),
            ("waiters_full", t.relay_waiters_full),
            ("pending_full", t.relay_pending_full),
            ("prefix_full", t.relay_prefix_full),
            ("send_error", t.relay_send_errors),
            ("upstream_error", t.relay_upstream_errors),
            ("no_0x20", t.relay_no_caps),
            ("stale", t.relay_stale_answers),
            ("prefetch", t.relay_prefetches),
        ] {
            relay.with_label_values(&[w, event]).inc_by(v);
        }
        relay_pending.with_label_values(&[w]).set(int(t.relay_pending));
        relay_waiting.with_label_values(&[w]).set(int(t.relay_waiting));
        cache_entries.with_label_values(&[w]).set(int(t.relay_cache_entries));
        cache_bytes.with_label_values(&[w]).set(int(t.relay_cache_bytes));
        tcp_accepted.with_label_values(&[w]).inc_by(t.tcp_accepted);
        tcp_open.with_label_values(&[w]).set(int(t.tcp_open));
        tcp_refused.with_label_values(&[w]).inc_by(t.tcp_refused_per_client);
        tcp_accept_errors.with_label_values(&[w]).inc_by(t.tcp_accept_errors);
        for (reason, v) in [
            ("peer", t.tcp_closed_peer),
            ("idle", t.tcp_closed_idle),
            ("message_timeout", t.tcp_closed_message_timeout),
            ("malformed", t.tcp_closed_malformed),
            ("oversize", t.tcp_closed_oversize),
            ("write_stall", t.tcp_closed_write_stall),
            ("evicted", t.tcp_closed_evicted),
        ] {
            tcp_closed.with_label_values(&[w, reason]).inc_by(v);
        }
    }
    Ok(())
}

/// How the reloads went: counts by result, whether the last one worked and when the
/// configuration in force was put in place.
fn reloads(m: &mut Metrics, r: &Reloads) -> Result<(), MetricsError> {
    let c = ReloadCounts::read(r);
    let total =
        m.counter("dnlb_reloads_total", "Reloads (SIGHUP, dnlb reload, hosts.watch), by result.", &["result"])?;
    total.with_label_values(&["success"]).inc_by(c.succeeded);
    total.with_label_values(&["failure"]).inc_by(c.failed);
    m.gauge("dnlb_config_last_reload_successful", "1 if the last reload succeeded (or none was tried), else 0.")?
        .with_label_values(&[] as &[&str])
        .set(if c.last_ok { 1.0 } else { 0.0 });
    m.gauge(
        "dnlb_config_last_reload_success_timestamp_seconds",
        "When the configuration in force was put in place (start or last successful reload), Unix time.",
    )?
    .with_label_values(&[] as &[&str])
    .set(c.last_success_unix);
    Ok(())
}

/// The fleet (`[cluster]`): members, the link to etcd, duty, writes, restarts, refusals.
fn fleet(m: &mut Metrics, f: &crate::cluster::Handle) -> Result<(), MetricsError> {
    let p = f.published.load();
    let s = &f.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let none: &[&str] = &[];
    let attached = i64::from(p.link == crate::cluster::core::LinkState::Attached);
    for (name, help, v) in [
        (
            "dnlb_cluster_members",
            "Live members of the farm with this instance's configuration, itself included.",
            int(p.view.members.len() as u64),
        ),
        (
            "dnlb_cluster_conflicts",
            "Live members of the farm with another configuration (no shared duty).",
            int(p.view.conflicts.len() as u64),
        ),
        ("dnlb_cluster_attached", "1 while the lease is alive and the prefix watched, else 0 (detached).", attached),
        (
            "dnlb_cluster_duty_servers",
            "Servers this instance probes as one of their current probers.",
            int(get(&s.duty_servers)),
        ),
    ] {
        m.int_gauge(name, help, &[])?.with_label_values(none).set(v);
    }
    for (name, help, v) in [
        ("dnlb_cluster_verdict_writes_total", "Verdict keys written or deleted in etcd.", get(&s.verdict_writes)),
        (
            "dnlb_cluster_watch_restarts_total",
            "Times the watch of the prefix was started again.",
            get(&s.watch_restarts),
        ),
        (
            "dnlb_cluster_refused_total",
            "Keys or values under the prefix refused (too large, malformed, unknown).",
            get(&s.refused),
        ),
        ("dnlb_cluster_transitions_total", "Attach/detach transitions.", get(&s.transitions)),
        ("dnlb_cluster_leases_total", "etcd leases granted to this instance.", get(&s.leases)),
        (
            "dnlb_cluster_dropped_reports_total",
            "Verdict reports dropped: the cluster thread's queue was full.",
            get(&s.dropped_reports),
        ),
    ] {
        m.counter(name, help, &[])?.with_label_values(none).inc_by(v);
    }
    Ok(())
}

/// The prober: its totals, its heartbeat, and per service, server and transport its verdict.
fn prober(m: &mut Metrics, p: &ProbeView, config: &Config) -> Result<(), MetricsError> {
    let s = p.status();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, v) in [
        ("dnlb_probes_sent_total", "SIP probe requests sent, retransmissions included.", get(&s.sent)),
        ("dnlb_probe_replies_total", "Replies that matched a probe.", get(&s.replies)),
        ("dnlb_probe_timeouts_total", "Probes that timed out.", get(&s.timeouts)),
        ("dnlb_probe_refused_total", "Probes ended by an ICMP refusal or a refused TCP connection.", get(&s.refused)),
        ("dnlb_probe_ignored_total", "Messages that matched no probe (forged, late or garbled).", get(&s.ignored)),
        ("dnlb_probe_oversize_total", "Replies refused for their size.", get(&s.oversize)),
        ("dnlb_probe_muted_total", "Probe sockets muted after too many stray messages.", get(&s.muted)),
        ("dnlb_probe_entropy_failures_total", "Probes skipped: the random source failed.", get(&s.entropy_failures)),
        ("dnlb_prober_stalls_total", "Stalls the watchdog saw.", get(&s.stalls)),
        ("dnlb_prober_publishes_total", "Snapshots the prober published.", get(&s.publishes)),
    ] {
        m.counter(name, help, &[])?.with_label_values(&[] as &[&str]).inc_by(v);
    }
    m.gauge("dnlb_prober_heartbeat_age_seconds", "Seconds since the prober's loop last went round.")?
        .with_label_values(&[] as &[&str])
        .set(p.heartbeat_age().as_secs_f64());
    let labels = &["service", "server", "transport"];
    let up = m.int_gauge("dnlb_sip_server_up", "1 if the server answers its probes (served), else 0.", labels)?;
    let rtt = m.gauge_with("dnlb_sip_server_rtt_seconds", "Smoothed probe round-trip time.", labels)?;
    let code = m.int_gauge(
        "dnlb_sip_server_last_code",
        "Last final SIP status code the server replied (0: none yet).",
        labels,
    )?;
    let flips = m.counter("dnlb_sip_server_flips_total", "Times the server went up or down.", labels)?;
    let failing = m.int_gauge(
        "dnlb_sip_server_probe_failing",
        "1, labelled with the reason, while the server's last probe failed (a TLS certificate problem, a timeout, a refusal).",
        &["service", "server", "transport", "reason"],
    )?;
    let drained =
        m.int_gauge("dnlb_sip_server_drained", "1 if an operator drained the server (still probed), else 0.", labels)?;
    let overload = m.int_gauge(
        "dnlb_sip_server_overload_percent",
        "The RFC 7339 oc reduction the server asks for (0: none).",
        labels,
    )?;
    let changed = m.gauge_with(
        "dnlb_sip_server_last_change_timestamp_seconds",
        "When the server's state last changed (up, down), Unix time (absent before its first verdict).",
        labels,
    )?;
    let all_down = m.int_gauge(
        "dnlb_service_all_down",
        "1 while no server of the service is healthy and undrained, so its answers follow its all_down policy.",
        &["service", "all_down"],
    )?;
    // The report list is refreshed once per interval by the prober; clone it out so the lock is
    // held only for the copy.
    let reports = match s.servers.lock() {
        Ok(r) => r.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let (now, wall) = (Instant::now(), SystemTime::now());
    for s in &config.services {
        let mine = reports.iter().filter(|r| *r.service == *s.name);
        let down = mine.clone().count() > 0 && mine.clone().all(|r| r.state != State::Up || r.drained);
        all_down.with_label_values(&[s.name.as_str(), s.all_down.name()]).set(i64::from(down));
    }
    for r in &reports {
        let server = r.addr.to_string();
        let l = [&*r.service, server.as_str(), r.transport.name()];
        up.with_label_values(&l).set(i64::from(r.state == State::Up));
        if let Some(t) = r.rtt {
            rtt.with_label_values(&l).set(t.as_secs_f64());
        }
        code.with_label_values(&l).set(i64::from(r.last_code.unwrap_or(0)));
        flips.with_label_values(&l).inc_by(r.flips);
        if let Some(reason) = r.failure {
            failing.with_label_values(&[l[0], l[1], l[2], reason]).set(1);
        }
        drained.with_label_values(&l).set(i64::from(r.drained));
        overload.with_label_values(&l).set(i64::from(r.overload.unwrap_or(0)));
        if let Some((at, _)) = r.changed {
            changed.with_label_values(&l).set(status::unix(at, now, wall));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control::running::Running;
    use crate::counters::WorkerCounters;
    use crate::snapshot::Snapshot;
    use crossbeam_utils::CachePadded;
    use std::sync::Arc;

    const CONFIG: &str = "[server]\nlisten = [\"127.0.0.1:5353\"]\n";

    #[test]
    fn every_worker_counter_reaches_the_exposition() {
        let blocks: CounterBlocks = (0..1).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        let fields = blocks[0].fields();
        // A distinct value per counter, so each can be found in the text by its value alone.
        for (i, (_, c)) in fields.iter().enumerate() {
            c.store(7_000_001 + 10 * i as u64, Ordering::Relaxed);
        }
        blocks[0].backend.set("xdp").unwrap();
        let sources = Sources {
            counters: blocks.clone(),
            running: RunningView::new(Running::new(Arc::new(Config::parse(CONFIG).unwrap()), None)),
            snapshots: SnapshotHandle::new(Snapshot::empty()),
        };
        let text = scrape(&sources).unwrap();
        for (i, (name, _)) in fields.iter().enumerate() {
            let value = 7_000_001 + 10 * i as u64;
            assert!(text.contains(&format!("}} {value}\n")), "{name} ({value}) is not exported:\n{text}");
        }
        assert!(text.contains("dnlb_worker_backend{backend=\"xdp\",worker=\"0\"} 1\n"), "{text}");
    }

    #[test]
    fn routes_requests_and_waits_for_whole_headers() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Route::Metrics { body: true }));
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Some(Route::Metrics { body: true }));
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Some(Route::Metrics { body: false }));
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Some(Route::MethodNotAllowed));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::Page { body: true }));
        assert_eq!(route(b"GET /status.json HTTP/1.1\r\n\r\n"), Some(Route::StatusJson { body: true, history: false }));
        let with = Route::StatusJson { body: true, history: true };
        assert_eq!(route(b"GET /status.json?x=2&history=1 HTTP/1.1\r\n\r\n"), Some(with));
        assert_eq!(route(b"POST / HTTP/1.1\r\n\r\n"), Some(Route::MethodNotAllowed), "no write endpoints");
        assert_eq!(route(b"PUT /status.json HTTP/1.1\r\n\r\n"), Some(Route::MethodNotAllowed));
        assert_eq!(route(b"GET /index.html HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(route(b"\x00\xff garbage\r\n\r\n"), Some(Route::BadRequest));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Any bytes, and a request line with any tail: a route or "wait for more", never a
        /// panic; the exposition only for a request whose header block has ended.
        #[test]
        fn any_request_bytes_are_routed_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..MAX_REQUEST),
            prefixed in proptest::prelude::any::<bool>(),
        ) {
            let mut request = if prefixed { b"GET /metrics HTTP/1.1\r\n".to_vec() } else { Vec::new() };
            request.extend_from_slice(&bytes);
            request.truncate(MAX_REQUEST);
            if let Some(Route::Metrics { .. }) = route(&request) {
                proptest::prop_assert!(request.windows(4).any(|w| w == b"\r\n\r\n" ) || request.windows(2).any(|w| w == b"\n\n"));
            }
        }
    }

    #[test]
    fn too_many_headers_is_a_bad_request_not_a_panic() {
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(route(&req), Some(Route::BadRequest));
    }
}

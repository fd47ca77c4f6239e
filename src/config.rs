//! Configuration: TOML on disk → a validated [`Config`].
//!
//! Loading happens in two steps. Serde reads the file into the `Raw*` structs, which deny unknown
//! fields and keep the byte span of every value that validation may reject. `validate` then checks
//! every rule and collects *all* problems, each naming the file, line, column, field and the fix,
//! so an operator fixes a file in one pass instead of one error per run.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The largest UDP payload dnlb ever sends: the DNS Flag Day 2020 value, which avoids IP
/// fragmentation on practically every path.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line of the offending value (0 when the whole file is at fault).
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// Dotted path of the field, e.g. `service[0].server[1].address`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Why a configuration could not be loaded. Always the operator's file (or its absence).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file named on the command line.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but breaks one or more rules.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file named on the command line.
        path: String,
        /// Every problem found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(path: &str, problems: &[ConfigProblem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{path}:{}:{}: {}: {}", p.line, p.column, p.field, p.message));
    }
    out
}

/// Which I/O backend the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// io_uring where the kernel allows it, else portable (one log line says why).
    Auto,
    /// io_uring only; starting fails if the kernel refuses it.
    Uring,
    /// recvmmsg/sendmmsg on plain sockets.
    Portable,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" => Ok(IoMode::Uring),
            "portable" => Ok(IoMode::Portable),
            other => Err(format!("unknown io mode `{other}`: use uring, portable or auto")),
        }
    }
}

/// How a service picks the addresses of one A/AAAA answer from its healthy servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Rotate the healthy set by one position per answer.
    RoundRobin,
    /// The paper's scheme: one server is on duty for a whole probe round.
    OnDuty,
    /// Smooth weighted round robin over the configured weights.
    Weighted,
    /// Weights from the measured probe round-trip time: faster servers get more answers.
    Latency,
}

/// What a service answers when none of its servers is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Answer with every configured server: better a possibly dead server than none.
    ServeAll,
    /// Answer with the servers that were healthy last (every server if none ever was).
    LastGood,
    /// Answer SERVFAIL, so clients try their next resolver or name.
    Servfail,
    /// Answer NOERROR with no records.
    Nodata,
}

/// The SIP request a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeMethod {
    /// OPTIONS (RFC 3261 §11): the usual keep-alive; answered by any SIP server.
    Options,
    /// The paper's dummy REGISTER (a binding query with Expires: 0, no Contact).
    Register,
}

/// The state a server starts in, before its first probe verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartState {
    /// Not served until its first verdict (a service whose servers are all unknown answers per
    /// its all-down policy).
    Unknown,
    /// Served until a probe says otherwise.
    Up,
    /// Not served until it has passed `rise` probes.
    Down,
}

/// A SIP transport a server is reachable on; each has its own SRV name (RFC 3263).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// SIP over UDP: `_sip._udp`, NAPTR service `SIP+D2U`.
    Udp,
    /// SIP over TCP: `_sip._tcp`, NAPTR service `SIP+D2T`.
    Tcp,
    /// SIP over TLS: `_sips._tcp`, NAPTR service `SIPS+D2T`.
    Tls,
}

impl Transport {
    /// All transports, in NAPTR order preference (TLS first, as RFC 3263's example does).
    pub const ALL: [Transport; 3] = [Transport::Tls, Transport::Tcp, Transport::Udp];
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServerSection,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    hosts: Option<RawHosts>,
    #[serde(default)]
    relay: Option<RawRelay>,
    #[serde(default)]
    rrl: Option<RawRrl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRrl {
    responses_per_second: Spanned<u64>,
    #[serde(default = "default_slip")]
    slip: Spanned<u64>,
    #[serde(default = "default_rrl_ipv4_prefix_length")]
    ipv4_prefix_length: Spanned<u64>,
    #[serde(default = "default_rrl_ipv6_prefix_length")]
    ipv6_prefix_length: Spanned<u64>,
    #[serde(default)]
    exempt: Vec<Spanned<String>>,
    #[serde(default = "default_rrl_table_size")]
    table_size: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    upstreams: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_relay_timeout_ms")]
    timeout_ms: Spanned<u64>,
    #[serde(default)]
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default = "default_cache_entries")]
    cache_entries: Spanned<u64>,
    /// Gone: every upstream query has a socket of its own. Read only to say so.
    #[serde(default)]
    sockets_per_worker: Option<Spanned<u64>>,
    #[serde(default = "default_max_pending")]
    max_pending: Spanned<u64>,
    #[serde(default = "default_max_waiters")]
    max_waiters: Spanned<u64>,
    #[serde(default = "default_max_pending_per_prefix_percent")]
    max_pending_per_prefix_percent: Spanned<u64>,
    #[serde(default = "default_max_ttl_s")]
    max_ttl_s: Spanned<u64>,
    #[serde(default = "default_cache_bytes")]
    cache_bytes: Spanned<u64>,
    #[serde(default = "default_true")]
    managed_for_all: bool,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    health_check: Option<Spanned<String>>,
    #[serde(default = "default_health_interval_ms")]
    health_check_interval_ms: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: Spanned<String>,
    upstreams: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    file: Spanned<String>,
    #[serde(default = "default_hosts_ttl")]
    ttl: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerSection {
    listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_true")]
    tcp: bool,
    #[serde(default)]
    workers: Option<Spanned<u64>>,
    #[serde(default = "default_io")]
    io: IoMode,
    #[serde(default = "default_true")]
    pin_workers: bool,
    #[serde(default = "default_tcp_idle_timeout_ms")]
    tcp_idle_timeout_ms: Spanned<u64>,
    #[serde(default = "default_tcp_max_connections")]
    tcp_max_connections: Spanned<u64>,
    #[serde(default = "default_tcp_max_connections_per_client")]
    tcp_max_connections_per_client: Spanned<u64>,
    #[serde(default = "default_tcp_query_timeout_ms")]
    tcp_query_timeout_ms: Spanned<u64>,
    #[serde(default = "default_max_udp_payload")]
    max_udp_payload: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default = "default_interval_ms")]
    interval_ms: Spanned<u64>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: Spanned<u64>,
    #[serde(default = "default_retransmit_ms")]
    retransmit_ms: Spanned<u64>,
    #[serde(default = "default_method")]
    method: ProbeMethod,
    #[serde(default = "default_rise_fall")]
    rise: Spanned<u64>,
    #[serde(default = "default_rise_fall")]
    fall: Spanned<u64>,
    #[serde(default = "default_down_codes")]
    down_codes: Spanned<Vec<u64>>,
    #[serde(default = "default_start")]
    start: StartState,
    #[serde(default)]
    core: Option<Spanned<u64>>,
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_max_retry_after_s")]
    max_retry_after_s: Spanned<u64>,
}

impl Default for RawProbe {
    fn default() -> Self {
        RawProbe {
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            retransmit_ms: default_retransmit_ms(),
            method: default_method(),
            rise: default_rise_fall(),
            fall: default_rise_fall(),
            down_codes: default_down_codes(),
            start: default_start(),
            core: None,
            enabled: true,
            max_retry_after_s: default_max_retry_after_s(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    #[serde(default = "default_policy")]
    policy: Policy,
    #[serde(default)]
    answers: Option<Spanned<u64>>,
    #[serde(default)]
    ttl: Option<Spanned<u64>>,
    #[serde(default = "default_all_down")]
    all_down: AllDown,
    #[serde(default)]
    probe_method: Option<ProbeMethod>,
    #[serde(default = "no_servers")]
    server: Spanned<Vec<RawSipServer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSipServer {
    address: Spanned<String>,
    #[serde(default)]
    port: Option<Spanned<u64>>,
    #[serde(default = "default_transports")]
    transports: Spanned<Vec<Transport>>,
    #[serde(default = "default_priority")]
    priority: Spanned<u64>,
    #[serde(default = "default_weight")]
    weight: Spanned<u64>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    probe_method: Option<ProbeMethod>,
}

fn default_true() -> bool {
    true
}
fn default_io() -> IoMode {
    IoMode::Auto
}
fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}
fn default_tcp_idle_timeout_ms() -> Spanned<u64> {
    spanned(10_000)
}
fn default_tcp_max_connections() -> Spanned<u64> {
    spanned(10_000)
}
fn default_tcp_max_connections_per_client() -> Spanned<u64> {
    spanned(64)
}
fn default_tcp_query_timeout_ms() -> Spanned<u64> {
    spanned(2000)
}
fn default_max_udp_payload() -> Spanned<u64> {
    spanned(u64::from(MAX_UDP_PAYLOAD))
}
fn default_interval_ms() -> Spanned<u64> {
    spanned(1_000)
}
fn default_timeout_ms() -> Spanned<u64> {
    spanned(150)
}
fn default_health_interval_ms() -> Spanned<u64> {
    spanned(5000)
}
fn default_relay_timeout_ms() -> Spanned<u64> {
    spanned(2000)
}
fn default_cache_entries() -> Spanned<u64> {
    spanned(10_000)
}
fn default_max_waiters() -> Spanned<u64> {
    spanned(16_384)
}
/// One hour: a forged answer that got in anyway is served for at most that long (unbound's
/// default is a day); names with longer TTLs cost one upstream query per worker per hour.
fn default_max_ttl_s() -> Spanned<u64> {
    spanned(3600)
}
fn default_cache_bytes() -> Spanned<u64> {
    spanned(8 << 20)
}
fn default_max_pending() -> Spanned<u64> {
    spanned(4096)
}
fn default_max_pending_per_prefix_percent() -> Spanned<u64> {
    spanned(25)
}
fn default_slip() -> Spanned<u64> {
    spanned(2)
}
fn default_rrl_ipv4_prefix_length() -> Spanned<u64> {
    spanned(24)
}
fn default_rrl_ipv6_prefix_length() -> Spanned<u64> {
    spanned(56)
}
fn default_rrl_table_size() -> Spanned<u64> {
    spanned(65_536)
}
fn default_hosts_ttl() -> Spanned<u64> {
    spanned(60)
}
fn default_retransmit_ms() -> Spanned<u64> {
    spanned(40)
}
fn default_max_retry_after_s() -> Spanned<u64> {
    spanned(3600)
}
fn default_method() -> ProbeMethod {
    ProbeMethod::Options
}
fn default_rise_fall() -> Spanned<u64> {
    spanned(2)
}
fn default_down_codes() -> Spanned<Vec<u64>> {
    spanned(vec![503])
}
fn default_start() -> StartState {
    StartState::Unknown
}
fn default_all_down() -> AllDown {
    AllDown::ServeAll
}
fn default_policy() -> Policy {
    Policy::RoundRobin
}
fn no_servers() -> Spanned<Vec<RawSipServer>> {
    spanned(Vec::new())
}
fn default_transports() -> Spanned<Vec<Transport>> {
    spanned(vec![Transport::Udp])
}
fn default_priority() -> Spanned<u64> {
    spanned(10)
}
fn default_weight() -> Spanned<u64> {
    spanned(10)
}

// ---------------------------------------------------------------------------------------------
// The validated form the rest of dnlb reads.

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Sockets and workers.
    pub server: ServerConfig,
    /// SIP probing.
    pub probe: ProbeConfig,
    /// The SIP service names dnlb answers itself.
    pub services: Vec<ServiceConfig>,
    /// Local names from the hosts file, answered like the SIP names (A, AAAA, PTR).
    pub hosts: Vec<crate::hosts::HostEntry>,
    /// TTL of the hosts-file answers, in seconds.
    pub hosts_ttl: u32,
    /// Where other names go; `None` answers them REFUSED.
    pub relay: Option<RelayConfig>,
    /// Response rate limiting over UDP; `None` (no `[rrl]` section): off.
    pub rrl: Option<crate::edge::rrl::Settings>,
}

/// The upstream relay for every name dnlb does not manage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Upstream resolvers, tried in turn (a timed-out query is retried once on the next one).
    pub upstreams: Vec<SocketAddr>,
    /// An upstream query without a reply after this long is retried or answered SERVFAIL.
    pub timeout: Duration,
    /// Clients the relay serves; others get REFUSED.
    pub allow: Vec<crate::relay::acl::Prefix>,
    /// Answers cached per worker (0: no cache).
    pub cache_entries: usize,
    /// Bytes the cached answers of one worker may hold, bookkeeping included.
    pub cache_bytes: usize,
    /// The longest any answer is cached, and the largest TTL a client is given.
    pub max_ttl: u32,
    /// Upstream queries in flight per worker; past that, SERVFAIL at once.
    pub max_pending: usize,
    /// Clients waiting on upstream queries per worker, all questions together; past that,
    /// SERVFAIL at once (never a second upstream query for a question in flight).
    pub max_waiters: usize,
    /// Upstream queries one client prefix (a /24, or a /56 in IPv6) may have started and still
    /// in flight per worker, at most; past that, its new questions get SERVFAIL at once, so one
    /// client cannot take the relay from everyone else.
    pub max_pending_per_prefix: usize,
    /// Whether managed SIP names are answered for clients outside `allow` too.
    pub managed_for_all: bool,
    /// Per-domain upstreams (DNRD's `-s server:domain`); the longest matching suffix wins.
    pub routes: Vec<Route>,
    /// A name each worker asks every upstream for, every `health_check_interval`: a reply marks
    /// the upstream healthy, a timeout counts as a failure, without waiting for client traffic.
    pub health_check: Option<String>,
    /// How often the health check goes to each upstream.
    pub health_check_interval: Duration,
}

/// Names under `domain` go to these upstreams instead of the default ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The domain, lower case, without the trailing dot.
    pub domain: String,
    /// Its upstreams.
    pub upstreams: Vec<SocketAddr>,
}

/// Where and how dnlb listens.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// UDP (and TCP, when `tcp`) addresses; every worker binds each with SO_REUSEPORT.
    pub listen: Vec<SocketAddr>,
    /// Whether a TCP listener runs beside each UDP socket.
    pub tcp: bool,
    /// Worker threads per listen address; `None` means one per available core.
    pub workers: Option<usize>,
    /// I/O backend choice.
    pub io: IoMode,
    /// Pin worker `i` to core `i` (mod the number of cores).
    pub pin_workers: bool,
    /// A TCP connection with no message in progress and nothing owed either way is closed after
    /// this long (RFC 7766 §6.2.3); a single byte does not restart the clock, a whole message does.
    pub tcp_idle_timeout: Duration,
    /// A TCP message must arrive whole within this long from its first byte.
    pub tcp_query_timeout: Duration,
    /// TCP connections for the whole server; each worker holds its share, and when full closes
    /// its longest-idle connection to make room.
    pub tcp_max_connections: usize,
    /// TCP connections one client address may hold on one worker.
    pub tcp_max_connections_per_client: usize,
    /// Largest UDP reply payload, whatever the client advertises.
    pub max_udp_payload: u16,
}

/// SIP probing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Whether the prober runs; when off, every server counts as healthy.
    pub enabled: bool,
    /// Time between two probes of one server; also the default answer TTL (the paper's rule).
    pub interval: Duration,
    /// A probe without a final reply after this long is a failure.
    pub timeout: Duration,
    /// First UDP retransmission after this long, doubling after (SIP's Timer A, scaled down).
    pub retransmit: Duration,
    /// The default probe request.
    pub method: ProbeMethod,
    /// Successes in a row to go up.
    pub rise: u32,
    /// Failures in a row to go down.
    pub fall: u32,
    /// Final status codes that count as a failure (503 by default).
    pub down_codes: Vec<u16>,
    /// State before the first verdict.
    pub start: StartState,
    /// Core the prober thread is pinned to, if any.
    pub core: Option<usize>,
    /// The longest a Retry-After keeps a server out of the answers, whatever the server asked.
    pub max_retry_after: Duration,
}

/// One SIP service name and its server farm.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Lower-case name without the trailing dot, e.g. `sip.example.test`.
    pub name: String,
    /// How A/AAAA answers pick servers.
    pub policy: Policy,
    /// Addresses per A/AAAA answer; `None` means all healthy ones.
    pub answers: Option<usize>,
    /// TTL of every answer, in seconds.
    pub ttl: u32,
    /// What to answer when no server is healthy.
    pub all_down: AllDown,
    /// The farm, in the order written.
    pub servers: Vec<SipServer>,
}

/// One SIP server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipServer {
    /// Its IP address.
    pub address: IpAddr,
    /// Its SIP port.
    pub port: u16,
    /// Transports it serves; each puts it in one SRV set.
    pub transports: Vec<Transport>,
    /// SRV priority (lower is preferred).
    pub priority: u16,
    /// SRV weight among equal priorities.
    pub weight: u16,
    /// SRV target host name (lower case, no trailing dot).
    pub host: String,
    /// The probe request for this server.
    pub probe_method: ProbeMethod,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Config::parse_in(&text, base)
            .map_err(|problems| ConfigError::Invalid { path: path.display().to_string(), problems })
    }

    /// Parses and validates TOML text, returning every problem found. A relative `hosts.file` is
    /// read relative to the current directory.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        Config::parse_in(text, Path::new("."))
    }

    /// Like [`Config::parse`], with relative paths resolved against `base` (the config's folder).
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (field, message) = split_serde_message(e.message());
            vec![problem_at(text, span, &field, &message)]
        })?;
        let mut v = Validator { text, base, problems: Vec::new() };
        let config = v.config(raw);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(v.problems)
        }
    }
}

/// Serde says "unknown field `x`, expected ..." or "missing field `x`"; lift the field name out.
fn split_serde_message(message: &str) -> (String, String) {
    let field = message.split('`').nth(1).filter(|_| message.contains("field `")).unwrap_or("file").to_string();
    let mut message = message.trim().to_string();
    if message.starts_with("unknown field") {
        message.push_str(" (remove it or correct its spelling)");
    }
    (field, message)
}

fn problem_at(text: &str, span: Range<usize>, field: &str, message: &str) -> ConfigProblem {
    let (line, column) = if span == (0..0) { (0, 0) } else { line_column(text, span.start) };
    ConfigProblem { line, column, field: field.to_string(), message: message.to_string() }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

struct Validator<'t> {
    text: &'t str,
    base: &'t Path,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn fail(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let p = problem_at(self.text, span, field, &message.into());
        self.problems.push(p);
    }

    /// Checks `lo <= value <= hi`, naming the field and the range on failure.
    fn ranged(&mut self, value: &Spanned<u64>, field: &str, lo: u64, hi: u64, unit: &str) -> u64 {
        let v = *value.get_ref();
        if v < lo || v > hi {
            self.fail(value.span(), field, format!("{v} is out of range: use {lo} to {hi}{unit}"));
            return lo;
        }
        v
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        let probe = self.probe(raw.probe);
        let mut services = Vec::with_capacity(raw.service.len());
        let mut names = HashSet::new();
        for (i, s) in raw.service.into_iter().enumerate() {
            let span = s.name.span();
            let service = self.service(i, s, &probe);
            if !names.insert(service.name.clone()) {
                self.fail(
                    span,
                    &format!("service[{i}].name"),
                    format!("`{}` is configured twice: merge the two services", service.name),
                );
            }
            services.push(service);
        }
        let (hosts, hosts_ttl) = match raw.hosts {
            Some(h) => self.hosts(h),
            None => (Vec::new(), 60),
        };
        let relay = raw.relay.map(|r| self.relay(r));
        let rrl = raw.rrl.map(|r| self.rrl(r));
        Config { server, probe, services, hosts, hosts_ttl, relay, rrl }
    }

    fn relay(&mut self, raw: RawRelay) -> RelayConfig {
        let upstreams = self.upstream_list(&raw.upstreams, "relay.upstreams");
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in raw.route.iter().enumerate() {
            let field = format!("relay.route[{i}].domain");
            let domain = normalize_name(r.domain.get_ref());
            if let Err(why) = check_name(&domain) {
                self.fail(r.domain.span(), &field, format!("`{}` {why}", r.domain.get_ref()));
            } else if routes.iter().any(|o| o.domain == domain) {
                self.fail(r.domain.span(), &field, format!("`{domain}` is routed twice: merge the routes"));
            }
            let list = self.upstream_list(&r.upstreams, &format!("relay.route[{i}].upstreams"));
            routes.push(Route { domain, upstreams: list });
        }
        let mut allow = Vec::new();
        match &raw.allow {
            None => allow.extend(
                crate::relay::acl::DEFAULT_ALLOW.iter().filter_map(|p| crate::relay::acl::Prefix::parse(p).ok()),
            ),
            Some(list) => {
                for (i, p) in list.get_ref().iter().enumerate() {
                    match crate::relay::acl::Prefix::parse(p.get_ref()) {
                        Ok(prefix) => allow.push(prefix),
                        Err(why) => self.fail(
                            p.span(),
                            &format!("relay.allow[{i}]"),
                            format!("{why}: write a prefix such as \"10.0.0.0/8\""),
                        ),
                    }
                }
            }
        }
        let timeout = self.ranged(&raw.timeout_ms, "relay.timeout_ms", 50, 30_000, " ms");
        let health_interval =
            self.ranged(&raw.health_check_interval_ms, "relay.health_check_interval_ms", 100, 3_600_000, " ms");
        let health_check = raw.health_check.as_ref().map(|h| {
            let name = normalize_name(h.get_ref());
            if let Err(why) = check_name(&name) {
                self.fail(h.span(), "relay.health_check", format!("`{}` {why}", h.get_ref()));
            }
            name
        });
        let cache_entries = self.ranged(&raw.cache_entries, "relay.cache_entries", 0, 10_000_000, "") as usize;
        if let Some(old) = &raw.sockets_per_worker {
            self.fail(
                old.span(),
                "relay.sockets_per_worker",
                "is no longer used: every upstream query leaves from a socket of its own on a random port; remove the line",
            );
        }
        let max_pending = self.ranged(&raw.max_pending, "relay.max_pending", 1, 1_000_000, "") as usize;
        let max_waiters = self.ranged(&raw.max_waiters, "relay.max_waiters", 1, 1_000_000, "") as usize;
        let share =
            self.ranged(&raw.max_pending_per_prefix_percent, "relay.max_pending_per_prefix_percent", 1, 100, " %");
        let max_ttl = self.ranged(&raw.max_ttl_s, "relay.max_ttl_s", 1, 604_800, " s") as u32;
        let cache_bytes = self.ranged(&raw.cache_bytes, "relay.cache_bytes", 65_536, 1 << 34, " bytes") as usize;
        RelayConfig {
            upstreams,
            timeout: Duration::from_millis(timeout),
            allow,
            cache_entries,
            cache_bytes,
            max_ttl,
            max_pending,
            max_waiters,
            max_pending_per_prefix: (max_pending * share as usize).div_ceil(100).max(1),
            managed_for_all: raw.managed_for_all,
            routes,
            health_check,
            health_check_interval: Duration::from_millis(health_interval),
        }
    }

    fn rrl(&mut self, raw: RawRrl) -> crate::edge::rrl::Settings {
        let rate = self.ranged(&raw.responses_per_second, "rrl.responses_per_second", 1, 10_000_000, "") as u32;
        let slip = self.ranged(&raw.slip, "rrl.slip", 0, 100, "") as u32;
        let v4 = self.ranged(&raw.ipv4_prefix_length, "rrl.ipv4_prefix_length", 8, 32, "") as u8;
        let v6 = self.ranged(&raw.ipv6_prefix_length, "rrl.ipv6_prefix_length", 16, 120, "") as u8;
        let table = self.ranged(&raw.table_size, "rrl.table_size", 1024, 1 << 24, " slots") as usize;
        if !table.is_power_of_two() {
            self.fail(
                raw.table_size.span(),
                "rrl.table_size",
                format!("{table} is not a power of two: use one such as {}", table.next_power_of_two()),
            );
        }
        let mut exempt = Vec::new();
        for (i, p) in raw.exempt.iter().enumerate() {
            match crate::relay::acl::Prefix::parse(p.get_ref()) {
                Ok(prefix) => exempt.push(prefix),
                Err(why) => self.fail(
                    p.span(),
                    &format!("rrl.exempt[{i}]"),
                    format!("{why}: write a prefix such as \"100.64.0.0/10\""),
                ),
            }
        }
        crate::edge::rrl::Settings {
            responses_per_second: rate,
            slip,
            ipv4_prefix_length: v4,
            ipv6_prefix_length: v6,
            exempt,
            table_size: table,
        }
    }

    /// A non-empty list of upstream addresses with ports.
    fn upstream_list(&mut self, raw: &Spanned<Vec<Spanned<String>>>, field: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if raw.get_ref().is_empty() {
            self.fail(raw.span(), field, "is empty: add a resolver such as \"127.0.0.53:53\"");
        }
        for (i, u) in raw.get_ref().iter().enumerate() {
            let f = format!("{field}[{i}]");
            match u.get_ref().parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() => self.fail(
                    u.span(),
                    &f,
                    format!("{a} cannot be queried: name a unicast address and a port other than 0"),
                ),
                Ok(a) => out.push(a),
                Err(_) => self.fail(
                    u.span(),
                    &f,
                    format!(
                        "`{}` is not an address with a port: write \"192.0.2.53:53\" or \"[2001:db8::53]:53\"",
                        u.get_ref()
                    ),
                ),
            }
        }
        out
    }

    fn hosts(&mut self, raw: RawHosts) -> (Vec<crate::hosts::HostEntry>, u32) {
        let ttl = self.ranged(&raw.ttl, "hosts.ttl", 0, 86_400, " s") as u32;
        let path = self.base.join(raw.file.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.fail(
                    raw.file.span(),
                    "hosts.file",
                    format!("cannot read {}: {e}: fix the path or remove [hosts]", path.display()),
                );
                return (Vec::new(), ttl);
            }
        };
        match crate::hosts::parse(&text) {
            Ok(entries) => (entries, ttl),
            Err(problems) => {
                for p in problems {
                    self.fail(raw.file.span(), "hosts.file", format!("{}:{}: {}", path.display(), p.line, p.message));
                }
                (Vec::new(), ttl)
            }
        }
    }

    fn server(&mut self, raw: RawServerSection) -> ServerConfig {
        let mut listen = Vec::new();
        if raw.listen.get_ref().is_empty() {
            self.fail(raw.listen.span(), "server.listen", "is empty: add an address such as \"127.0.0.1:53\"");
        }
        for (i, a) in raw.listen.get_ref().iter().enumerate() {
            let field = format!("server.listen[{i}]");
            match a.get_ref().parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => self.fail(
                    a.span(),
                    &field,
                    "port 0 is not allowed: every worker binds the same port with SO_REUSEPORT, so name a fixed port such as 53",
                ),
                Ok(addr) if listen.contains(&addr) => {
                    self.fail(a.span(), &field, format!("{addr} is listed twice: remove one"))
                }
                Ok(addr) => listen.push(addr),
                Err(_) => self.fail(
                    a.span(),
                    &field,
                    format!("`{}` is not an address with a port: write \"127.0.0.1:53\" or \"[::1]:53\"", a.get_ref()),
                ),
            }
        }
        let workers = raw.workers.map(|w| self.ranged(&w, "server.workers", 1, 1024, "") as usize);
        let idle = self.ranged(&raw.tcp_idle_timeout_ms, "server.tcp_idle_timeout_ms", 100, 600_000, " ms");
        let max_conn = self.ranged(&raw.tcp_max_connections, "server.tcp_max_connections", 1, 1_000_000, "");
        let per_client =
            self.ranged(&raw.tcp_max_connections_per_client, "server.tcp_max_connections_per_client", 1, 1_000_000, "");
        let query_timeout = self.ranged(&raw.tcp_query_timeout_ms, "server.tcp_query_timeout_ms", 100, 60_000, " ms");
        let payload =
            self.ranged(&raw.max_udp_payload, "server.max_udp_payload", 512, u64::from(MAX_UDP_PAYLOAD), " bytes");
        ServerConfig {
            listen,
            tcp: raw.tcp,
            workers,
            io: raw.io,
            pin_workers: raw.pin_workers,
            tcp_idle_timeout: Duration::from_millis(idle),
            tcp_query_timeout: Duration::from_millis(query_timeout),
            tcp_max_connections: max_conn as usize,
            tcp_max_connections_per_client: per_client as usize,
            max_udp_payload: payload as u16,
        }
    }

    fn probe(&mut self, raw: RawProbe) -> ProbeConfig {
        let interval = self.ranged(&raw.interval_ms, "probe.interval_ms", 100, 3_600_000, " ms");
        let timeout = self.ranged(&raw.timeout_ms, "probe.timeout_ms", 10, 60_000, " ms");
        let retransmit = self.ranged(&raw.retransmit_ms, "probe.retransmit_ms", 5, 60_000, " ms");
        let rise = self.ranged(&raw.rise, "probe.rise", 1, 100, "") as u32;
        let fall = self.ranged(&raw.fall, "probe.fall", 1, 100, "") as u32;
        let mut down_codes = Vec::new();
        for &code in raw.down_codes.get_ref() {
            if !(200..=699).contains(&code) {
                self.fail(
                    raw.down_codes.span(),
                    "probe.down_codes",
                    format!("{code} is not a final SIP status code: use codes from 200 to 699"),
                );
            }
            down_codes.push(code as u16);
        }
        let core = raw.core.map(|c| self.ranged(&c, "probe.core", 0, 4095, "") as usize);
        let max_retry_after = self.ranged(&raw.max_retry_after_s, "probe.max_retry_after_s", 0, 86_400, " s");
        if timeout >= interval {
            self.fail(
                raw.timeout_ms.span(),
                "probe.timeout_ms",
                format!("{timeout} ms is not shorter than probe.interval_ms ({interval} ms): lower the timeout or raise the interval"),
            );
        }
        ProbeConfig {
            enabled: raw.enabled,
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            retransmit: Duration::from_millis(retransmit),
            method: raw.method,
            rise,
            fall,
            down_codes,
            start: raw.start,
            core,
            max_retry_after: Duration::from_secs(max_retry_after),
        }
    }

    fn service(&mut self, i: usize, raw: RawService, probe: &ProbeConfig) -> ServiceConfig {
        let field = |f: &str| format!("service[{i}].{f}");
        let name = normalize_name(raw.name.get_ref());
        if let Err(why) = check_name(&name) {
            self.fail(raw.name.span(), &field("name"), format!("`{}` {why}", raw.name.get_ref()));
        }
        // The paper's rule: an answer lives exactly one probe period, rounded up to a second.
        let default_ttl = probe.interval.as_millis().div_ceil(1000).max(1) as u64;
        let ttl = match &raw.ttl {
            Some(t) => self.ranged(t, &field("ttl"), 0, 86_400, " s"),
            None => default_ttl,
        } as u32;
        let answers = raw.answers.as_ref().map(|a| self.ranged(a, &field("answers"), 1, 64, "") as usize);
        if raw.server.get_ref().is_empty() {
            self.fail(
                raw.name.span(),
                &field("server"),
                format!("service `{name}` has no servers: add at least one [[service.server]] with an address"),
            );
        }
        let mut servers: Vec<SipServer> = Vec::new();
        for (j, s) in raw.server.into_inner().into_iter().enumerate() {
            let sf = |f: &str| format!("service[{i}].server[{j}].{f}");
            let address = match s.address.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() || a.is_multicast() => {
                    self.fail(
                        s.address.span(),
                        &sf("address"),
                        format!("{a} cannot be a SIP server: use a unicast address"),
                    );
                    a
                }
                Ok(a) => a,
                Err(_) => {
                    self.fail(
                        s.address.span(),
                        &sf("address"),
                        format!("`{}` is not an IP address: write one such as \"192.0.2.10\" or \"2001:db8::10\" (no port; use `port`)", s.address.get_ref()),
                    );
                    IpAddr::from([0, 0, 0, 0])
                }
            };
            let transports = s.transports.get_ref().clone();
            if transports.is_empty() {
                self.fail(
                    s.transports.span(),
                    &sf("transports"),
                    "is empty: list at least one of \"udp\", \"tcp\", \"tls\"",
                );
            }
            let default_port = if transports == [Transport::Tls] { 5061 } else { 5060 };
            let port = match &s.port {
                Some(p) => self.ranged(p, &sf("port"), 1, 65_535, ""),
                None => default_port,
            } as u16;
            let priority = self.ranged(&s.priority, &sf("priority"), 0, 65_535, "") as u16;
            let weight = self.ranged(&s.weight, &sf("weight"), 0, 65_535, "") as u16;
            let host = match &s.host {
                Some(h) => {
                    let host = normalize_name(h.get_ref());
                    if let Err(why) = check_name(&host) {
                        self.fail(h.span(), &sf("host"), format!("`{}` {why}", h.get_ref()));
                    }
                    host
                }
                None => default_host(address, &name),
            };
            if servers.iter().any(|o| o.address == address && o.port == port) {
                self.fail(
                    s.address.span(),
                    &sf("address"),
                    format!("{address} port {port} is listed twice in service `{name}`: list a server once with all its transports"),
                );
            }
            let probe_method = s.probe_method.or(raw.probe_method).unwrap_or(probe.method);
            servers.push(SipServer { address, port, transports, priority, weight, host, probe_method });
        }
        ServiceConfig { name, policy: raw.policy, answers, ttl, all_down: raw.all_down, servers }
    }
}

/// Lower-cases and strips one trailing dot.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Checks a presentation-format name against RFC 1035's limits (letters, digits, hyphen and
/// underscore, labels of 1 to 63 octets, at most 253 characters).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty: write a name such as \"sip.example.net\"");
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters: use a shorter name");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (two dots in a row): remove the extra dot");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters: shorten it");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("has a character other than a letter, digit, '-' or '_': correct the name");
        }
    }
    Ok(())
}

/// The SRV target name of a server without an explicit `host`: derived from its address so that a
/// server listed for several transports keeps one name (`ip-192-0-2-10.<service>`).
fn default_host(address: IpAddr, service: &str) -> String {
    match address {
        IpAddr::V4(a) => {
            let [x, y, z, w] = a.octets();
            format!("ip-{x}-{y}-{z}-{w}.{service}")
        }
        IpAddr::V6(a) => {
            let hex: String = a.octets().iter().map(|b| format!("{b:02x}")).collect();
            format!("ip6-{hex}.{service}")
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.line, self.column, self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:5353"]

[[service]]
name = "SIP.Example.Test."

[[service.server]]
address = "127.0.0.11"
"#;

    #[test]
    fn defaults_follow_the_paper() {
        let c = Config::parse(MINIMAL).unwrap();
        let s = &c.services[0];
        assert_eq!(s.name, "sip.example.test");
        assert_eq!(s.ttl, 1, "TTL defaults to the probe interval");
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.servers[0].port, 5060);
        assert_eq!(s.servers[0].transports, vec![Transport::Udp]);
        assert_eq!(s.servers[0].host, "ip-127-0-0-11.sip.example.test");
        assert_eq!(c.server.max_udp_payload, 1232);
    }

    #[test]
    fn ttl_rounds_the_interval_up() {
        let text = MINIMAL.replace("[server]", "[probe]\ninterval_ms = 2500\n\n[server]");
        assert_eq!(Config::parse(&text).unwrap().services[0].ttl, 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"[server]
listen = ["127.0.0.1:0", "nonsense"]

[[service]]
name = "bad..name"
[[service.server]]
address = "300.1.1.1"
[[service.server]]
address = "127.0.0.1"
[[service.server]]
address = "127.0.0.1"
"#;
        let problems = Config::parse(text).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| (p.line, p.field.as_str())).collect();
        assert_eq!(
            fields,
            vec![
                (2, "server.listen[0]"),
                (2, "server.listen[1]"),
                (5, "service[0].name"),
                (7, "service[0].server[0].address"),
                (11, "service[0].server[2].address"),
            ]
        );
        assert!(problems[4].message.contains("listed twice"), "{}", problems[4].message);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = MINIMAL.replace("address = \"127.0.0.11\"", "address = \"127.0.0.11\"\nwieght = 3");
        let p = Config::parse(&text).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "wieght");
        assert_eq!(p[0].line, 10);
        assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
    }

    #[test]
    fn timeout_must_be_below_interval() {
        let text = MINIMAL.replace("[server]", "[probe]\ninterval_ms = 200\ntimeout_ms = 200\n\n[server]");
        let p = Config::parse(&text).unwrap_err();
        assert_eq!(p[0].field, "probe.timeout_ms");
    }
}

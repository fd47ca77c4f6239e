//! The file as written: serde structs that deny unknown fields and keep the span of every value
//! validation may reject, and the defaults as named functions.

use serde::Deserialize;
use toml::Spanned;

use super::types::{AllDown, IoMode, Policy, ProbeMethod, StartState, Transport, MAX_UDP_PAYLOAD};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServerSection,
    #[serde(default)]
    pub(super) probe: RawProbe,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
    #[serde(default)]
    pub(super) hosts: Option<RawHosts>,
    #[serde(default)]
    pub(super) relay: Option<RawRelay>,
    #[serde(default)]
    pub(super) rrl: Option<RawRrl>,
    #[serde(default)]
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) sites: Vec<RawSites>,
    #[serde(default)]
    pub(super) cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) etcd: Spanned<Vec<Spanned<String>>>,
    pub(super) farm: Spanned<String>,
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    #[serde(default = "default_probers_per_server")]
    pub(super) probers_per_server: Spanned<u64>,
    #[serde(default = "default_lease_ttl_s")]
    pub(super) lease_ttl_s: Spanned<u64>,
    #[serde(default)]
    pub(super) site: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) user: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password_file: Option<Spanned<String>>,
    /// Never read: a password in the configuration is refused with a pointer to `password_file`.
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSites {
    pub(super) clients: Spanned<Vec<Spanned<String>>>,
    pub(super) prefer: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Spanned<String>,
    /// Client prefixes served; absent: every client.
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default = "default_metrics_max_connections")]
    pub(super) max_connections: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRrl {
    pub(super) responses_per_second: Spanned<u64>,
    #[serde(default = "default_slip")]
    pub(super) slip: Spanned<u64>,
    #[serde(default = "default_rrl_ipv4_prefix_length")]
    pub(super) ipv4_prefix_length: Spanned<u64>,
    #[serde(default = "default_rrl_ipv6_prefix_length")]
    pub(super) ipv6_prefix_length: Spanned<u64>,
    #[serde(default)]
    pub(super) exempt: Vec<Spanned<String>>,
    #[serde(default = "default_rrl_table_size")]
    pub(super) table_size: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) upstreams: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_relay_timeout_ms")]
    pub(super) timeout_ms: Spanned<u64>,
    #[serde(default)]
    pub(super) allow: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default = "default_cache_entries")]
    pub(super) cache_entries: Spanned<u64>,
    /// Gone: every upstream query has a socket of its own. Read only to say so.
    #[serde(default)]
    pub(super) sockets_per_worker: Option<Spanned<u64>>,
    #[serde(default = "default_max_pending")]
    pub(super) max_pending: Spanned<u64>,
    #[serde(default = "default_max_waiters")]
    pub(super) max_waiters: Spanned<u64>,
    #[serde(default = "default_max_pending_per_prefix_percent")]
    pub(super) max_pending_per_prefix_percent: Spanned<u64>,
    #[serde(default = "default_max_ttl_s")]
    pub(super) max_ttl_s: Spanned<u64>,
    #[serde(default = "default_cache_bytes")]
    pub(super) cache_bytes: Spanned<u64>,
    #[serde(default = "default_true")]
    pub(super) managed_for_all: bool,
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
    #[serde(default)]
    pub(super) health_check: Option<Spanned<String>>,
    #[serde(default = "default_health_interval_ms")]
    pub(super) health_check_interval_ms: Spanned<u64>,
    #[serde(default = "default_true")]
    pub(super) serve_stale: bool,
    #[serde(default = "default_stale_max_s")]
    pub(super) stale_max_s: Spanned<u64>,
    #[serde(default = "default_stale_ttl_s")]
    pub(super) stale_ttl_s: Spanned<u64>,
    #[serde(default = "default_stale_refresh_s")]
    pub(super) stale_refresh_s: Spanned<u64>,
    #[serde(default = "default_stale_answer_ms")]
    pub(super) stale_answer_ms: Spanned<u64>,
    #[serde(default = "default_true")]
    pub(super) prefetch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) domain: Spanned<String>,
    pub(super) upstreams: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHosts {
    pub(super) file: Spanned<String>,
    #[serde(default = "default_hosts_ttl")]
    pub(super) ttl: Spanned<u64>,
    #[serde(default)]
    pub(super) watch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerSection {
    pub(super) listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_true")]
    pub(super) tcp: bool,
    #[serde(default)]
    pub(super) workers: Option<Spanned<u64>>,
    #[serde(default = "default_io")]
    pub(super) io: IoMode,
    #[serde(default = "default_true")]
    pub(super) pin_workers: bool,
    #[serde(default = "default_tcp_idle_timeout_ms")]
    pub(super) tcp_idle_timeout_ms: Spanned<u64>,
    #[serde(default = "default_tcp_max_connections")]
    pub(super) tcp_max_connections: Spanned<u64>,
    #[serde(default = "default_tcp_max_connections_per_client")]
    pub(super) tcp_max_connections_per_client: Spanned<u64>,
    #[serde(default = "default_tcp_query_timeout_ms")]
    pub(super) tcp_query_timeout_ms: Spanned<u64>,
    #[serde(default = "default_max_udp_payload")]
    pub(super) max_udp_payload: Spanned<u64>,
    #[serde(default)]
    pub(super) runtime_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) user: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) xdp: Option<Spanned<RawXdp>>,
}

/// `[server] xdp = { interface = "eth0", required = false }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXdp {
    pub(super) interface: Spanned<String>,
    #[serde(default)]
    pub(super) required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    #[serde(default = "default_interval_ms")]
    pub(super) interval_ms: Spanned<u64>,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: Spanned<u64>,
    #[serde(default = "default_retransmit_ms")]
    pub(super) retransmit_ms: Spanned<u64>,
    #[serde(default = "default_method")]
    pub(super) method: ProbeMethod,
    #[serde(default = "default_rise_fall")]
    pub(super) rise: Spanned<u64>,
    #[serde(default = "default_rise_fall")]
    pub(super) fall: Spanned<u64>,
    #[serde(default = "default_down_codes")]
    pub(super) down_codes: Spanned<Vec<u64>>,
    #[serde(default = "default_start")]
    pub(super) start: StartState,
    #[serde(default)]
    pub(super) core: Option<Spanned<u64>>,
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_max_retry_after_s")]
    pub(super) max_retry_after_s: Spanned<u64>,
    #[serde(default = "default_loss_copies")]
    pub(super) loss_copies: Spanned<u64>,
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
            loss_copies: default_loss_copies(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    #[serde(default = "default_policy")]
    pub(super) policy: Policy,
    #[serde(default)]
    pub(super) answers: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) ttl: Option<Spanned<u64>>,
    #[serde(default = "default_all_down")]
    pub(super) all_down: AllDown,
    #[serde(default)]
    pub(super) probe_method: Option<ProbeMethod>,
    #[serde(default = "default_true_spanned")]
    pub(super) tls_verify: Spanned<bool>,
    #[serde(default)]
    pub(super) tls_ca_file: Option<Spanned<String>>,
    #[serde(default = "no_servers")]
    pub(super) server: Spanned<Vec<RawSipServer>>,
    #[serde(default)]
    pub(super) authority: Option<Spanned<RawAuthority>>,
}

/// `[service.authority]`: the service name is a zone apex dnlb answers for authoritatively.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthority {
    #[serde(default)]
    pub(super) ns: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) hostmaster: Option<Spanned<String>>,
    #[serde(default = "default_serial")]
    pub(super) serial: Spanned<u64>,
    #[serde(default = "default_refresh")]
    pub(super) refresh: Spanned<u64>,
    #[serde(default = "default_retry")]
    pub(super) retry: Spanned<u64>,
    #[serde(default = "default_expire")]
    pub(super) expire: Spanned<u64>,
    #[serde(default = "default_negative_ttl")]
    pub(super) negative_ttl: Spanned<u64>,
    #[serde(default = "default_ns_ttl")]
    pub(super) ns_ttl: Spanned<u64>,
    #[serde(default)]
    pub(super) glue: Vec<RawGlue>,
}

/// `[[service.authority.glue]]`: the addresses of a name server inside the zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlue {
    pub(super) name: Spanned<String>,
    pub(super) addresses: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSipServer {
    pub(super) address: Spanned<String>,
    #[serde(default)]
    pub(super) port: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) tls_port: Option<Spanned<u64>>,
    #[serde(default = "default_transports")]
    pub(super) transports: Spanned<Vec<Transport>>,
    #[serde(default = "default_priority")]
    pub(super) priority: Spanned<u64>,
    #[serde(default = "default_weight")]
    pub(super) weight: Spanned<u64>,
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) probe_method: Option<ProbeMethod>,
    #[serde(default)]
    pub(super) site: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) drain: bool,
}

pub(super) fn default_probers_per_server() -> Spanned<u64> {
    Spanned::new(0..0, 2)
}
pub(super) fn default_lease_ttl_s() -> Spanned<u64> {
    Spanned::new(0..0, 3)
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_true_spanned() -> Spanned<bool> {
    spanned(true)
}
pub(super) fn default_io() -> IoMode {
    IoMode::Auto
}
pub(super) fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}
pub(super) fn default_tcp_idle_timeout_ms() -> Spanned<u64> {
    spanned(10_000)
}
pub(super) fn default_tcp_max_connections() -> Spanned<u64> {
    spanned(10_000)
}
pub(super) fn default_tcp_max_connections_per_client() -> Spanned<u64> {
    spanned(64)
}
pub(super) fn default_tcp_query_timeout_ms() -> Spanned<u64> {
    spanned(2000)
}
pub(super) fn default_max_udp_payload() -> Spanned<u64> {
    spanned(u64::from(MAX_UDP_PAYLOAD))
}
pub(super) fn default_interval_ms() -> Spanned<u64> {
    spanned(1_000)
}
pub(super) fn default_timeout_ms() -> Spanned<u64> {
    spanned(150)
}
pub(super) fn default_health_interval_ms() -> Spanned<u64> {
    spanned(5000)
}
pub(super) fn default_stale_max_s() -> Spanned<u64> {
    spanned(86_400)
}
pub(super) fn default_stale_ttl_s() -> Spanned<u64> {
    spanned(30)
}
pub(super) fn default_stale_refresh_s() -> Spanned<u64> {
    spanned(30)
}
pub(super) fn default_stale_answer_ms() -> Spanned<u64> {
    spanned(1800)
}
pub(super) fn default_relay_timeout_ms() -> Spanned<u64> {
    spanned(2000)
}
pub(super) fn default_cache_entries() -> Spanned<u64> {
    spanned(10_000)
}
pub(super) fn default_max_waiters() -> Spanned<u64> {
    spanned(16_384)
}
/// One hour: a forged answer that got in anyway is served for at most that long (unbound's
/// default is a day); names with longer TTLs cost one upstream query per worker per hour.
pub(super) fn default_max_ttl_s() -> Spanned<u64> {
    spanned(3600)
}
pub(super) fn default_cache_bytes() -> Spanned<u64> {
    spanned(8 << 20)
}
pub(super) fn default_max_pending() -> Spanned<u64> {
    spanned(4096)
}
pub(super) fn default_max_pending_per_prefix_percent() -> Spanned<u64> {
    spanned(25)
}
pub(super) fn default_metrics_max_connections() -> Spanned<u64> {
    spanned(super::DEFAULT_MAX_CONNECTIONS as u64)
}
pub(super) fn default_slip() -> Spanned<u64> {
    spanned(2)
}
pub(super) fn default_rrl_ipv4_prefix_length() -> Spanned<u64> {
    spanned(24)
}
pub(super) fn default_rrl_ipv6_prefix_length() -> Spanned<u64> {
    spanned(56)
}
pub(super) fn default_rrl_table_size() -> Spanned<u64> {
    spanned(65_536)
}
pub(super) fn default_hosts_ttl() -> Spanned<u64> {
    spanned(60)
}
pub(super) fn default_retransmit_ms() -> Spanned<u64> {
    spanned(40)
}
pub(super) fn default_max_retry_after_s() -> Spanned<u64> {
    spanned(3600)
}
pub(super) fn default_loss_copies() -> Spanned<u64> {
    spanned(10)
}
pub(super) fn default_method() -> ProbeMethod {
    ProbeMethod::Options
}
pub(super) fn default_rise_fall() -> Spanned<u64> {
    spanned(2)
}
pub(super) fn default_down_codes() -> Spanned<Vec<u64>> {
    spanned(vec![503])
}
pub(super) fn default_start() -> StartState {
    StartState::Unknown
}
pub(super) fn default_all_down() -> AllDown {
    AllDown::ServeAll
}
/// The zone's serial: constant unless the operator changes it, so the same on every instance and
/// across restarts (nothing transfers the zone, so nothing else reads it).
pub(super) fn default_serial() -> Spanned<u64> {
    spanned(1)
}
/// RIPE-203's SOA timers (refresh a day, retry two hours, expire about six weeks): informational
/// here, as no secondary transfers the zone.
pub(super) fn default_refresh() -> Spanned<u64> {
    spanned(86_400)
}
pub(super) fn default_retry() -> Spanned<u64> {
    spanned(7200)
}
pub(super) fn default_expire() -> Spanned<u64> {
    spanned(3_600_000)
}
/// How long resolvers cache a negative answer that follows from the configuration (RFC 2308).
pub(super) fn default_negative_ttl() -> Spanned<u64> {
    spanned(300)
}
/// The TTL of the zone's NS records and their glue.
pub(super) fn default_ns_ttl() -> Spanned<u64> {
    spanned(3600)
}
pub(super) fn default_policy() -> Policy {
    Policy::RoundRobin
}
pub(super) fn no_servers() -> Spanned<Vec<RawSipServer>> {
    spanned(Vec::new())
}
pub(super) fn default_transports() -> Spanned<Vec<Transport>> {
    spanned(vec![Transport::Udp])
}
pub(super) fn default_priority() -> Spanned<u64> {
    spanned(10)
}
pub(super) fn default_weight() -> Spanned<u64> {
    spanned(10)
}

//! The validated configuration: plain domain values, no spans and no serde. Everything else in
//! dnlb reads these; a reload compares two of them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

pub use crate::dns::MAX_UDP_PAYLOAD;
pub use crate::io::IoMode;
use crate::prefix::Prefix;

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

impl Policy {
    /// Its name as the configuration writes it (`round-robin`), and as reports and logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::OnDuty => "on-duty",
            Policy::Weighted => "weighted",
            Policy::Latency => "latency",
        }
    }
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

impl AllDown {
    /// Its name as the configuration writes it (`serve-all`), and as reports and logs say it.
    pub fn name(self) -> &'static str {
        match self {
            AllDown::ServeAll => "serve-all",
            AllDown::LastGood => "last-good",
            AllDown::Servfail => "servfail",
            AllDown::Nodata => "nodata",
        }
    }
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

    /// Its name as the configuration writes it, and as logs, reports and metric labels say it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The labels its SRV name starts with (RFC 3263): `_sip._udp`, `_sip._tcp`, `_sips._tcp`.
    pub fn srv_label(self) -> &'static str {
        match self {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        }
    }

    /// Its NAPTR service field (RFC 3263): `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`.
    pub fn naptr_service(self) -> &'static str {
        match self {
            Transport::Udp => "SIP+D2U",
            Transport::Tcp => "SIP+D2T",
            Transport::Tls => "SIPS+D2T",
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Sockets and workers.
    pub server: ServerConfig,
    /// SIP probing.
    pub probe: ProbeConfig,
    /// The SIP service names dnlb answers itself.
    pub services: Vec<ServiceConfig>,
    /// Local names from the hosts file, answered like the SIP names (A, AAAA, PTR): parsed and
    /// encoded once when the file is read, shared by every snapshot of this configuration.
    pub hosts: std::sync::Arc<crate::hosts::Hosts>,
    /// TTL of the hosts-file answers, in seconds.
    pub hosts_ttl: u32,
    /// Where `hosts` came from (`None`: no `[hosts]` section).
    pub hosts_source: Option<HostsSource>,
    /// Where other names go; `None` answers them REFUSED.
    pub relay: Option<RelayConfig>,
    /// Response rate limiting over UDP; `None` (no `[rrl]` section): off.
    pub rrl: Option<RrlConfig>,
    /// The Prometheus endpoint; `None` (no `[metrics]` section): off.
    pub metrics: Option<MetricsConfig>,
    /// Which sites' servers which clients prefer (`[[sites]]`); empty: every client gets every
    /// healthy server.
    pub sites: Vec<SiteRule>,
    /// The fleet this instance cooperates with through etcd (`[cluster]`); `None`: alone, as
    /// without the `cluster` feature.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: several instances of one farm share probing and agree on health through etcd
/// (see [`crate::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://host:port` or `https://...`).
    pub etcd: Vec<String>,
    /// The farm: keys under `/dnlb/v1/<farm>/`; instances of one farm cooperate.
    pub farm: String,
    /// This instance's name, unique in the farm (default: the host name).
    pub name: String,
    /// k: how many instances probe each server.
    pub probers_per_server: usize,
    /// The lease TTL asked for (etcd may grant more).
    pub lease_ttl: Duration,
    /// This instance's site, published with its membership.
    pub site: Option<String>,
    /// etcd user and the file its password is read from.
    pub auth: Option<(String, std::path::PathBuf)>,
    /// TLS to etcd: the CA file, and a client certificate and key if etcd asks for one.
    pub tls: Option<ClusterTls>,
}

/// TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// CA certificates (PEM) etcd's certificate must chain to; `None`: the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// One `[[sites]]` entry: clients in these prefixes get the healthy servers of the first site in
/// `prefer` that has any, then the next; the longest matching prefix over all entries wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRule {
    /// The client prefixes (the query's source address).
    pub clients: Vec<Prefix>,
    /// Site names, most preferred first.
    pub prefer: Vec<String>,
}

/// The hosts file (`[hosts]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsSource {
    /// Its path (a relative `hosts.file` resolved against the configuration's folder).
    pub path: std::path::PathBuf,
    /// Whether a change on disk is read at once, without a reload (`hosts.watch`).
    pub watch: bool,
}

/// The connections the metrics endpoint and the control socket each hold at once, unless
/// `metrics.max_connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The Prometheus endpoint (`[metrics]`), served by [`crate::control::metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The HTTP address `GET /metrics` is served on, e.g. `127.0.0.1:9153`.
    pub listen: SocketAddr,
    /// The client prefixes served (`metrics.allow`); empty: every client. Others are closed at
    /// once.
    pub allow: Vec<Prefix>,
    /// Connections held at once (`metrics.max_connections`); past it, the one that made progress
    /// least recently is closed for the new one.
    pub max_connections: usize,
}

/// The upstream relay for every name dnlb does not manage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Upstream resolvers, tried in turn (a timed-out query is retried once on the next one).
    pub upstreams: Vec<SocketAddr>,
    /// An upstream query without a reply after this long is retried or answered SERVFAIL.
    pub timeout: Duration,
    /// Clients the relay serves; others get REFUSED.
    pub allow: Vec<Prefix>,
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
    /// Serving expired answers while the upstreams fail (RFC 8767); `None` (`serve_stale =
    /// false`): an expired answer is never served.
    pub stale: Option<StaleConfig>,
    /// Whether a cached name still asked in the last tenth of its TTL is asked upstream again
    /// before it expires (once per cached answer), so a popular name never misses.
    pub prefetch: bool,
}

/// Serve-stale (RFC 8767): how long, with what TTL, and how soon an expired answer is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleConfig {
    /// How long after its expiry an answer may still be served stale (RFC 8767's maximum stale
    /// timer); never longer, however the upstreams fail.
    pub max: Duration,
    /// The TTL of every record of a stale answer, in seconds.
    pub ttl: u32,
    /// After a refresh of a name failed, its stale answer is given at once, without asking
    /// upstream, for this long (RFC 8767's failure recheck timer).
    pub refresh: Duration,
    /// A client waiting on an upstream for a name with a stale answer gets that answer after
    /// this long (RFC 8767's client-response timer); the upstream query goes on.
    pub answer_after: Duration,
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
    /// Where the control socket and the instance locks live; `None`: see
    /// [`crate::control::runtime::dir`].
    pub runtime_dir: Option<std::path::PathBuf>,
    /// The user to become once every socket is bound (started as root); `None`: stay as started.
    pub user: Option<String>,
    /// AF_XDP on one interface (`xdp = { interface = "eth0" }`); `None`: the kernel's path only.
    pub xdp: Option<XdpConfig>,
}

/// `server.xdp`: the listen addresses on one interface answered from its receive queues through
/// AF_XDP sockets ([`crate::io::xdp`]), beside the kernel's path. Changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface, as `ip link` names it.
    pub interface: String,
    /// Refuse to start when XDP cannot be set up, instead of serving on io_uring alone.
    pub required: bool,
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
    /// Copies of each UDP probe sent, spread over the first half of the timeout, to a server on
    /// whose path loss was seen lately (1: plain retransmissions only). See tuning.md.
    pub loss_copies: u32,
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
    /// How TLS probes of this service's servers check their certificates.
    pub tls_verify: TlsVerify,
    /// The farm, in the order written.
    pub servers: Vec<SipServer>,
    /// `[service.authority]`: the service name is a zone apex (SOA, NS, NXDOMAIN and NODATA with
    /// the SOA, RFC 2308) for resolvers the zone is delegated from; `None`: answers as a resolver
    /// sees them (no SOA, unknown names relayed or REFUSED).
    pub authority: Option<Authority>,
}

/// The zone a service's name is the apex of (`[service.authority]`). dnlb is its only source:
/// there are no zone transfers, so the SOA timers are informational and the serial changes only
/// when the operator changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The zone's name servers (lower case, no trailing dot); the first is the SOA MNAME.
    pub ns: Vec<String>,
    /// The SOA RNAME: the zone's contact mailbox in domain form (`hostmaster.example.net`).
    pub hostmaster: String,
    /// The SOA serial: the configured value, so every instance with this configuration says the
    /// same and a restart never moves it backwards.
    pub serial: u32,
    /// SOA REFRESH, seconds.
    pub refresh: u32,
    /// SOA RETRY, seconds.
    pub retry: u32,
    /// SOA EXPIRE, seconds.
    pub expire: u32,
    /// How long resolvers cache a negative answer that follows from the configuration (a name or
    /// type the zone never has): the SOA MINIMUM and TTL of those answers (RFC 2308 §5).
    pub negative_ttl: u32,
    /// TTL of the NS records and of their glue.
    pub ns_ttl: u32,
    /// Addresses of the name servers whose names lie inside the zone (glue), in `ns` order.
    pub glue: Vec<(String, Vec<IpAddr>)>,
}

/// Whether `name` is `domain` or below it (both lower case, no trailing dot).
pub fn within(name: &str, domain: &str) -> bool {
    name.len() >= domain.len()
        && name.ends_with(domain)
        && (name.len() == domain.len() || name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

impl Config {
    /// The service whose zone holds `name` (lower case, no trailing dot): the one with an
    /// `authority` whose name is `name` or its closest enclosing domain.
    pub fn zone_for(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().filter(|s| s.authority.is_some() && within(name, &s.name)).max_by_key(|s| s.name.len())
    }
}

/// How a TLS probe checks the server's certificate (`tls_verify`, `tls_ca_file` of a service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// Against the operating system's trust store (Debian: `/etc/ssl/certs`), read when the
    /// prober starts: the default.
    System,
    /// Against the CA certificates of one PEM file only.
    CaFile {
        /// The file, as resolved against the config's folder.
        path: std::path::PathBuf,
        /// Its certificates, DER encoded, read when the config was loaded (so a reload that
        /// finds the file changed restarts the prober with the new ones).
        certificates: Vec<Vec<u8>>,
    },
    /// Not at all: the handshake must still succeed, but any certificate is accepted.
    Off,
}

/// One SIP server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipServer {
    /// Its IP address.
    pub address: IpAddr,
    /// Its SIP port for UDP and TCP (`port`, 5060 by default).
    pub port: u16,
    /// Its SIP port for TLS (`tls_port`, 5061 by default, RFC 3261 §19.1.2).
    pub tls_port: u16,
    /// Transports it serves; each puts it in one SRV set.
    pub transports: Vec<Transport>,
    /// SRV priority (lower is preferred).
    pub priority: u16,
    /// SRV weight among equal priorities.
    pub weight: u16,
    /// SRV target host name (lower case, no trailing dot).
    pub host: String,
    /// The name a TLS probe sends as SNI and checks the certificate against: `host` when one is
    /// written, else the service name (the domain a phone asks for, RFC 5922 §4).
    pub tls_name: String,
    /// The probe request for this server.
    pub probe_method: ProbeMethod,
    /// The site (data centre) it stands in, for `[[sites]]` steering; `None`: no site.
    pub site: Option<String>,
    /// Out of the answers from the start, still probed (`drain = true`): maintenance that outlives
    /// a restart, where `dnlb drain` lasts until the next restart.
    pub drain: bool,
}

impl SipServer {
    /// The port the server serves `transport` on: SRV answers name it and probes go to it.
    pub fn port_for(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp | Transport::Tcp => self.port,
            Transport::Tls => self.tls_port,
        }
    }
}

/// The default `allow` list: loopback and the private and shared ranges an ISP edge serves.
pub const DEFAULT_ALLOW: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
];

/// Response rate limiting (`[rrl]`), as [`crate::edge::rrl`] applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second each prefix may receive (also the burst: one second's worth).
    pub responses_per_second: u32,
    /// Every `slip`-th response over the limit goes out truncated; 0: none (all dropped).
    pub slip: u32,
    /// Prefix length IPv4 clients are grouped by.
    pub ipv4_prefix_length: u8,
    /// Prefix length IPv6 clients are grouped by.
    pub ipv6_prefix_length: u8,
    /// Prefixes never limited.
    pub exempt: Vec<Prefix>,
    /// Slots per worker's table (a power of two).
    pub table_size: usize,
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// What reports print is what the file accepts: each name parses back to its value.
    #[test]
    fn names_are_the_configuration_spellings() {
        #[derive(Deserialize)]
        struct Both {
            policy: Policy,
            all_down: AllDown,
        }
        for policy in [Policy::RoundRobin, Policy::OnDuty, Policy::Weighted, Policy::Latency] {
            for all_down in [AllDown::ServeAll, AllDown::LastGood, AllDown::Servfail, AllDown::Nodata] {
                let text = format!("policy = \"{}\"\nall_down = \"{}\"\n", policy.name(), all_down.name());
                let both: Both = toml::from_str(&text).unwrap();
                assert_eq!((both.policy, both.all_down), (policy, all_down));
            }
        }
        assert_eq!(Policy::RoundRobin.name(), "round-robin");
        assert_eq!(AllDown::ServeAll.name(), "serve-all");
    }
}

//! Validation: every rule checked, every problem collected with its line, column, field and fix,
//! so an operator fixes a file in one pass instead of one error per run.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::types::*;
use super::ConfigProblem;
use crate::prefix::Prefix;
use crate::probe::sip::{RequestError, RequestTemplate};

/// Serde says "unknown field `x`, expected ..." or "missing field `x`"; lift the field name out.
pub(super) fn split_serde_message(message: &str) -> (String, String) {
    let field = message.split('`').nth(1).filter(|_| message.contains("field `")).unwrap_or("file").to_string();
    let mut message = message.trim().to_string();
    if message.starts_with("unknown field") {
        message.push_str(" (remove it or correct its spelling)");
    }
    (field, message)
}

pub(super) fn problem_at(text: &str, span: Range<usize>, field: &str, message: &str) -> ConfigProblem {
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

pub(super) struct Validator<'t> {
    pub(super) text: &'t str,
    pub(super) base: &'t Path,
    pub(super) problems: Vec<ConfigProblem>,
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

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        let probe = self.probe(raw.probe);
        let mut services = Vec::with_capacity(raw.service.len());
        let mut names = HashSet::new();
        // Where each service's authority (else its name) and each relay route's domain were
        // written, for the checks across sections.
        let zone_spans: Vec<Range<usize>> =
            raw.service.iter().map(|s| s.authority.as_ref().map_or(s.name.span(), |a| a.span())).collect();
        // Each authority's glue names as the file writes them, with their index and place.
        let glue_spans: Vec<Vec<(String, usize, Range<usize>)>> = raw
            .service
            .iter()
            .map(|s| {
                let glue = s.authority.as_ref().map_or(&[][..], |a| &a.get_ref().glue[..]);
                glue.iter().enumerate().map(|(k, g)| (normalize_name(g.name.get_ref()), k, g.name.span())).collect()
            })
            .collect();
        let route_spans: Vec<Range<usize>> =
            raw.relay.as_ref().map(|r| r.route.iter().map(|x| x.domain.span()).collect()).unwrap_or_default();
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
        let (hosts, hosts_ttl, hosts_source) = match raw.hosts {
            Some(h) => {
                let (entries, ttl, source) = self.hosts(h);
                (entries, ttl, Some(source))
            }
            None => (Default::default(), 60, None),
        };
        let relay = raw.relay.map(|r| self.relay(r));
        let rrl = raw.rrl.map(|r| self.rrl(r));
        let metrics = raw.metrics.and_then(|m| self.metrics(m));
        let sites = self.sites(raw.sites, &services);
        let cluster = raw.cluster.and_then(|c| self.cluster(c));
        self.zones(&services, &zone_spans, &glue_spans, relay.as_ref(), &route_spans);
        Config { server, probe, services, hosts, hosts_ttl, hosts_source, relay, rrl, metrics, sites, cluster }
    }

    /// How zones meet the rest of the file. A service inside another's zone without an authority
    /// of its own is part of that zone (answered with its SOA); with one, it would be a zone
    /// inside a zone dnlb also serves, with no delegation between them: refused. A relay route
    /// inside a zone could never be used (names in a zone are answered, never relayed): refused.
    /// A route above a zone is fine; the zone's names stay out of it. A name server's glue must
    /// not name another service's name, SRV name or server host: the glue would take its answers.
    fn zones(
        &mut self,
        services: &[ServiceConfig],
        spans: &[Range<usize>],
        glue_spans: &[Vec<(String, usize, Range<usize>)>],
        relay: Option<&RelayConfig>,
        route_spans: &[Range<usize>],
    ) {
        for (i, s) in services.iter().enumerate() {
            let Some(a) = &s.authority else { continue };
            for (name, k, span) in glue_spans.get(i).into_iter().flatten() {
                if !a.glue.iter().any(|(g, _)| g == name) {
                    continue;
                }
                let owner = services.iter().enumerate().find(|(j, o)| {
                    *j != i
                        && (o.name == *name
                            || o.servers.iter().any(|v| v.host == *name)
                            || Transport::ALL.iter().any(|t| format!("{}.{}", t.srv_label(), o.name) == *name))
                });
                if let Some((j, o)) = owner {
                    self.fail(
                        span.clone(),
                        &format!("service[{i}].authority.glue[{k}].name"),
                        format!(
                            "`{name}` is already a name of service[{j}] (`{}`: its name, an SRV name or a server's host), whose answers the glue would replace: give the name server a name of its own, such as ns1.{}",
                            o.name, s.name
                        ),
                    );
                }
            }
        }
        for (i, s) in services.iter().enumerate() {
            let Some(outer) = services
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.authority.is_some() && within(&s.name, &o.name))
                .max_by_key(|(_, o)| o.name.len())
            else {
                continue;
            };
            if s.authority.is_some() {
                self.fail(
                    spans[i].clone(),
                    &format!("service[{i}].authority"),
                    format!(
                        "`{}` lies inside the zone `{}` of service[{}], and dnlb does not delegate between its own zones: remove this authority to make the service part of that zone, or serve it under a name outside it",
                        s.name, outer.1.name, outer.0
                    ),
                );
            }
        }
        let Some(relay) = relay else { return };
        for (k, route) in relay.routes.iter().enumerate() {
            if let Some(zone) = services.iter().find(|s| s.authority.is_some() && within(&route.domain, &s.name)) {
                self.fail(
                    route_spans.get(k).cloned().unwrap_or(0..0),
                    &format!("relay.route[{k}].domain"),
                    format!(
                        "`{}` is inside the zone `{}` that dnlb serves itself: its names are answered (NXDOMAIN when unknown), never relayed; remove the route",
                        route.domain, zone.name
                    ),
                );
            }
        }
    }

    /// `[[sites]]`: every preferred site must be some server's, and a prefix is listed once.
    fn sites(&mut self, raw: Vec<RawSites>, services: &[ServiceConfig]) -> Vec<SiteRule> {
        let known: HashSet<&str> = services.iter().flat_map(|s| &s.servers).filter_map(|v| v.site.as_deref()).collect();
        let mut seen: Vec<(Prefix, usize)> = Vec::new();
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let mut clients = Vec::new();
            if r.clients.get_ref().is_empty() {
                self.fail(
                    r.clients.span(),
                    &format!("sites[{i}].clients"),
                    "is empty: list client prefixes such as \"10.1.0.0/16\"",
                );
            }
            for (j, p) in r.clients.get_ref().iter().enumerate() {
                let field = format!("sites[{i}].clients[{j}]");
                match Prefix::parse(p.get_ref()) {
                    Ok(prefix) => {
                        let prefix = prefix.masked();
                        match seen.iter().find(|(q, _)| *q == prefix) {
                            Some((_, k)) => self.fail(
                                p.span(),
                                &field,
                                format!("{} is listed twice (also in sites[{k}]): keep it in one entry", p.get_ref()),
                            ),
                            None => seen.push((prefix, i)),
                        }
                        clients.push(prefix);
                    }
                    Err(why) => self.fail(p.span(), &field, format!("{why}: write a prefix such as \"10.1.0.0/16\"")),
                }
            }
            let mut prefer: Vec<String> = Vec::new();
            if r.prefer.get_ref().is_empty() {
                self.fail(
                    r.prefer.span(),
                    &format!("sites[{i}].prefer"),
                    "is empty: list site names, most preferred first",
                );
            }
            for (j, site) in r.prefer.get_ref().iter().enumerate() {
                let field = format!("sites[{i}].prefer[{j}]");
                let name = site.get_ref().clone();
                if !known.contains(name.as_str()) {
                    let mut names: Vec<&str> = known.iter().copied().collect();
                    names.sort_unstable();
                    let hint = if names.is_empty() {
                        "no server has a `site`: set `site` on the servers of each [[service.server]]".to_string()
                    } else {
                        format!("the sites are {}: correct the name or set `site` on its servers", names.join(", "))
                    };
                    self.fail(site.span(), &field, format!("`{name}` is not any server's site; {hint}"));
                } else if prefer.contains(&name) {
                    self.fail(site.span(), &field, format!("`{name}` is listed twice: list each site once"));
                }
                prefer.push(name);
            }
            rules.push(SiteRule { clients, prefer });
        }
        rules
    }

    /// `[cluster]`: endpoints, names, k, the lease TTL, credentials only from files.
    fn cluster(&mut self, raw: RawCluster) -> Option<ClusterConfig> {
        if let Some(p) = &raw.password {
            self.fail(p.span(), "cluster.password", "a password is never written in the configuration: put it in a file readable by dnlb only and name it in password_file");
        }
        if !cfg!(feature = "cluster") {
            self.fail(
                raw.farm.span(),
                "cluster",
                "this dnlb was built without the `cluster` feature: build it with `cargo build --release --features cluster` (needs protoc), or remove [cluster]",
            );
            return None;
        }
        let mut etcd = Vec::new();
        if raw.etcd.get_ref().is_empty() {
            self.fail(
                raw.etcd.span(),
                "cluster.etcd",
                "is empty: list etcd endpoints such as \"http://127.0.0.1:2379\"",
            );
        }
        let mut https = false;
        for (i, e) in raw.etcd.get_ref().iter().enumerate() {
            let text = e.get_ref().trim().to_string();
            let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
            https |= text.starts_with("https://");
            match rest {
                Some(hp)
                    if !hp.is_empty()
                        && !hp.contains('/')
                        && hp
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)) =>
                {
                    etcd.push(text)
                }
                _ => self.fail(
                    e.span(),
                    &format!("cluster.etcd[{i}]"),
                    format!("`{text}` is not an etcd endpoint: write \"http://HOST:PORT\" or \"https://HOST:PORT\""),
                ),
            }
        }
        let schemes = etcd.iter().filter(|e| e.starts_with("https://")).count();
        if schemes != 0 && schemes != etcd.len() {
            self.fail(raw.etcd.span(), "cluster.etcd", "mixes http:// and https://: use one scheme for every endpoint");
        }
        let farm = raw.farm.get_ref().clone();
        if !crate::cluster::fleet::valid_name(&farm) {
            self.fail(
                raw.farm.span(),
                "cluster.farm",
                format!("`{farm}` is not a farm name: use 1 to 63 letters, digits, `.`, `_` or `-`"),
            );
        }
        let name = match &raw.name {
            Some(n) => {
                if !crate::cluster::fleet::valid_name(n.get_ref()) {
                    self.fail(
                        n.span(),
                        "cluster.name",
                        format!(
                            "`{}` is not an instance name: use 1 to 63 letters, digits, `.`, `_` or `-`",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
                if !crate::cluster::fleet::valid_name(&host) {
                    self.fail(raw.farm.span(), "cluster.name", format!("is not set and the host name `{host}` cannot be one: set name = \"edge-1\" (1 to 63 letters, digits, `.`, `_` or `-`)"));
                }
                host
            }
        };
        let k = self.ranged(&raw.probers_per_server, "cluster.probers_per_server", 1, 16, "") as usize;
        let ttl =
            self.ranged(&raw.lease_ttl_s, "cluster.lease_ttl_s", 1, 60, " seconds (etcd leases are whole seconds)");
        let site = raw.site.as_ref().map(|s| {
            if !crate::cluster::fleet::valid_name(s.get_ref()) {
                self.fail(
                    s.span(),
                    "cluster.site",
                    format!("`{}` is not a site name: use 1 to 63 letters, digits, `.`, `_` or `-`", s.get_ref()),
                );
            }
            s.get_ref().clone()
        });
        let path = |s: &Spanned<String>| self.base.join(s.get_ref());
        let auth = match (&raw.user, &raw.password_file) {
            (Some(u), Some(f)) => Some((u.get_ref().clone(), path(f))),
            (Some(u), None) => {
                self.fail(
                    u.span(),
                    "cluster.user",
                    "needs password_file = \"/etc/dnlb/etcd.pass\" (a file holding the password)",
                );
                None
            }
            (None, Some(f)) => {
                self.fail(
                    f.span(),
                    "cluster.password_file",
                    "needs user = \"...\" (the etcd user the password is for)",
                );
                None
            }
            (None, None) => None,
        };
        let identity = match (&raw.cert_file, &raw.key_file) {
            (Some(c), Some(k)) => Some((path(c), path(k))),
            (Some(c), None) => {
                self.fail(c.span(), "cluster.cert_file", "needs key_file (the client certificate's private key)");
                None
            }
            (None, Some(k)) => {
                self.fail(k.span(), "cluster.key_file", "needs cert_file (the client certificate of this key)");
                None
            }
            (None, None) => None,
        };
        let ca_file = raw.ca_file.as_ref().map(path);
        let tls = if https {
            Some(ClusterTls { ca_file, identity })
        } else {
            if let Some(s) = raw.ca_file.as_ref().or(raw.cert_file.as_ref()) {
                self.fail(
                    s.span(),
                    "cluster.etcd",
                    "TLS files are set but the endpoints are http://: write https:// endpoints",
                );
            }
            None
        };
        Some(ClusterConfig {
            etcd,
            farm,
            name,
            probers_per_server: k,
            lease_ttl: Duration::from_secs(ttl),
            site,
            auth,
            tls,
        })
    }

    fn metrics(&mut self, raw: RawMetrics) -> Option<MetricsConfig> {
        let allow = self.prefixes(&raw.allow, "metrics.allow", "127.0.0.0/8");
        let max_connections = self.ranged(&raw.max_connections, "metrics.max_connections", 1, 65_536, "") as usize;
        match raw.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) if listen.ip().is_multicast() => {
                self.fail(
                    raw.listen.span(),
                    "metrics.listen",
                    format!("{listen} is multicast: name a local address such as \"127.0.0.1:9153\""),
                );
                None
            }
            Ok(listen) => Some(MetricsConfig { listen, allow, max_connections }),
            Err(_) => {
                self.fail(
                    raw.listen.span(),
                    "metrics.listen",
                    format!("`{}` is not an address with a port: write \"127.0.0.1:9153\"", raw.listen.get_ref()),
                );
                None
            }
        }
    }

    /// A list of address prefixes (`FIELD[i]` names a bad one, with `example` as the fix).
    fn prefixes(&mut self, list: &[Spanned<String>], field: &str, example: &str) -> Vec<Prefix> {
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            match Prefix::parse(p.get_ref()) {
                Ok(prefix) => out.push(prefix),
                Err(why) => self.fail(
                    p.span(),
                    &format!("{field}[{i}]"),
                    format!("{why}: write a prefix such as \"{example}\""),
                ),
            }
        }
        out
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
        let allow = match &raw.allow {
            None => DEFAULT_ALLOW.iter().filter_map(|p| Prefix::parse(p).ok()).collect(),
            Some(list) => self.prefixes(list.get_ref(), "relay.allow", "10.0.0.0/8"),
        };
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
        let stale = StaleConfig {
            max: Duration::from_secs(self.ranged(&raw.stale_max_s, "relay.stale_max_s", 1, 604_800, " s")),
            ttl: self.ranged(&raw.stale_ttl_s, "relay.stale_ttl_s", 1, 3600, " s") as u32,
            refresh: Duration::from_secs(self.ranged(&raw.stale_refresh_s, "relay.stale_refresh_s", 1, 3600, " s")),
            answer_after: Duration::from_millis(self.ranged(
                &raw.stale_answer_ms,
                "relay.stale_answer_ms",
                0,
                30_000,
                " ms",
            )),
        };
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
            stale: raw.serve_stale.then_some(stale),
            prefetch: raw.prefetch,
        }
    }

    fn rrl(&mut self, raw: RawRrl) -> RrlConfig {
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
        let exempt = self.prefixes(&raw.exempt, "rrl.exempt", "100.64.0.0/10");
        RrlConfig {
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

    fn hosts(&mut self, raw: RawHosts) -> (std::sync::Arc<crate::hosts::Hosts>, u32, HostsSource) {
        let ttl = self.ranged(&raw.ttl, "hosts.ttl", 0, 86_400, " s") as u32;
        let path = self.base.join(raw.file.get_ref());
        // One problem however many lines are bad: the report names the first few and counts the rest.
        let hosts = crate::hosts::Hosts::load(&path, ttl).unwrap_or_else(|e| {
            self.fail(raw.file.span(), "hosts.file", e.to_string());
            Default::default()
        });
        (std::sync::Arc::new(hosts), ttl, HostsSource { path, watch: raw.watch })
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
        // Only the name's shape here: whether the user exists is asked at start, on the machine
        // that runs dnlb (control::privilege), not on the one that checks the file.
        let user = raw.user.as_ref().and_then(|u| {
            let name = u.get_ref();
            let bad = name.is_empty()
                || name.starts_with('-')
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
            if bad {
                self.fail(
                    u.span(),
                    "server.user",
                    format!("`{name}` is not a user name: write a name such as \"dnlb\" (letters, digits, _ - . $), or remove the line"),
                );
                return None;
            }
            Some(name.clone())
        });
        let xdp = raw.xdp.as_ref().and_then(|x| {
            let name = x.get_ref().interface.get_ref();
            // IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and whitespace in names.
            let bad = name.is_empty()
                || name.len() > 15
                || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
            if bad {
                self.fail(
                    x.get_ref().interface.span(),
                    "server.xdp.interface",
                    format!("`{name}` is not an interface name: write one `ip link` lists, such as \"eth0\" (at most 15 characters, no '/', ':' or spaces)"),
                );
                return None;
            }
            Some(XdpConfig { interface: name.clone(), required: x.get_ref().required })
        });
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
            runtime_dir: raw.runtime_dir.as_ref().map(|d| self.base.join(d.get_ref())),
            user,
            xdp,
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
        let loss_copies = self.ranged(&raw.loss_copies, "probe.loss_copies", 1, 32, "") as u32;
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
            loss_copies,
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
        // A set, not a scan of `servers`: a farm of ten thousand validates in milliseconds.
        let mut listed: HashSet<(IpAddr, u16)> = HashSet::new();
        for (j, s) in raw.server.into_inner().into_iter().enumerate() {
            let sf = |f: &str| format!("service[{i}].server[{j}].{f}");
            let parsed = match server_address(s.address.get_ref()) {
                Ok(a) => Some(a),
                Err(message) => {
                    self.fail(s.address.span(), &sf("address"), message);
                    None
                }
            };
            let address = parsed.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let transports = s.transports.get_ref().clone();
            if transports.is_empty() {
                self.fail(
                    s.transports.span(),
                    &sf("transports"),
                    "is empty: list at least one of \"udp\", \"tcp\", \"tls\"",
                );
            }
            let (port, tls_port) = self.ports(&s, &transports, &sf);
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
            let tls_name = if s.host.is_some() { host.clone() } else { name.clone() };
            if transports.contains(&Transport::Tls)
                && rustls::pki_types::ServerName::try_from(tls_name.as_str()).is_err()
            {
                let span = s.host.as_ref().map_or(raw.name.span(), Spanned::span);
                self.fail(
                    span,
                    &sf("host"),
                    format!("`{tls_name}` cannot be checked against a TLS certificate: write the name the server's certificate carries as `host`"),
                );
            }
            // Each endpoint once per address (a set, not a scan of `servers`: a farm of ten
            // thousand validates in milliseconds).
            let clash = endpoints(port, tls_port, &transports).into_iter().find(|&p| !listed.insert((address, p)));
            if let Some(clash) = clash {
                self.fail(
                    s.address.span(),
                    &sf("address"),
                    format!("{address} port {clash} is listed twice in service `{name}`: list a server once with all its transports"),
                );
            }
            let probe_method = s.probe_method.or(raw.probe_method).unwrap_or(probe.method);
            // What the prober will send, built by the prober's own builder: a server it cannot
            // address (link-local, IPv4-mapped, not unicast) is refused here, with why, so no
            // configuration loads, or reloads, whose probes could not go out.
            let unbuildable = parsed.and_then(|a| {
                transports.iter().find_map(|&t| {
                    let target = SocketAddr::new(a, if t == Transport::Tls { tls_port } else { port });
                    RequestTemplate::new(probe_method, target, t).err()
                })
            });
            if let Some(e) = unbuildable {
                let f = if e == RequestError::PortZero { sf("port") } else { sf("address") };
                self.fail(s.address.span(), &f, e.to_string());
            }
            let site = s.site.as_ref().map(|v| v.get_ref().trim().to_string());
            if let (Some(v), Some("")) = (&s.site, site.as_deref()) {
                self.fail(v.span(), &sf("site"), "is empty: name the site, such as \"east\", or leave `site` out");
            }
            servers.push(SipServer {
                address,
                port,
                tls_port,
                transports,
                priority,
                weight,
                host,
                tls_name,
                probe_method,
                site,
                drain: s.drain,
            });
        }
        // The SRV names and the servers' default hosts go in front of the service name: each
        // must fit a DNS name too, or the answers could not be encoded when dnlb starts.
        if check_name(&name).is_ok() {
            let srv = Transport::ALL
                .iter()
                .filter(|t| servers.iter().any(|s| s.transports.contains(t)))
                .map(|t| format!("{}.{name}", t.srv_label()));
            let hosts = servers.iter().filter(|s| s.host.ends_with(name.as_str())).map(|s| s.host.clone());
            if let Some(long) = srv.chain(hosts).filter(|n| n.len() > 253).max_by_key(String::len) {
                self.fail(
                    raw.name.span(),
                    &field("name"),
                    format!("`{name}` is too long for the names made from it: `{long}` has {} characters, more than 253: use a shorter service name (or give the servers a `host`)", long.len()),
                );
            }
        }
        let tls_verify = self.tls_verify(raw.tls_verify, raw.tls_ca_file, &field);
        let authority = raw.authority.map(|a| self.authority(i, &name, a, &servers));
        ServiceConfig { name, policy: raw.policy, answers, ttl, all_down: raw.all_down, tls_verify, servers, authority }
    }

    /// `[service.authority]` of service `i`, named `zone`: at least one NS; an NS name inside the
    /// zone needs its addresses in `glue` (the zone is the only place a resolver can learn them);
    /// glue only for such names.
    fn authority(&mut self, i: usize, zone: &str, raw: Spanned<RawAuthority>, servers: &[SipServer]) -> Authority {
        let field = |f: &str| format!("service[{i}].authority.{f}");
        let span = raw.span();
        let raw = raw.into_inner();
        let mut ns: Vec<String> = Vec::new();
        match &raw.ns {
            Some(list) if !list.get_ref().is_empty() => {
                if list.get_ref().len() > MAX_NS {
                    self.fail(list.span(), &field("ns"), format!("{} name servers is more than {MAX_NS}: a referral listing them all would not fit a small UDP reply; list at most {MAX_NS}", list.get_ref().len()));
                }
                for (j, n) in list.get_ref().iter().enumerate() {
                    let name = normalize_name(n.get_ref());
                    if let Err(why) = check_name(&name) {
                        self.fail(n.span(), &field(&format!("ns[{j}]")), format!("`{}` {why}", n.get_ref()));
                    } else if ns.contains(&name) {
                        self.fail(n.span(), &field(&format!("ns[{j}]")), format!("`{name}` is listed twice: list each name server once"));
                    }
                    ns.push(name);
                }
            }
            other => self.fail(
                other.as_ref().map_or(span.clone(), |l| l.span()),
                &field("ns"),
                format!("the zone `{zone}` has no name servers: list the names the parent zone delegates it to, such as ns = [\"ns1.{zone}\"] (with its address in glue) or ns = [\"dnlb1.example.net\"]"),
            ),
        }
        let hostmaster = match &raw.hostmaster {
            None => {
                let name = format!("hostmaster.{zone}");
                if name.len() > 253 && check_name(zone).is_ok() {
                    self.fail(span.clone(), &field("hostmaster"), format!("the default `hostmaster.{zone}` is too long ({} characters, more than 253): set hostmaster to a shorter mailbox, such as hostmaster@example.net", name.len()));
                }
                name
            }
            Some(h) => {
                let text = h.get_ref().trim();
                // `user@example.net` is the mailbox user.example.net in an SOA.
                let (domain_form, dotted_user) = match text.split_once('@') {
                    Some((user, domain)) => (format!("{user}.{domain}"), user.contains('.')),
                    None => (text.to_string(), false),
                };
                let name = normalize_name(&domain_form);
                if dotted_user {
                    self.fail(h.span(), &field("hostmaster"), format!("`{text}` has a dot before the @, which an SOA cannot say without escapes: use a mailbox such as hostmaster@{zone}"));
                } else if let Err(why) = check_name(&name) {
                    self.fail(h.span(), &field("hostmaster"), format!("`{text}` {why}"));
                }
                name
            }
        };
        let serial = self.ranged(&raw.serial, &field("serial"), 0, u64::from(u32::MAX), "") as u32;
        // RFC 2181 §8: time values are at most 2^31 - 1.
        let max = u64::from(i32::MAX as u32);
        let refresh = self.ranged(&raw.refresh, &field("refresh"), 1, max, " s") as u32;
        let retry = self.ranged(&raw.retry, &field("retry"), 1, max, " s") as u32;
        let expire = self.ranged(&raw.expire, &field("expire"), 1, max, " s") as u32;
        let negative_ttl = self.ranged(&raw.negative_ttl, &field("negative_ttl"), 0, 86_400, " s") as u32;
        let ns_ttl = self.ranged(&raw.ns_ttl, &field("ns_ttl"), 0, 604_800, " s") as u32;
        // The zone's own names an NS name inside it must not take over.
        let own: HashSet<String> = std::iter::once(zone.to_string())
            .chain(Transport::ALL.iter().map(|t| format!("{}.{zone}", t.srv_label())))
            .chain(servers.iter().map(|s| s.host.clone()))
            .collect();
        let mut glue: Vec<(String, Vec<IpAddr>)> = Vec::new();
        for (k, g) in raw.glue.iter().enumerate() {
            let name = normalize_name(g.name.get_ref());
            let (nf, af) = (field(&format!("glue[{k}].name")), field(&format!("glue[{k}].addresses")));
            if !ns.contains(&name) {
                self.fail(g.name.span(), &nf, format!("`{name}` is not in ns: glue is only for the zone's own name servers; add it to ns or remove it"));
                continue;
            }
            if !within(&name, zone) {
                self.fail(g.name.span(), &nf, format!("`{name}` is outside the zone `{zone}`: resolvers find its address in its own zone, so it needs no glue here; remove it"));
                continue;
            }
            if own.contains(&name) {
                self.fail(g.name.span(), &nf, format!("`{name}` is already a name of the service (its apex, an SRV name or a server's host): give the name server a name of its own, such as ns1.{zone}"));
                continue;
            }
            if glue.iter().any(|(other, _)| *other == name) {
                self.fail(g.name.span(), &nf, format!("`{name}` has glue twice: list all its addresses in one entry"));
                continue;
            }
            let addrs = &g.addresses;
            let mut list: Vec<IpAddr> = Vec::new();
            if addrs.get_ref().is_empty() {
                self.fail(addrs.span(), &af, "is empty: list the name server's addresses, such as [\"192.0.2.53\"]");
            } else if addrs.get_ref().len() > MAX_NS {
                self.fail(addrs.span(), &af, format!("lists more than {MAX_NS} addresses: list at most {MAX_NS}"));
            }
            for (j, a) in addrs.get_ref().iter().enumerate() {
                match a.get_ref().parse::<IpAddr>() {
                    Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => {
                        if !list.contains(&ip) {
                            list.push(ip);
                        }
                    }
                    _ => self.fail(
                        a.span(),
                        &format!("{af}[{j}]"),
                        format!("`{}` is not a unicast IP address: write one such as \"192.0.2.53\"", a.get_ref()),
                    ),
                }
            }
            glue.push((name, list));
        }
        for n in ns.iter().filter(|n| within(n, zone) && !glue.iter().any(|(g, _)| g == *n)) {
            let known = raw.glue.iter().any(|g| normalize_name(g.name.get_ref()) == *n);
            if !known {
                self.fail(
                    raw.ns.as_ref().map_or(span.clone(), |l| l.span()),
                    &field("ns"),
                    format!("`{n}` is inside the zone, so resolvers can only reach it through glue: add its addresses, e.g. glue = [{{ name = \"{n}\", addresses = [\"192.0.2.53\"] }}]"),
                );
            }
        }
        glue.sort_by_key(|(g, _)| ns.iter().position(|n| n == g));
        Authority { ns, hostmaster, serial, refresh, retry, expire, negative_ttl, ns_ttl, glue }
    }

    /// A server's UDP/TCP port and TLS port. `port` serves UDP and TCP (5060 by default);
    /// `tls_port` serves TLS (5061 by default, RFC 3261 §19.1.2). A server that lists only TLS
    /// may give its port as `port`, as before there was `tls_port`.
    fn ports(&mut self, s: &RawSipServer, transports: &[Transport], sf: &dyn Fn(&str) -> String) -> (u16, u16) {
        let tls_only = !transports.is_empty() && transports.iter().all(|t| *t == Transport::Tls);
        let port = s.port.as_ref().map(|p| self.ranged(p, &sf("port"), 1, 65_535, "") as u16);
        let tls_port = s.tls_port.as_ref().map(|p| self.ranged(p, &sf("tls_port"), 1, 65_535, "") as u16);
        if let Some(p) = &s.tls_port {
            if !transports.contains(&Transport::Tls) {
                self.fail(
                    p.span(),
                    &sf("tls_port"),
                    "is set but `transports` does not list \"tls\": add \"tls\" to transports or remove tls_port",
                );
            }
        }
        if let (Some(p), Some(_), true) = (&s.port, &s.tls_port, tls_only) {
            self.fail(
                p.span(),
                &sf("port"),
                "serves UDP and TCP, which this server does not list: remove it (tls_port is the TLS port)",
            );
        }
        let tls = tls_port.or(port.filter(|_| tls_only)).unwrap_or(5061);
        (port.unwrap_or(5060), tls)
    }

    /// A service's `tls_verify` and `tls_ca_file`: the system's roots by default, the file's CAs
    /// when one is named (read now, so a bad file is an error at load, not a failing probe).
    fn tls_verify(
        &mut self,
        verify: Spanned<bool>,
        ca_file: Option<Spanned<String>>,
        field: &dyn Fn(&str) -> String,
    ) -> TlsVerify {
        match (*verify.get_ref(), ca_file) {
            (false, Some(f)) => {
                self.fail(
                    f.span(),
                    &field("tls_ca_file"),
                    "is set but tls_verify = false checks no certificate: remove one of the two",
                );
                TlsVerify::Off
            }
            (false, None) => TlsVerify::Off,
            (true, None) => TlsVerify::System,
            (true, Some(f)) => {
                let path = self.base.join(f.get_ref());
                match read_certificates(&path) {
                    Ok(certificates) => TlsVerify::CaFile { path, certificates },
                    Err(why) => {
                        self.fail(
                            f.span(),
                            &field("tls_ca_file"),
                            format!("{}: {why}: name a PEM file of CA certificates", path.display()),
                        );
                        TlsVerify::System
                    }
                }
            }
        }
    }
}

/// The most name servers a zone lists, and the most addresses one of them has in `glue`.
const MAX_NS: usize = 16;

/// The (transport class, port) pairs a server listens on, for the listed-twice check: UDP and
/// TCP share `port`, TLS has `tls_port`.
fn endpoints(port: u16, tls_port: u16, transports: &[Transport]) -> Vec<u16> {
    let mut out = Vec::new();
    if transports.iter().any(|t| *t != Transport::Tls) {
        out.push(port);
    }
    if transports.contains(&Transport::Tls) && !out.contains(&tls_port) {
        out.push(tls_port);
    }
    out
}

/// The largest `tls_ca_file` read: a system bundle of every public CA is about 220 KB.
pub const MAX_CA_FILE: u64 = 4 << 20;

/// The DER certificates of a PEM file; an error if it cannot be read or holds none that a
/// trust store would take. Read as [`crate::files::read_bounded`] reads: without blocking, only a
/// regular file of at most [`MAX_CA_FILE`] bytes.
fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let text = crate::files::read_bounded(path, MAX_CA_FILE).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert.clone()).map_err(|e| format!("certificate {} is not usable: {e}", out.len() + 1))?;
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(out)
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

/// A server's `address`: an IP address, without a zone. A zone (`fe80::1%eth0`) is refused with
/// why: an AAAA or SRV answer cannot carry it to a phone.
fn server_address(text: &str) -> Result<IpAddr, String> {
    if let Ok(a) = text.parse::<IpAddr>() {
        return Ok(a);
    }
    if let Some((base, zone)) = text.split_once('%') {
        if let Ok(v6) = base.parse::<Ipv6Addr>() {
            if v6.is_unicast_link_local() {
                return Err(format!("`{text}`: {}", RequestError::LinkLocal(v6)));
            }
            return Err(format!(
                "`{text}` carries a zone (`%{zone}`), which an AAAA or SRV answer cannot carry to a phone: write \"{base}\""
            ));
        }
    }
    Err(format!(
        "`{text}` is not an IP address: write one such as \"192.0.2.10\" or \"2001:db8::10\" (no port; use `port`)"
    ))
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

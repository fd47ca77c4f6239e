//! `dnlb status` and `dnlb explain`: what a running instance answers now and why, from its
//! snapshot, its prober's reports and its configuration. Pure: time and state are passed in.
//! Status is gathered by [`super::status`] and rendered here as text; explain is built here.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_utils::CachePadded;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::json;

use super::socket::Reply;
use super::status::{self, ReloadCounts, Status};
use crate::config::{within, AllDown, Config, ServiceConfig};
use crate::counters::{CounterBlocks, Totals, WorkerCounters};
use crate::dns::answer;
use crate::probe::health::State;
use crate::probe::ServerReport;
use crate::snapshot::{Negative, Snapshot, SnapshotHandle};
use crate::worker::{Client, Responder};

/// What the reports are read against.
pub struct View<'a> {
    /// The running configuration.
    pub config: &'a Config,
    /// The prober's per-server reports (empty without a prober).
    pub reports: &'a [ServerReport],
    /// The snapshot workers answer from now.
    pub snapshot: Arc<Snapshot>,
    /// The prober's heartbeat age, if there is a prober.
    pub heartbeat: Option<Duration>,
    /// Now.
    pub now: Instant,
    /// Now on the wall clock (for the Unix times tools read).
    pub wall: SystemTime,
    /// The workers' counters, summed; `None` where the reader has none.
    pub totals: Option<Totals>,
    /// How the reloads went.
    pub reloads: ReloadCounts,
    /// The fleet (`[cluster]`), if this instance is in one.
    pub fleet: Option<&'a crate::cluster::Handle>,
}

/// The health a report's server is answered with: in a fleet, the combined verdicts.
pub(crate) fn answered(r: &ServerReport) -> State {
    r.fleet.map_or(r.state, |(state, _)| state)
}

/// Asks the snapshot `name`/`qtype` as `client` would (over TCP, so nothing is truncated) and
/// decodes the reply; rotation starts at its first position.
pub(crate) fn ask(snapshot: &Arc<Snapshot>, name: &str, qtype: RecordType, client: Option<IpAddr>) -> Option<Message> {
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(&fqdn).ok()?, qtype));
    let packet = m.to_vec().ok()?;
    let counters: CounterBlocks = Arc::from(vec![CachePadded::new(WorkerCounters::default())]);
    let mut r = Responder::new(SnapshotHandle::from_arc(snapshot.clone()), counters, 0);
    let mut out = vec![0u8; 65_535];
    let from = client.map_or(Client::Unknown, |ip| Client::Address(SocketAddr::new(ip, 0)));
    let n = r.respond_from(&packet, from, answer::DnsTransport::Tcp, &mut out);
    Message::from_vec(&out[..n]).ok()
}

/// `name` in lower-case wire format as a query carries it, or `None` when no query can: an
/// empty label, a label over 63 octets, more than 255 octets, a character outside ASCII.
fn query_name(name: &str) -> Option<Vec<u8>> {
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    let parsed = Name::from_ascii(&fqdn).ok().filter(|_| name.is_ascii())?;
    let mut wire = Vec::with_capacity(parsed.len() + 1);
    for label in parsed.iter() {
        wire.push(u8::try_from(label.len()).ok().filter(|&n| (1..=63).contains(&n))?);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    (wire.len() <= crate::dns::query::MAX_NAME_LEN).then_some(wire)
}

fn records(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data)).collect()
}

/// `dnlb status [--history]`: per service the answer now and per server and transport its
/// health, as text and as JSON (the schema `/status.json` serves too).
pub fn status(v: &View<'_>, history: bool) -> Reply {
    let gathered = status::gather(v, history);
    let text = status_text(&gathered);
    let json = serde_json::to_value(&gathered).unwrap_or_default();
    Reply { ok: true, text, json }
}

/// Seconds as people read them: `12.3 s`, `4.0 min`, `2.5 h`, `3.1 d`.
pub fn ago(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

/// The text of `dnlb status`; each server's changes below it when they were gathered.
pub fn status_text(st: &Status) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "snapshot generation {} built {:.1} s ago", st.generation, st.snapshot_age_seconds);
    match st.prober_heartbeat_age_seconds {
        Some(h) => {
            let _ = writeln!(text, "prober heartbeat {:.0} ms ago", h * 1000.0);
        }
        None => text.push_str("probing is off: every configured server counts as healthy\n"),
    }
    for s in &st.services {
        let _ = writeln!(text, "\n{} ({}, all down: {}): A {}", s.name, s.policy, s.all_down, s.answer.join(" "));
        if s.all_down_now {
            let _ = writeln!(text, "  no server is healthy: answering by all_down = {}", s.all_down);
        }
        for r in &s.servers {
            let mut state = r.state.to_string();
            if !r.probed_here {
                state.push_str(",not probed here");
            } else if r.own_state != r.state {
                let _ = write!(state, ",own:{}", r.own_state);
            }
            if r.drained {
                state.push_str(",drained");
            }
            if let Some(oc) = r.overload_percent {
                let _ = write!(state, ",oc={oc}%");
            }
            let flaps =
                if r.flaps_24h > 0 { format!("  flaps {}/1h {}/24h", r.flaps_1h, r.flaps_24h) } else { String::new() };
            let _ = writeln!(
                text,
                "  {:<24} {:<4} {:<16} {:>10} {:>10} {:>5}  {}{}{}",
                r.address,
                r.transport,
                state,
                r.since_seconds.map_or("-".into(), ago),
                r.rtt_ms.map_or("-".into(), |ms| format!("{ms:.2} ms")),
                r.last_code.map_or("-".into(), |c| c.to_string()),
                r.why.unwrap_or("-"),
                // A reason that already decided the last change is not said twice.
                r.failure.filter(|f| Some(*f) != r.why).map_or(String::new(), |f| format!("; failing: {f}")),
                flaps
            );
            for c in r.history.iter().flatten().rev() {
                let drained = if c.drained { ",drained" } else { "" };
                let _ = writeln!(
                    text,
                    "      {:>10} ago  {} -> {}{drained}  {}  (rtt {}, code {}{})",
                    ago(c.ago_seconds),
                    c.from,
                    c.to,
                    c.why,
                    c.rtt_ms.map_or("-".into(), |ms| format!("{ms:.2} ms")),
                    c.last_code.map_or("-".into(), |c| c.to_string()),
                    if c.overload_percent > 0 { format!(", oc={}%", c.overload_percent) } else { String::new() }
                );
            }
        }
    }
    if let Some(t) = &st.cluster_text {
        text.push_str(t);
    }
    text
}

/// Which `[[sites]]` entry, if any, steered `client`'s answer for service `s`.
fn sites_line(config: &Config, s: &crate::config::ServiceConfig, client: Option<IpAddr>) -> String {
    if config.sites.is_empty() {
        return "no [[sites]]: every client gets every healthy server".into();
    }
    let Some(ip) = client else {
        return "(no --client given: the answer shown is for a client no [[sites]] prefix matches)".into();
    };
    match crate::sites::rule_for(&config.sites, ip) {
        None => format!("client {ip} matches no [[sites]] prefix: every healthy server"),
        Some((i, prefix)) => {
            let rule = &config.sites[i];
            let first = rule
                .prefer
                .iter()
                .find(|site| s.servers.iter().any(|v| v.site.as_deref() == Some(site.as_str())))
                .map_or_else(
                    || "none of them has servers here: every healthy server".to_string(),
                    |_| {
                        "the healthy servers of the first of these sites that has any, else every healthy server"
                            .to_string()
                    },
                );
            format!(
                "client {ip} matches sites[{i}] ({}/{}): prefers {}; {first}",
                prefix.network,
                prefix.len,
                rule.prefer.join(" > ")
            )
        }
    }
}

/// The rule of the configuration that gave `name`/`rtype` no records.
fn negative_line(n: &Negative, name: &str, rtype: RecordType, service: Option<&ServiceConfig>) -> String {
    match n {
        Negative::NoSuchName { zone } => {
            format!("`{name}` lies in the zone `{zone}` and is no name of it: NXDOMAIN (RFC 2308), for every type")
        }
        Negative::EmptyNonTerminal => format!(
            "`{name}` is an empty non-terminal of its zone: names below it exist, it has no records of its own: NODATA"
        ),
        Negative::NoSuchType { has } => {
            let has: Vec<String> = has.iter().map(|t| RecordType::from(*t).to_string()).collect();
            format!("`{name}` has no {rtype} records, only {}: NODATA", has.join(", "))
        }
        Negative::NoFamily => format!(
            "no server of service `{}` has an {} address: NODATA whatever the health",
            service.map_or(name, |s| s.name.as_str()),
            if rtype == RecordType::AAAA { "IPv6" } else { "IPv4" }
        ),
        Negative::Health => "no server of this kind is healthy now: NODATA".into(),
        Negative::Transfer => format!(
            "`{name}` is a name of a zone dnlb serves, and zone transfers ({rtype}) are refused: each instance answers from its own configuration, nothing transfers the zone"
        ),
    }
}

/// What the reply to a negative says to a resolver's cache.
fn soa_line(m: &Message, zone: Option<&ServiceConfig>) -> String {
    let soa = m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.minimum),
        _ => None,
    });
    match (soa, zone) {
        (Some(minimum), Some(z)) => format!(
            "the reply carries the SOA of zone `{}` (MINIMUM {minimum} s): resolvers cache this negative answer for {minimum} s",
            z.name
        ),
        _ => "no SOA (the name is in no zone: [service.authority] makes a service a zone apex): resolvers do not cache this negative answer (RFC 2308 §5)".into(),
    }
}

/// `dnlb explain NAME [TYPE] [--client IP]`: what dnlb would answer that client now, and why.
pub fn explain(v: &View<'_>, name: &str, qtype: &str, client: Option<IpAddr>) -> Reply {
    let Ok(rtype) = qtype.to_ascii_uppercase().parse::<RecordType>() else {
        return Reply {
            ok: false,
            text: format!("`{qtype}` is not a record type (A, AAAA, SRV, NAPTR, ...)"),
            json: json!(null),
        };
    };
    // The name as a query carries it (escapes read, limits checked); one no query can carry
    // has no answer to explain.
    let Some(wire) = query_name(name) else {
        return Reply {
            ok: false,
            text: format!(
                "`{name}` is not a name a query can carry (labels of 1 to 63 octets, at most 255 in all, ASCII)\n"
            ),
            json: json!(null),
        };
    };
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let mut why: Vec<String> = Vec::new();
    let reply = ask(&v.snapshot, &lower, rtype, client);
    // The closest enclosing service: a service inside another's zone explains its own names.
    let service = v.config.services.iter().filter(|s| within(&lower, &s.name)).max_by_key(|s| s.name.len());
    let managed = reply.as_ref().is_some_and(|m| m.metadata.authoritative);
    let negative = v.snapshot.negative(&wire, u16::from(rtype), client);
    let zone = v.config.zone_for(&lower);
    // A rule of the configuration alone says it all; health-derived negatives keep the server
    // lines below, which are their reason.
    let by_config = negative.as_ref().filter(|n| !matches!(n, Negative::Health));
    if let Some(n) = by_config {
        why.push(negative_line(n, &lower, rtype, service));
    } else if let (Some(z), true, true) =
        (zone, lower == zone.map_or("", |z| z.name.as_str()), matches!(rtype, RecordType::SOA | RecordType::NS))
    {
        why.push(format!(
            "`{lower}` is the apex of the zone of service `{}`: its {rtype} records come from [service.authority]",
            z.name
        ));
    } else if let (Some(s), true) = (service, managed) {
        why.push(format!(
            "`{}` is the SIP service `{}`: answered from health (policy {}{})",
            lower,
            s.name,
            s.policy.name(),
            s.answers.map_or(String::new(), |n| format!(", at most {n} addresses"))
        ));
        why.push(sites_line(v.config, s, client));
        // The site this client's answer comes from, when a [[sites]] rule steers it: the first
        // site it prefers with a server up and not drained.
        let serving = |server: &crate::config::SipServer| {
            v.reports.iter().any(|r| {
                *r.service == *s.name
                    && r.addr.ip() == server.address
                    && r.addr.port() == server.port_for(r.transport)
                    && answered(r) == State::Up
                    && !r.drained
            })
        };
        let chosen = client.and_then(|ip| crate::sites::rule_for(&v.config.sites, ip)).and_then(|(k, _)| {
            v.config.sites[k].prefer.iter().find(|site| {
                s.servers.iter().any(|server| server.site.as_deref() == Some(site.as_str()) && serving(server))
            })
        });
        let mut any_up = false;
        let first_flat: usize =
            v.config.services.iter().take_while(|x| x.name != s.name).map(|x| x.servers.len()).sum();
        let fleet = v.fleet.map(|h| h.published.load_full());
        let me = v.config.cluster.as_ref().map_or("", |c| c.name.as_str());
        for (i, server) in s.servers.iter().enumerate() {
            let reports: Vec<&ServerReport> = v
                .reports
                .iter()
                .filter(|r| {
                    *r.service == *s.name
                        && r.addr.ip() == server.address
                        && r.addr.port() == server.port_for(r.transport)
                })
                .collect();
            let up: Vec<&str> =
                reports.iter().filter(|r| answered(r) == State::Up).map(|r| r.transport.name()).collect();
            let fleet_drain = fleet.as_ref().and_then(|p| p.view.drains.get(first_flat + i).cloned().flatten());
            let drained = reports.iter().any(|r| r.drained) || fleet_drain.is_some();
            any_up |= (!up.is_empty() && !drained) || v.reports.is_empty();
            let overload = reports.iter().filter_map(|r| r.overload).max();
            let line = if v.reports.is_empty() {
                format!("server {} in: probing is off", server.address)
            } else if drained {
                let health = if up.is_empty() { "down".to_string() } else { format!("up on {}", up.join(", ")) };
                let by = fleet_drain
                    .map_or(String::new(), |d| format!(" (cluster-wide, by {} at {} unix time)", d.by, d.at));
                format!("server {} (#{i}) out: drained by an operator{by} (still probed: {health})", server.address)
            } else if up.is_empty() {
                let detail: Vec<String> = reports
                    .iter()
                    .map(|r| {
                        let since = r.changed.map(|(at, why)| {
                            format!(" for {:.1} s ({why})", v.now.saturating_duration_since(at).as_secs_f64())
                        });
                        format!(
                            "{} {}{}{}{}",
                            r.transport.name(),
                            r.state.name(),
                            since.unwrap_or_default(),
                            r.last_code.map_or(String::new(), |c| format!(", last code {c}")),
                            r.failure
                                .filter(|f| r.changed.is_none_or(|(_, why)| why != *f))
                                .map_or(String::new(), |f| format!(", failing: {f}"))
                        )
                    })
                    .collect();
                format!("server {} (#{i}) out: {}", server.address, detail.join("; "))
            } else if let Some(oc) = overload {
                format!(
                    "server {} (#{i}) in: up on {}, overloaded: asks for {oc} % less load, so its weight is lowered by that much (weighted, latency)",
                    server.address,
                    up.join(", ")
                )
            } else if let Some(site) = chosen.filter(|c| server.site.as_deref() != Some(c.as_str())) {
                format!(
                    "server {} (#{i}) not for this client: up on {}, but this client's answer comes from site {site}",
                    server.address,
                    up.join(", ")
                )
            } else {
                format!("server {} (#{i}) in: up on {}", server.address, up.join(", "))
            };
            let line = match &server.site {
                Some(site) => format!("{line} [site {site}]"),
                None => line,
            };
            let line = format!("{line}{}", history_note(&reports, v.now));
            // In a fleet: whose verdicts decided, and who disagrees.
            let own = reports.iter().filter(|r| r.fleet.is_some_and(|(_, probing)| probing)).map(|r| r.state);
            let own = own.fold(None, |acc: Option<bool>, st| match st {
                State::Up => Some(true),
                State::Down => Some(acc.unwrap_or(false)),
                State::Unknown => acc,
            });
            let line = match fleet.as_ref().and_then(|p| crate::cluster::report::explain(p, me, first_flat + i, own)) {
                Some(f) => format!("{line}; {f}"),
                None => line,
            };
            why.push(line);
        }
        if !any_up {
            why.push(match s.all_down {
                AllDown::ServeAll => {
                    "no server is healthy: all-down policy serve-all answers with every configured server".into()
                }
                AllDown::LastGood => {
                    "no server is healthy: all-down policy last-good answers with the servers healthy last".into()
                }
                AllDown::Servfail => "no server is healthy: all-down policy servfail answers SERVFAIL".into(),
                AllDown::Nodata => {
                    "no server is healthy: all-down policy nodata answers NOERROR with no records".into()
                }
            });
        }
        if any_up && negative == Some(Negative::Health) {
            why.push(format!("no server of this kind is healthy now: NODATA, for one answer TTL ({} s)", s.ttl));
        }
        if rtype == RecordType::ANY {
            why.push("ANY over UDP gets RFC 8482's HINFO; this shows the TCP answer".into());
        }
    } else if managed {
        why.push(format!(
            "`{lower}` is a name from the hosts file, a server's SRV target or a zone's name server: answered locally"
        ));
    } else if let Some(relay) = &v.config.relay {
        let allowed = client.is_none_or(|ip| crate::prefix::allowed(&relay.allow, ip));
        if !allowed {
            why.push("not a managed name, and the client is outside relay.allow: REFUSED".into());
        } else {
            let route = relay
                .routes
                .iter()
                .filter(|r| lower == r.domain || lower.ends_with(&format!(".{}", r.domain)))
                .max_by_key(|r| r.domain.len());
            match route {
                Some(r) => {
                    why.push(format!("not a managed name: relayed by route `{}` to {}", r.domain, list(&r.upstreams)))
                }
                None => why.push(format!("not a managed name: relayed to {}", list(&relay.upstreams))),
            }
            if client.is_none() {
                why.push("(no --client given: the allow list was not checked)".into());
            }
        }
    } else {
        why.push("not a managed name and no [relay]: REFUSED".into());
    }
    if let (Some(rrl), Some(ip)) = (&v.config.rrl, client) {
        let exempt = rrl.exempt.iter().any(|p| p.contains(ip));
        why.push(if exempt {
            format!("rate limiting: {ip} is exempt")
        } else {
            format!(
                "rate limiting: {ip}'s prefix may get {} responses a second per worker over UDP",
                rrl.responses_per_second
            )
        });
    }
    if let (Some(n), Some(m)) = (&negative, &reply) {
        if *n != Negative::Transfer {
            why.push(soa_line(m, zone));
        }
    }
    let answer = reply.as_ref().map(records).unwrap_or_default();
    let rcode = reply
        .as_ref()
        .map(|m| crate::dns::rcode_name(u16::from(m.metadata.response_code)).into_owned())
        .unwrap_or_else(|| "no reply".into());
    let mut text = format!("{lower} {rtype}: {rcode}\n");
    for r in &answer {
        let _ = writeln!(text, "  {r}");
    }
    text.push_str("because:\n");
    for w in &why {
        let _ = writeln!(text, "  - {w}");
    }
    Reply {
        ok: true,
        text,
        json: json!({"name": lower, "type": rtype.to_string(), "rcode": rcode, "answer": answer, "why": why}),
    }
}

/// What a server's history adds to its explain line: its flaps and its last change, per
/// transport that has any (empty for a server that never changed).
fn history_note(reports: &[&ServerReport], now: Instant) -> String {
    let notes: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let last = r.history.last()?;
            let flaps = r.history.flaps(now);
            let drained = if last.drained { ",drained" } else { "" };
            Some(format!(
                "{}: {} flaps in 1 h, {} in 24 h, last change {} ago: {} -> {}{drained} ({})",
                r.transport.name(),
                flaps.hour,
                flaps.day,
                ago(now.saturating_duration_since(last.at).as_secs_f64()),
                last.from.name(),
                last.to.name(),
                last.why
            ))
        })
        .collect();
    if notes.is_empty() {
        String::new()
    } else {
        format!("; history {}", notes.join("; "))
    }
}

/// Addresses as a person lists them: `192.0.2.1:53, 192.0.2.2:53`.
fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Serving;

    const ZONE: &str = r#"
[server]
listen = ["127.0.0.1:5353"]
[[service]]
name = "sip.example.test"
[service.authority]
ns = ["ns1.sip.example.test"]
negative_ttl = 120
glue = [{ name = "ns1.sip.example.test", addresses = ["192.0.2.53"] }]
[[service.server]]
address = "192.0.2.1"
[[service]]
name = "voice.sip.example.test"
ttl = 7
all_down = "nodata"
[[service.server]]
address = "192.0.2.2"
[[service]]
name = "plain.example.net"
[[service.server]]
address = "192.0.2.3"
"#;

    /// `dnlb explain`'s text for `name`/`qtype` with the voice service down when `voice_down`.
    fn explain_text(name: &str, qtype: &str, voice_down: bool) -> String {
        let config = Config::parse(ZONE).unwrap();
        let mut health = Serving::all_up(&config);
        if voice_down {
            health.up[1][0].clear();
        }
        let snapshot = Arc::new(Snapshot::build(&config, &health, 0).unwrap());
        // What the prober reports: every server up, but the voice server when it is down.
        let reports: Vec<ServerReport> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ServerReport {
                service: s.name.as_str().into(),
                addr: SocketAddr::new(s.servers[0].address, s.servers[0].port),
                transport: crate::config::Transport::Udp,
                state: if voice_down && i == 1 { State::Down } else { State::Up },
                rtt: None,
                last_code: None,
                flips: 0,
                changed: None,
                failure: None,
                drained: false,
                overload: None,
                lossy: false,
                history: Arc::default(),
                fleet: None,
            })
            .collect();
        let view = View {
            config: &config,
            reports: &reports,
            snapshot,
            heartbeat: None,
            now: Instant::now(),
            wall: SystemTime::now(),
            totals: None,
            reloads: ReloadCounts::default(),
            fleet: None,
        };
        explain(&view, name, qtype, None).text
    }

    #[test]
    fn explain_names_the_rule_behind_every_negative_answer() {
        let cases = [
            (
                "nonexist.sip.example.test",
                "A",
                false,
                "NXDOMAIN",
                "lies in the zone `sip.example.test` and is no name of it",
            ),
            ("_udp.sip.example.test", "A", false, "NOERROR", "empty non-terminal"),
            ("sip.example.test", "TXT", false, "NOERROR", "has no TXT records, only A, AAAA, NAPTR, SOA, NS"),
            (
                "sip.example.test",
                "AAAA",
                false,
                "NOERROR",
                "no server of service `sip.example.test` has an IPv6 address",
            ),
            ("voice.sip.example.test", "A", true, "NOERROR", "all-down policy nodata"),
            ("sip.example.test", "SOA", false, "NOERROR", "apex of the zone of service `sip.example.test`"),
            ("plain.example.net", "AAAA", false, "NOERROR", "no SOA (the name is in no zone"),
        ];
        for (name, qtype, down, rcode, says) in cases {
            let text = explain_text(name, qtype, down);
            assert!(text.starts_with(&format!("{name} {qtype}: {rcode}")), "{name} {qtype}:\n{text}");
            assert!(text.contains(says), "{name} {qtype}: `{says}` missing:\n{text}");
        }
        // The cache lifetime each negative tells a resolver: the negative TTL for the
        // configuration's, the answer TTL for health's.
        assert!(explain_text("nonexist.sip.example.test", "A", false).contains("(MINIMUM 120 s)"));
        assert!(explain_text("voice.sip.example.test", "A", true).contains("(MINIMUM 7 s)"));
        assert!(explain_text("voice.sip.example.test", "AAAA", true).contains("(MINIMUM 120 s)"));
        assert!(!explain_text("sip.example.test", "A", false).contains("SOA"), "a positive answer says nothing of it");
    }

    #[test]
    fn explain_says_what_the_wire_says_for_transfers_and_impossible_names() {
        // A zone transfer is REFUSED: no NODATA, no talk of a zone it is not in.
        let text = explain_text("sip.example.test", "AXFR", false);
        assert!(text.starts_with("sip.example.test AXFR: REFUSED"), "{text}");
        assert!(text.contains("zone transfers"), "{text}");
        assert!(!text.contains("NODATA") && !text.contains("in no zone"), "{text}");
        // Names no query can carry get no verdict of the zone's.
        for name in
            ["a..b.sip.example.test", "\u{fc}.sip.example.test", &format!("{}.sip.example.test", "a".repeat(64))]
        {
            let text = explain_text(name, "A", false);
            assert!(text.contains("not a name a query can carry"), "{name}:\n{text}");
            assert!(!text.contains("NXDOMAIN") && !text.contains("REFUSED"), "{name}:\n{text}");
        }
    }
}

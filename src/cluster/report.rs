//! What `dnlb status`, `dnlb explain`, `dnlb drain` and the metrics say of the fleet, from what
//! the cluster thread published and its counters. Pure: the state is passed in.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::json;

use super::core::{transport_name, LinkState};
use super::{Handle, Published};
use crate::config::Config;

/// Seconds since `t` (0 if the clock went back).
fn ago(t: SystemTime) -> f64 {
    SystemTime::now().duration_since(t).map_or(0.0, |d| d.as_secs_f64())
}

/// The flat server indices (see [`super::server_keys`]) a drain of `ip` (and `port`) in
/// `service` (or every service) names.
pub fn drain_targets(config: &Config, service: Option<&str>, ip: IpAddr, port: Option<u16>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut flat = 0;
    for s in &config.services {
        for v in &s.servers {
            let port_matches = port.is_none_or(|p| p == v.port || p == v.tls_port);
            if v.address == ip && port_matches && service.is_none_or(|name| name == s.name) {
                out.push(flat);
            }
            flat += 1;
        }
    }
    out
}

/// The fleet part of `dnlb status`: the link, the members, conflicts, this instance's duty and
/// the cluster-wide drains; text and JSON.
pub fn status(handle: &Handle, config: &Config) -> (String, serde_json::Value) {
    let p = handle.published.load();
    let stats = &handle.stats;
    let me = config.cluster.as_ref().map_or("", |c| c.name.as_str());
    let farm = config.cluster.as_ref().map_or("", |c| c.farm.as_str());
    let mut text = String::new();
    let since = ago(p.since);
    let _ = write!(text, "\ncluster {farm} as {me}: {} for {since:.1} s", p.link.name());
    if let Some(why) = &p.problem {
        let _ = write!(text, " ({why})");
    }
    text.push('\n');
    let names: Vec<String> = p
        .view
        .members
        .iter()
        .map(|m| match &m.site {
            Some(site) => format!("{} [{site}]", m.name),
            None => m.name.clone(),
        })
        .collect();
    let duty = stats.duty_servers.load(Ordering::Relaxed);
    let _ = writeln!(
        text,
        "  members ({}): {}; lease TTL {} s; probing {duty} of {} servers",
        p.view.members.len(),
        names.join(", "),
        p.ttl.as_secs(),
        crate::cluster::server_keys(config).len()
    );
    for c in &p.view.conflicts {
        let _ =
            writeln!(text, "  conflict: {} runs another configuration ({}): no shared duty with it", c.name, c.config);
    }
    let keys = crate::cluster::server_keys(config);
    let mut drains = Vec::new();
    for (i, d) in p.view.drains.iter().enumerate() {
        if let (Some(d), Some(key)) = (d, keys.get(i)) {
            let _ = writeln!(text, "  drained cluster-wide: {key} by {} at {} (unix time)", d.by, d.at);
            drains.push(json!({"server": key, "by": d.by, "at": d.at}));
        }
    }
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let json = json!({
        "farm": farm,
        "name": me,
        "link": p.link.name(),
        "since_seconds": since,
        "problem": p.problem,
        "lease_ttl_seconds": p.ttl.as_secs(),
        "members": p.view.members.iter().map(|m| json!({"name": m.name, "site": m.site})).collect::<Vec<_>>(),
        "conflicts": p.view.conflicts.iter().map(|m| json!({"name": m.name, "config": m.config})).collect::<Vec<_>>(),
        "duty_servers": duty,
        "drains": drains,
        "verdict_writes": get(&stats.verdict_writes),
        "watch_restarts": get(&stats.watch_restarts),
        "refused": get(&stats.refused),
        "transitions": get(&stats.transitions),
    });
    (text, json)
}

/// Which instances' verdicts decide server `flat`'s health here, and who disagrees; `None`
/// before the fleet was read.
pub fn explain(p: &Published, me: &str, flat: usize, own: Option<bool>) -> Option<String> {
    let probers = p.view.probers.get(flat)?;
    if !matches!(p.link, LinkState::Attached | LinkState::Detached) {
        return Some(format!("fleet {}: this instance's own verdicts decide", p.link.name()));
    }
    let remote = p.view.remote.get(flat)?;
    let mut said = Vec::new();
    let mut up = 0;
    let mut down = 0;
    for name in probers {
        let verdict = if name == me {
            own
        } else {
            remote.iter().find(|(n, _)| n == name).map(|(_, v)| v.iter().any(|(_, s)| s.up))
        };
        let detail = if name == me {
            String::new()
        } else {
            remote
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| {
                    let parts: Vec<String> = v
                        .iter()
                        .map(|(t, s)| format!("{} {}", transport_name(*t), if s.up { "up" } else { "down" }))
                        .collect();
                    format!(": {}", parts.join(", "))
                })
                .unwrap_or_default()
        };
        match verdict {
            Some(true) => up += 1,
            Some(false) => down += 1,
            None => {}
        }
        let word = match verdict {
            Some(true) => "up",
            Some(false) => "down",
            None => "no verdict yet",
        };
        let who = if name == me { format!("{name} (this instance)") } else { name.clone() };
        said.push(format!("{who} {word}{detail}"));
    }
    let rule = match (up, down) {
        (0, 0) => "no fresh verdict: the server keeps its health".to_string(),
        (0, _) => "every prober says down: out".to_string(),
        (_, 0) => "its probers say up".to_string(),
        (u, d) => format!("{d} prober(s) see it down, {u} up: it stays in (out only when every prober says down)"),
    };
    let drained = p.view.drains.get(flat).and_then(|d| d.as_ref());
    let drain =
        drained.map_or(String::new(), |d| format!("; drained cluster-wide by {} at {} (unix time)", d.by, d.at));
    Some(format!("fleet: probed by {}; {rule}{drain}", said.join("; ")))
}

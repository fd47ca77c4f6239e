//! What the control socket answers: status and explain from the running view and the snapshot,
//! drains through the running prober, reloads handed to the control plane's thread.
//!
//! ```text
//!  dnlb-control thread ─► Request::Status / Explain ─► report (RunningView + SnapshotHandle)
//!                      ─► Request::Drain / Undrain ─► ProbeControl::drain, answered once published
//!                      ─► Request::Reload ─► one-slot channel ─► ControlPlane (main thread)
//!                                                  ◄── Reply, within RELOAD_WAIT ──┘
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use super::report::{self, View};
use super::running::RunningView;
use super::socket::{Answer, Reply, Request};
use super::status::ReloadCounts;
use crate::counters::{CounterBlocks, Totals};
use crate::probe::{DrainRequest, ProbeControl};
use crate::snapshot::SnapshotHandle;

/// How long a `dnlb reload` waits for the control plane to finish the reload.
const RELOAD_WAIT: Duration = Duration::from_secs(8);

/// The control socket's answers.
pub struct ControlAnswers {
    /// What runs now.
    pub running: RunningView,
    /// The answers the workers serve.
    pub snapshots: SnapshotHandle,
    /// The workers' counters (status shows what clients asked and got).
    pub counters: CounterBlocks,
    /// Where reload requests go, each with the channel its reply comes back on.
    pub reloads: SyncSender<SyncSender<Reply>>,
}

impl Answer for ControlAnswers {
    fn answer(&self, request: Request) -> Reply {
        let running = self.running.load();
        let reports =
            running.prober.as_ref().and_then(|p| p.status().servers.lock().ok().map(|r| r.clone())).unwrap_or_default();
        let view = View {
            config: &running.config,
            reports: &reports,
            snapshot: self.snapshots.current(),
            heartbeat: running.prober.as_ref().map(|p| p.heartbeat_age()),
            now: Instant::now(),
            wall: SystemTime::now(),
            totals: Some(Totals::sum(&self.counters)),
            reloads: ReloadCounts::read(self.running.reloads()),
            fleet: running.fleet.as_ref(),
        };
        match request {
            Request::Status { history } => report::status(&view, history),
            Request::Explain { name, qtype, client } => match client.map(|c| c.parse::<IpAddr>().map_err(|_| c)) {
                // The command line checks the address; a request sent straight to the socket
                // may not have, and an explanation for some other client would mislead.
                Some(Err(c)) => {
                    let text = format!("--client {c:?} is not an IP address (e.g. 192.0.2.1 or 2001:db8::1)\n");
                    Reply { ok: false, json: serde_json::json!({"error": text.trim()}), text }
                }
                Some(Ok(ip)) => report::explain(&view, &name, &qtype, Some(ip)),
                None => report::explain(&view, &name, &qtype, None),
            },
            Request::Reload => self.reload(),
            Request::Drain { server, service } => match &running.fleet {
                Some(f) => drain_fleet(f, &running.config, &server, service, true),
                None => drain(running.drains.as_ref(), &server, service, true),
            },
            Request::Undrain { server, service } => match &running.fleet {
                Some(f) => drain_fleet(f, &running.config, &server, service, false),
                None => drain(running.drains.as_ref(), &server, service, false),
            },
        }
    }
}

impl ControlAnswers {
    /// Hands a reload to the control plane and waits for its reply.
    fn reload(&self) -> Reply {
        let (tx, rx) = sync_channel(1);
        if self.reloads.try_send(tx).is_err() {
            return refusal("a reload is already under way".into());
        }
        rx.recv_timeout(RELOAD_WAIT).unwrap_or_else(|_| refusal("the reload did not finish within 8 s".into()))
    }
}

/// A refusal without details for tools.
fn refusal(text: String) -> Reply {
    Reply { ok: false, text, json: serde_json::Value::Null }
}

/// `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT`), as `dnlb drain` takes a server.
fn parse_server(server: &str) -> Option<(IpAddr, Option<u16>)> {
    match server.parse::<SocketAddr>() {
        Ok(a) => Some((a.ip(), Some(a.port()))),
        Err(_) => server.trim_start_matches('[').trim_end_matches(']').parse().ok().map(|ip| (ip, None)),
    }
}

/// Drains or undrains `server` through the running prober; answered once published.
fn drain(prober: Option<&ProbeControl>, server: &str, service: Option<String>, drained: bool) -> Reply {
    let refuse = |text: String| Reply { ok: false, json: serde_json::json!({"error": text.trim()}), text };
    let Some((ip, port)) = parse_server(server) else {
        return refuse(format!("`{server}` is not ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6)\n"));
    };
    let Some(prober) = prober else {
        return refuse("probing is off (probe.enabled = false): every server is served, none can be drained\n".into());
    };
    let request = DrainRequest { service: service.clone(), ip, port, drained };
    match prober.drain(request) {
        Ok(0) => refuse(format!(
            "no server {server}{} in the running configuration\n",
            service.as_deref().map_or(String::new(), |s| format!(" in service {s}"))
        )),
        Ok(n) => {
            let verb = if drained { "drained" } else { "undrained" };
            let effect =
                if drained { "out of the answers now; still probed" } else { "back in the answers now if healthy" };
            Reply {
                ok: true,
                text: format!("{verb} {server}: {n} server transport(s), {effect}\n"),
                json: serde_json::json!({"server": server, "drained": drained, "matched": n}),
            }
        }
        Err(e) => refuse(format!("{e}\n")),
    }
}

/// Drains or undrains `server` cluster-wide: a drain key in etcd (no lease, so it outlives every
/// instance) that every member obeys; answered once etcd holds it.
fn drain_fleet(
    fleet: &crate::cluster::Handle,
    config: &crate::config::Config,
    server: &str,
    service: Option<String>,
    drained: bool,
) -> Reply {
    let refuse = |text: String| Reply { ok: false, json: serde_json::json!({"error": text.trim()}), text };
    let Some((ip, port)) = parse_server(server) else {
        return refuse(format!("`{server}` is not ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6)\n"));
    };
    let targets = crate::cluster::report::drain_targets(config, service.as_deref(), ip, port);
    if targets.is_empty() {
        return refuse(format!(
            "no server {server}{} in the running configuration\n",
            service.as_deref().map_or(String::new(), |s| format!(" in service {s}"))
        ));
    }
    let n = targets.len();
    match fleet.drain(targets, drained) {
        Ok(()) => {
            let verb = if drained { "drained" } else { "undrained" };
            let effect = if drained {
                "cluster-wide, out of every member's answers; still probed; kept across restarts"
            } else {
                "cluster-wide, back in the answers if healthy (a `drain = true` line still drains here)"
            };
            tracing::info!(server, servers = n, "{verb} cluster-wide by the operator");
            Reply {
                ok: true,
                text: format!("{verb} {server}: {n} server(s), {effect}\n"),
                json: serde_json::json!({"server": server, "drained": drained, "matched": n, "cluster": true}),
            }
        }
        Err(e) => refuse(format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_addresses_with_or_without_a_port() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_server("192.0.2.1"), Some((ip("192.0.2.1"), None)));
        assert_eq!(parse_server("192.0.2.1:5060"), Some((ip("192.0.2.1"), Some(5060))));
        assert_eq!(parse_server("[2001:db8::1]:5061"), Some((ip("2001:db8::1"), Some(5061))));
        assert_eq!(parse_server("2001:db8::1"), Some((ip("2001:db8::1"), None)));
        assert_eq!(parse_server("[2001:db8::1]"), Some((ip("2001:db8::1"), None)));
        assert_eq!(parse_server("sip.example.test"), None);
    }
}

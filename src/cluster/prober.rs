//! The prober's side of the fleet: the narrow interface between the prober's loop and the
//! cluster thread. Once per pass the prober calls [`FleetLink::step`], which reads what the
//! cluster thread published (one atomic load; work only when its generation moved) and turns it
//! into the core's inputs, and turns the core's own verdicts into reports.
//!
//! ```text
//!  Published (ArcSwap) ─► generation moved? ─► link: shared duty or every server (spread)
//!                                           └► DutyPlan ─► Core::set_probing (start at once / stop after an interval)
//!                                           └► per target: current prober?, the others' verdicts, drain ─► Core::set_fleet
//!  Core::poll_verdict ─► every transport of that server ─► Report::Verdict ─► cluster thread ─► etcd
//!  DutyPlan::expire ─► Report::Stopped (the verdict key is deleted)
//! ```

use std::time::{Duration, Instant};

use super::core::{DutyChange, DutyPlan, LinkState, Seen};
use super::{Handle, Report};
use crate::config::{Config, Transport};
use crate::probe::core::Core;

/// The prober's link to the fleet.
pub struct FleetLink {
    handle: Handle,
    applied: Option<u64>,
    plan: DutyPlan,
    /// Per flat server (services' servers in order): its targets.
    targets_of: Vec<Vec<usize>>,
    /// Per target: its flat server.
    server_of: Vec<usize>,
    /// Per target: its transport.
    transport_of: Vec<Transport>,
}

impl FleetLink {
    /// A link for a prober whose core was built from `config`; the core joins the fleet.
    pub fn new(handle: Handle, config: &Config, core: &mut Core) -> FleetLink {
        let mut offsets = Vec::with_capacity(config.services.len());
        let mut n = 0;
        for s in &config.services {
            offsets.push(n);
            n += s.servers.len();
        }
        let mut targets_of = vec![Vec::new(); n];
        let mut server_of = Vec::with_capacity(core.targets());
        let mut transport_of = Vec::with_capacity(core.targets());
        for t in 0..core.targets() {
            let (si, vi) = core.server_of(t).unwrap_or((0, 0));
            let flat = offsets.get(si).copied().unwrap_or(0) + vi;
            server_of.push(flat);
            transport_of.push(core.describe(t).map_or(Transport::Udp, |d| d.2));
            if let Some(list) = targets_of.get_mut(flat) {
                list.push(t);
            }
        }
        core.join_fleet();
        handle.beat();
        FleetLink {
            handle,
            applied: None,
            plan: DutyPlan::new(n, config.probe.interval),
            targets_of,
            server_of,
            transport_of,
        }
    }

    /// One pass: applies what the cluster thread published, ends overlaps whose interval is
    /// over, and reports this instance's new verdicts.
    pub fn step(&mut self, core: &mut Core, now: Instant) {
        self.handle.beat();
        let published = self.handle.published.load();
        if self.applied != Some(published.generation) {
            self.applied = Some(published.generation);
            let shared = matches!(published.link, LinkState::Attached | LinkState::Detached);
            let view = &published.view;
            let n = self.targets_of.len();
            let whole = view.duty.len() == n && view.remote.len() == n && view.drains.len() == n;
            let duty = (shared && whole).then_some(view.duty.as_slice());
            if !(shared && whole) {
                // Detached past a TTL (or not yet attached): the others' verdicts stop counting
                // before anything of this view is applied.
                core.set_clustered(false);
            }
            let spread = published.link == LinkState::Alone;
            let changes = self.plan.update(duty, now, spread);
            let duty_servers = self.plan.duty_count() as u64;
            self.handle.stats.duty_servers.store(duty_servers, std::sync::atomic::Ordering::Relaxed);
            for (server, change) in changes {
                if let DutyChange::Start(at) = change {
                    for &t in &self.targets_of[server] {
                        core.set_probing(t, Some(at));
                    }
                }
            }
            if whole {
                let mut remote: Vec<Seen> = Vec::new();
                for (server, targets) in self.targets_of.iter().enumerate() {
                    let drained = view.drains[server].is_some();
                    let counts = self.plan.is_duty(server);
                    for &t in targets {
                        let transport = self.transport_of[t];
                        remote.clear();
                        for (_, verdicts) in &view.remote[server] {
                            remote.extend(verdicts.iter().filter(|(tr, _)| *tr == transport).map(|(_, s)| *s));
                        }
                        core.set_fleet(t, counts, &remote, drained);
                    }
                }
            }
            // Last: the others' verdicts count only once they are this view's, never a view
            // from before a detached spell.
            if shared && whole {
                core.set_clustered(true);
            }
        }
        if self.plan.next_expiry().is_some_and(|t| now >= t) {
            for (server, change) in self.plan.expire(now) {
                if change == DutyChange::Stop {
                    for &t in &self.targets_of[server] {
                        core.set_probing(t, None);
                    }
                    self.handle.report(Report::Stopped { server });
                }
            }
        }
        while let Some(t) = core.poll_verdict() {
            let server = self.server_of[t];
            let seen: Vec<(Transport, Seen)> = self.targets_of[server]
                .iter()
                .filter_map(|&x| core.local_seen(x).map(|s| (self.transport_of[x], s)))
                .collect();
            if !seen.is_empty() {
                self.handle.report(Report::Verdict { server, seen });
            }
        }
    }

    /// What the cluster thread calls after each publish to wake the prober's loop.
    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.handle.prober_waker.store(Some(std::sync::Arc::new(wake)));
    }

    /// How many servers this instance is a current prober of.
    pub fn duty_count(&self) -> usize {
        self.plan.duty_count()
    }

    /// The longest the prober may sleep before the next [`FleetLink::step`] has work: the next
    /// overlap's end.
    pub fn next_wake(&self, now: Instant) -> Duration {
        self.plan.next_expiry().map_or(Duration::MAX, |t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::cluster::fleet::FleetView;
    use crate::cluster::Published;
    use crate::probe::core::OsEntropy;

    fn published(generation: u64, link: LinkState, remote_up: bool) -> Published {
        let seen = vec![(Transport::Udp, Seen { up: remote_up, rtt_us: 0, oc: 0 })];
        Published {
            generation,
            link,
            since: SystemTime::now(),
            ttl: Duration::from_secs(1),
            view: FleetView {
                members: Vec::new(),
                conflicts: Vec::new(),
                probers: vec![vec!["b".into()]],
                duty: vec![false],
                remote: if remote_up { vec![vec![("b".into(), seen)]] } else { vec![Vec::new()] },
                drains: vec![None],
            },
            problem: None,
        }
    }

    /// Back from a detached spell, the others' verdicts of before it never count, not even for
    /// one pass: the new view's verdicts are in place before they start to count.
    #[test]
    fn a_view_from_before_a_spell_never_decides() {
        let text = "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"s.test\"\n[[service.server]]\naddress = \"127.0.4.99\"\n";
        let config = Config::parse(text).unwrap();
        let now = Instant::now();
        let mut core = Core::new(&config, now, Box::new(OsEntropy::default())).unwrap();
        let (handle, _inbox) = Handle::new(published(1, LinkState::Attached, false), Arc::new(|| {}));
        let mut link = FleetLink::new(handle.clone(), &config, &mut core);
        link.step(&mut core, now);
        // Alone: the published view still holds b's verdict from before the spell (up).
        handle.publish(published(2, LinkState::Alone, true));
        link.step(&mut core, now);
        // Attached again; b has not written since (its verdict is not in the new view).
        handle.publish(published(3, LinkState::Attached, false));
        link.step(&mut core, now);
        let mut flips = Vec::new();
        while let Some(f) = core.poll_flip() {
            flips.push(f);
        }
        assert!(flips.is_empty(), "flipped on a stale verdict: {flips:?}");
        // The same view with b's fresh verdict decides at once.
        handle.publish(published(4, LinkState::Attached, true));
        link.step(&mut core, now);
        assert_eq!(core.poll_flip().map(|f| f.to), Some(crate::probe::health::State::Up));
    }
}

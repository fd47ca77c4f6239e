//! The immutable snapshot workers answer from, and the handle it is published through.
//!
//! ```text
//!  config + health ──build()──► Snapshot ──publish()──► ArcSwap ──load() once per batch──► workers
//!  (prober, reload)             (every answer pre-encoded)          (lock-free read side)
//! ```
//!
//! Everything a worker reads is in one `Snapshot`, swapped in one store, so a reply can never mix
//! two health states.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use hickory_proto::rr::{Name, Record};

use crate::config::{AllDown, Config, Policy, ServiceConfig, Transport};
use crate::dns::answer::Template;
use crate::dns::encode::{self, EncodeError};
use crate::dns::query::rcode;
use crate::dns::{rtype, wire_name};
use crate::select;

/// The TTL of the RFC 8482 answer to ANY: it changes never, so clients may keep it an hour.
const ANY_TTL: u32 = 3600;

/// A small, fast hasher for short lower-case names (FxHash's multiply-rotate).
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The answers of one (name, type): distinct templates and the cycle a worker walks through them.
#[derive(Debug)]
pub struct Rotation {
    /// Index of this rotation's counter in a worker's rotation state.
    slot: usize,
    /// The distinct templates.
    templates: Box<[Template]>,
    /// The cycle of template indices (round-robin: 0..n; weighted: the smooth weighted order).
    order: Box<[u32]>,
}

/// Everything dnlb answers for one managed name.
#[derive(Debug)]
struct NameAnswers {
    /// Per record type; a handful at most, so a linear scan.
    by_type: Vec<(u16, Rotation)>,
    /// NOERROR with an empty answer, for every other type.
    nodata: Template,
}

/// Health of each configured server per transport, as the snapshot builder reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// `up[service][server]` lists the transports on which that server is healthy.
    pub up: Vec<Vec<Vec<Transport>>>,
    /// `latency_weights[service][server]`: the weight a `latency` service gives each server,
    /// from its probe round-trip time ([`select::latency_weights`], computed once by the prober);
    /// empty for other policies, and a missing entry counts as the fastest server's weight.
    pub latency_weights: Vec<Vec<u32>>,
    /// `weights[service][server]`: the weight a `weighted` service gives each server, decided
    /// by the prober (the configured weight lowered by the server's RFC 7339 overload signal);
    /// empty for other policies, and a missing entry counts as the configured weight.
    pub weights: Vec<Vec<u32>>,
}

impl Health {
    /// Every server healthy on every transport it is configured for.
    pub fn all_up(config: &Config) -> Health {
        let up = config.services.iter().map(|s| s.servers.iter().map(|v| v.transports.clone()).collect()).collect();
        Health { up, ..Health::default() }
    }
}

/// An immutable set of pre-encoded answers.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one per publish; workers reset their rotation state when it changes.
    pub generation: u64,
    /// When it was built, so its age can be reported.
    pub built_at: Instant,
    /// Number of rotation counters a worker needs.
    pub rotation_slots: usize,
    /// The answer to ANY over UDP for every managed name: one synthesized HINFO (RFC 8482), so
    /// ANY cannot be used to amplify. Its owner is a pointer to the question, so one template
    /// serves every name.
    any_udp: Template,
    names: HashMap<Box<[u8]>, NameAnswers, BuildHasherDefault<NameHasher>>,
}

/// What the snapshot says about a question.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'s> {
    /// A managed name: answer with this template.
    Answer(&'s Template),
    /// Not a name dnlb manages: the relay's (for now REFUSED).
    NotManaged,
}

impl Snapshot {
    /// A snapshot that manages no names.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            built_at: Instant::now(),
            rotation_slots: 0,
            any_udp: Template::empty(true, rcode::NOERROR),
            names: HashMap::default(),
        }
    }

    /// Builds every answer for `config` given `health`. `round` is the probe round (on-duty).
    pub fn build(config: &Config, health: &Health, round: u64, generation: u64) -> Result<Snapshot, EncodeError> {
        let mut b = Builder { names: HashMap::default(), slots: 0 };
        for (i, service) in config.services.iter().enumerate() {
            b.service(service, health, i, round)?;
        }
        // Hosts-file names come after the SIP names, which win a clash (`add` keeps the first).
        b.hosts(&config.hosts, config.hosts_ttl)?;
        let any_owner = encode::name("any.invalid")?;
        let any_udp =
            encode::template(&any_owner, rtype::ANY, vec![encode::rfc8482_record(&any_owner, ANY_TTL)], vec![])?;
        Ok(Snapshot { generation, built_at: Instant::now(), rotation_slots: b.slots, any_udp, names: b.names })
    }

    /// Looks up a lower-case wire name and type. `rotation` is the worker's counter array,
    /// at least `rotation_slots` long; `udp` says whether the reply goes over UDP.
    #[inline]
    pub fn lookup(&self, name: &[u8], qtype: u16, udp: bool, rotation: &mut [u32]) -> Lookup<'_> {
        let Some(entry) = self.names.get(name) else {
            return Lookup::NotManaged;
        };
        // RFC 8482: ANY over UDP gets the synthesized HINFO (nothing to amplify with); over TCP,
        // where the source is proven, one RRset, the A set, the useful one for a SIP name.
        if qtype == rtype::ANY && udp {
            return Lookup::Answer(&self.any_udp);
        }
        let wanted = if qtype == rtype::ANY { rtype::A } else { qtype };
        let Some((_, rot)) = entry.by_type.iter().find(|(t, _)| *t == wanted) else {
            return Lookup::Answer(&entry.nodata);
        };
        let n = rot.order.len();
        if n <= 1 {
            return Lookup::Answer(&rot.templates[0]);
        }
        let counter = &mut rotation[rot.slot];
        let i = (*counter as usize).min(n - 1);
        *counter = if i + 1 >= n { 0 } else { i as u32 + 1 };
        Lookup::Answer(&rot.templates[rot.order[i] as usize])
    }

    /// The managed names, lower-case wire format (for tests and diagnostics).
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.names.keys().map(|k| &k[..])
    }
}

struct Builder {
    names: HashMap<Box<[u8]>, NameAnswers, BuildHasherDefault<NameHasher>>,
    slots: usize,
}

impl Builder {
    fn add(&mut self, owner: &Name, qtype: u16, templates: Vec<Template>) -> Result<(), EncodeError> {
        let order = (0..templates.len() as u32).collect();
        self.add_rotation(owner, qtype, templates, order)
    }

    fn add_rotation(
        &mut self,
        owner: &Name,
        qtype: u16,
        templates: Vec<Template>,
        order: Vec<u32>,
    ) -> Result<(), EncodeError> {
        let key: Box<[u8]> = wire_name(&owner.to_ascii()).into();
        let entry = match self.names.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(NameAnswers { by_type: Vec::new(), nodata: encode::template(owner, 0, vec![], vec![])? })
            }
        };
        // A name configured twice (a host name equal to a service name) keeps its first answers.
        if entry.by_type.iter().all(|(t, _)| *t != qtype) {
            let slot = self.slots;
            self.slots += 1;
            entry.by_type.push((qtype, Rotation { slot, templates: templates.into(), order: order.into() }));
        }
        Ok(())
    }

    fn service(
        &mut self,
        service: &ServiceConfig,
        health: &Health,
        index: usize,
        round: u64,
    ) -> Result<(), EncodeError> {
        let owner = encode::name(&service.name)?;
        let ttl = service.ttl;
        let up = health.up.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let latency_weights = health.latency_weights.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let server_weights = health.weights.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let healthy = |i: usize| up.get(i).is_some_and(|t| !t.is_empty());
        let any_up = (0..service.servers.len()).any(healthy);
        // The all-down policy: last-good arrives here as the prober's substitute up-list, so
        // what is left to decide is serving everything, SERVFAIL or NODATA.
        let fallback = |any: bool| -> Option<Template> {
            match (any, service.all_down) {
                (true, _) | (false, AllDown::ServeAll | AllDown::LastGood) => None,
                (false, AllDown::Servfail) => Some(Template::empty(false, rcode::SERVFAIL)),
                (false, AllDown::Nodata) => Some(Template::empty(true, rcode::NOERROR)),
            }
        };
        let serving: Vec<usize> = (0..service.servers.len()).filter(|&i| !any_up || healthy(i)).collect();

        for (qtype, v6) in [(rtype::A, false), (rtype::AAAA, true)] {
            if let Some(t) = fallback(any_up) {
                self.add(&owner, qtype, vec![t])?;
                continue;
            }
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut weights: Vec<u32> = Vec::new();
            for &i in &serving {
                let s = &service.servers[i];
                if s.address.is_ipv6() == v6 && !addrs.contains(&s.address) {
                    addrs.push(s.address);
                    weights.push(match service.policy {
                        Policy::Latency => latency_weights.get(i).copied().unwrap_or(select::FASTEST_WEIGHT),
                        Policy::Weighted => server_weights.get(i).copied().unwrap_or(u32::from(s.weight)),
                        _ => u32::from(s.weight),
                    });
                }
            }
            let rotation = select::rotations(&addrs, &weights, service.policy, service.answers, round);
            let mut templates = Vec::new();
            for set in &rotation.answers {
                let records = set.iter().map(|a| encode::address_record(&owner, ttl, *a)).collect();
                templates.push(encode::template(&owner, qtype, records, vec![])?);
            }
            let order = rotation.order.iter().map(|&i| i as u32).collect();
            self.add_rotation(&owner, qtype, templates, order)?;
        }

        // Per transport SRV sets, from the servers healthy on that transport.
        let mut naptrs = Vec::new();
        for (order, transport) in (0u16..).zip(Transport::ALL) {
            let configured: Vec<_> =
                service.servers.iter().enumerate().filter(|(_, s)| s.transports.contains(&transport)).collect();
            if configured.is_empty() {
                continue;
            }
            let up_here = |i: usize| up.get(i).is_some_and(|t| t.contains(&transport));
            let any = configured.iter().any(|(i, _)| up_here(*i));
            let members: Vec<_> = configured.iter().filter(|(i, _)| !any || up_here(*i)).map(|(_, s)| *s).collect();
            let (label, naptr_service) = match transport {
                Transport::Udp => ("_sip._udp", "SIP+D2U"),
                Transport::Tcp => ("_sip._tcp", "SIP+D2T"),
                Transport::Tls => ("_sips._tcp", "SIPS+D2T"),
            };
            let srv_owner = encode::name(&format!("{label}.{}", service.name))?;
            naptrs.push(encode::naptr_record(&owner, ttl, 50 + 20 * order, naptr_service, &srv_owner));
            if let Some(t) = fallback(any) {
                self.add(&srv_owner, rtype::SRV, vec![t])?;
                continue;
            }
            let mut answers = Vec::new();
            let mut additionals: Vec<Record> = Vec::new();
            for s in &members {
                let target = encode::name(&s.host)?;
                answers.push(encode::srv_record(&srv_owner, ttl, s.priority, s.weight, s.port_for(transport), &target));
                let glue = encode::address_record(&target, ttl, s.address);
                if !additionals.contains(&glue) {
                    additionals.push(glue);
                }
            }
            self.add(&srv_owner, rtype::SRV, vec![encode::template(&srv_owner, rtype::SRV, answers, additionals)?])?;
        }
        let naptr = match fallback(any_up) {
            Some(t) => t,
            None => encode::template(&owner, rtype::NAPTR, naptrs, vec![])?,
        };
        self.add(&owner, rtype::NAPTR, vec![naptr])?;

        // Each SRV target answers A/AAAA with its own address(es).
        let mut hosts: Vec<(&str, Vec<IpAddr>)> = Vec::new();
        for s in &service.servers {
            match hosts.iter_mut().find(|(h, _)| *h == s.host) {
                Some((_, addrs)) if !addrs.contains(&s.address) => addrs.push(s.address),
                Some(_) => {}
                None => hosts.push((&s.host, vec![s.address])),
            }
        }
        for (host, addrs) in hosts {
            self.add_addresses(host, &addrs, ttl)?;
        }
        Ok(())
    }
}

impl Builder {
    /// A and AAAA answers (one fixed template each) for a host name with these addresses.
    fn add_addresses(&mut self, name: &str, addrs: &[IpAddr], ttl: u32) -> Result<(), EncodeError> {
        let owner = encode::name(name)?;
        for (qtype, v6) in [(rtype::A, false), (rtype::AAAA, true)] {
            let records =
                addrs.iter().filter(|a| a.is_ipv6() == v6).map(|a| encode::address_record(&owner, ttl, *a)).collect();
            self.add(&owner, qtype, vec![encode::template(&owner, qtype, records, vec![])?])?;
        }
        Ok(())
    }

    /// A, AAAA for every hosts-file name and PTR for every address (to its first name).
    fn hosts(&mut self, entries: &[crate::hosts::HostEntry], ttl: u32) -> Result<(), EncodeError> {
        let mut by_name: Vec<(&str, Vec<IpAddr>)> = Vec::new();
        let mut ptrs: Vec<(IpAddr, &str)> = Vec::new();
        for e in entries {
            for name in &e.names {
                match by_name.iter_mut().find(|(n, _)| n == name) {
                    Some((_, addrs)) if !addrs.contains(&e.address) => addrs.push(e.address),
                    Some(_) => {}
                    None => by_name.push((name, vec![e.address])),
                }
            }
            if !ptrs.iter().any(|(a, _)| *a == e.address) {
                ptrs.push((e.address, &e.names[0]));
            }
        }
        for (name, addrs) in by_name {
            self.add_addresses(name, &addrs, ttl)?;
        }
        for (address, name) in ptrs {
            let owner = encode::name(&crate::hosts::reverse_name(address))?;
            let record = encode::ptr_record(&owner, ttl, &encode::name(name)?);
            self.add(&owner, rtype::PTR, vec![encode::template(&owner, rtype::PTR, vec![record], vec![])?])?;
        }
        Ok(())
    }
}

/// The publish/read handle shared by the prober, the control thread and every worker.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl SnapshotHandle {
    /// A handle holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> SnapshotHandle {
        SnapshotHandle(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// A handle that serves `snapshot` (the control side asks a copy of the running one).
    pub fn from_arc(snapshot: Arc<Snapshot>) -> SnapshotHandle {
        SnapshotHandle(Arc::new(ArcSwap::new(snapshot)))
    }

    /// The snapshot now, owned (off the hot path: the control side).
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// The current snapshot; workers call this once per batch.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// Replaces the snapshot in one store.
    pub fn publish(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:5353"]
[[service]]
name = "sip.example.test"
[[service.server]]
address = "127.0.0.11"
transports = ["udp", "tcp"]
[[service.server]]
address = "127.0.0.12"
[[service.server]]
address = "::1"
transports = ["tls"]
"#;

    #[test]
    fn srv_answers_name_each_transports_port() {
        let text = CONFIG
            .replace("transports = [\"udp\", \"tcp\"]", "transports = [\"udp\", \"tcp\", \"tls\"]\ntls_port = 5071");
        let config = Config::parse(&text).unwrap();
        let snap = Snapshot::build(&config, &Health::all_up(&config), 0, 1).unwrap();
        let handle = SnapshotHandle::new(snap);
        let counters: crate::metrics::CounterBlocks =
            Arc::from(vec![crossbeam_utils::CachePadded::new(crate::metrics::WorkerCounters::default())]);
        let mut responder = crate::worker::Responder::new(handle, counters, 0);
        let mut ports = |label: &str| -> Vec<u16> {
            use hickory_proto::op::{Message, MessageType, OpCode, Query};
            let mut q = Message::new(7, MessageType::Query, OpCode::Query);
            let name = hickory_proto::rr::Name::from_ascii(format!("{label}.sip.example.test.")).unwrap();
            q.add_query(Query::query(name, hickory_proto::rr::RecordType::SRV));
            let mut out = vec![0u8; 4096];
            let n = responder.respond(&q.to_vec().unwrap(), crate::dns::answer::Transport::Tcp, &mut out);
            let m = Message::from_vec(&out[..n]).unwrap();
            let mut ports: Vec<u16> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_proto::rr::RData::SRV(s) => Some(s.port),
                    _ => None,
                })
                .collect();
            ports.sort();
            ports
        };
        assert_eq!(ports("_sip._udp"), vec![5060, 5060]);
        assert_eq!(ports("_sip._tcp"), vec![5060]);
        assert_eq!(ports("_sips._tcp"), vec![5061, 5071], "::1 defaults to 5061, .11 overrides");
    }

    #[test]
    fn builds_every_name() {
        let config = Config::parse(CONFIG).unwrap();
        let snap = Snapshot::build(&config, &Health::all_up(&config), 0, 1).unwrap();
        let mut names: Vec<String> = snap.names().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        names.sort();
        assert_eq!(names.len(), 7, "{names:?}");
        let mut rot = vec![0; snap.rotation_slots];
        let first =
            |snap: &Snapshot, rot: &mut [u32]| match snap.lookup(&wire_name("sip.example.test"), rtype::A, true, rot) {
                Lookup::Answer(t) => t.body.clone(),
                Lookup::NotManaged => panic!("managed"),
            };
        let a = first(&snap, &mut rot);
        let b = first(&snap, &mut rot);
        let c = first(&snap, &mut rot);
        assert_ne!(a, b, "round robin rotates");
        assert_eq!(a, c, "two servers, so the third answer is the first again");
        assert!(matches!(snap.lookup(&wire_name("other.test"), rtype::A, true, &mut rot), Lookup::NotManaged));
        match snap.lookup(&wire_name("sip.example.test"), 16, true, &mut rot) {
            Lookup::Answer(t) => assert_eq!(t.counts, [0, 0, 0]),
            Lookup::NotManaged => panic!("managed"),
        }
    }
}

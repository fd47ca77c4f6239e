//! The immutable snapshot workers answer from, and the handle it is published through.
//!
//! ```text
//!  config + health ──build()──► Snapshot ──publish()──► ArcSwap ──load() once per batch──► workers
//!  (prober, reload)             (every answer pre-encoded)          (lock-free read side)
//! ```
//!
//! Everything a worker reads is in one `Snapshot`, swapped in one store, so a reply can never mix
//! two health states.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use hickory_proto::rr::Name;

use crate::config::{within, AllDown, Authority, Config, Policy, ServiceConfig, Transport};
use crate::dns::answer::{Ring, Template, Window};
use crate::dns::encode::{self, EncodeError};
use crate::dns::query::{flag, rcode};
use crate::dns::{rtype, wire_name};
use crate::hasher::NameHasher;
use crate::hosts::Hosts;
use crate::select;
use crate::sites::{SiteId, Steering, NO_SITE};

/// The TTL of the RFC 8482 answer to ANY: it changes never, so clients may keep it an hour.
const ANY_TTL: u32 = 3600;

/// How a managed (name, type) is answered.
#[derive(Debug)]
enum Entry {
    /// The same reply whatever the health (SRV targets' addresses).
    Fixed(Template),
    /// From health: the index of its [`Answers`] in each view of a snapshot.
    Health(usize),
}

/// Everything dnlb answers for one managed name.
#[derive(Debug)]
struct NameAnswers {
    /// Per record type; a handful at most, so a linear scan.
    by_type: Vec<(u16, Entry)>,
    /// For every other type: the index in [`Layout::negatives`] of its NODATA (NOERROR, no
    /// answer; inside a zone, with the zone's SOA).
    nodata: usize,
}

/// A zone dnlb is the authority for: where its negative answers are in [`Layout::negatives`].
#[derive(Debug, Clone, Copy)]
struct Zone {
    /// NXDOMAIN with the SOA: a name under the apex that dnlb does not answer (RFC 2308 §2.1).
    nxdomain: usize,
    /// NODATA with the SOA (MINIMUM the negative TTL): a type a name of the zone never has.
    nodata: usize,
}

/// Index in [`Layout::negatives`] of the plain NODATA every name outside a zone gets.
const PLAIN_NODATA: usize = 0;
/// Index in [`Layout::negatives`] of REFUSED, the answer to a zone transfer: nothing transfers a
/// zone dnlb serves (each instance answers from its own configuration).
const NO_TRANSFER: usize = 1;

/// The negative answers every layout starts with, at [`PLAIN_NODATA`] and [`NO_TRANSFER`].
fn first_negatives() -> Vec<Template> {
    vec![Template::empty(true, rcode::NOERROR), Template::empty(false, rcode::REFUSED)]
}

/// The health-dependent answer of one (name, type).
#[derive(Debug, Clone)]
enum Answers {
    /// One reply for every query: NAPTR, an SRV set, an empty set, an all-down SERVFAIL or
    /// NODATA (shared by the views that answer alike).
    Fixed(Arc<Template>),
    /// Templates a worker cycles through: the SRV set of a farm too large for one message, in
    /// chunks of [`SRV_CHUNK`] servers.
    Cycle {
        /// Index of this answer's counter in a worker's rotation state.
        slot: usize,
        /// The templates, in turn (shared by the views that answer alike).
        templates: Arc<[Template]>,
    },
    /// Windows of `len` records of an address ring, starting at successive positions.
    Ring {
        /// Index of this answer's counter in a worker's rotation state.
        slot: usize,
        /// The healthy addresses, each encoded once.
        ring: Ring,
        /// Records per window (the reply carries as many of them as fit).
        len: usize,
        /// The cycle of starting positions; `None`: every position in turn (round robin).
        starts: Option<Box<[u32]>>,
    },
}

/// The most SRV records (with their glue) one template holds: larger sets are cut into chunks a
/// worker rotates through, so the whole farm is reached and no message exceeds 64 KiB.
pub const SRV_CHUNK: usize = 64;

/// What a snapshot's names and their fixed answers are, from the configuration alone: built once
/// per configuration and shared by every snapshot built from it, so a health flip re-encodes only
/// the answers that health changes.
#[derive(Debug)]
pub struct Layout {
    names: HashMap<Box<[u8]>, NameAnswers, BuildHasherDefault<NameHasher>>,
    /// Per service, its names and where its health-dependent answers start.
    services: Vec<ServiceLayout>,
    /// Serving-dependent answers per view.
    dynamic: usize,
    /// Which view each client gets (`[[sites]]`).
    steering: Steering,
    /// The hosts-file names, encoded when the file was read and shared with the configuration:
    /// looked up after the SIP names, which win a clash.
    hosts: Arc<Hosts>,
    /// The answer to ANY over UDP for every managed name: one synthesized HINFO (RFC 8482), so
    /// ANY cannot be used to amplify. Its owner is a pointer to the question, so one template
    /// serves every name.
    any_udp: Template,
    /// Negative answers, shared by the names that give them: [`PLAIN_NODATA`] first, then each
    /// zone's (their SOA is written uncompressed, so one encoding serves any question).
    negatives: Vec<Template>,
    /// Zone apexes (lower-case wire format); empty unless a service has an `authority`, and only
    /// then does a name nobody manages cost more than one hash.
    zones: HashMap<Box<[u8]>, Zone, BuildHasherDefault<NameHasher>>,
    /// The wire lengths of the apexes, one bit each: a suffix of another length is no apex, so
    /// the walk hashes only suffixes that could be one (usually none of a relayed name's).
    zone_lengths: [u64; 4],
}

/// The names of one service, parsed once.
#[derive(Debug)]
struct ServiceLayout {
    /// The service name.
    owner: Name,
    /// Per configured transport (in NAPTR order), its SRV name, parsed and in wire format.
    srv: Vec<(Transport, Name, Box<[u8]>)>,
    /// Per server, its SRV target (its `host`) in wire format.
    targets: Vec<Box<[u8]>>,
    /// Per server, whether its SRV records bring its address as an additional record: always
    /// outside a zone; inside one, only for targets in the zone (a resolver discards any other
    /// and finds that host through its own zone).
    glue: Vec<bool>,
    /// NODATA for a type the configuration gives no data (MINIMUM the zone's negative TTL).
    config_nodata: Arc<Template>,
    /// NODATA because of health (no healthy server of a family, `all_down = "nodata"`): MINIMUM
    /// the answer TTL, so resolvers ask again as soon as they would for a positive answer.
    health_nodata: Arc<Template>,
    /// Whether the service lies in a zone: a type with no data in the configuration is then
    /// NODATA whatever the health.
    in_zone: bool,
    /// Per server, its site ([`NO_SITE`] without one).
    sites: Vec<SiteId>,
}

/// Serving of each configured server per transport, as the snapshot builder reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Serving {
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

impl Serving {
    /// Every server healthy on every transport it is configured for, but those configured
    /// drained (`drain = true`).
    pub fn all_up(config: &Config) -> Serving {
        let transports = |v: &crate::config::SipServer| if v.drain { Vec::new() } else { v.transports.clone() };
        let up = config.services.iter().map(|s| s.servers.iter().map(transports).collect()).collect();
        Serving { up, ..Serving::default() }
    }
}

/// The generation of a snapshot no handle has published yet.
const UNPUBLISHED: u64 = 0;

/// An immutable set of pre-encoded answers.
#[derive(Debug)]
pub struct Snapshot {
    /// Stamped by the [`SnapshotHandle`] that publishes it, one more than the one before; see
    /// [`Snapshot::generation`].
    generation: u64,
    /// When it was built, so its age can be reported.
    pub built_at: Instant,
    /// Number of rotation counters a worker needs.
    pub rotation_slots: usize,
    /// The names, shared with every snapshot of the same configuration.
    layout: Arc<Layout>,
    /// The health-dependent answers: `layout.dynamic` per view, view after view.
    answers: Box<[Answers]>,
}

/// What the snapshot says about a question.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'s> {
    /// A managed name: answer with this template.
    Answer(&'s Template),
    /// A managed name's address set: answer with as many of these records as fit.
    Window(Window<'s>),
    /// Not a name dnlb manages: the relay's (for now REFUSED).
    NotManaged,
}

/// Which rule gave a question no records (`dnlb explain`), as the snapshot decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negative {
    /// The name lies under the zone apex `zone` and is no name of it: NXDOMAIN with the SOA.
    NoSuchName {
        /// The apex, presentation format.
        zone: String,
    },
    /// The name exists only because names below it do (an empty non-terminal): NODATA.
    EmptyNonTerminal,
    /// The name never has records of this type; `has` lists the types it does have.
    NoSuchType {
        /// Its record types.
        has: Vec<u16>,
    },
    /// The service has no server of this address family configured: NODATA whatever the health.
    NoFamily,
    /// Health: no server of this family or transport is healthy now (or none at all, under
    /// `all_down = "nodata"`): NODATA that lasts one answer TTL.
    Health,
    /// A zone transfer (AXFR, IXFR) of a name in a zone: REFUSED, nothing transfers the zone.
    Transfer,
}

/// Takes the next step of a cycle of `n` (at least 1) from a worker's counter.
#[inline]
fn step(counter: Option<&mut u32>, n: usize) -> usize {
    let Some(counter) = counter.filter(|_| n > 1) else { return 0 };
    let i = (*counter as usize).min(n - 1);
    *counter = if i + 1 >= n { 0 } else { i as u32 + 1 };
    i
}

impl Snapshot {
    /// A snapshot that manages no names.
    pub fn empty() -> Snapshot {
        let layout = Layout {
            names: HashMap::default(),
            services: Vec::new(),
            dynamic: 0,
            steering: Steering::default(),
            hosts: Arc::default(),
            any_udp: Template::empty(true, rcode::NOERROR),
            negatives: first_negatives(),
            zones: HashMap::default(),
            zone_lengths: [0; 4],
        };
        Snapshot {
            generation: UNPUBLISHED,
            built_at: Instant::now(),
            rotation_slots: 0,
            layout: Arc::new(layout),
            answers: Box::new([]),
        }
    }

    /// Builds every answer for `config` given `health`. `round` is the probe round (on-duty).
    /// Its generation is stamped when a [`SnapshotHandle`] publishes it.
    pub fn build(config: &Config, health: &Serving, round: u64) -> Result<Snapshot, EncodeError> {
        Snapshot::build_with(&Arc::new(Layout::new(config)?), config, health, round)
    }

    /// Builds the health-dependent answers for `config` given `health` on `layout`, which must
    /// have been made from the same configuration (a layout of another one is made afresh).
    pub fn build_with(
        layout: &Arc<Layout>,
        config: &Config,
        health: &Serving,
        round: u64,
    ) -> Result<Snapshot, EncodeError> {
        if !layout.fits(config) {
            return Snapshot::build(config, health, round);
        }
        let views = layout.steering.views();
        let mut b =
            Builder { answers: Vec::with_capacity(layout.dynamic * views), keys: Vec::new(), dynamic: None, slots: 0 };
        for view in 0..views {
            let prefer = layout.steering.prefer(view);
            for (i, (service, names)) in config.services.iter().zip(&layout.services).enumerate() {
                b.service(service, names, health, i, round, prefer)?;
            }
            b.dynamic = Some(b.answers.len());
        }
        Ok(Snapshot {
            generation: UNPUBLISHED,
            built_at: Instant::now(),
            rotation_slots: b.slots,
            layout: layout.clone(),
            answers: b.answers.into(),
        })
    }

    /// The number its handle gave it when publishing it: one more than the snapshot it replaced
    /// (the first published is 1; 0 until published). Workers reset their rotation state when it
    /// changes.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes the health-dependent answers hold (diagnostics and benches).
    pub fn answer_bytes(&self) -> usize {
        let template = |t: &Template| t.body.len() + std::mem::size_of::<Template>();
        self.answers
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                // A view that answers as view 0 shares its encoding: count it once.
                _ if i >= self.layout.dynamic && self.shared(i) => 0,
                Answers::Fixed(t) => template(t),
                Answers::Cycle { templates, .. } => templates.iter().map(template).sum(),
                Answers::Ring { ring, starts, .. } => ring.size() + starts.as_ref().map_or(0, |s| s.len() * 4),
            })
            .sum()
    }

    /// Whether answer `i` (of a view after 0) shares its memory with view 0's.
    fn shared(&self, i: usize) -> bool {
        let base = &self.answers[i % self.layout.dynamic.max(1)];
        match (&self.answers[i], base) {
            (Answers::Fixed(a), Answers::Fixed(b)) => Arc::ptr_eq(a, b),
            (Answers::Cycle { templates: a, .. }, Answers::Cycle { templates: b, .. }) => Arc::ptr_eq(a, b),
            (Answers::Ring { ring: a, .. }, Answers::Ring { ring: b, .. }) => a.shares(b),
            _ => false,
        }
    }

    /// Whether answers depend on the client's address (`[[sites]]`): only then does a worker
    /// read the source address for [`Snapshot::lookup`].
    #[inline]
    pub fn steers(&self) -> bool {
        self.layout.steering.is_active()
    }

    /// The view a client gets (0 when nothing is steered).
    pub fn view(&self, client: IpAddr) -> usize {
        self.layout.steering.view(client)
    }

    /// Looks up a lower-case wire name and type for `client` (read only when [`Snapshot::steers`]).
    /// `rotation` is the worker's counter array, at least `rotation_slots` long; `udp` says
    /// whether the reply goes over UDP.
    #[inline]
    pub fn lookup(
        &self,
        name: &[u8],
        qtype: u16,
        udp: bool,
        client: Option<IpAddr>,
        rotation: &mut [u32],
    ) -> Lookup<'_> {
        // RFC 8482: ANY over UDP gets the synthesized HINFO (nothing to amplify with); over TCP,
        // where the source is proven, one RRset, the A set, the useful one for a SIP name. A name
        // with no records at all (an empty non-terminal) gets its NODATA: no HINFO to stand for.
        let any_udp = qtype == rtype::ANY && udp;
        let wanted = if qtype == rtype::ANY { rtype::A } else { qtype };
        let Some(entry) = self.layout.names.get(name) else {
            return match self.layout.hosts.lookup(name, wanted) {
                None => self.unknown(name),
                Some(_) if any_udp => Lookup::Answer(&self.layout.any_udp),
                Some(records) => Lookup::Window(records),
            };
        };
        if any_udp && (!entry.by_type.is_empty() || self.layout.hosts.contains(name)) {
            return Lookup::Answer(&self.layout.any_udp);
        }
        let Some((_, found)) = entry.by_type.iter().find(|(t, _)| *t == wanted) else {
            // A type the SIP name does not have may still be the hosts file's (its A for an SRV
            // owner, or a hosts name inside a zone): the SIP name wins a clash only for the types
            // it answers.
            return match self.layout.hosts.lookup(name, wanted) {
                Some(records) if records.count > 0 => Lookup::Window(records),
                _ => Lookup::Answer(self.layout.negative(self.layout.nodata(entry, qtype))),
            };
        };
        let index = match found {
            Entry::Fixed(t) => return Lookup::Answer(t),
            Entry::Health(i) => *i,
        };
        let index = match client {
            Some(ip) if self.steers() => self.layout.steering.view(ip) * self.layout.dynamic + index,
            _ => index,
        };
        match self.answers.get(index) {
            None => Lookup::Answer(self.layout.negative(entry.nodata)),
            Some(Answers::Fixed(t)) => Lookup::Answer(t),
            Some(Answers::Cycle { slot, templates }) => {
                Lookup::Answer(&templates[step(rotation.get_mut(*slot), templates.len())])
            }
            Some(Answers::Ring { slot, ring, len, starts }) => {
                let start = match starts {
                    None => step(rotation.get_mut(*slot), ring.count()),
                    Some(order) => order[step(rotation.get_mut(*slot), order.len())] as usize,
                };
                Lookup::Window(ring.window(start, *len))
            }
        }
    }

    /// A name with no answers of its own: NXDOMAIN with the SOA inside a zone, else not managed.
    #[inline]
    fn unknown(&self, name: &[u8]) -> Lookup<'_> {
        // Without zones (a resolver's set-up) this is the only extra step for a relayed name.
        if self.layout.zones.is_empty() {
            return Lookup::NotManaged;
        }
        match self.layout.zone_of(name) {
            Some((_, zone)) => Lookup::Answer(self.layout.negative(zone.nxdomain)),
            None => Lookup::NotManaged,
        }
    }

    /// Whether a lower-case wire name is a zone apex dnlb serves or lies under one: such names
    /// are answered here, never relayed, whatever the class.
    pub fn in_zone(&self, name: &[u8]) -> bool {
        !self.layout.zones.is_empty() && self.layout.zone_of(name).is_some()
    }

    /// Why `client` gets no records for a lower-case wire name and type, if it gets none, as the
    /// lookup decides it (diagnostics; `None`: records, or a name dnlb does not manage).
    pub fn negative(&self, name: &[u8], qtype: u16, client: Option<IpAddr>) -> Option<Negative> {
        let wanted = if qtype == rtype::ANY { rtype::A } else { qtype };
        // The types the hosts file gives this name records of.
        let hosts: Vec<u16> = [rtype::A, rtype::AAAA, rtype::PTR]
            .into_iter()
            .filter(|&t| self.layout.hosts.lookup(name, t).is_some_and(|w| w.count > 0))
            .collect();
        let Some(entry) = self.layout.names.get(name) else {
            if !hosts.is_empty() {
                return (!hosts.contains(&wanted)).then_some(Negative::NoSuchType { has: hosts });
            }
            let (at, _) = self.layout.zone_of(name)?;
            return Some(Negative::NoSuchName { zone: encode::presentation(&name[at..]) });
        };
        if self.layout.nodata(entry, qtype) == NO_TRANSFER {
            return Some(Negative::Transfer);
        }
        if entry.by_type.is_empty() && hosts.is_empty() {
            return Some(Negative::EmptyNonTerminal);
        }
        let Some((_, found)) = entry.by_type.iter().find(|(t, _)| *t == wanted) else {
            if hosts.contains(&wanted) {
                return None;
            }
            let mut has: Vec<u16> = entry.by_type.iter().map(|(t, _)| *t).collect();
            has.extend(hosts);
            return Some(Negative::NoSuchType { has });
        };
        let Entry::Health(i) = found else { return None };
        let view = client.filter(|_| self.steers()).map_or(0, |ip| self.layout.steering.view(ip));
        match self.answers.get(view * self.layout.dynamic + i)? {
            Answers::Fixed(t) if t.counts[0] == 0 && t.flags & 0xf == u16::from(rcode::NOERROR) => {
                let config = self.layout.services.iter().any(|s| Arc::ptr_eq(t, &s.config_nodata));
                Some(if config { Negative::NoFamily } else { Negative::Health })
            }
            _ => None,
        }
    }

    /// The managed names but the hosts file's, lower-case wire format (for tests and diagnostics).
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.layout.names.keys().map(|k| &k[..])
    }
}

impl Layout {
    /// The names of `config` and their fixed answers; the health-dependent ones get an index.
    pub fn new(config: &Config) -> Result<Layout, EncodeError> {
        let mut layout = Layout {
            names: HashMap::default(),
            services: Vec::with_capacity(config.services.len()),
            dynamic: 0,
            steering: Steering::new(config),
            // Parsed and encoded when the file was read: nothing per name here, so neither the
            // prober nor a reload redoes that work.
            hosts: config.hosts.clone(),
            any_udp: Template::empty(true, rcode::NOERROR),
            negatives: first_negatives(),
            zones: HashMap::default(),
            zone_lengths: [0; 4],
        };
        for service in config.services.iter().filter(|s| s.authority.is_some()) {
            layout.zone(service);
        }
        for service in &config.services {
            layout.service(service, config.zone_for(&service.name))?;
        }
        layout.close_zones();
        let any_owner = encode::name("any.invalid")?;
        layout.any_udp =
            encode::template(&any_owner, rtype::ANY, vec![encode::rfc8482_record(&any_owner, ANY_TTL)], vec![])?;
        Ok(layout)
    }

    /// The negative answer for a type `entry` does not have: its NODATA, but REFUSED for a zone
    /// transfer of a name in a zone.
    #[inline]
    fn nodata(&self, entry: &NameAnswers, qtype: u16) -> usize {
        let transfer = qtype == rtype::AXFR || qtype == rtype::IXFR;
        if transfer && entry.nodata != PLAIN_NODATA {
            NO_TRANSFER
        } else {
            entry.nodata
        }
    }

    /// Negative answer `i`.
    #[inline]
    fn negative(&self, i: usize) -> &Template {
        // Indices are made with the vector; the plain NODATA is the safe reading of any other.
        self.negatives.get(i).unwrap_or(&self.negatives[PLAIN_NODATA])
    }

    /// The zone holding a lower-case wire name, and the offset where its apex starts in it: the
    /// longest enclosing apex, one hash per label at most.
    #[cold]
    fn zone_of(&self, name: &[u8]) -> Option<(usize, Zone)> {
        let mut at = 0;
        while let Some(&len) = name.get(at) {
            if len == 0 {
                return None;
            }
            let rest = name.len() - at;
            if self.zone_lengths[(rest >> 6) & 3] & (1 << (rest & 63)) != 0 {
                if let Some(zone) = self.zones.get(&name[at..]) {
                    return Some((at, *zone));
                }
            }
            at += 1 + usize::from(len);
        }
        None
    }

    /// The negative answer `rcode` of the zone `service` is the apex of, MINIMUM `minimum`.
    fn negative_of(service: &ServiceConfig, rcode: u8, minimum: u32) -> Template {
        match &service.authority {
            Some(a) => encode::negative_template(rcode, &SoaNames::of(service, a).soa(a, minimum)),
            None => Template::empty(true, rcode),
        }
    }

    /// Registers the zone whose apex is `service`'s name: its NXDOMAIN and NODATA.
    fn zone(&mut self, service: &ServiceConfig) {
        let Some(a) = &service.authority else { return };
        let at = self.negatives.len();
        self.negatives.push(Layout::negative_of(service, rcode::NXDOMAIN, a.negative_ttl));
        self.negatives.push(Layout::negative_of(service, rcode::NOERROR, a.negative_ttl));
        let apex = wire_name(&service.name);
        // A validated name is at most 255 octets in wire format; the mask keeps any other in range.
        self.zone_lengths[(apex.len() >> 6) & 3] |= 1 << (apex.len() & 63);
        self.zones.insert(apex.into(), Zone { nxdomain: at, nodata: at + 1 });
    }

    /// Gives every name inside a zone the zone's NODATA, and adds the empty non-terminals
    /// between a name and its apex (`_udp.sip.example.test` above `_sip._udp...`): they exist,
    /// so they get NODATA, never NXDOMAIN (RFC 8020), or a resolver minimising its questions
    /// (RFC 9156) would take the names below them for absent.
    fn close_zones(&mut self) {
        if self.zones.is_empty() {
            return;
        }
        let mut keys: Vec<Box<[u8]>> = self.names.keys().cloned().collect();
        // A hosts-file name inside a zone answers the zone's NODATA for a type it lacks, and the
        // names between it and the apex exist (empty non-terminals): it joins the names here with
        // no records of its own (its records stay the hosts table's, which a lookup reads next).
        // Only with a zone configured is anything done per hosts name.
        let hosts = self.hosts.clone();
        for name in hosts.names() {
            if !self.names.contains_key(name) && self.zone_of(name).is_some() {
                self.names.insert(name.into(), NameAnswers { by_type: Vec::new(), nodata: PLAIN_NODATA });
                keys.push(name.into());
            }
        }
        for key in keys {
            let Some((apex, zone)) = self.zone_of(&key) else { continue };
            if let Some(name) = self.names.get_mut(&key) {
                name.nodata = zone.nodata;
            }
            let mut at = 0;
            while at < apex {
                at += 1 + usize::from(key[at]);
                if at < apex && !self.names.contains_key(&key[at..]) {
                    self.names.insert(key[at..].into(), NameAnswers { by_type: Vec::new(), nodata: zone.nodata });
                }
            }
        }
    }

    /// Whether `config` has the shape this layout was made for (the same services and SRV
    /// names), so its health-dependent answers line up.
    fn fits(&self, config: &Config) -> bool {
        Arc::ptr_eq(&self.hosts, &config.hosts)
            && config.services.len() == self.services.len()
            && config.services.iter().zip(&self.services).all(|(s, l)| {
                Transport::ALL.iter().filter(|t| s.servers.iter().any(|v| v.transports.contains(t))).count()
                    == l.srv.len()
            })
    }

    /// Makes sure `owner` is a managed name (NODATA for every type it has no entry for).
    fn touch(&mut self, owner: &Name) {
        let key: Box<[u8]> = wire_name(&owner.to_ascii()).into();
        self.names.entry(key).or_insert(NameAnswers { by_type: Vec::new(), nodata: PLAIN_NODATA });
    }

    fn add(&mut self, owner: &Name, qtype: u16, entry: Entry) -> Result<(), EncodeError> {
        let key: Box<[u8]> = wire_name(&owner.to_ascii()).into();
        let name = match self.names.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(NameAnswers { by_type: Vec::new(), nodata: PLAIN_NODATA })
            }
        };
        // A name configured twice (a host name equal to a service name) keeps its first answers.
        if name.by_type.iter().all(|(t, _)| *t != qtype) {
            name.by_type.push((qtype, entry));
        }
        Ok(())
    }

    /// A health-dependent answer for `(owner, qtype)`: the next index.
    fn add_health(&mut self, owner: &Name, qtype: u16) -> Result<(), EncodeError> {
        let index = self.dynamic;
        self.dynamic += 1;
        self.add(owner, qtype, Entry::Health(index))
    }

    /// The names of `service`, which lies in the zone of `zone` (itself when it has an
    /// `authority`; `None`: in no zone).
    fn service(&mut self, service: &ServiceConfig, zone: Option<&ServiceConfig>) -> Result<(), EncodeError> {
        let owner = encode::name(&service.name)?;
        // The order here is the order in which `Builder::service` pushes the answers.
        self.add_health(&owner, rtype::A)?;
        self.add_health(&owner, rtype::AAAA)?;
        let mut srv = Vec::new();
        for transport in Transport::ALL {
            if !service.servers.iter().any(|s| s.transports.contains(&transport)) {
                continue;
            }
            let srv_owner = encode::name(&format!("{}.{}", transport.srv_label(), service.name))?;
            self.add_health(&srv_owner, rtype::SRV)?;
            let wire = wire_name(&srv_owner.to_ascii()).into();
            srv.push((transport, srv_owner, wire));
        }
        self.add_health(&owner, rtype::NAPTR)?;
        let targets = service.servers.iter().map(|s| wire_name(&s.host).into()).collect();
        let sites = service
            .servers
            .iter()
            .map(|s| s.site.as_deref().and_then(|n| self.steering.site(n)).unwrap_or(NO_SITE))
            .collect();
        let glue = service.servers.iter().map(|s| zone.is_none_or(|z| within(&s.host, &z.name))).collect();
        let (config_nodata, health_nodata) = match zone.and_then(|z| z.authority.as_ref().map(|a| (z, a))) {
            Some((z, a)) => (
                Layout::negative_of(z, rcode::NOERROR, a.negative_ttl),
                Layout::negative_of(z, rcode::NOERROR, service.ttl),
            ),
            None => (Template::empty(true, rcode::NOERROR), Template::empty(true, rcode::NOERROR)),
        };
        self.services.push(ServiceLayout {
            owner: owner.clone(),
            srv,
            targets,
            glue,
            sites,
            config_nodata: Arc::new(config_nodata),
            health_nodata: Arc::new(health_nodata),
            in_zone: zone.is_some(),
        });
        if let Some(a) = &service.authority {
            self.apex(service, a, &owner)?;
        }

        // Each SRV target answers A/AAAA with its own address(es).
        let mut hosts: HashMap<&str, Vec<IpAddr>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for s in &service.servers {
            let addrs = hosts.entry(&s.host).or_insert_with(|| {
                order.push(&s.host);
                Vec::new()
            });
            if !addrs.contains(&s.address) {
                addrs.push(s.address);
            }
        }
        for host in order {
            self.add_addresses(host, &hosts[host], service.ttl)?;
        }
        Ok(())
    }

    /// The SOA and NS answers at a zone's apex, and the addresses of its name servers inside it.
    fn apex(&mut self, service: &ServiceConfig, a: &Authority, owner: &Name) -> Result<(), EncodeError> {
        let names = SoaNames::of(service, a);
        let soa = encode::soa_record(&names.soa(a, a.negative_ttl))?;
        let soa = encode::template(owner, rtype::SOA, vec![soa], vec![])?;
        self.add(owner, rtype::SOA, Entry::Fixed(soa))?;
        let mut ns = Vec::with_capacity(a.ns.len());
        let mut glue = Vec::new();
        for n in &a.ns {
            let target = encode::name(n)?;
            ns.push(encode::ns_record(owner, a.ns_ttl, &target));
            // Glue only for names inside the zone: a resolver learns any other from its own zone.
            for (_, addrs) in a.glue.iter().filter(|(g, _)| g == n) {
                glue.extend(addrs.iter().map(|ip| encode::address_record(&target, a.ns_ttl, *ip)));
            }
        }
        let ns = encode::template(owner, rtype::NS, ns, glue)?;
        self.add(owner, rtype::NS, Entry::Fixed(ns))?;
        for (name, addrs) in &a.glue {
            self.add_addresses(name, addrs, a.ns_ttl)?;
        }
        Ok(())
    }

    /// A and AAAA answers (one fixed template each) for a host name with these addresses; a
    /// family it has no address of is left to the name's NODATA.
    fn add_addresses(&mut self, name: &str, addrs: &[IpAddr], ttl: u32) -> Result<(), EncodeError> {
        let owner = encode::name(name)?;
        for (qtype, v6) in [(rtype::A, false), (rtype::AAAA, true)] {
            let mut body = Vec::new();
            let mut count = 0u16;
            for a in addrs.iter().filter(|a| a.is_ipv6() == v6) {
                encode::append_address_record(&mut body, ttl, *a);
                count = count.saturating_add(1);
            }
            if count == 0 {
                // Make sure the name exists (its NODATA), without a record type of its own.
                self.touch(&owner);
                continue;
            }
            let template =
                Template { flags: flag::AA, counts: [count, 0, 0], required_len: body.len(), body: body.into() };
            self.add(&owner, qtype, Entry::Fixed(template))?;
        }
        Ok(())
    }
}

/// The names a zone's SOA carries, in lower-case wire format.
struct SoaNames {
    /// The apex: the SOA's owner.
    apex: Vec<u8>,
    /// MNAME: the first name server.
    mname: Vec<u8>,
    /// RNAME: the hostmaster's mailbox.
    rname: Vec<u8>,
}

impl SoaNames {
    /// The SOA names of the zone `service` is the apex of.
    fn of(service: &ServiceConfig, a: &Authority) -> SoaNames {
        let apex = wire_name(&service.name);
        // Validation insists on a name server; the apex stands in should a file get past it.
        let mname = a.ns.first().map_or_else(|| apex.clone(), |n| wire_name(n));
        SoaNames { apex, mname, rname: wire_name(&a.hostmaster) }
    }

    /// The SOA of `a`'s zone with MINIMUM (and TTL) `minimum`.
    fn soa<'a>(&'a self, a: &Authority, minimum: u32) -> encode::Soa<'a> {
        encode::Soa {
            apex: &self.apex,
            mname: &self.mname,
            rname: &self.rname,
            serial: a.serial,
            refresh: a.refresh,
            retry: a.retry,
            expire: a.expire,
            minimum,
        }
    }
}

/// Builds the health-dependent answers, view after view, each in the order [`Layout::service`]
/// numbered them.
struct Builder {
    answers: Vec<Answers>,
    /// Per answer of view 0, the servers it was made from: a later view that picks the same
    /// servers shares view 0's answer instead of encoding its own.
    keys: Vec<Vec<usize>>,
    /// Answers per view, once view 0 is built.
    dynamic: Option<usize>,
    slots: usize,
}

/// The key of an answer that is the same in every view (an all-down reply, NAPTR).
const SAME_IN_EVERY_VIEW: Vec<usize> = Vec::new();

impl Builder {
    fn slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// Pushes the answer made from the servers `key`: made by `make`, unless this is a later
    /// view and view 0's answer at the same place was made from the same servers (then shared).
    fn push(
        &mut self,
        key: Vec<usize>,
        make: impl FnOnce(&mut Builder) -> Result<Answers, EncodeError>,
    ) -> Result<(), EncodeError> {
        match self.dynamic.filter(|&d| d > 0) {
            Some(dynamic) => {
                let base = self.answers.len() % dynamic;
                let answer = if self.keys.get(base) == Some(&key) { self.answers[base].clone() } else { make(self)? };
                self.answers.push(answer);
            }
            None => {
                let answer = make(self)?;
                self.answers.push(answer);
                self.keys.push(key);
            }
        }
        Ok(())
    }

    /// The servers (indices) a view preferring `prefer` answers with, of those `eligible`: the
    /// eligible ones of the first preferred site that has any, else all eligible ones.
    fn steer(names: &ServiceLayout, prefer: &[SiteId], n: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        for site in prefer {
            let here: Vec<usize> = (0..n).filter(|&i| names.sites[i] == *site && eligible(i)).collect();
            if !here.is_empty() {
                return here;
            }
        }
        (0..n).filter(|&i| eligible(i)).collect()
    }

    fn service(
        &mut self,
        service: &ServiceConfig,
        names: &ServiceLayout,
        health: &Serving,
        index: usize,
        round: u64,
        prefer: &[SiteId],
    ) -> Result<(), EncodeError> {
        let owner = &names.owner;
        let ttl = service.ttl;
        let n = service.servers.len();
        let up = health.up.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let latency_weights = health.latency_weights.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let server_weights = health.weights.get(index).map(Vec::as_slice).unwrap_or(&[]);
        let healthy = |i: usize| up.get(i).is_some_and(|t| !t.is_empty());
        let any_up = (0..n).any(healthy);
        // The all-down policy: last-good arrives here as the prober's substitute up-list, so
        // what is left to decide is serving everything, SERVFAIL or NODATA.
        // In a zone, NODATA because of health carries an SOA whose MINIMUM is the answer TTL.
        let fallback = |any: bool| -> Option<Arc<Template>> {
            match (any, service.all_down) {
                (true, _) | (false, AllDown::ServeAll | AllDown::LastGood) => None,
                (false, AllDown::Servfail) => Some(Arc::new(Template::empty(false, rcode::SERVFAIL))),
                (false, AllDown::Nodata) => Some(names.health_nodata.clone()),
            }
        };

        for v6 in [false, true] {
            let family = |i: usize| service.servers[i].address.is_ipv6() == v6;
            let configured = (0..n).any(family);
            if names.in_zone && !configured {
                // The zone never has this family, whatever the health: the negative TTL's NODATA.
                self.push(SAME_IN_EVERY_VIEW, |_| Ok(Answers::Fixed(names.config_nodata.clone())))?;
                continue;
            }
            if let Some(t) = fallback(any_up) {
                self.push(SAME_IN_EVERY_VIEW, |_| Ok(Answers::Fixed(t)))?;
                continue;
            }
            let serving = if any_up {
                Builder::steer(names, prefer, n, |i| healthy(i) && family(i))
            } else {
                (0..n).filter(|&i| family(i)).collect()
            };
            self.push(serving.clone(), |b| {
                let mut seen: HashSet<IpAddr> = HashSet::with_capacity(serving.len());
                let mut records: Vec<u8> = Vec::new();
                let mut weights: Vec<u32> = Vec::new();
                for &i in &serving {
                    let s = &service.servers[i];
                    if seen.insert(s.address) {
                        encode::append_address_record(&mut records, ttl, s.address);
                        weights.push(match service.policy {
                            Policy::Latency => latency_weights.get(i).copied().unwrap_or(select::FASTEST_WEIGHT),
                            Policy::Weighted => server_weights.get(i).copied().unwrap_or(u32::from(s.weight)),
                            _ => u32::from(s.weight),
                        });
                    }
                }
                let k = weights.len();
                let record_len = if v6 { encode::AAAA_RECORD_LEN } else { encode::A_RECORD_LEN };
                Ok(match Ring::new(&records, record_len, k).filter(|_| k > 0) {
                    None if configured => Answers::Fixed(names.health_nodata.clone()),
                    None => Answers::Fixed(names.config_nodata.clone()),
                    Some(ring) => {
                        let rotation = select::rotation(k, &weights, service.policy, service.answers, round);
                        let starts = match rotation.starts {
                            select::Starts::Each(_) => None,
                            select::Starts::Order(order) => Some(order.into()),
                        };
                        Answers::Ring { slot: b.slot(), ring, len: rotation.len, starts }
                    }
                })
            })?;
        }

        // Per transport SRV sets, from the servers healthy on that transport.
        let mut naptrs = Vec::new();
        for (transport, srv_owner, srv_wire) in &names.srv {
            let transport = *transport;
            let order = Transport::ALL.iter().position(|t| *t == transport).unwrap_or(0) as u16;
            let configured = |i: usize| service.servers[i].transports.contains(&transport);
            let up_here = |i: usize| up.get(i).is_some_and(|t| t.contains(&transport));
            let chosen = Builder::steer(names, prefer, n, |i| configured(i) && up_here(i));
            let any = !chosen.is_empty();
            let members: Vec<usize> = if any { chosen } else { (0..n).filter(|&i| configured(i)).collect() };
            naptrs.push(encode::naptr_record(owner, ttl, 50 + 20 * order, transport.naptr_service(), srv_owner));
            if let Some(t) = fallback(any) {
                self.push(SAME_IN_EVERY_VIEW, |_| Ok(Answers::Fixed(t)))?;
                continue;
            }
            self.push(members.clone(), |b| {
                let mut templates = Vec::with_capacity(members.len().div_ceil(SRV_CHUNK));
                for chunk in members.chunks(SRV_CHUNK) {
                    let records: Vec<encode::SrvMember<'_>> = chunk
                        .iter()
                        .enumerate()
                        .map(|(j, &i)| {
                            let s = &service.servers[i];
                            // One glue record per (host, address), whatever the ports.
                            let same = |&o: &usize| {
                                service.servers[o].host == s.host && service.servers[o].address == s.address
                            };
                            encode::SrvMember {
                                priority: s.priority,
                                weight: s.weight,
                                port: s.port_for(transport),
                                target: &names.targets[i],
                                address: s.address,
                                glue: names.glue[i] && !chunk[..j].iter().any(same),
                            }
                        })
                        .collect();
                    templates.push(encode::srv_template(srv_wire, ttl, &records));
                }
                Ok(match templates.len() {
                    0 => Answers::Fixed(names.config_nodata.clone()),
                    1 => Answers::Fixed(Arc::new(templates.remove(0))),
                    _ => Answers::Cycle { slot: b.slot(), templates: templates.into() },
                })
            })?;
        }
        // NAPTR names every configured transport whatever the health: the same in every view.
        let naptr = match fallback(any_up) {
            Some(t) => t,
            None => Arc::new(encode::template(owner, rtype::NAPTR, naptrs, vec![])?),
        };
        self.push(SAME_IN_EVERY_VIEW, |_| Ok(Answers::Fixed(naptr)))
    }
}

/// The publish/read handle shared by the prober, the control plane and every worker. It is
/// the one owner of the generation count: whoever publishes, the handle stamps the snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<Published>);

/// What a [`SnapshotHandle`] shares: the current snapshot, and the generation last stamped.
#[derive(Debug)]
struct Published {
    current: ArcSwap<Snapshot>,
    /// Held while a snapshot is stamped and stored, so two publishers (the prober, a reload)
    /// never give out one generation twice nor store out of order.
    generation: Mutex<u64>,
}

impl SnapshotHandle {
    /// A handle holding `snapshot`, published as generation 1.
    pub fn new(mut snapshot: Snapshot) -> SnapshotHandle {
        snapshot.generation = 1;
        SnapshotHandle(Arc::new(Published { current: ArcSwap::from_pointee(snapshot), generation: Mutex::new(1) }))
    }

    /// A handle that serves `snapshot` as it is (the control side asks a copy of the running one).
    pub fn from_arc(snapshot: Arc<Snapshot>) -> SnapshotHandle {
        let generation = Mutex::new(snapshot.generation);
        SnapshotHandle(Arc::new(Published { current: ArcSwap::new(snapshot), generation }))
    }

    /// The snapshot now, owned (off the hot path: the control side).
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.current.load_full()
    }

    /// The current snapshot; workers call this once per batch.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.0.current.load()
    }

    /// Stamps `snapshot` with the next generation and makes it current in one store; returns the
    /// generation.
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        // A publisher that panicked while holding the lock left the count as it was.
        let mut last = self.0.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        snapshot.generation = *last;
        self.0.current.store(Arc::new(snapshot));
        *last
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
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{RData, RecordType};
        let text = CONFIG
            .replace("transports = [\"udp\", \"tcp\"]", "transports = [\"udp\", \"tcp\", \"tls\"]\ntls_port = 5071");
        let config = Config::parse(&text).unwrap();
        let snap = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let mut rot = vec![0; snap.rotation_slots];
        let mut ports = |label: &str| -> Vec<u16> {
            let mut q = Message::new(7, MessageType::Query, OpCode::Query);
            q.add_query(Query::query(Name::from_ascii(format!("{label}.sip.example.test.")).unwrap(), RecordType::SRV));
            let packet = q.to_vec().unwrap();
            let mut name = [0u8; crate::dns::query::MAX_NAME_LEN];
            let query = crate::dns::query::parse(&packet, &mut name).unwrap();
            let Lookup::Answer(t) = snap.lookup(&name[..query.name_len], rtype::SRV, false, None, &mut rot) else {
                panic!("an SRV answer for {label}");
            };
            let mut out = vec![0u8; 4096];
            let n =
                crate::dns::answer::write_reply(&packet, &query, t, crate::dns::answer::DnsTransport::Tcp, &mut out)
                    .len;
            let m = Message::from_vec(&out[..n]).unwrap();
            let mut ports: Vec<u16> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(s.port),
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
        let snap = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let mut names: Vec<String> = snap.names().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        names.sort();
        assert_eq!(names.len(), 7, "{names:?}");
        let mut rot = vec![0; snap.rotation_slots];
        let first = |snap: &Snapshot, rot: &mut [u32]| match snap.lookup(
            &wire_name("sip.example.test"),
            rtype::A,
            true,
            None,
            rot,
        ) {
            Lookup::Window(w) => w.records.to_vec(),
            other => panic!("an address window: {other:?}"),
        };
        let a = first(&snap, &mut rot);
        let b = first(&snap, &mut rot);
        let c = first(&snap, &mut rot);
        assert_ne!(a, b, "round robin rotates");
        assert_eq!(a, c, "two servers, so the third answer is the first again");
        assert!(matches!(snap.lookup(&wire_name("other.test"), rtype::A, true, None, &mut rot), Lookup::NotManaged));
        match snap.lookup(&wire_name("sip.example.test"), 16, true, None, &mut rot) {
            Lookup::Answer(t) => assert_eq!(t.counts, [0, 0, 0]),
            other => panic!("NODATA: {other:?}"),
        }
    }

    const SITES: &str = r#"
[server]
listen = ["127.0.0.1:5353"]
[[service]]
name = "sip.example.test"
[[service.server]]
address = "192.0.2.1"
site = "east"
transports = ["udp", "tcp"]
[[service.server]]
address = "192.0.2.2"
site = "east"
[[service.server]]
address = "192.0.2.3"
site = "west"
transports = ["udp", "tcp"]
[[sites]]
clients = ["10.0.0.0/8"]
prefer = ["east", "west"]
[[sites]]
clients = ["10.9.0.0/16"]
prefer = ["west"]
"#;

    /// The addresses (A) or SRV targets' glue (SRV) of one answer to `client`.
    fn answer(snap: &Snapshot, name: &str, qtype: u16, client: &str) -> Vec<u8> {
        let mut rot = vec![0; snap.rotation_slots];
        let client = Some(client.parse().unwrap());
        match snap.lookup(&wire_name(name), qtype, false, client, &mut rot) {
            // The last octet of each address record.
            Lookup::Window(w) => w.records.chunks(w.record_len).map(|r| r[r.len() - 1]).collect(),
            Lookup::Answer(t) => {
                let mut lasts: Vec<u8> =
                    t.body.windows(4).filter(|w| w[0] == 192 && w[1] == 0 && w[2] == 2).map(|w| w[3]).collect();
                lasts.sort_unstable();
                lasts
            }
            Lookup::NotManaged => panic!("managed"),
        }
    }

    #[test]
    fn sites_steer_each_client_to_its_first_healthy_site() {
        let config = Config::parse(SITES).unwrap();
        let mut health = Serving::all_up(&config);
        let snap = Snapshot::build(&config, &health, 0).unwrap();
        let a = |snap: &Snapshot, client: &str| {
            let mut got = answer(snap, "sip.example.test", rtype::A, client);
            got.sort_unstable();
            got
        };
        assert_eq!(a(&snap, "10.1.2.3"), vec![1, 2], "east first");
        assert_eq!(a(&snap, "10.9.2.3"), vec![3], "the longer prefix prefers west");
        assert_eq!(a(&snap, "192.0.2.200"), vec![1, 2, 3], "no match: every healthy server");
        assert_eq!(answer(&snap, "_sip._tcp.sip.example.test", rtype::SRV, "10.1.2.3"), vec![1]);
        assert_eq!(answer(&snap, "_sip._tcp.sip.example.test", rtype::SRV, "10.9.0.1"), vec![3]);
        assert_eq!(answer(&snap, "_sip._tcp.sip.example.test", rtype::SRV, "203.0.113.1"), vec![1, 3]);

        // East's TCP server fails over TCP only: TCP clients of east move to west; UDP stays.
        health.up[0][0] = vec![Transport::Udp];
        let snap = Snapshot::build(&config, &health, 0).unwrap();
        assert_eq!(answer(&snap, "_sip._tcp.sip.example.test", rtype::SRV, "10.1.2.3"), vec![3]);
        assert_eq!(a(&snap, "10.1.2.3"), vec![1, 2]);

        // All of east down: its clients get west.
        health.up[0][0].clear();
        health.up[0][1].clear();
        let snap = Snapshot::build(&config, &health, 0).unwrap();
        assert_eq!(a(&snap, "10.1.2.3"), vec![3]);
        // West down too, and no other site left: the all-down policy (serve-all).
        health.up[0][2].clear();
        let snap = Snapshot::build(&config, &health, 0).unwrap();
        assert_eq!(a(&snap, "10.9.2.3"), vec![1, 2, 3]);
    }

    #[test]
    fn views_that_answer_alike_share_their_encoding() {
        let config = Config::parse(SITES).unwrap();
        let mut health = Serving::all_up(&config);
        // East down: view "east, west" answers with west alone, as view "west" does; view 0
        // answers with west too (the only healthy server), so all three share one ring.
        health.up[0][0].clear();
        health.up[0][1].clear();
        let snap = Snapshot::build(&config, &health, 0).unwrap();
        let one_view = Snapshot::build(&Config { sites: Vec::new(), ..config.clone() }, &health, 0).unwrap();
        assert_eq!(snap.answer_bytes(), one_view.answer_bytes(), "three views, one encoding");
    }

    #[test]
    fn the_apex_walk_finds_the_zone_at_a_label_boundary_only() {
        let text = format!(
            "{CONFIG}[service.authority]\nns = [\"dnlb1.example.net\"]\n[[service]]\nname = \"example.tesx\"\n[[service.server]]\naddress = \"127.0.0.21\"\n"
        );
        let config = Config::parse(&text).unwrap();
        let snap = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let mut rot = vec![0; snap.rotation_slots];
        let rcode_of = |name: &str, rot: &mut [u32]| match snap.lookup(&wire_name(name), rtype::A, true, None, rot) {
            Lookup::Answer(t) => Some((t.flags & 0xf) as u8),
            Lookup::Window(_) => Some(rcode::NOERROR),
            Lookup::NotManaged => None,
        };
        assert_eq!(rcode_of("a.b.sip.example.test", &mut rot), Some(rcode::NXDOMAIN));
        assert_eq!(rcode_of("sip.example.test", &mut rot), Some(rcode::NOERROR));
        // Same length as the apex, another name; a suffix that is not a label; the parent.
        assert_eq!(rcode_of("sip.example.tesx", &mut rot), None);
        assert_eq!(rcode_of("xsip.example.test", &mut rot), None);
        assert_eq!(rcode_of("example.test", &mut rot), None);
        assert_eq!(rcode_of("other.example.tesx", &mut rot), None, "a service without authority is no zone");
        assert!(snap.in_zone(&wire_name("_udp.sip.example.test")) && !snap.in_zone(&wire_name("test")));
        assert_eq!(
            snap.negative(&wire_name("_udp.sip.example.test"), rtype::A, None),
            Some(Negative::EmptyNonTerminal)
        );
    }

    #[test]
    fn any_over_udp_at_an_empty_non_terminal_is_nodata_not_a_synthesized_hinfo() {
        // RFC 8482's HINFO stands for records a name has; an empty non-terminal has none, and a
        // resolver would cache the made-up HINFO for an hour.
        let text = format!("{CONFIG}[service.authority]\nns = [\"dnlb1.example.net\"]\n");
        let config = Config::parse(&text).unwrap();
        let snap = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let mut rot = vec![0; snap.rotation_slots];
        for udp in [true, false] {
            match snap.lookup(&wire_name("_udp.sip.example.test"), rtype::ANY, udp, None, &mut rot) {
                Lookup::Answer(t) => {
                    assert_eq!((t.counts, t.flags & 0xf), ([0, 1, 0], 0), "udp {udp}: NODATA with the SOA")
                }
                other => panic!("udp {udp}: {other:?}"),
            }
        }
        match snap.lookup(&wire_name("sip.example.test"), rtype::ANY, true, None, &mut rot) {
            Lookup::Answer(t) => assert_eq!(t.counts, [1, 0, 0], "a name with records: the HINFO"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hosts_name_inside_a_zone_answers_as_the_zone_does() {
        let text = format!("{CONFIG}[service.authority]\nns = [\"dnlb1.example.net\"]\n");
        let mut config = Config::parse(&text).unwrap();
        config.hosts = Arc::new(Hosts::parse("192.0.2.7 pbx.office.sip.example.test\n", 60).unwrap());
        let snap = Snapshot::build(&config, &Serving::all_up(&config), 0).unwrap();
        let mut rot = vec![0; snap.rotation_slots];
        let pbx = wire_name("pbx.office.sip.example.test");
        assert!(matches!(snap.lookup(&pbx, rtype::A, true, None, &mut rot), Lookup::Window(w) if w.count == 1));
        // Another type: the zone's NODATA, with its SOA; the name above it exists (no NXDOMAIN).
        let Lookup::Answer(t) = snap.lookup(&pbx, rtype::SRV, true, None, &mut rot) else { panic!("no NODATA") };
        assert_eq!((t.flags & 0xf, t.counts[0], t.counts[1]), (0, 0, 1));
        let Lookup::Answer(t) = snap.lookup(&wire_name("office.sip.example.test"), rtype::A, true, None, &mut rot)
        else {
            panic!("no answer for the empty non-terminal")
        };
        assert_eq!((t.flags & 0xf, t.counts[0]), (0, 0), "NODATA, not NXDOMAIN");
        assert_eq!(snap.negative(&pbx, rtype::SRV, None), Some(Negative::NoSuchType { has: vec![rtype::A] }));
        assert_eq!(snap.negative(&pbx, rtype::A, None), None);
    }
}

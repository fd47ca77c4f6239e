//! What this instance knows of the fleet, read from etcd: members, verdicts, drains. Keys and
//! values are parsed here, bounded before use, and whatever does not fit is refused and counted;
//! a hostile or broken etcd can cost this instance a bounded amount of memory and no answer.
//!
//! ```text
//!  etcd key/value (read or watched) ─► Fleet::put / delete ─► bounded parse ─► members · verdicts · drains
//!                                                          └─ refused (size, syntax, unknown server or member): counted
//!  Fleet::view(link) ─► FleetView: members, conflicts, every server's probers, their verdicts, drains
//! ```
//!
//! Keys, under `/dnlb/v1/<farm>/`:
//!
//! | key | lease | value (JSON) |
//! | --- | --- | --- |
//! | `members/<name>` | the member's | `{"site":"east","config":"<16 hex>","epoch":N}` |
//! | `verdict/<service>/<address:port>/<member>` | the member's | `{"epoch":N,"udp":{"up":true,"rtt_us":900,"oc":0},"tcp":{...}}` |
//!
//! The epoch is the member's (re)attach time in milliseconds since 1970: a member that comes
//! back from a detached spell writes its member key with a new epoch first, then its verdicts.
//! A verdict whose epoch is not its member's current one is from before the spell (etcd extends
//! every lease when it elects a leader, so such a verdict can outlive a whole outage) and counts
//! for nothing until it is rewritten.
//! | `drain/<service>/<address:port>` | none: durable | `{"by":"edge-1","at":1767225600}` |

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::core::{assign, transport_from, transport_name, Seen};
use crate::config::Transport;

/// The longest key read; longer ones are refused.
pub const MAX_KEY: usize = 512;
/// The longest value read; longer ones are refused.
pub const MAX_VALUE: usize = 1024;
/// The most members one farm may have; members past it are refused (and counted).
pub const MAX_MEMBERS: usize = 64;
/// The longest member, farm or site name.
pub const MAX_NAME: usize = 63;
/// The largest RTT a verdict may carry (a minute), so arithmetic on it cannot overflow.
pub const MAX_RTT_US: u32 = 60_000_000;

/// Whether `name` may name a member, a farm or a site: 1 to 63 letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The key prefix of `farm`.
pub fn prefix(farm: &str) -> String {
    format!("/dnlb/v1/{farm}/")
}

/// A member's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    /// Its site, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The hash of its probe-relevant configuration ([`super::core::config_hash`]).
    pub config: String,
    /// Its attach epoch (see the module doc).
    #[serde(default)]
    pub epoch: u64,
    /// Its process and host, for a refused second instance of the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One transport's verdict as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeenValue {
    up: bool,
    #[serde(default)]
    rtt_us: u32,
    #[serde(default)]
    oc: u8,
}

/// A drain's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainValue {
    /// The member it was given at.
    pub by: String,
    /// When, in seconds since 1970.
    pub at: u64,
}

/// A verdict key's value: the writer's epoch and, per transport, what it saw.
#[derive(Debug, Serialize, Deserialize)]
struct VerdictValue {
    epoch: u64,
    #[serde(flatten)]
    seen: BTreeMap<String, SeenValue>,
}

/// The value of one member's verdict key, written in its attach `epoch`: per transport, what
/// it saw.
pub fn encode_verdict(epoch: u64, seen: &[(Transport, Seen)]) -> String {
    let seen = seen
        .iter()
        .map(|(t, s)| (transport_name(*t).to_string(), SeenValue { up: s.up, rtt_us: s.rtt_us, oc: s.oc }))
        .collect();
    serde_json::to_string(&VerdictValue { epoch, seen }).unwrap_or_default()
}

/// Why a key or value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key is longer than [`MAX_KEY`] or the value than [`MAX_VALUE`].
    #[error("too large")]
    TooLarge,
    /// Not under our prefix, or of no kind we write.
    #[error("unknown key")]
    UnknownKey,
    /// The value does not parse, or a field is out of bounds.
    #[error("malformed value")]
    Malformed,
    /// A verdict or drain of a server this configuration does not have.
    #[error("unknown server")]
    UnknownServer,
    /// A verdict of an instance that is not a member (no member key).
    #[error("not a member")]
    NotMember,
    /// More than [`MAX_MEMBERS`] members.
    #[error("too many members")]
    TooManyMembers,
}

/// A member as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: Option<String>,
    /// Its configuration hash.
    pub config: String,
    /// Its attach epoch.
    pub epoch: u64,
    /// The etcd revision its key was last written at (when it last attached).
    pub revision: i64,
}

/// One server's verdict from one member, per transport.
pub type Verdicts = Vec<(Transport, Seen)>;

/// The fleet as last read, bounded.
#[derive(Debug)]
pub struct Fleet {
    prefix: String,
    me: String,
    servers: Vec<String>,
    index: HashMap<String, usize>,
    members: BTreeMap<String, Member>,
    /// Per server: member name → the epoch it wrote in and its verdicts.
    verdicts: Vec<BTreeMap<String, (u64, Verdicts)>>,
    drains: Vec<Option<DrainValue>>,
    refused: u64,
}

/// What the prober and status need of the fleet at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    /// Members that share this instance's configuration hash, this instance included, by name.
    pub members: Vec<Member>,
    /// Members whose configuration hash differs: they get no share of this duty.
    pub conflicts: Vec<Member>,
    /// Per server: its current probers (names), best first.
    pub probers: Vec<Vec<String>>,
    /// Per server: whether this instance is one of its probers.
    pub duty: Vec<bool>,
    /// Per server: the verdicts of its current probers other than this instance.
    pub remote: Vec<Vec<(String, Verdicts)>>,
    /// Per server: drained cluster-wide, by whom and when.
    pub drains: Vec<Option<DrainValue>>,
}

impl Fleet {
    /// An empty fleet for `farm`, seen from member `me`, over `servers` (keys as
    /// [`super::core::server_key`] makes them, in the configuration's order).
    pub fn new(farm: &str, me: &str, servers: Vec<String>) -> Fleet {
        let index = servers.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        let n = servers.len();
        Fleet {
            prefix: prefix(farm),
            me: me.to_string(),
            servers,
            index,
            members: BTreeMap::new(),
            verdicts: vec![BTreeMap::new(); n],
            drains: vec![None; n],
            refused: 0,
        }
    }

    /// Keys and values refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The servers' keys, in the configuration's order.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The prefix every key is under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Forgets everything (before a full read of the prefix).
    pub fn clear(&mut self) {
        self.members.clear();
        self.verdicts.iter_mut().for_each(BTreeMap::clear);
        self.drains.iter_mut().for_each(|d| *d = None);
    }

    /// The kind and rest of a key under the prefix.
    fn split<'k>(&self, key: &'k [u8]) -> Result<(&'k str, &'k str), Refusal> {
        if key.len() > MAX_KEY {
            return Err(Refusal::TooLarge);
        }
        let key = std::str::from_utf8(key).map_err(|_| Refusal::UnknownKey)?;
        let rest = key.strip_prefix(self.prefix.as_str()).ok_or(Refusal::UnknownKey)?;
        rest.split_once('/').ok_or(Refusal::UnknownKey)
    }

    /// A key was written with `value`. Refusals are counted; what was there under the key
    /// stays only if the refusal is about the value (a broken write leaves the last good one
    /// out: it is removed, so garbage can never keep a server down).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Refusal> {
        self.put_at(key, value, 0)
    }

    /// [`Fleet::put`] of a key etcd last modified at `revision` (a member key's revision says
    /// when its member last attached; see [`Fleet::view`]).
    pub fn put_at(&mut self, key: &[u8], value: &[u8], revision: i64) -> Result<(), Refusal> {
        let r = self.put_inner(key, value, revision);
        if r.is_err() {
            self.refused = self.refused.saturating_add(1);
            let _gone = self.delete(key);
        }
        r
    }

    fn put_inner(&mut self, key: &[u8], value: &[u8], revision: i64) -> Result<(), Refusal> {
        let (kind, rest) = self.split(key)?;
        if value.len() > MAX_VALUE {
            return Err(Refusal::TooLarge);
        }
        match kind {
            "members" => {
                if !valid_name(rest) {
                    return Err(Refusal::UnknownKey);
                }
                let v: MemberValue = serde_json::from_slice(value).map_err(|_| Refusal::Malformed)?;
                let config_ok = v.config.len() == 16 && v.config.bytes().all(|b| b.is_ascii_hexdigit());
                if !config_ok || v.site.as_deref().is_some_and(|s| !valid_name(s)) {
                    return Err(Refusal::Malformed);
                }
                if !self.members.contains_key(rest) && self.members.len() >= MAX_MEMBERS {
                    return Err(Refusal::TooManyMembers);
                }
                let member =
                    Member { name: rest.to_string(), site: v.site, config: v.config, epoch: v.epoch, revision };
                self.members.insert(rest.to_string(), member);
                Ok(())
            }
            "verdict" => {
                let (server, member) = rest.rsplit_once('/').ok_or(Refusal::UnknownKey)?;
                let i = *self.index.get(server).ok_or(Refusal::UnknownServer)?;
                if !self.members.contains_key(member) {
                    return Err(Refusal::NotMember);
                }
                let value: VerdictValue = serde_json::from_slice(value).map_err(|_| Refusal::Malformed)?;
                let mut seen = Vec::with_capacity(value.seen.len());
                for (t, v) in value.seen {
                    let t = transport_from(&t).ok_or(Refusal::Malformed)?;
                    if v.rtt_us > MAX_RTT_US || v.oc > 100 {
                        return Err(Refusal::Malformed);
                    }
                    seen.push((t, Seen { up: v.up, rtt_us: v.rtt_us, oc: v.oc }));
                }
                self.verdicts[i].insert(member.to_string(), (value.epoch, seen));
                Ok(())
            }
            "drain" => {
                let i = *self.index.get(rest).ok_or(Refusal::UnknownServer)?;
                let v: DrainValue = serde_json::from_slice(value).map_err(|_| Refusal::Malformed)?;
                if !valid_name(&v.by) {
                    return Err(Refusal::Malformed);
                }
                self.drains[i] = Some(v);
                Ok(())
            }
            _ => Err(Refusal::UnknownKey),
        }
    }

    /// A key was deleted (or its lease expired). Returns whether it held anything.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Ok((kind, rest)) = self.split(key) else { return false };
        match kind {
            "members" => {
                let gone = self.members.remove(rest).is_some();
                // Its verdicts go with its lease; drop them now, whatever order etcd reports in.
                for v in &mut self.verdicts {
                    v.remove(rest);
                }
                gone
            }
            "verdict" => rest
                .rsplit_once('/')
                .and_then(|(server, member)| self.index.get(server).map(|&i| self.verdicts[i].remove(member).is_some()))
                .unwrap_or(false),
            "drain" => self.index.get(rest).is_some_and(|&i| self.drains[i].take().is_some()),
            _ => false,
        }
    }

    /// Who probes what, and what they see, for an instance whose configuration hash is
    /// `my_config`, with `k` probers per server. This instance counts as a member whether or
    /// not its own key was read back yet.
    pub fn view(&self, my_config: &str, my_site: Option<&str>, k: usize) -> FleetView {
        self.view_since(my_config, my_site, k, 0)
    }

    /// [`Fleet::view`] by an instance just back from a detached spell that began after etcd
    /// revision `distrust_through`: members whose key is no newer than that have not attached
    /// since (they may be cut off still, their verdicts kept by etcd's lease extension), so
    /// their verdicts do not count yet. Duty is computed from every member as usual.
    pub fn view_since(&self, my_config: &str, my_site: Option<&str>, k: usize, distrust_through: i64) -> FleetView {
        let mut members: Vec<Member> = Vec::new();
        let mut conflicts = Vec::new();
        for m in self.members.values() {
            if m.name == self.me {
                continue;
            }
            if m.config == my_config {
                members.push(m.clone());
            } else {
                conflicts.push(m.clone());
            }
        }
        members.push(Member {
            name: self.me.clone(),
            site: my_site.map(str::to_string),
            config: my_config.to_string(),
            epoch: 0,
            revision: 0,
        });
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let keys: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        let assigned = assign(&keys, &names, k);
        let probers: Vec<Vec<String>> =
            assigned.iter().map(|p| p.iter().map(|&i| names[i].to_string()).collect()).collect();
        let duty = probers.iter().map(|p| p.contains(&self.me)).collect();
        let remote = probers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Only verdicts written in their member's current epoch count.
                p.iter()
                    .filter(|m| **m != self.me)
                    .filter_map(|m| {
                        let member = self.members.get(m)?;
                        let (e, v) = self.verdicts[i].get(m)?;
                        (*e == member.epoch && (distrust_through == 0 || member.revision > distrust_through))
                            .then(|| (m.clone(), v.clone()))
                    })
                    .collect()
            })
            .collect();
        FleetView { members, conflicts, probers, duty, remote, drains: self.drains.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet::new("voice", "a", vec!["s/127.0.4.11:5060".into(), "s/127.0.4.12:5060".into()])
    }

    const HASH: &str = "0123456789abcdef";

    fn member(f: &mut Fleet, name: &str, config: &str) {
        f.put(format!("/dnlb/v1/voice/members/{name}").as_bytes(), format!("{{\"config\":\"{config}\"}}").as_bytes())
            .unwrap();
    }

    #[test]
    fn members_verdicts_and_drains_make_the_view() {
        let mut f = fleet();
        member(&mut f, "b", HASH);
        member(&mut f, "c", "fedcba9876543210");
        let v = f.view(HASH, None, 1);
        assert_eq!(v.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(v.conflicts.len(), 1);
        // k = 1, two members, two servers: one each.
        assert_eq!(v.duty.iter().filter(|d| **d).count(), 1);
        let theirs = v.duty.iter().position(|d| !*d).unwrap();
        let key = format!("/dnlb/v1/voice/verdict/{}/b", f.servers()[theirs]);
        f.put(
            key.as_bytes(),
            br#"{"epoch":0,"udp":{"up":false,"rtt_us":0,"oc":0},"tcp":{"up":true,"rtt_us":1200,"oc":50}}"#,
        )
        .unwrap();
        let v = f.view(HASH, None, 1);
        assert_eq!(
            v.remote[theirs],
            vec![(
                "b".to_string(),
                vec![
                    (Transport::Tcp, Seen { up: true, rtt_us: 1200, oc: 50 }),
                    (Transport::Udp, Seen { up: false, rtt_us: 0, oc: 0 })
                ]
            )]
        );
        // A verdict of the conflicting member is kept but is no current prober's.
        let other = format!("/dnlb/v1/voice/verdict/{}/c", f.servers()[theirs]);
        f.put(other.as_bytes(), br#"{"epoch":0,"udp":{"up":true}}"#).unwrap();
        assert_eq!(f.view(HASH, None, 1).remote[theirs].len(), 1);
        // b's lease ends: its member key and its verdicts go.
        assert!(f.delete(b"/dnlb/v1/voice/members/b"));
        let v = f.view(HASH, None, 1);
        assert!(v.duty.iter().all(|d| *d));
        assert!(v.remote.iter().all(|r| r.is_empty()));
        f.put(b"/dnlb/v1/voice/drain/s/127.0.4.12:5060", br#"{"by":"b","at":5}"#).unwrap();
        assert_eq!(f.view(HASH, None, 1).drains[1], Some(DrainValue { by: "b".into(), at: 5 }));
        assert!(f.delete(b"/dnlb/v1/voice/drain/s/127.0.4.12:5060"));
        // The encoder writes what the parser reads.
        let text = encode_verdict(0, &[(Transport::Udp, Seen { up: true, rtt_us: 7, oc: 3 })]);
        member(&mut f, "b", HASH);
        f.put(format!("/dnlb/v1/voice/verdict/{}/b", f.servers()[0]).as_bytes(), text.as_bytes()).unwrap();
        assert_eq!(f.verdicts[0]["b"], (0, vec![(Transport::Udp, Seen { up: true, rtt_us: 7, oc: 3 })]));
        assert_eq!(f.refused(), 0);
        // b comes back from a detached spell: a new epoch, and its old verdicts count for
        // nothing until it writes them again.
        let epoch = format!("{{\"config\":\"{HASH}\",\"epoch\":9}}");
        f.put(b"/dnlb/v1/voice/members/b", epoch.as_bytes()).unwrap();
        let v = f.view(HASH, None, 2);
        assert!(v.remote.iter().all(|r| r.is_empty()), "{:?}", v.remote);
        let text = encode_verdict(9, &[(Transport::Udp, Seen { up: false, rtt_us: 0, oc: 0 })]);
        f.put(format!("/dnlb/v1/voice/verdict/{}/b", f.servers()[0]).as_bytes(), text.as_bytes()).unwrap();
        assert_eq!(f.view(HASH, None, 2).remote[0].len(), 1);
        // Back from a spell of its own that began after revision 40: b's key (revision 30) is
        // older, so b may not have attached since; its verdicts wait. Duty does not change.
        f.put_at(b"/dnlb/v1/voice/members/b", epoch.as_bytes(), 30).unwrap();
        let wary = f.view_since(HASH, None, 2, 40);
        assert!(wary.remote[0].is_empty());
        assert_eq!(wary.probers, f.view(HASH, None, 2).probers);
        f.put_at(b"/dnlb/v1/voice/members/b", epoch.as_bytes(), 41).unwrap();
        assert_eq!(f.view_since(HASH, None, 2, 40).remote[0].len(), 1);
    }

    #[test]
    fn hostile_keys_and_values_are_refused_and_counted() {
        let mut f = fleet();
        member(&mut f, "b", HASH);
        let good_key = "/dnlb/v1/voice/verdict/s/127.0.4.11:5060/b";
        let cases: Vec<(Vec<u8>, Vec<u8>, Refusal)> = vec![
            (good_key.into(), vec![b' '; MAX_VALUE + 1], Refusal::TooLarge),
            (
                format!("/dnlb/v1/voice/verdict/{}/b", "x".repeat(MAX_KEY)).into_bytes(),
                b"{}".to_vec(),
                Refusal::TooLarge,
            ),
            (good_key.into(), b"{\"udp\":{\"up\":tru".to_vec(), Refusal::Malformed),
            (good_key.into(), br#"{"epoch":0,"udp":{"up":true,"rtt_us":99999999999}}"#.to_vec(), Refusal::Malformed),
            (good_key.into(), br#"{"epoch":0,"udp":{"up":true,"oc":101}}"#.to_vec(), Refusal::Malformed),
            (good_key.into(), br#"{"epoch":0,"sctp":{"up":true}}"#.to_vec(), Refusal::Malformed),
            (good_key.into(), br#"[1,2,3]"#.to_vec(), Refusal::Malformed),
            (b"/dnlb/v1/voice/verdict/s/10.9.9.9:5060/b".to_vec(), br#"{}"#.to_vec(), Refusal::UnknownServer),
            (b"/dnlb/v1/voice/verdict/s/127.0.4.11:5060/zz".to_vec(), br#"{}"#.to_vec(), Refusal::NotMember),
            (b"/dnlb/v1/voice/nonsense".to_vec(), br#"{}"#.to_vec(), Refusal::UnknownKey),
            (b"/dnlb/v1/other/members/x".to_vec(), br#"{}"#.to_vec(), Refusal::UnknownKey),
            (
                b"/dnlb/v1/voice/members/bad name".to_vec(),
                format!("{{\"config\":\"{HASH}\"}}").into_bytes(),
                Refusal::UnknownKey,
            ),
            (b"/dnlb/v1/voice/members/d".to_vec(), br#"{"config":"short"}"#.to_vec(), Refusal::Malformed),
            (
                b"/dnlb/v1/voice/members/d".to_vec(),
                format!("{{\"config\":\"{HASH}\",\"site\":\"a/b\"}}").into_bytes(),
                Refusal::Malformed,
            ),
            (
                b"/dnlb/v1/voice/drain/s/127.0.4.11:5060".to_vec(),
                br#"{"by":"../x","at":1}"#.to_vec(),
                Refusal::Malformed,
            ),
            (vec![0xff, 0xfe], b"{}".to_vec(), Refusal::UnknownKey),
        ];
        let n = cases.len() as u64;
        for (k, v, why) in cases {
            assert_eq!(f.put(&k, &v), Err(why), "{}", String::from_utf8_lossy(&k));
        }
        assert_eq!(f.refused(), n);
        // A good verdict overwritten by garbage is gone, not kept.
        f.put(good_key.as_bytes(), br#"{"epoch":0,"udp":{"up":false}}"#).unwrap();
        assert!(f.put(good_key.as_bytes(), b"garbage").is_err());
        assert!(f.verdicts[0].is_empty());
        // Members are bounded.
        for i in 0..MAX_MEMBERS + 10 {
            let _maybe = f.put(
                format!("/dnlb/v1/voice/members/m{i}").as_bytes(),
                format!("{{\"config\":\"{HASH}\"}}").as_bytes(),
            );
        }
        assert_eq!(f.members.len(), MAX_MEMBERS);
        assert_eq!(f.view(HASH, None, 2).members.len(), MAX_MEMBERS + 1);
    }

    #[test]
    fn names() {
        assert!(valid_name("edge-1.east_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}

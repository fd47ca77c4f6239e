//! Topology steering: which sites' servers a client is answered with. Pure, no I/O.
//!
//! `[[sites]]` entries map client prefixes to an ordered list of preferred sites. Each distinct
//! list is a *view*; the snapshot pre-encodes every managed answer once per view (view 0: no
//! preference, every healthy server), and a worker picks the view by the query's source address:
//!
//! ```text
//!  source address ─► longest matching prefix (a hash per prefix length, longest first)
//!                 ─► view v ─► answers[v] (the healthy servers of the first preferred site with any)
//!  no match       ─► view 0 ─► every healthy server
//! ```

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;

use crate::config::{Config, SiteRule};
use crate::hasher::NameHasher;
use crate::prefix::Prefix;

/// A site's number: its index in [`Steering::site_names`].
pub type SiteId = u16;

/// A server without a site.
pub const NO_SITE: SiteId = SiteId::MAX;

type Table<K> = Vec<(u8, HashMap<K, u16, BuildHasherDefault<NameHasher>>)>;

/// The prefix table and the distinct preference lists, from the configuration alone.
#[derive(Debug, Default)]
pub struct Steering {
    /// Every site a server names, sorted; a [`SiteId`] indexes it.
    site_names: Vec<String>,
    /// The distinct preference lists; view `v` (from 1) prefers `lists[v - 1]`.
    lists: Vec<Vec<SiteId>>,
    /// IPv4 prefixes per length, longest first: the network's prefix bits (shifted down, so the
    /// hash sees them in its low bits) to its view.
    v4: Table<u32>,
    /// IPv6 prefixes per length, longest first.
    v6: Table<u128>,
}

impl Steering {
    /// The steering of `config` (none without `[[sites]]`).
    pub fn new(config: &Config) -> Steering {
        let mut site_names: Vec<String> =
            config.services.iter().flat_map(|s| &s.servers).filter_map(|v| v.site.clone()).collect();
        site_names.sort_unstable();
        site_names.dedup();
        let mut steering = Steering { site_names, ..Steering::default() };
        for rule in &config.sites {
            let list: Vec<SiteId> = rule.prefer.iter().filter_map(|name| steering.site(name)).collect();
            let view = match steering.lists.iter().position(|l| *l == list) {
                Some(i) => i + 1,
                None => {
                    steering.lists.push(list);
                    steering.lists.len()
                }
            } as u16;
            for p in &rule.clients {
                let p = p.masked();
                match p.network {
                    IpAddr::V4(n) => insert(&mut steering.v4, p.len, bits4(u32::from(n), p.len), view),
                    IpAddr::V6(n) => insert(&mut steering.v6, p.len, bits6(u128::from(n), p.len), view),
                }
            }
        }
        steering.v4.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        steering.v6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        steering
    }

    /// Whether any client is steered (else every query is view 0 and the address is not read).
    #[inline]
    pub fn is_active(&self) -> bool {
        !self.lists.is_empty()
    }

    /// Views the snapshot encodes: view 0 and one per distinct preference list.
    pub fn views(&self) -> usize {
        self.lists.len() + 1
    }

    /// The preferred sites of view `view` (none for view 0).
    pub fn prefer(&self, view: usize) -> &[SiteId] {
        view.checked_sub(1).and_then(|i| self.lists.get(i)).map_or(&[], Vec::as_slice)
    }

    /// The number of a site name, if some server names it.
    pub fn site(&self, name: &str) -> Option<SiteId> {
        self.site_names.binary_search_by(|n| n.as_str().cmp(name)).ok().map(|i| i as SiteId)
    }

    /// The view of a client: its longest matching prefix's, or 0. An IPv4-mapped IPv6 source
    /// counts as IPv4.
    #[inline]
    pub fn view(&self, client: IpAddr) -> usize {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        let found = match client {
            IpAddr::V4(a) => self.v4.iter().find_map(|(len, t)| t.get(&bits4(u32::from(a), *len))),
            IpAddr::V6(a) => self.v6.iter().find_map(|(len, t)| t.get(&bits6(u128::from(a), *len))),
        };
        found.map_or(0, |v| usize::from(*v))
    }
}

/// The first `len` bits of an IPv4 address, shifted down.
#[inline]
fn bits4(addr: u32, len: u8) -> u32 {
    addr.checked_shr(32 - u32::from(len.min(32))).unwrap_or(0)
}

/// The first `len` bits of an IPv6 address, shifted down.
#[inline]
fn bits6(addr: u128, len: u8) -> u128 {
    addr.checked_shr(128 - u32::from(len.min(128))).unwrap_or(0)
}

fn insert<K: std::hash::Hash + Eq>(table: &mut Table<K>, len: u8, network: K, view: u16) {
    let at = match table.iter().position(|(l, _)| *l == len) {
        Some(i) => i,
        None => {
            table.push((len, HashMap::default()));
            table.len() - 1
        }
    };
    // Validation refuses a prefix listed twice; should one slip through, the first entry wins.
    table[at].1.entry(network).or_insert(view);
}

/// The `[[sites]]` entry and prefix that apply to `client`, longest prefix first (for `explain`).
pub fn rule_for(rules: &[SiteRule], client: IpAddr) -> Option<(usize, Prefix)> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.clients.iter().map(move |p| (i, *p)))
        .filter(|(_, p)| p.contains(client))
        .max_by_key(|(_, p)| p.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sites: &str) -> Config {
        Config::parse(&format!(
            r#"
[server]
listen = ["127.0.0.1:5353"]
[[service]]
name = "sip.example.test"
[[service.server]]
address = "192.0.2.1"
site = "east"
[[service.server]]
address = "192.0.2.2"
site = "west"
{sites}
"#
        ))
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_lists_are_shared() {
        let c = config(
            r#"
[[sites]]
clients = ["10.0.0.0/8", "2001:db8::/32"]
prefer = ["east", "west"]
[[sites]]
clients = ["10.9.0.0/16"]
prefer = ["west", "east"]
[[sites]]
clients = ["172.16.0.0/12"]
prefer = ["east", "west"]
"#,
        );
        let s = Steering::new(&c);
        assert_eq!(s.views(), 3, "two distinct lists and view 0");
        let east = s.site("east").unwrap();
        let west = s.site("west").unwrap();
        let v = |a: &str| s.view(a.parse().unwrap());
        assert_eq!(s.prefer(v("10.1.2.3")), &[east, west]);
        assert_eq!(s.prefer(v("10.9.2.3")), &[west, east], "the /16 beats the /8");
        assert_eq!(v("172.20.0.1"), v("10.1.2.3"), "an identical list is one view");
        assert_eq!(v("::ffff:10.9.0.1"), v("10.9.2.3"), "IPv4-mapped counts as IPv4");
        assert_eq!(s.prefer(v("2001:db8::5")), &[east, west]);
        assert_eq!(v("192.0.2.200"), 0);
        assert_eq!(v("2001:db9::1"), 0);
        assert_eq!(rule_for(&c.sites, "10.9.0.1".parse().unwrap()).map(|(i, _)| i), Some(1));
        assert!(!Steering::new(&config("")).is_active());
    }

    #[test]
    fn a_zero_length_prefix_catches_every_other_client() {
        let s = Steering::new(&config(
            "[[sites]]\nclients = [\"0.0.0.0/0\", \"::/0\"]\nprefer = [\"west\"]\n[[sites]]\nclients = [\"10.0.0.0/8\"]\nprefer = [\"east\"]\n",
        ));
        let west = s.site("west").unwrap();
        let east = s.site("east").unwrap();
        assert_eq!(s.prefer(s.view("192.0.2.1".parse().unwrap())), &[west]);
        assert_eq!(s.prefer(s.view("2001:db8::1".parse().unwrap())), &[west]);
        assert_eq!(s.prefer(s.view("10.255.0.1".parse().unwrap())), &[east]);
    }

    #[test]
    fn validation_names_unknown_sites_and_repeated_prefixes() {
        let text = |sites: &str| {
            format!(
                "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"s.test\"\n[[service.server]]\naddress = \"192.0.2.1\"\nsite = \"east\"\n{sites}"
            )
        };
        let problems = Config::parse(&text(
            "[[sites]]\nclients = [\"10.0.0.0/8\"]\nprefer = [\"east\", \"north\"]\n[[sites]]\nclients = [\"10.1.2.3/8\"]\nprefer = [\"east\"]\n",
        ))
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["sites[0].prefer[1]", "sites[1].clients[0]"], "{problems:?}");
        assert!(problems[0].message.contains("`north`") && problems[0].message.contains("east"), "{problems:?}");
        assert!(problems[1].message.contains("listed twice"), "{problems:?}");
        assert!(Config::parse(&text("[[sites]]\nclients = []\nprefer = [\"east\"]\n")).is_err());
        assert!(Config::parse(&text("[[sites]]\nclients = [\"10.0.0.0/8\"]\nprefer = []\n")).is_err());
        assert!(Config::parse(&text("[[sites]]\nclients = [\"10.0.0.0/8\", \"10.0.0.0/16\"]\nprefer = [\"east\"]\n"))
            .is_ok());
    }
}

//! What a reload may change, decided in one place: every key of the configuration file is either
//! applied to the running instance or named, in the reply and the log, as needing a restart.
//!
//! ```text
//!  running config ─┐
//!                  ├─► plan() ─► Plan { config: the new file, with the RESTART keys' running values,
//!  fresh config ───┘                    need_restart: the RESTART keys the file changed }
//! ```
//!
//! [`RESTART`] lists the keys that sockets, threads and privileges were made from at start-up;
//! [`LIVE`] lists the keys a reload applies; [`REFUSED`] the keys validation refuses outright. A
//! table's presence is a key of its own (`[relay]`: the relay's sockets exist from the start or
//! not at all, while its keys change in place). The tests walk every key of the file
//! ([`crate::config::keys`]) and fail for one in none of these lists or in two, so a key added
//! later cannot be forgotten.

use crate::config::Config;

/// A key a reload cannot change: its name, whether two configurations differ in it, and how the
/// running value is put back into the configuration that a reload applies.
pub struct Fixed {
    /// The key or table, as the file writes it (`server.listen`, `[relay]`).
    pub key: &'static str,
    /// Whether `running` and `fresh` differ in this key.
    differs: fn(running: &Config, fresh: &Config) -> bool,
    /// Puts `running`'s value of this key into `fresh`.
    keep: fn(running: &Config, fresh: &mut Config),
}

/// A [`Fixed`] key that is one field of the validated configuration.
macro_rules! field {
    ($key:literal, $($field:ident).+) => {
        Fixed {
            key: $key,
            differs: |running, fresh| running.$($field).+ != fresh.$($field).+,
            keep: |running, fresh| fresh.$($field).+ = running.$($field).+.clone(),
        }
    };
}

/// A [`Fixed`] table whose presence is the key: added or removed, it keeps the running one.
macro_rules! section {
    ($key:literal, $($field:ident).+) => {
        Fixed {
            key: $key,
            differs: |running, fresh| running.$($field).+.is_some() != fresh.$($field).+.is_some(),
            keep: |running, fresh| {
                if running.$($field).+.is_some() != fresh.$($field).+.is_some() {
                    fresh.$($field).+ = running.$($field).+.clone();
                }
            },
        }
    };
}

/// A [`Fixed`] key inside an optional table (`server.xdp.interface`): it differs only where both
/// files have the table (the table's presence is a key of its own).
macro_rules! in_section {
    ($key:literal, $($table:ident).+, $field:ident) => {
        Fixed {
            key: $key,
            differs: |running, fresh| match (&running.$($table).+, &fresh.$($table).+) {
                (Some(a), Some(b)) => a.$field != b.$field,
                _ => false,
            },
            keep: |running, fresh| {
                if let (Some(a), Some(b)) = (&running.$($table).+, &mut fresh.$($table).+) {
                    b.$field = a.$field.clone();
                }
            },
        }
    };
}

/// A [`Fixed`] key of `[cluster]`: the membership (lease, member key, etcd client) is made once
/// at start, so any change keeps the whole running section.
macro_rules! cluster_field {
    ($key:literal, $field:ident) => {
        Fixed {
            key: $key,
            differs: |running, fresh| {
                running.cluster.as_ref().map(|c| &c.$field) != fresh.cluster.as_ref().map(|c| &c.$field)
            },
            keep: |running, fresh| fresh.cluster = running.cluster.clone(),
        }
    };
}

/// The keys that need a restart: the sockets, threads and privileges made from them at start-up
/// stay as they are. A reload keeps their running values and names the ones the file changed.
pub const RESTART: &[Fixed] = &[
    field!("server.listen", server.listen),
    field!("server.tcp", server.tcp),
    field!("server.workers", server.workers),
    field!("server.io", server.io),
    field!("server.pin_workers", server.pin_workers),
    field!("server.max_udp_payload", server.max_udp_payload),
    field!("server.tcp_idle_timeout_ms", server.tcp_idle_timeout),
    field!("server.tcp_query_timeout_ms", server.tcp_query_timeout),
    field!("server.tcp_max_connections", server.tcp_max_connections),
    field!("server.tcp_max_connections_per_client", server.tcp_max_connections_per_client),
    field!("server.runtime_dir", server.runtime_dir),
    // Privileges are dropped once, after every socket is bound; a process that dropped them
    // cannot take them back, and one that kept them must not seem to have dropped them.
    field!("server.user", server.user),
    // The XSKs, the XDP program and the capabilities to make them exist only at start.
    section!("[server.xdp]", server.xdp),
    in_section!("server.xdp.interface", server.xdp, interface),
    in_section!("server.xdp.required", server.xdp, required),
    field!("probe.core", probe.core),
    // The relay's sockets, and its descriptor in each worker's event loop, exist from the start
    // or not at all: its keys change in place, its presence does not.
    section!("[relay]", relay),
    // The metrics endpoint is bound once, before privileges are dropped, and its serving loop
    // made with its client list and bound.
    section!("[metrics]", metrics),
    in_section!("metrics.listen", metrics, listen),
    in_section!("metrics.allow", metrics, allow),
    in_section!("metrics.max_connections", metrics, max_connections),
    // The fleet's membership is taken once; the farm's servers and probe settings (the config
    // hash) do change by reload, through the keys above.
    section!("[cluster]", cluster),
    cluster_field!("cluster.etcd", etcd),
    cluster_field!("cluster.farm", farm),
    cluster_field!("cluster.name", name),
    cluster_field!("cluster.probers_per_server", probers_per_server),
    cluster_field!("cluster.lease_ttl_s", lease_ttl),
    cluster_field!("cluster.site", site),
    cluster_field!("cluster.user", auth),
    cluster_field!("cluster.password_file", auth),
    cluster_field!("cluster.ca_file", tls),
    cluster_field!("cluster.cert_file", tls),
    cluster_field!("cluster.key_file", tls),
];

/// The keys a reload applies: services and their servers, probing (a new prober starts, carrying
/// the health of the servers that stay), the hosts file, the relay's settings, rate limiting and
/// sites.
pub const LIVE: &[&str] = &[
    // Required, so present in every file a reload accepts: nothing to change.
    "[server]",
    "[probe]",
    "probe.enabled",
    "probe.interval_ms",
    "probe.timeout_ms",
    "probe.retransmit_ms",
    "probe.method",
    "probe.rise",
    "probe.fall",
    "probe.down_codes",
    "probe.start",
    "probe.max_retry_after_s",
    "probe.loss_copies",
    "[[service]]",
    "service.name",
    "service.policy",
    "service.answers",
    "service.ttl",
    "service.all_down",
    "service.probe_method",
    "service.tls_verify",
    "service.tls_ca_file",
    "[[service.server]]",
    "service.server.address",
    "service.server.port",
    "service.server.tls_port",
    "service.server.transports",
    "service.server.priority",
    "service.server.weight",
    "service.server.host",
    "service.server.probe_method",
    "service.server.site",
    "service.server.drain",
    // A zone's answers are part of the layout a reload builds afresh.
    "[service.authority]",
    "service.authority.ns",
    "service.authority.hostmaster",
    "service.authority.serial",
    "service.authority.refresh",
    "service.authority.retry",
    "service.authority.expire",
    "service.authority.negative_ttl",
    "service.authority.ns_ttl",
    "[[service.authority.glue]]",
    "service.authority.glue.name",
    "service.authority.glue.addresses",
    "[hosts]",
    "hosts.file",
    "hosts.ttl",
    "hosts.watch",
    "relay.upstreams",
    "relay.timeout_ms",
    "relay.allow",
    "relay.cache_entries",
    "relay.cache_bytes",
    "relay.max_pending",
    "relay.max_waiters",
    "relay.max_pending_per_prefix_percent",
    "relay.max_ttl_s",
    "relay.managed_for_all",
    "relay.health_check",
    "relay.health_check_interval_ms",
    "relay.serve_stale",
    "relay.stale_max_s",
    "relay.stale_ttl_s",
    "relay.stale_refresh_s",
    "relay.stale_answer_ms",
    "relay.prefetch",
    "[[relay.route]]",
    "relay.route.domain",
    "relay.route.upstreams",
    "[rrl]",
    "rrl.responses_per_second",
    "rrl.slip",
    "rrl.ipv4_prefix_length",
    "rrl.ipv6_prefix_length",
    "rrl.exempt",
    "rrl.table_size",
    "[[sites]]",
    "sites.clients",
    "sites.prefer",
];

/// Keys that validation refuses in any file, so no reload ever carries them.
pub const REFUSED: &[&str] = &["relay.sockets_per_worker", "cluster.password"];

/// What a reload does with a freshly read configuration.
#[derive(Debug)]
pub struct Plan {
    /// What runs from now on: the fresh file, with the [`RESTART`] keys' running values.
    pub config: Config,
    /// The [`RESTART`] keys the fresh file changed, in their order: they keep their running
    /// values until a restart.
    pub need_restart: Vec<&'static str>,
}

/// Decides what a reload of `fresh` does to an instance running `running`.
pub fn plan(running: &Config, mut fresh: Config) -> Plan {
    let need_restart = RESTART.iter().filter(|f| (f.differs)(running, &fresh)).map(|f| f.key).collect();
    for f in RESTART {
        (f.keep)(running, &mut fresh);
    }
    Plan { config: fresh, need_restart }
}

/// How a key that needs a restart is named in a reply and the log: a table by its header and
/// what happened to it.
pub fn describe(key: &str) -> String {
    if key.starts_with('[') {
        format!("{key} (added or removed)")
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::keys;

    /// The least a file holds; the tests add what they change.
    const BASE: &str = "[server]\nlisten = [\"127.0.0.1:5353\"]\n";

    fn config(extra: &str) -> Config {
        Config::parse(&format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn every_key_is_live_or_needs_a_restart_and_never_both() {
        let walked = keys::all().unwrap();
        let restart: Vec<&str> = RESTART.iter().map(|f| f.key).collect();
        let lists = [("RESTART", &restart[..]), ("LIVE", LIVE), ("REFUSED", REFUSED)];
        for key in &walked {
            let homes: Vec<&str> = lists.iter().filter(|(_, l)| l.contains(&key.as_str())).map(|(n, _)| *n).collect();
            assert_eq!(homes.len(), 1, "`{key}` is in {homes:?}: put it in exactly one of RESTART, LIVE, REFUSED");
        }
        let listed: BTreeSet<&str> = lists.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        for key in listed {
            assert!(walked.contains(key), "`{key}` is listed but the file has no such key");
        }
    }

    #[test]
    fn refused_keys_are_refused() {
        for key in REFUSED {
            let (table, leaf) = key.split_once('.').unwrap();
            // The least of each table that validation accepts, then the refused key.
            let least = match table {
                "cluster" => "etcd = [\"http://127.0.0.1:2379\"]\nfarm = \"f\"\nname = \"n\"",
                _ => "upstreams = [\"127.0.0.1:53\"]",
            };
            let value = if table == "cluster" { "\"secret\"" } else { "4" };
            let text = format!("{BASE}[{table}]\n{least}\n{leaf} = {value}\n");
            let problems = Config::parse(&text).unwrap_err();
            assert!(problems.iter().any(|p| p.field == *key), "{key}: {problems:?}");
        }
    }

    #[test]
    fn a_reload_names_what_needs_a_restart_and_keeps_it() {
        let running = config("");
        let fresh = config(
            "user = \"nobody\"\nworkers = 3\n[metrics]\nlisten = \"127.0.0.1:9153\"\n[relay]\nupstreams = [\"127.0.0.1:53\"]\n",
        );
        let plan = plan(&running, fresh);
        assert_eq!(plan.need_restart, vec!["server.workers", "server.user", "[relay]", "[metrics]"]);
        assert_eq!(plan.config.server, running.server, "the running sockets, threads and user stay");
        assert_eq!((plan.config.relay.is_none(), plan.config.metrics.is_none()), (true, true));
        assert_eq!(describe("[relay]"), "[relay] (added or removed)");
        assert_eq!(describe("server.user"), "server.user");
    }

    #[test]
    fn live_keys_apply_and_name_no_restart() {
        let running = config("[relay]\nupstreams = [\"127.0.0.1:53\"]\n[metrics]\nlisten = \"127.0.0.1:9153\"\n");
        let fresh = config(
            "[probe]\ninterval_ms = 500\n[[service]]\nname = \"sip.example.test\"\n[[service.server]]\naddress = \"127.0.0.12\"\n\
             [relay]\nupstreams = [\"127.0.0.2:53\"]\n[rrl]\nresponses_per_second = 5\n[metrics]\nlisten = \"127.0.0.1:9153\"\n",
        );
        let plan = plan(&running, fresh.clone());
        assert!(plan.need_restart.is_empty(), "{:?}", plan.need_restart);
        assert_eq!(plan.config, fresh, "everything applied as written");
    }

    #[test]
    fn xdp_needs_a_restart_added_removed_or_changed() {
        let on = |iface: &str, required: bool| {
            config(&format!("xdp = {{ interface = \"{iface}\", required = {required} }}\n"))
        };
        let running = on("eth0", false);
        assert_eq!(plan(&running, config("")).need_restart, vec!["[server.xdp]"]);
        assert_eq!(plan(&config(""), running.clone()).need_restart, vec!["[server.xdp]"]);
        let changed = plan(&running, on("eth1", true));
        assert_eq!(changed.need_restart, vec!["server.xdp.interface", "server.xdp.required"]);
        assert_eq!(changed.config.server.xdp, running.server.xdp, "the running XDP set-up stays");
    }

    #[test]
    fn a_changed_metrics_address_needs_a_restart() {
        let running = config("[metrics]\nlisten = \"127.0.0.1:9153\"\n");
        let plan = plan(&running, config("[metrics]\nlisten = \"127.0.0.1:9154\"\n"));
        assert_eq!(plan.need_restart, vec!["metrics.listen"]);
        assert_eq!(plan.config.metrics, running.metrics);
        let plan = super::plan(&running, config(""));
        assert_eq!(plan.need_restart, vec!["[metrics]"], "removing the section too");
        assert_eq!(plan.config.metrics, running.metrics, "the endpoint keeps serving");
        let fresh = config("[metrics]\nlisten = \"127.0.0.1:9153\"\nallow = [\"10.0.0.0/8\"]\nmax_connections = 8\n");
        let plan = super::plan(&running, fresh);
        assert_eq!(plan.need_restart, vec!["metrics.allow", "metrics.max_connections"]);
        assert_eq!(plan.config.metrics, running.metrics, "the running endpoint's clients and bound stay");
    }
}

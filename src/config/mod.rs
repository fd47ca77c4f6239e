//! Configuration: TOML on disk → a validated [`Config`].
//!
//! ```text
//!  file ──serde──► raw.rs (Raw*, spans, defaults) ──validate.rs──► types.rs (Config, plain values)
//!                                                   └─ every problem: FILE:LINE:COL: FIELD: fix
//! ```
//!
//! Loading happens in two steps. Serde reads the file into the `Raw*` structs, which deny unknown
//! fields and keep the byte span of every value that validation may reject. `validate` then checks
//! every rule and collects *all* problems, each naming the file, line, column, field and the fix,
//! so an operator fixes a file in one pass instead of one error per run. [`keys`] lists every
//! table and key the file may hold, read off the same structs.

pub mod keys;
mod raw;
mod types;
mod validate;

use std::fmt;
use std::path::Path;

pub use types::*;
use validate::{problem_at, split_serde_message, Validator};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line of the offending value (0 when the whole file is at fault).
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// Dotted path of the field, e.g. `service[0].server[1].address`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Why a configuration could not be loaded. Always the operator's file (or its absence).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file named on the command line.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but breaks one or more rules.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file named on the command line.
        path: String,
        /// Every problem found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(path: &str, problems: &[ConfigProblem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{path}:{}:{}: {}: {}", p.line, p.column, p.field, p.message));
    }
    out
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::files::read_text(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Config::parse_in(&text, base)
            .map_err(|problems| ConfigError::Invalid { path: path.display().to_string(), problems })
    }

    /// Parses and validates TOML text, returning every problem found. A relative `hosts.file` is
    /// read relative to the current directory.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        Config::parse_in(text, Path::new("."))
    }

    /// Like [`Config::parse`], with relative paths resolved against `base` (the config's folder).
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (field, message) = split_serde_message(e.message());
            vec![problem_at(text, span, &field, &message)]
        })?;
        let mut v = Validator { text, base, problems: Vec::new() };
        let config = v.config(raw);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(v.problems)
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.line, self.column, self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:5353"]

[[service]]
name = "SIP.Example.Test."

[[service.server]]
address = "127.0.0.11"
"#;

    #[test]
    fn defaults_follow_the_paper() {
        let c = Config::parse(MINIMAL).unwrap();
        let s = &c.services[0];
        assert_eq!(s.name, "sip.example.test");
        assert_eq!(s.ttl, 1, "TTL defaults to the probe interval");
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.servers[0].port, 5060);
        assert_eq!(s.servers[0].transports, vec![Transport::Udp]);
        assert_eq!(s.servers[0].host, "ip-127-0-0-11.sip.example.test");
        assert_eq!(c.server.max_udp_payload, 1232);
    }

    /// `[cluster]`: defaults, every mistake named with its field and fix; without the cargo
    /// feature, the section itself is refused with the build command.
    #[test]
    fn cluster_settings_name_their_field() {
        let good = format!(
            "{MINIMAL}\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nfarm = \"voice-east\"\nname = \"edge-1\"\n"
        );
        let problems = |text: &str| -> Vec<String> {
            Config::parse(text)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect()
        };
        if !cfg!(feature = "cluster") {
            let p = problems(&good);
            assert!(p.len() == 1 && p[0].starts_with("cluster:") && p[0].contains("--features cluster"), "{p:?}");
            return;
        }
        let c = Config::parse(&good).unwrap().cluster.unwrap();
        assert_eq!((c.probers_per_server, c.lease_ttl.as_secs(), c.name.as_str()), (2, 3, "edge-1"));
        assert!(c.auth.is_none() && c.tls.is_none());
        let cases = [
            (
                "etcd = [\"http://127.0.0.1:2379\"]",
                "etcd = [\"127.0.0.1:2379\"]",
                "cluster.etcd[0]: `127.0.0.1:2379` is not an etcd endpoint",
            ),
            ("etcd = [\"http://127.0.0.1:2379\"]", "etcd = []", "cluster.etcd: is empty"),
            ("farm = \"voice-east\"", "farm = \"voice/east\"", "cluster.farm: `voice/east` is not a farm name"),
            ("name = \"edge-1\"", "name = \"edge 1\"", "cluster.name: `edge 1` is not an instance name"),
            (
                "name = \"edge-1\"",
                "name = \"edge-1\"\nprobers_per_server = 0",
                "cluster.probers_per_server: 0 is out of range",
            ),
            ("name = \"edge-1\"", "name = \"edge-1\"\nlease_ttl_s = 0", "cluster.lease_ttl_s: 0 is out of range"),
            (
                "name = \"edge-1\"",
                "name = \"edge-1\"\npassword = \"s3cret\"",
                "cluster.password: a password is never written",
            ),
            ("name = \"edge-1\"", "name = \"edge-1\"\nuser = \"dnlb\"", "cluster.user: needs password_file"),
            ("name = \"edge-1\"", "name = \"edge-1\"\ncert_file = \"c.pem\"", "cluster.cert_file: needs key_file"),
            (
                "name = \"edge-1\"",
                "name = \"edge-1\"\nca_file = \"ca.pem\"",
                "cluster.etcd: TLS files are set but the endpoints are http://",
            ),
            ("name = \"edge-1\"", "name = \"edge-1\"\nk = 2", "unknown field `k`"),
        ];
        for (from, to, want) in cases {
            let p = problems(&good.replace(from, to));
            assert!(p.iter().any(|m| m.contains(want)), "{to}: {p:?}");
        }
        let tls = good.replace("http://", "https://")
            + "ca_file = \"ca.pem\"\nuser = \"dnlb\"\npassword_file = \"etcd.pass\"\n";
        let c = Config::parse(&tls).unwrap().cluster.unwrap();
        assert!(c.tls.is_some_and(|t| t.ca_file.is_some() && t.identity.is_none()));
        assert_eq!(c.auth.map(|(u, _)| u), Some("dnlb".to_string()));
    }

    #[test]
    fn the_default_allow_list_is_whole() {
        use crate::prefix::Prefix;
        // Validation drops an entry that does not parse; every default must parse.
        let parsed: Vec<Prefix> = DEFAULT_ALLOW.iter().filter_map(|p| Prefix::parse(p).ok()).collect();
        assert_eq!(parsed.len(), DEFAULT_ALLOW.len());
        let relay =
            Config::parse(&format!("{MINIMAL}\n[relay]\nupstreams = [\"127.0.0.1:53\"]\n")).unwrap().relay.unwrap();
        assert_eq!(relay.allow, parsed);
    }

    #[test]
    fn ttl_rounds_the_interval_up() {
        let text = MINIMAL.replace("[server]", "[probe]\ninterval_ms = 2500\n\n[server]");
        assert_eq!(Config::parse(&text).unwrap().services[0].ttl, 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"[server]
listen = ["127.0.0.1:0", "nonsense"]

[[service]]
name = "bad..name"
[[service.server]]
address = "300.1.1.1"
[[service.server]]
address = "127.0.0.1"
[[service.server]]
address = "127.0.0.1"
"#;
        let problems = Config::parse(text).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| (p.line, p.field.as_str())).collect();
        assert_eq!(
            fields,
            vec![
                (2, "server.listen[0]"),
                (2, "server.listen[1]"),
                (5, "service[0].name"),
                (7, "service[0].server[0].address"),
                (11, "service[0].server[2].address"),
            ]
        );
        assert!(problems[4].message.contains("listed twice"), "{}", problems[4].message);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = MINIMAL.replace("address = \"127.0.0.11\"", "address = \"127.0.0.11\"\nwieght = 3");
        let p = Config::parse(&text).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "wieght");
        assert_eq!(p[0].line, 10);
        assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
    }

    #[test]
    fn timeout_must_be_below_interval() {
        let text = MINIMAL.replace("[server]", "[probe]\ninterval_ms = 200\ntimeout_ms = 200\n\n[server]");
        let p = Config::parse(&text).unwrap_err();
        assert_eq!(p[0].field, "probe.timeout_ms");
    }

    #[test]
    fn tls_has_its_own_port_5061_by_default() {
        let text = MINIMAL
            .replace("address = \"127.0.0.11\"", "address = \"127.0.0.11\"\ntransports = [\"udp\", \"tcp\", \"tls\"]");
        let s = &Config::parse(&text).unwrap().services[0];
        let v = &s.servers[0];
        assert_eq!(
            (v.port_for(Transport::Udp), v.port_for(Transport::Tcp), v.port_for(Transport::Tls)),
            (5060, 5060, 5061)
        );
        assert_eq!(s.tls_verify, TlsVerify::System, "verification against the system's roots by default");
        assert_eq!(v.tls_name, "sip.example.test", "no host: the certificate is checked against the service name");
    }

    #[test]
    fn ports_are_overridden_per_transport() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.11\"",
            "address = \"127.0.0.11\"\nhost = \"edge1.example.test\"\nport = 5070\ntls_port = 5071\ntransports = [\"udp\", \"tls\"]",
        );
        let v = &Config::parse(&text).unwrap().services[0].servers[0];
        assert_eq!((v.port_for(Transport::Udp), v.port_for(Transport::Tls)), (5070, 5071));
        assert_eq!(v.tls_name, "edge1.example.test");
        // A TLS-only server may still give its port as `port`.
        let text = MINIMAL
            .replace("address = \"127.0.0.11\"", "address = \"127.0.0.11\"\nport = 5081\ntransports = [\"tls\"]");
        assert_eq!(Config::parse(&text).unwrap().services[0].servers[0].port_for(Transport::Tls), 5081);
    }

    #[test]
    fn tls_settings_name_their_field() {
        let cases = [
            ("address = \"127.0.0.11\"\ntls_port = 5061", "service[0].server[0].tls_port", "does not list \"tls\""),
            ("address = \"127.0.0.11\"\ntransports = [\"tls\"]\ntls_port = 0", "service[0].server[0].tls_port", "out of range"),
            (
                "address = \"127.0.0.11\"\ntransports = [\"tls\"]\nport = 5061\ntls_port = 5062",
                "service[0].server[0].port",
                "remove it",
            ),
            ("address = \"127.0.0.11\"\ntransports = [\"udp\", \"tls\"]\n[[service.server]]\naddress = \"127.0.0.11\"\nport = 5061", "service[0].server[1].address", "listed twice"),
        ];
        for (server, field, says) in cases {
            let text = MINIMAL.replace("address = \"127.0.0.11\"", server);
            let p = Config::parse(&text).unwrap_err();
            assert_eq!(p[0].field, field, "{server}: {p:?}");
            assert!(p[0].message.contains(says), "{server}: {}", p[0].message);
        }
        let service = |extra: &str| {
            MINIMAL.replace("name = \"SIP.Example.Test.\"", &format!("name = \"sip.example.test\"\n{extra}"))
        };
        let off = Config::parse(&service("tls_verify = false")).unwrap();
        assert_eq!(off.services[0].tls_verify, TlsVerify::Off);
        let p = Config::parse(&service("tls_ca_file = \"/nonexistent/ca.pem\"")).unwrap_err();
        assert_eq!(p[0].field, "service[0].tls_ca_file");
        assert!(p[0].message.contains("/nonexistent/ca.pem"), "{}", p[0].message);
        let p = Config::parse(&service("tls_verify = false\ntls_ca_file = \"ca.pem\"")).unwrap_err();
        assert_eq!(p[0].field, "service[0].tls_ca_file");
        let dir = std::env::temp_dir().join(format!("dnlb-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty.pem"), "no certificate here\n").unwrap();
        let p = Config::parse_in(&service("tls_ca_file = \"empty.pem\""), &dir).unwrap_err();
        assert!(p[0].message.contains("holds no certificate"), "{}", p[0].message);
        let _cleanup = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tls_ca_file_that_is_not_a_small_regular_file_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("dnlb-config-ca-odd-{}", std::process::id()));
        let _stale = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("folder.pem")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(dir.join("fifo.pem")).status();
        assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
        // Sparse: 64 MiB that take no disk.
        std::fs::File::create(dir.join("huge.pem")).unwrap().set_len(64 << 20).unwrap();
        std::fs::write(dir.join("binary.pem"), (0..=255u8).cycle().take(4096).collect::<Vec<u8>>()).unwrap();
        std::os::unix::fs::symlink(dir.join("loop-b.pem"), dir.join("loop-a.pem")).unwrap();
        std::os::unix::fs::symlink(dir.join("loop-a.pem"), dir.join("loop-b.pem")).unwrap();
        let cases = [
            ("folder.pem", "not a regular file"),
            ("fifo.pem", "not a regular file"),
            ("/dev/zero", "not a regular file"),
            ("huge.pem", "larger than"),
            ("binary.pem", "holds no certificate"),
            ("loop-a.pem", "loop-a.pem"),
        ];
        for (file, says) in cases {
            let text = MINIMAL.replace(
                "name = \"SIP.Example.Test.\"",
                &format!("name = \"sip.example.test\"\ntls_ca_file = \"{file}\""),
            );
            // A FIFO without a writer blocks an ordinary open for good: the load must not wait.
            let (tx, rx) = std::sync::mpsc::channel();
            let base = dir.clone();
            std::thread::spawn(move || {
                let _sent = tx.send(Config::parse_in(&text, &base));
            });
            let result = rx.recv_timeout(std::time::Duration::from_secs(5));
            let p = result.unwrap_or_else(|_| panic!("{file}: the load blocked")).unwrap_err();
            assert_eq!(p[0].field, "service[0].tls_ca_file", "{file}: {p:?}");
            assert!(p[0].message.contains(says), "{file}: {}", p[0].message);
            assert!(p[0].message.contains("name a PEM file"), "{file}: {}", p[0].message);
        }
        let _cleanup = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_user_name_is_checked_for_shape_only() {
        let ok = MINIMAL.replace("listen = [", "user = \"dnlb\"\nlisten = [");
        assert_eq!(Config::parse(&ok).unwrap().server.user.as_deref(), Some("dnlb"));
        let bad = MINIMAL.replace("listen = [", "user = \"root; rm\"\nlisten = [");
        let p = Config::parse(&bad).unwrap_err();
        assert_eq!((p[0].line, p[0].field.as_str()), (3, "server.user"));
        assert!(p[0].message.contains("is not a user name"), "{}", p[0].message);
    }

    #[test]
    fn metrics_allow_and_connection_bound_name_their_field() {
        let ok = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9153\"\nallow = [\"10.0.0.0/8\", \"::1\"]\n");
        let m = Config::parse(&ok).unwrap().metrics.unwrap();
        assert_eq!((m.allow.len(), m.max_connections), (2, 256));
        let bad = format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9153\"\nallow = [\"10.0.0.0/33\"]\nmax_connections = 0\n"
        );
        let p = Config::parse(&bad).unwrap_err();
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["metrics.allow[0]", "metrics.max_connections"], "{p:?}");
        assert!(p[0].message.contains("write a prefix such as"), "{}", p[0].message);
    }

    /// `MINIMAL` with `authority` (TOML lines) as the service's `[service.authority]` and `tail`
    /// appended to the file.
    fn zone(authority: &str, tail: &str) -> String {
        format!("{MINIMAL}[service.authority]\n{authority}\n{tail}")
    }

    #[test]
    fn an_authority_has_sensible_defaults() {
        let c = Config::parse(&zone("ns = [\"dnlb1.example.net\"]", "")).unwrap();
        let a = c.services[0].authority.as_ref().unwrap();
        assert_eq!(a.ns, vec!["dnlb1.example.net"]);
        assert_eq!(a.hostmaster, "hostmaster.sip.example.test");
        assert_eq!((a.serial, a.negative_ttl, a.ns_ttl), (1, 300, 3600));
        assert_eq!((a.refresh, a.retry, a.expire), (86_400, 7200, 3_600_000));
        let c = Config::parse(&zone(
            "ns = [\"NS1.sip.example.test.\", \"dnlb2.example.net\"]\nhostmaster = \"noc@Example.NET\"\nserial = 4294967295\nglue = [{ name = \"ns1.sip.example.test\", addresses = [\"192.0.2.53\", \"2001:db8::53\"] }]",
            "",
        ))
        .unwrap();
        let a = c.services[0].authority.as_ref().unwrap();
        assert_eq!((a.hostmaster.as_str(), a.serial), ("noc.example.net", u32::MAX));
        assert_eq!(
            a.glue,
            vec![(
                "ns1.sip.example.test".to_string(),
                vec!["192.0.2.53".parse().unwrap(), "2001:db8::53".parse().unwrap()]
            )]
        );
        assert_eq!(c.zone_for("a.b.sip.example.test").map(|s| s.name.as_str()), Some("sip.example.test"));
        assert!(c.zone_for("xsip.example.test").is_none() && c.zone_for("example.test").is_none());
    }

    #[test]
    fn a_long_service_name_leaves_room_for_the_names_made_from_it() {
        // `_sips._tcp.`, `ip6-<32 hex>.` and `hostmaster.` go in front of the service name; a
        // file validation accepts must be one whose answers can be encoded, at any length.
        let label = |n: usize| "a".repeat(n);
        for len in (150..=253).step_by(1) {
            let mut name = String::new();
            while len - name.len() > 63 {
                name.push_str(&label(62));
                name.push('.');
            }
            name.push_str(&label(len - name.len()));
            for (server, authority) in [
                ("address = \"192.0.2.1\"\ntransports = [\"udp\", \"tls\"]", ""),
                ("address = \"2001:db8::1\"", ""),
                (
                    "address = \"192.0.2.1\"\nhost = \"sbc.example.net\"",
                    "[service.authority]\nns = [\"a.example.net\"]\n",
                ),
            ] {
                let text = format!(
                    "[server]\nlisten = [\"127.0.0.1:5353\"]\n[[service]]\nname = \"{name}\"\n{authority}[[service.server]]\n{server}\n"
                );
                match Config::parse(&text) {
                    Ok(c) => {
                        let built = crate::snapshot::Snapshot::build(&c, &crate::snapshot::Serving::all_up(&c), 0);
                        assert!(built.is_ok(), "{len} characters, {server}: accepted but {built:?}");
                    }
                    Err(p) => {
                        let fields = ["service[0].name", "service[0].authority.hostmaster"];
                        assert!(fields.contains(&p[0].field.as_str()), "{len}: {p:?}");
                        assert!(p[0].message.contains("too long"), "{len}: {}", p[0].message);
                    }
                }
            }
        }
    }

    #[test]
    fn authority_mistakes_name_their_field() {
        let cases = [
            (zone("", ""), "service[0].authority.ns", "has no name servers"),
            (zone("ns = []", ""), "service[0].authority.ns", "has no name servers"),
            (zone("ns = [\"ns1.sip.example.test\"]", ""), "service[0].authority.ns", "add its addresses"),
            (
                zone("ns = [\"a.example.net\"]\nglue = [{ name = \"a.example.net\", addresses = [\"192.0.2.1\"] }]", ""),
                "service[0].authority.glue[0].name",
                "outside the zone",
            ),
            (
                zone("ns = [\"a.example.net\"]\nglue = [{ name = \"b.sip.example.test\", addresses = [\"192.0.2.1\"] }]", ""),
                "service[0].authority.glue[0].name",
                "is not in ns",
            ),
            (
                zone("ns = [\"ip-127-0-0-11.sip.example.test\"]\nglue = [{ name = \"ip-127-0-0-11.sip.example.test\", addresses = [\"192.0.2.1\"] }]", ""),
                "service[0].authority.glue[0].name",
                "already a name of the service",
            ),
            (
                zone("ns = [\"n.sip.example.test\"]\nglue = [{ name = \"n.sip.example.test\", addresses = [\"nonsense\"] }]", ""),
                "service[0].authority.glue[0].addresses[0]",
                "not a unicast IP address",
            ),
            (zone("ns = [\"a.example.net\", \"A.example.net\"]", ""), "service[0].authority.ns[1]", "listed twice"),
            (
                zone("ns = [\"n.sip.example.test\"]\nglue = [{ name = \"n.sip.example.test\", addresses = [\"192.0.2.1\"] }, { name = \"N.sip.example.test\", addresses = [\"192.0.2.2\"] }]", ""),
                "service[0].authority.glue[1].name",
                "glue twice",
            ),
            (zone("ns = [\"a.example.net\"]\nhostmaster = \"john.doe@example.net\"", ""), "service[0].authority.hostmaster", "dot before the @"),
            (zone("ns = [\"a.example.net\"]\nnegative_ttl = 90000", ""), "service[0].authority.negative_ttl", "out of range"),
            (zone("ns = [\"a.example.net\"]\nretry = 0", ""), "service[0].authority.retry", "out of range"),
            (zone("ns = [\"a.example.net\"]\nrefesh = 60", ""), "refesh", "unknown field"),
            (
                zone("ns = [\"a.example.net\"]", "[[service]]\nname = \"eu.sip.example.test\"\n[service.authority]\nns = [\"a.example.net\"]\n[[service.server]]\naddress = \"127.0.0.21\"\n"),
                "service[1].authority",
                "lies inside the zone `sip.example.test` of service[0]",
            ),
            (
                zone(
                    "ns = [\"eu.sip.example.test\"]\nglue = [{ name = \"eu.sip.example.test\", addresses = [\"192.0.2.53\"] }]",
                    "[[service]]\nname = \"eu.sip.example.test\"\n[[service.server]]\naddress = \"127.0.0.21\"\n",
                ),
                "service[0].authority.glue[0].name",
                "already a name of service[1]",
            ),
            (
                zone(
                    "ns = [\"ip-127-0-0-21.eu.sip.example.test\"]\nglue = [{ name = \"ip-127-0-0-21.eu.sip.example.test\", addresses = [\"192.0.2.53\"] }]",
                    "[[service]]\nname = \"eu.sip.example.test\"\n[[service.server]]\naddress = \"127.0.0.21\"\n",
                ),
                "service[0].authority.glue[0].name",
                "already a name of service[1]",
            ),
            (
                zone("ns = [\"a.example.net\"]", "[relay]\nupstreams = [\"127.0.0.53:53\"]\n[[relay.route]]\ndomain = \"corp.sip.example.test\"\nupstreams = [\"127.0.0.54:53\"]\n"),
                "relay.route[0].domain",
                "inside the zone `sip.example.test`",
            ),
        ];
        for (text, field, says) in cases {
            let p = Config::parse(&text).unwrap_err();
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].field, field, "{text}: {p:?}");
            assert!(p[0].message.contains(says), "{text}: {}", p[0].message);
            assert!(p[0].line > 0, "{text}: the problem has a place in the file: {p:?}");
        }
        // A service inside the zone without an authority of its own is part of it; a route above
        // the zone is allowed (the zone's names stay out of it).
        let ok = zone(
            "ns = [\"a.example.net\"]",
            "[[service]]\nname = \"eu.sip.example.test\"\n[[service.server]]\naddress = \"127.0.0.21\"\n[relay]\nupstreams = [\"127.0.0.53:53\"]\n[[relay.route]]\ndomain = \"example.test\"\nupstreams = [\"127.0.0.54:53\"]\n",
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.zone_for("eu.sip.example.test").map(|s| s.name.as_str()), Some("sip.example.test"));
    }
}

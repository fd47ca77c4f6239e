//! Configuration files: every example loads; each documented mistake gives its documented error,
//! both from the library and from `dnlb check-config`.

use std::path::Path;
use std::process::Command;

use dnlb::config::Config;

#[test]
fn every_example_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "examples/ has no .toml file");
}

const GOOD: &str = r#"[server]
listen = ["127.0.0.1:5353"]

[[service]]
name = "sip.example.test"

[[service.server]]
address = "127.0.0.11"
"#;

/// Runs `dnlb check-config` on `text`; returns (exit success, stdout + stderr).
fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("dnlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.toml", text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dnlb")).arg("check-config").arg(&path).output().unwrap();
    let _cleanup = std::fs::remove_file(&path);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.replace(&path.display().to_string(), "FILE"))
}

#[test]
fn a_good_file_passes_check_config() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 service(s))"), "{out}");
}

/// The documented errors (README, "Configuration errors"): each names file, line, column and field.
#[test]
fn documented_errors() {
    let cases = [
        (GOOD.replace("address = \"127.0.0.11\"", "address = \"127.0.0.11\"\nwieght = 5"), "FILE:9:1: wieght: unknown field `wieght`"),
        (GOOD.replace("127.0.0.11", "127.0.0.300"), "FILE:8:11: service[0].server[0].address: `127.0.0.300` is not an IP address"),
        (
            GOOD.replace("127.0.0.11", "fe80::1%eth0"),
            "FILE:8:11: service[0].server[0].address: `fe80::1%eth0`: fe80::1 is an IPv6 link-local address: it reaches a host only with a zone (`fe80::1%eth0`), and an AAAA or SRV answer cannot carry a zone to a phone",
        ),
        (
            GOOD.replace("127.0.0.11", "::ffff:192.0.2.10"),
            "FILE:8:11: service[0].server[0].address: ::ffff:192.0.2.10 is an IPv4-mapped IPv6 address: write the IPv4 form \"192.0.2.10\"",
        ),
        (
            format!("{GOOD}\n[[service.server]]\naddress = \"127.0.0.11\"\n"),
            "FILE:11:11: service[0].server[1].address: 127.0.0.11 port 5060 is listed twice in service `sip.example.test`",
        ),
        (
            "[server]\nlisten = [\"127.0.0.1:5353\"]\n\n[[service]]\nname = \"sip.example.test\"\n".to_string(),
            "FILE:5:8: service[0].server: service `sip.example.test` has no servers",
        ),
        (GOOD.replace("5353", "0"), "FILE:2:11: server.listen[0]: port 0 is not allowed"),
        (GOOD.replace("[server]", "[server]\nworkers = 0"), "FILE:2:11: server.workers: 0 is out of range: use 1 to 1024"),
        (GOOD.replace("listen = [\"127.0.0.1:5353\"]", ""), "missing field `listen`"),
        (
            format!("{GOOD}[service.authority]\nhostmaster = \"noc@example.net\"\n"),
            "FILE:9:1: service[0].authority.ns: the zone `sip.example.test` has no name servers",
        ),
        (
            format!("{GOOD}[service.authority]\nns = [\"ns1.sip.example.test\"]\n"),
            "FILE:10:6: service[0].authority.ns: `ns1.sip.example.test` is inside the zone, so resolvers can only reach it through glue",
        ),
        (
            format!("{GOOD}[service.authority]\nns = [\"dnlb1.example.net\"]\n\n[[service]]\nname = \"eu.sip.example.test\"\n[service.authority]\nns = [\"dnlb1.example.net\"]\n[[service.server]]\naddress = \"127.0.0.21\"\n"),
            "FILE:14:1: service[1].authority: `eu.sip.example.test` lies inside the zone `sip.example.test` of service[0]",
        ),
        (
            format!("{GOOD}[service.authority]\nns = [\"dnlb1.example.net\"]\n\n[relay]\nupstreams = [\"127.0.0.53:53\"]\n[[relay.route]]\ndomain = \"corp.sip.example.test\"\nupstreams = [\"127.0.0.54:53\"]\n"),
            "FILE:15:10: relay.route[0].domain: `corp.sip.example.test` is inside the zone `sip.example.test`",
        ),
    ];
    for (text, expected) in cases {
        let (ok, out) = check(&text);
        assert!(!ok, "should fail: {expected}");
        assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
    }
}

#[test]
fn hosts_file_problems_name_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("dnlb-hosts-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts"), "192.0.2.1 ok\n192.0.2.300 bad\n").unwrap();
    let text = format!("{GOOD}\n[hosts]\nfile = \"{}\"\n", dir.join("hosts").display());
    let (ok, out) = check(&text);
    assert!(!ok);
    let named = format!(
        "hosts.file: {}: 1 bad line, the file is refused whole: line 2: `192.0.2.300` is not an IP address",
        dir.join("hosts").display()
    );
    assert!(out.contains(&named), "{out}");
    let (ok, out) = check(&format!("{GOOD}\n[hosts]\nfile = \"/nonexistent/hosts\"\n"));
    assert!(!ok && out.contains("cannot read /nonexistent/hosts"), "{out}");
    let _cleanup = std::fs::remove_dir_all(&dir);
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = GOOD.replace("127.0.0.11", "nonsense").replace("sip.example.test", "bad..name");
    let (ok, out) = check(&text);
    assert!(!ok);
    assert_eq!(out.lines().filter(|l| l.contains("FILE:")).count(), 2, "{out}");
}

#[test]
fn command_line_errors_name_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dnlb")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run(&["--config", "examples/dnlb.toml", "--io", "turbo"]);
    assert!(!ok && err.contains("unknown io mode `turbo`"), "{err}");
    let (ok, err) = run(&["--workers", "0", "--config", "x"]);
    assert!(!ok && err.contains("--workers"), "{err}");
    let (ok, err) = run(&["--config", "/nonexistent/dnlb.toml"]);
    assert!(!ok && err.contains("/nonexistent/dnlb.toml: cannot read"), "{err}");
    let (ok, _) = run(&["--version"]);
    assert!(ok);
}

/// The example's `[relay]` section, uncommented, loads with every field it documents; the relay's
/// bounds are checked and a field that is gone says so.
#[test]
fn the_example_relay_section_loads_and_relay_mistakes_name_the_field() {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dnlb.toml")).unwrap();
    let (before, relay) = example.split_once("# [relay]").expect("the example documents [relay]");
    let relay: String = relay.lines().map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l))).collect();
    let c = Config::parse(&format!("{before}[relay]{relay}")).unwrap_or_else(|p| panic!("{p:?}"));
    let r = c.relay.expect("a relay");
    assert_eq!((r.max_ttl, r.cache_bytes, r.max_waiters, r.max_pending), (3600, 8 << 20, 16_384, 4096));
    assert_eq!(r.routes.len(), 1);

    let with = |extra: &str| format!("{GOOD}\n[relay]\nupstreams = [\"127.0.0.1:53\", \"[::1]:53\"]\n{extra}\n");
    let cases = [
        ("max_ttl_s = 0", "relay.max_ttl_s: 0 is out of range: use 1 to 604800 s"),
        ("cache_bytes = 100", "relay.cache_bytes: 100 is out of range: use 65536 to"),
        ("max_waiters = 0", "relay.max_waiters: 0 is out of range"),
        ("sockets_per_worker = 8", "relay.sockets_per_worker: is no longer used"),
    ];
    for (extra, expected) in cases {
        let (ok, out) = check(&with(extra));
        assert!(!ok, "should fail: {expected}");
        assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
    }
    let (ok, out) = check(&with("max_ttl_s = 86400\ncache_bytes = 1048576\nmax_waiters = 100"));
    assert!(ok, "{out}");
}

/// The example's sites (the servers' `site` lines and the `[[sites]]` entries), uncommented, load.
#[test]
fn the_example_sites_load() {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dnlb.toml")).unwrap();
    let (before, _relay) = example.split_once("# [relay]").expect("the example documents [relay]");
    let uncommented: String = before
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("site =")
                    || rest.starts_with("[[sites]]")
                    || rest.starts_with("clients =")
                    || rest.starts_with("prefer =") =>
            {
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let c = Config::parse(&uncommented).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(c.sites.len(), 2);
    assert_eq!(c.sites[0].prefer, vec!["east".to_string(), "west".to_string()]);
    assert_eq!(c.services[0].servers.iter().filter(|s| s.site.as_deref() == Some("east")).count(), 2);
}

//! The operator's view against the real binary: each server's history in `dnlb status
//! --history`, its JSON and `dnlb explain`, kept over a reload; names as the configuration spells
//! them; the metrics that the alert rules and the dashboard read (every name the shipped
//! Grafana dashboard queries must be in a live scrape); the alert rules' own unit tests under
//! `promtool test rules`. Addresses: 127.0.8.0/24.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::process::Dnlb;
use common::prom::{has, scrape, sum};
use common::sip::{common_port, Mode, SipResponder};
use common::*;

const PROBE: &str = "interval_ms = 200\ntimeout_ms = 100\nretransmit_ms = 30\nrise = 1\nfall = 2";

/// A configuration of one service on `ips` (SIP port `sip_port`), metrics on `metrics`.
fn farm(dns: u16, metrics: SocketAddr, sip_port: u16, ips: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.8.1:{dns}\"]\nworkers = 1\npin_workers = false\n[probe]\n{PROBE}\n[metrics]\nlisten = \"{metrics}\"\n{extra}\n[[service]]\nname = \"sip.example.test\"\nall_down = \"nodata\"\n"
    );
    for (i, ip) in ips.iter().enumerate() {
        let site = if i == 0 { "east" } else { "west" };
        s.push_str(&format!("[[service.server]]\naddress = \"{ip}\"\nport = {sip_port}\nsite = \"{site}\"\n"));
    }
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn json(d: &Dnlb, args: &[&str]) -> serde_json::Value {
    let out = d.cli(args).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(d: &Dnlb, args: &[&str]) -> String {
    let out = d.cli(args).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Metric names a dashboard's queries use: every `dnlb_...` identifier in an `expr`.
fn dashboard_metrics(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dnlb_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn history_names_and_metrics_for_the_operator() {
    let ips = ["127.0.8.21", "127.0.8.22"];
    let sip_port = common_port(&ips);
    let responders: Vec<SipResponder> =
        ips.iter().map(|i| SipResponder::start(SocketAddr::new(ip(i), sip_port), Mode::Reply(200, None))).collect();
    let metrics: SocketAddr = SocketAddr::new(ip("127.0.8.1"), free_port());
    let dns = free_port();
    let started = unix_now();
    let dir = std::env::temp_dir().join(format!("dnlb-operator-{}-{dns}", std::process::id()));
    // The relay and rate limiting are configured so every metric family the dashboard reads
    // is exported (the upstream is never asked).
    let extra = "[relay]\nupstreams = [\"127.0.8.53:53\"]\n[rrl]\nresponses_per_second = 1000\n";
    let d = Dnlb::spawn(dir, &farm(dns, metrics, sip_port, &ips, extra));
    d.wait_for_control();
    let both = |a: &[IpAddr]| a.len() == 2;
    let limit = Duration::from_secs(5);
    wait_until("both in", limit, || both(&d.a("sip.example.test.")), || d.stderr());

    // .22 falls silent, then answers again: two flaps.
    responders[1].set(Mode::Silent);
    wait_until("out", limit, || d.a("sip.example.test.") == [ip(ips[0])], || d.stderr());
    responders[1].set(Mode::Reply(200, None));
    wait_until("back", limit, || both(&d.a("sip.example.test.")), || d.stderr());
    // A drain and an undrain are changes too.
    text(&d, &["drain", "127.0.8.22"]);
    text(&d, &["undrain", "127.0.8.22"]);

    let st = text(&d, &["status", "--history"]);
    assert!(st.contains("sip.example.test (round-robin, all down: nodata)"), "the config's names: {st}");
    assert!(st.contains("flaps 2/1h 2/24h"), "{st}");
    for line in ["up -> down  timeout", "down -> up  a final reply", "up -> up,drained  drained by an operator"] {
        assert!(st.contains(line), "{line}: {st}");
    }
    assert!(!text(&d, &["status"]).contains("up -> down"), "history only when asked: {st}");
    let j = json(&d, &["status", "--json", "--history"]);
    let server = |j: &serde_json::Value, address: &str| {
        j["services"][0]["servers"].as_array().unwrap().iter().find(|s| s["address"] == address).unwrap().clone()
    };
    let s22 = server(&j, &format!("{}:{sip_port}", ips[1]));
    assert_eq!((s22["state"].as_str(), s22["serving"].as_str()), (Some("up"), Some("in")), "{s22}");
    assert_eq!((s22["flaps_1h"].as_u64(), s22["site"].as_str()), (Some(2), Some("west")), "{s22}");
    let history = s22["history"].as_array().unwrap();
    let steps: Vec<(&str, &str, &str)> = history
        .iter()
        .map(|c| (c["from"].as_str().unwrap(), c["to"].as_str().unwrap(), c["why"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("unknown", "up", "a final reply"),
            ("up", "down", "timeout"),
            ("down", "up", "a final reply"),
            ("up", "up", "drained by an operator"),
            ("up", "up", "undrained by an operator"),
        ],
        "{s22}"
    );
    let fell = &history[1];
    assert_eq!(fell["last_code"], 200, "the code it had when it fell silent: {fell}");
    assert!(fell["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{fell}");
    let at = fell["at_unix"].as_f64().unwrap();
    assert!(at >= started - 1.0 && at <= unix_now() + 1.0, "a Unix time: {at}");
    assert!(json(&d, &["status", "--json"])["services"][0]["servers"][0].get("history").is_none());
    assert_eq!(j["services"][0]["policy"], "round-robin");
    assert_eq!(j["services"][0]["all_down"], "nodata");

    let explain = text(&d, &["explain", "sip.example.test", "A"]);
    assert!(explain.starts_with("sip.example.test A: NOERROR\n"), "as dig prints it: {explain}");
    assert!(explain.contains("answered from health (policy round-robin)"), "{explain}");
    assert!(explain.contains("history udp: 2 flaps in 1 h, 2 in 24 h, last change"), "{explain}");
    assert!(explain.contains("up -> up (undrained by an operator)"), "{explain}");

    // The metrics the alert rules read.
    let (body, s) = scrape(metrics);
    let l22 = [("server", &*format!("{}:{sip_port}", ips[1])), ("transport", "udp")];
    assert_eq!(sum(&s, "dnlb_sip_server_flips_total", &l22), 3.0, "first verdict and two flaps: {body}");
    let changed = sum(&s, "dnlb_sip_server_last_change_timestamp_seconds", &l22);
    assert!(changed >= started && changed <= unix_now(), "{changed}: {body}");
    assert_eq!(sum(&s, "dnlb_service_all_down", &[("service", "sip.example.test"), ("all_down", "nodata")]), 0.0);
    assert_eq!(sum(&s, "dnlb_reloads_total", &[]), 0.0, "{body}");
    assert_eq!(sum(&s, "dnlb_config_last_reload_successful", &[]), 1.0, "{body}");
    assert!(sum(&s, "dnlb_tcp_connections_max", &[]) > 0.0, "{body}");

    // Every metric the dashboard queries is one dnlb exports.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("dist/grafana/dnlb.json").unwrap()).unwrap();
    let names = dashboard_metrics(&dashboard);
    assert!(names.len() >= 15, "the dashboard queries dnlb's metrics: {names:?}");
    let exported: Vec<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(&n.as_str()) && !exported.iter().any(|e| e == &format!("{n}_total")))
        .collect();
    assert!(missing.is_empty(), "the dashboard queries metrics dnlb does not export: {missing:?}\n{body}");

    // Both servers silent: the service is on its all-down policy.
    for r in &responders {
        r.set(Mode::Silent);
    }
    wait_until(
        "all down in the metrics",
        limit,
        || sum(&scrape(metrics).1, "dnlb_service_all_down", &[("service", "sip.example.test")]) == 1.0,
        || d.stderr(),
    );
    let st = text(&d, &["status"]);
    assert!(st.contains("no server is healthy: answering by all_down = nodata"), "{st}");
    for r in &responders {
        r.set(Mode::Reply(200, None));
    }

    // A failed reload is counted and shown; a good one keeps every server's history.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{good}\nwieght = 3\n")).unwrap();
    // `dnlb reload` checks the file itself and refuses to ask; SIGHUP makes the instance try.
    assert!(!d.cli(&["reload"]).unwrap().status.success());
    let _sent = std::process::Command::new("kill").args(["-HUP", &d.child.id().to_string()]).status();
    let failed = || sum(&scrape(metrics).1, "dnlb_reloads_total", &[("result", "failure")]) == 1.0;
    wait_until("the failed reload counted", limit, failed, || d.stderr());
    let (body, s) = scrape(metrics);
    assert_eq!(sum(&s, "dnlb_config_last_reload_successful", &[]), 0.0, "{body}");
    std::fs::write(&d.config, &good).unwrap();
    text(&d, &["reload"]);
    let (body, s) = scrape(metrics);
    assert_eq!(sum(&s, "dnlb_reloads_total", &[("result", "success")]), 1.0, "{body}");
    assert_eq!(sum(&s, "dnlb_config_last_reload_successful", &[]), 1.0, "{body}");
    assert!(sum(&s, "dnlb_config_last_reload_success_timestamp_seconds", &[]) >= started, "{body}");
    assert!(has(&s, "dnlb_sip_server_flips_total", &l22));
    let after = json(&d, &["status", "--json", "--history"]);
    let kept = server(&after, &format!("{}:{sip_port}", ips[1]));
    let kept_steps = kept["history"].as_array().unwrap();
    assert!(kept_steps.len() >= steps.len(), "kept over the reload: {kept}");
    assert_eq!(kept_steps[1]["at_unix"], history[1]["at_unix"], "the same changes: {kept}");
    assert!(kept["flaps_1h"].as_u64().unwrap() >= 2, "{kept}");
}

/// `promtool test rules` runs the unit tests of the shipped alert and recording rules on
/// synthetic series; `promtool check rules` checks the file itself.
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    if !require(have("promtool"), "promtool (Debian package prometheus)") {
        return;
    }
    let dir = Path::new("dist/prometheus");
    let check = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(dir.join("dnlb-rules.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = std::process::Command::new("promtool")
        .args(["test", "rules", "dnlb-rules.test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
    assert!(test.status.success(), "promtool test rules:\n{out}");
    println!("{out}");
}

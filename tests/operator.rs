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
    // The same change: its Unix time is worked out from the monotonic clock at each ask, so it
    // may move by the two clocks' drift between the asks (microseconds), never by a probe interval.
    let (was, is) = (history[1]["at_unix"].as_f64().unwrap(), kept_steps[1]["at_unix"].as_f64().unwrap());
    assert!((was - is).abs() < 0.01, "the same changes ({was} then {is}): {kept}");
    assert_eq!(kept_steps[1]["why"], history[1]["why"], "{kept}");
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

/// Runs `cmd` and returns its stdout, failing the test with its output if it fails.
fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Debian package scripts/package builds (scripts/test runs it before the tests): lintian
/// finds no error, it holds the binary, the unit, the configuration as a conffile, the docs,
/// the manual page and completions, and the binary taken out of it checks the packaged
/// configuration.
#[test]
fn the_debian_package_is_whole_and_its_binary_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb =
        std::fs::read_dir(root.join("target/debian")).into_iter().flatten().flatten().map(|e| e.path()).find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dnlb_"))
        });
    let tools = have("lintian") && have("dpkg-deb");
    if !require(tools, "lintian and dpkg-deb (Debian packages lintian, dpkg)") {
        return;
    }
    let Some(deb) = deb else {
        require(false, "target/debian/dnlb_*.deb (scripts/package builds it)");
        return;
    };
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("dnlb_{}-", env!("CARGO_PKG_VERSION"))), "this version's package: {name}");

    // lintian: no errors (warnings are printed, not fatal). It runs as root in CI, which it
    // refuses unless told the run is unprivileged work.
    let lintian = std::process::Command::new("lintian")
        .args(["--fail-on", "error", "--allow-root", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&lintian.stdout), String::from_utf8_lossy(&lintian.stderr));
    println!("lintian {name}:\n{report}");
    assert!(lintian.status.success() && !report.lines().any(|l| l.starts_with("E: ")), "lintian errors:\n{report}");

    let contents = run(std::process::Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/dnlb",
        "systemd/system/dnlb.service",
        "./etc/dnlb/dnlb.toml",
        "./usr/share/doc/dnlb/README.md",
        "./usr/share/doc/dnlb/copyright",
        "./usr/share/doc/dnlb/changelog.gz",
        "./usr/share/doc/dnlb/changelog.Debian.gz",
        "./usr/share/man/man1/dnlb.1.gz",
        "./usr/share/bash-completion/completions/dnlb",
        "./usr/share/zsh/vendor-completions/_dnlb",
        "./usr/share/fish/vendor_completions.d/dnlb.fish",
        "./usr/share/dnlb/prometheus/dnlb-rules.yml",
        "./usr/share/dnlb/grafana/dnlb.json",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} is not in the package:\n{contents}");
    }
    let conffiles = run(std::process::Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/dnlb/dnlb.toml", "the configuration is a conffile");
    let control = run(std::process::Command::new("dpkg-deb").arg("--info").arg(&deb).arg("control"));
    assert!(control.contains("Depends:") && control.contains("adduser"), "{control}");

    // The binary out of the package checks the packaged configuration and prints its manual.
    let scratch = std::env::temp_dir().join(format!("dnlb-deb-{}", std::process::id()));
    let _stale = std::fs::remove_dir_all(&scratch);
    run(std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch));
    let bin = scratch.join("usr/bin/dnlb");
    let checked = run(std::process::Command::new(&bin).arg("check-config").arg(scratch.join("etc/dnlb/dnlb.toml")));
    assert!(checked.contains(": ok ("), "{checked}");
    // Built with the fleet (package.metadata.deb's features): it takes a [cluster] section.
    let fleet = scratch.join("fleet.toml");
    let packaged = std::fs::read_to_string(scratch.join("etc/dnlb/dnlb.toml")).unwrap();
    let with_cluster = "[cluster]\netcd = [\"http://127.0.21.1:2379\"]\nfarm = \"voice-east\"\nname = \"edge-1\"\n";
    std::fs::write(&fleet, format!("{packaged}\n{with_cluster}")).unwrap();
    let out = std::process::Command::new(&bin).arg("check-config").arg(&fleet).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains(": ok ("), "the packaged dnlb has no fleet:\n{said}");
    let version = run(std::process::Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("dnlb {}", env!("CARGO_PKG_VERSION")));
    let man = run(std::process::Command::new("gzip").arg("-dc").arg(scratch.join("usr/share/man/man1/dnlb.1.gz")));
    assert_eq!(man, run(std::process::Command::new(&bin).args(["generate", "man"])), "the manual is this binary's");
    for word in [".TH dnlb 1", "check\\-config", "status", "explain", "drain"] {
        assert!(man.contains(word), "{word} is not in dnlb(1):\n{man}");
    }
    let bash = std::fs::read_to_string(scratch.join("usr/share/bash-completion/completions/dnlb")).unwrap();
    assert!(bash.contains("check-config") && bash.contains("--history"), "bash completes subcommands and flags");
    let _removed = std::fs::remove_dir_all(&scratch);
}

/// Headless Chromium (Debian's `chromium`) on `url`: the rendered DOM, or a screenshot into
/// `screenshot` when given. A fresh profile each time, nothing fetched but the page.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let profile = std::env::temp_dir().join(format!("dnlb-chromium-{}-{}", std::process::id(), free_port()));
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => cmd.arg("--window-size=1400,820").arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    let _removed = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tr>` of `id` in a rendered DOM, if there is one.
fn table_row<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr id=\"{id}\""))?;
    let end = dom[start..].find("</tr>")?;
    Some(&dom[start..start + end])
}

/// The status page in a real browser while a real kamailio is stopped and started: its row says
/// out with the reason, then in again, with the change drawn in its timeline. A screenshot is
/// kept in target/tmp/status-page.png; the page saved to a file renders the same without the
/// server.
#[test]
fn the_status_page_in_a_browser_follows_a_kamailio_out_and_back() {
    if !require(have("kamailio"), "kamailio (package kamailio)")
        || !require(have("chromium"), "chromium (package chromium)")
    {
        return;
    }
    let ips = ["127.0.8.31", "127.0.8.32"];
    let kamailio = |ip: &str| {
        common::kamailio::Kamailio::start("page", &[format!("udp:{ip}:5060"), format!("tcp:{ip}:5060")], None)
    };
    let mut kamailios: Vec<common::kamailio::Kamailio> = ips.iter().map(|i| kamailio(i)).collect();
    let metrics: SocketAddr = SocketAddr::new(ip("127.0.8.1"), free_port());
    let dns = free_port();
    let mut text = format!(
        "[server]\nlisten = [\"127.0.8.1:{dns}\"]\nworkers = 1\npin_workers = false\n[probe]\ninterval_ms = 500\ntimeout_ms = 150\nrise = 2\nfall = 2\n[metrics]\nlisten = \"{metrics}\"\n[[service]]\nname = \"sip.example.test\"\n"
    );
    for (i, address) in ips.iter().enumerate() {
        let site = ["east", "west"][i];
        text.push_str(&format!(
            "[[service.server]]\naddress = \"{address}\"\ntransports = [\"udp\", \"tcp\"]\nsite = \"{site}\"\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("dnlb-page-{}-{dns}", std::process::id()));
    let d = Dnlb::spawn(dir.clone(), &text);
    d.wait_for_control();
    let url = format!("http://{metrics}/");
    let id = |transport: &str| format!("sip.example.test/{}:5060/{transport}", ips[0]);
    // Polls the page in the browser until `want` holds for the first server's UDP and TCP rows.
    let watch = |what: &str, limit: Duration, want: &dyn Fn(&str, &str) -> bool| -> String {
        let start = std::time::Instant::now();
        loop {
            let dom = chromium(&url, None);
            if let (Some(udp), Some(tcp)) = (table_row(&dom, &id("udp")), table_row(&dom, &id("tcp"))) {
                if want(udp, tcp) {
                    return dom;
                }
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}\n{dom}\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let serving =
        |row: &str, s: &str| row.contains(&format!("data-serving=\"{s}\"")) && row.contains(&format!(">{s}</span>"));
    let dom = watch("both kamailio in", Duration::from_secs(20), &|udp, tcp| serving(udp, "in") && serving(tcp, "in"));
    assert!(dom.contains("<h2>sip.example.test</h2>") && dom.contains("policy round-robin"), "{dom}");

    kamailios[0].stop();
    let dom = watch("the stopped kamailio out, with why", Duration::from_secs(15), &|udp, tcp| {
        serving(udp, "out")
            && udp.contains("ICMP port unreachable")
            && serving(tcp, "out")
            && tcp.contains("connection refused")
    });
    let other = table_row(&dom, &format!("sip.example.test/{}:5060/udp", ips[1])).unwrap();
    assert!(serving(other, "in"), "the other server stays in: {other}");
    let udp = table_row(&dom, &id("udp")).unwrap();
    assert!(udp.contains("up -&gt; down, ICMP port unreachable"), "the change in the timeline: {udp}");
    // A screenshot of the page with the server out, kept in the test's output.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(&url, Some(&shot));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page: {}", shot.display());
    println!("screenshot: {}", shot.display());
    // The same page saved to a file renders alike, with no server behind it.
    let (status, body) = common::prom::http(metrics, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200);
    let saved = dir.join("status.html");
    std::fs::write(&saved, &body).unwrap();
    let from_file = chromium(&format!("file://{}", saved.display()), None);
    assert!(table_row(&from_file, &id("udp")).is_some_and(|r| serving(r, "out")), "{from_file}");
    let json: serde_json::Value =
        serde_json::from_str(&common::prom::http(metrics, b"GET /status.json HTTP/1.1\r\n\r\n").1).unwrap();
    assert_eq!(json["services"][0]["servers"][0]["serving"], "out", "{json}");

    kamailios[0] = kamailio(ips[0]);
    let dom = watch("the restarted kamailio back in", Duration::from_secs(15), &|udp, tcp| {
        serving(udp, "in") && serving(tcp, "in")
    });
    let udp = table_row(&dom, &id("udp")).unwrap();
    assert!(udp.contains("down -&gt; up, a final reply") && udp.contains("2 / 2"), "two flaps drawn: {udp}");
}

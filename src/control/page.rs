//! The status page: one self-contained HTML document rendered from a [`Status`], served at `/`
//! on the metrics listener. Pure: a `Status` in, a `String` out.
//!
//! ```text
//!  Status ─► render ─► <html> head: inline CSS, <meta refresh>
//!                             body: instance line, edge and relay summaries
//!                                   per service: policy, answer, all-down banner
//!                                   table: a row per server and transport, with an inline
//!                                          SVG timeline of its history
//! ```
//!
//! No script, no external asset (fonts, styles, images): the page reads the same from a saved
//! file, and it reloads itself every [`REFRESH_SECONDS`] with a `<meta http-equiv="refresh">`.
//! Every string from the configuration or a peer is escaped. Each server row carries
//! `data-serving` (`in`, `out`, `drained`) and `data-state` for tools that read the DOM.

use std::fmt::Write as _;

use super::report::ago;
use super::status::{ChangeStatus, ServerStatus, ServiceStatus, Status};

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 5;
/// The timeline's width in pixels.
const TIMELINE_WIDTH: f64 = 240.0;
/// The shortest span a timeline shows (seconds), so a fresh history is not one wide bar.
const TIMELINE_MIN: f64 = 60.0;
/// The longest span a timeline shows (seconds).
const TIMELINE_MAX: f64 = 86_400.0;

/// The page's style: plain, readable at 3 a.m., printable.
const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .3em}
.meta{color:#555;margin:0 0 1em}.summary{display:flex;flex-wrap:wrap;gap:.6em 1.6em;margin:.4em 0}
.summary div{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.3em .7em}
.summary b{display:block;font-size:1.1em}
table{border-collapse:collapse;background:#fff;width:100%;margin:.3em 0 1em}
th,td{border-bottom:1px solid #e3e3e3;padding:.35em .6em;text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#f0f0f0;font-weight:600}td.why{white-space:normal;max-width:28em}
.state{font-weight:700;border-radius:3px;padding:.1em .5em;color:#fff}
.in{background:#2e7d32}.out{background:#c62828}.drained{background:#1565c0}.unknown{background:#757575}
.tag{font-size:.85em;border:1px solid #999;border-radius:3px;padding:0 .3em;margin-left:.3em;color:#333}
.banner{background:#c62828;color:#fff;padding:.4em .8em;border-radius:4px;margin:.3em 0}
.num{text-align:right;font-variant-numeric:tabular-nums}svg{display:block}
";

/// Escapes `s` for HTML text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as `2026-12-05 03:04:05 UTC` (the civil calendar from days since 1970).
pub fn utc(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// The CSS class of a health state and drain, as the page colours it.
fn class(state: &str, drained: bool) -> &'static str {
    match (drained, state) {
        (true, _) => "drained",
        (false, "up") => "in",
        (false, "down") => "out",
        _ => "unknown",
    }
}

/// The fill colour of a timeline segment (the same as the state badges).
fn colour(class: &str) -> &'static str {
    match class {
        "in" => "#2e7d32",
        "out" => "#c62828",
        "drained" => "#1565c0",
        _ => "#9e9e9e",
    }
}

/// An inline SVG of `history` (oldest first) over the span it needs (5 minutes to a day): one
/// coloured bar per stretch of time in one state, each with its change as a tooltip.
fn timeline(history: &[ChangeStatus], now_state: &str, now_drained: bool) -> String {
    let span = history.first().map_or(TIMELINE_MIN, |c| (c.ago_seconds * 1.1).clamp(TIMELINE_MIN, TIMELINE_MAX));
    let x = |ago: f64| TIMELINE_WIDTH * (1.0 - (ago / span).min(1.0));
    let mut svg = format!(
        "<svg width=\"{TIMELINE_WIDTH}\" height=\"14\" viewBox=\"0 0 {TIMELINE_WIDTH} 14\" role=\"img\"><title>the last {}</title>",
        ago(span)
    );
    // Before the oldest change: the state it left.
    let first = history.first().map_or(class(now_state, now_drained), |c| class(c.from, false));
    let start = history.first().map_or(TIMELINE_WIDTH, |c| x(c.ago_seconds));
    let _ = write!(svg, "<rect x=\"0\" y=\"2\" width=\"{start:.1}\" height=\"10\" fill=\"{}\"/>", colour(first));
    for (i, c) in history.iter().enumerate() {
        // A change this very moment still gets a visible pixel at the right edge.
        let from = x(c.ago_seconds).min(TIMELINE_WIDTH - 1.0);
        let to = history.get(i + 1).map_or(TIMELINE_WIDTH, |n| x(n.ago_seconds));
        let drained = if c.drained { ", drained" } else { "" };
        let _ = write!(
            svg,
            "<rect x=\"{from:.1}\" y=\"2\" width=\"{:.1}\" height=\"10\" fill=\"{}\"><title>{} ({} ago): {} -&gt; {}{drained}, {}</title></rect>",
            (to - from).max(1.0),
            colour(class(c.to, c.drained)),
            utc(c.at_unix),
            ago(c.ago_seconds),
            c.from,
            c.to,
            escape(c.why)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One row of a service's table.
fn row(out: &mut String, service: &ServiceStatus, s: &ServerStatus) {
    let mut tags = String::new();
    if let Some(oc) = s.overload_percent {
        let _ = write!(tags, "<span class=\"tag\">overloaded oc={oc}%</span>");
    }
    if s.loss_copies {
        tags.push_str("<span class=\"tag\">lossy path</span>");
    }
    let why = match (s.why, s.failure.filter(|f| Some(*f) != s.why)) {
        (Some(why), Some(f)) => format!("{}; failing: {}", escape(why), escape(f)),
        (Some(why), None) => escape(why),
        (None, Some(f)) => format!("failing: {}", escape(f)),
        (None, None) => "-".into(),
    };
    let changed = match (s.since_seconds, s.changed_unix) {
        (Some(since), Some(at)) => format!("<span title=\"{}\">{} ago</span>", utc(at), ago(since)),
        _ => "-".into(),
    };
    let history = s.history.as_deref().unwrap_or(&[]);
    let _ = writeln!(
        out,
        "<tr id=\"{id}\" data-serving=\"{serving}\" data-state=\"{state}\"><td>{address}</td><td>{transport}</td><td>{site}</td>\
         <td><span class=\"state {class}\">{serving}</span>{tags}</td><td>{state}</td><td class=\"why\">{why}</td>\
         <td class=\"num\">{rtt}</td><td class=\"num\">{code}</td><td>{changed}</td><td class=\"num\">{f1} / {f24}</td><td>{svg}</td></tr>",
        id = escape(&format!("{}/{}/{}", service.name, s.address, s.transport)),
        serving = s.serving,
        state = s.state,
        address = escape(&s.address),
        transport = s.transport,
        site = s.site.as_deref().map_or("-".into(), escape),
        class = class(s.state, s.drained),
        rtt = s.rtt_ms.map_or("-".into(), |ms| format!("{ms:.2} ms")),
        code = s.last_code.map_or("-".into(), |c| c.to_string()),
        f1 = s.flaps_1h,
        f24 = s.flaps_24h,
        svg = timeline(history, s.state, s.drained),
    );
}

/// One labelled number of a summary.
fn cell(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "<div><b>{value}</b>{label}</div>");
}

/// The whole page for `st` (its servers' histories draw the timelines).
pub fn render(st: &Status) -> String {
    let mut out = String::with_capacity(4096 + 2048 * st.services.iter().map(|s| s.servers.len()).sum::<usize>());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>dnlb status</title><style>{STYLE}</style></head><body>\n"
    );
    let heartbeat = st
        .prober_heartbeat_age_seconds
        .map_or("probing is off: every configured server counts as healthy".into(), |h| {
            format!("prober heartbeat {:.0} ms ago", h * 1000.0)
        });
    let reload = if st.reloads.last_ok { "ok" } else { "refused: the running configuration is not the file" };
    let _ = writeln!(
        out,
        "<h1>dnlb {}</h1><p class=\"meta\">{} · answers generation {} built {} ago · {heartbeat} · reloads {} ok, {} refused, last {reload} · this page reloads every {REFRESH_SECONDS} s</p>",
        escape(st.version),
        utc(st.generated_unix),
        st.generation,
        ago(st.snapshot_age_seconds),
        st.reloads.succeeded,
        st.reloads.failed,
    );
    if let Some(e) = &st.edge {
        out.push_str("<h2>Clients</h2><div class=\"summary\" id=\"edge\">");
        cell(&mut out, "queries", e.queries);
        for rcode in ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR"] {
            cell(&mut out, rcode, e.responses.get(rcode).copied().unwrap_or(0));
        }
        cell(&mut out, "dropped", e.dropped);
        cell(&mut out, "truncated (TC=1)", e.truncated);
        cell(&mut out, "rate-limited: slipped / dropped", format!("{} / {}", e.rrl_slipped, e.rrl_dropped));
        cell(
            &mut out,
            "TCP open / accepted / evicted",
            format!("{} / {} / {}", e.tcp_open, e.tcp_accepted, e.tcp_evicted),
        );
        out.push_str("</div>\n");
    }
    if let Some(r) = &st.relay {
        out.push_str("<h2>Relay</h2><div class=\"summary\" id=\"relay\">");
        cell(&mut out, "cache hits / misses", format!("{} / {}", r.cache_hits, r.cache_misses));
        cell(&mut out, "upstream queries", r.upstream_queries);
        cell(&mut out, "upstream timeouts / errors", format!("{} / {}", r.upstream_timeouts, r.upstream_errors));
        cell(&mut out, "forged replies refused", r.forged);
        cell(&mut out, "in flight", r.pending);
        cell(&mut out, "stale answers / prefetches", format!("{} / {}", r.stale_answers, r.prefetches));
        out.push_str("</div>\n");
    }
    for s in &st.services {
        let _ = writeln!(
            out,
            "<h2>{}</h2><p class=\"meta\">policy {} · all down: {} · A now: {}</p>",
            escape(&s.name),
            s.policy,
            s.all_down,
            if s.answer.is_empty() { "(none)".into() } else { escape(&s.answer.join(" ")) }
        );
        if s.all_down_now {
            let _ = writeln!(
                out,
                "<div class=\"banner\">No server is healthy: answering by all_down = {}</div>",
                s.all_down
            );
        }
        out.push_str(
            "<table><thead><tr><th>server</th><th>transport</th><th>site</th><th>in the answers</th><th>health</th>\
             <th>why</th><th>RTT</th><th>code</th><th>last change</th><th>flaps 1 h / 24 h</th><th title=\"hover a bar for its change\">history</th></tr></thead><tbody>\n",
        );
        for server in &s.servers {
            row(&mut out, s, server);
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("<p class=\"meta\">The same as JSON: <a href=\"status.json?history=1\">status.json</a> · Prometheus: <a href=\"metrics\">metrics</a></p>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{RelaySummary, ReloadCounts, ServerStatus};

    fn server(address: &str, state: &'static str, serving: &'static str, history: Vec<ChangeStatus>) -> ServerStatus {
        ServerStatus {
            address: address.into(),
            transport: "udp",
            site: Some("east<script>".into()),
            state,
            own_state: state,
            probed_here: true,
            serving,
            since_seconds: Some(75.0),
            changed_unix: Some(1_800_000_000.0),
            why: Some("ICMP port unreachable"),
            rtt_ms: None,
            last_code: Some(200),
            flips: 3,
            flaps_1h: 2,
            flaps_24h: 2,
            failure: None,
            drained: false,
            overload_percent: Some(50),
            loss_copies: false,
            history: Some(history),
        }
    }

    fn change(ago: f64, from: &'static str, to: &'static str, why: &'static str) -> ChangeStatus {
        ChangeStatus {
            at_unix: 1_800_000_000.0 - ago,
            ago_seconds: ago,
            from,
            to,
            drained: false,
            why,
            rtt_ms: Some(0.4),
            last_code: Some(200),
            overload_percent: 0,
        }
    }

    fn status(servers: Vec<ServerStatus>) -> Status {
        Status {
            version: "0.1.0",
            generated_unix: 1_800_000_000.0,
            generation: 7,
            snapshot_age_seconds: 3.0,
            prober_heartbeat_age_seconds: Some(0.04),
            services: vec![ServiceStatus {
                name: "sip.example.test".into(),
                policy: "round-robin",
                all_down: "serve-all",
                all_down_now: true,
                answer: vec!["127.0.8.31".into()],
                servers,
            }],
            edge: None,
            relay: None,
            reloads: ReloadCounts { succeeded: 1, failed: 0, last_ok: true, last_success_unix: 0.0 },
            cluster: None,
            cluster_text: None,
        }
    }

    #[test]
    fn a_row_per_server_with_its_state_reason_and_timeline() {
        let history =
            vec![change(600.0, "unknown", "up", "a final reply"), change(75.0, "up", "down", "ICMP port unreachable")];
        let page = render(&status(vec![server("127.0.8.31:5060", "down", "out", history)]));
        let row = page.lines().find(|l| l.starts_with("<tr id=\"sip.example.test/127.0.8.31:5060/udp\"")).unwrap();
        assert!(row.contains("data-serving=\"out\"") && row.contains("<span class=\"state out\">out</span>"), "{row}");
        assert!(row.contains("ICMP port unreachable") && row.contains("oc=50%") && row.contains("75.0 s ago"), "{row}");
        assert!(row.contains("<svg") && row.matches("<rect").count() == 3, "a bar before and one per change: {row}");
        assert!(row.contains("up -&gt; down, ICMP port unreachable"), "each change as a tooltip: {row}");
        assert!(row.contains("east&lt;script&gt;") && !page.contains("<script"), "escaped, and no script at all");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("No server is healthy: answering by all_down = serve-all"));
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="), "no external asset");
    }

    #[test]
    fn timelines_span_their_history_and_never_leave_the_box() {
        let svg = timeline(&[], "up", false);
        assert!(svg.contains("width=\"240.0\"") && svg.contains("#2e7d32"), "no change yet: its state now, {svg}");
        let long = [change(200_000.0, "up", "down", "timeout"), change(10.0, "down", "up", "a final reply")];
        let svg = timeline(&long, "up", false);
        assert!(svg.contains("<title>the last 24.0 h</title>"), "capped at a day: {svg}");
        assert!(svg.contains("x=\"0.0\""), "an older change starts at the left edge: {svg}");
        for x in svg.split(" x=\"").skip(1).map(|r| r.split('"').next().unwrap().parse::<f64>().unwrap()) {
            assert!((0.0..=TIMELINE_WIDTH).contains(&x), "{x} in {svg}");
        }
    }

    #[test]
    fn the_relay_summary_counts_stale_answers_and_prefetches() {
        let mut st = status(vec![]);
        st.relay = Some(RelaySummary {
            cache_hits: 90,
            cache_misses: 10,
            upstream_queries: 12,
            upstream_timeouts: 2,
            upstream_errors: 1,
            forged: 0,
            pending: 3,
            stale_answers: 4,
            prefetches: 5,
        });
        let page = render(&st);
        let relay = page.lines().find(|l| l.contains("id=\"relay\"")).unwrap();
        assert!(relay.contains("90 / 10") && relay.contains("stale answers / prefetches"), "{relay}");
        assert!(relay.contains("4 / 5"), "{relay}");
    }

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_800_000_000.0), "2027-01-15 08:00:00 UTC");
        assert_eq!(utc(-5.0), "1970-01-01 00:00:00 UTC");
    }
}

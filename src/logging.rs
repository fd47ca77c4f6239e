//! Logs: `tracing` events on stderr, in one of three shapes.
//!
//! ```text
//!  text     2026-11-27T14:15:38.123456Z  WARN server down service=sip.example.test ...
//!  journal  <4>server down service=sip.example.test ...      (stderr is the journal's stream)
//!  json     {"timestamp":"...","level":"WARN","message":"server down","service":...}
//! ```
//!
//! Under systemd, stderr is connected to the journal and `JOURNAL_STREAM` names that stream: the
//! journal stamps each line itself and reads the syslog priority from a `<N>` prefix (sd-daemon(3)),
//! so text lines there carry the prefix and no timestamp. No per-packet path logs; anything that
//! could repeat with peer behaviour goes through [`RateLimited`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines: a timestamp, the level, the message and its fields (`key=value`);
    /// under the journal, a priority prefix instead of the timestamp.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown log format `{other}`: use text or json")),
        }
    }
}

/// Parses a level name: `error`, `warn`, `info` or `debug`.
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s {
        "error" => Ok(Level::ERROR),
        "warn" => Ok(Level::WARN),
        "info" => Ok(Level::INFO),
        "debug" => Ok(Level::DEBUG),
        other => Err(format!("unknown log level `{other}`: use error, warn, info or debug")),
    }
}

/// Installs the process-wide logger: events at `level` and above, written to stderr as `format`
/// says. A second call changes nothing (the first logger stays).
pub fn init(format: Format, level: Level) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_ansi(false);
    let _ = match format {
        Format::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        Format::Text => builder.event_format(Line { journal: stderr_is_journal() }).try_init(),
    };
}

/// Whether stderr is the journal stream systemd passed (`JOURNAL_STREAM=DEV:INODE`, compared with
/// stderr's own device and inode, so a redirected stderr keeps its timestamps).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    journal_matches(&stream, meta.dev(), meta.ino())
}

fn journal_matches(stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = stream.split_once(':') else { return false };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// The syslog priority the journal reads from a `<N>` prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The text line: `TIMESTAMP LEVEL message key=value ...`, or `<N>message key=value ...`.
struct Line {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(w, "<{}>", priority(level))?;
        } else {
            SystemTime.format_time(&mut w)?;
            write!(w, " {level:>5} ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Lets a repeatable message through at most once per period, and says how many were held back
/// in between; for messages a peer could trigger again and again (a client that keeps failing,
/// an endpoint that keeps erroring).
#[derive(Debug)]
pub struct RateLimited {
    period: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimited {
    /// At most one message per `period`.
    pub const fn new(period: Duration) -> RateLimited {
        RateLimited { period, last: None, held: 0 }
    }

    /// `Some(held)` when a message may go out now (`held` were suppressed since the last one);
    /// `None` when this one is to be suppressed.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < self.period) {
            self.held = self.held.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_lets_one_through_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimited::new(Duration::from_secs(10));
        assert_eq!(r.check(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.check(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(r.check(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(r.check(t0 + Duration::from_secs(11)), None);
        // A clock that goes backwards suppresses, never panics.
        assert_eq!(r.check(t0), None);
    }

    #[test]
    fn the_journal_is_recognised_only_by_its_own_device_and_inode() {
        assert!(journal_matches("8:12345", 8, 12345));
        assert!(!journal_matches("8:12345", 8, 12346));
        assert!(!journal_matches("8", 8, 12345));
        assert!(!journal_matches("x:y", 8, 12345));
        assert!(!journal_matches("", 0, 0));
    }

    #[test]
    fn levels_and_formats_parse_and_name_the_choices() {
        assert_eq!(parse_level("warn"), Ok(Level::WARN));
        assert!(parse_level("loud").unwrap_err().contains("error, warn, info or debug"));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().unwrap_err().contains("text or json"));
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::DEBUG), 7);
    }
}

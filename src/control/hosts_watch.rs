//! `hosts.watch`: noticing that the hosts file changed on disk, so the control plane reads it
//! again without a reload. Time is passed in; the file's identity is read from its metadata.
//!
//! ```text
//!  every HOSTS_LOOK: stamp (inode, size, mtime) ─► same as read? nothing
//!                                               ─► new, first seen now? remember it, wait one look
//!                                               ─► new and unchanged since the last look? read it
//! ```
//!
//! A change is read only once it has held still for one look, so a file being written is not
//! read half-way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, HostsSource};

/// How often a watched hosts file is looked at.
pub const HOSTS_LOOK: Duration = Duration::from_secs(1);

/// What identifies one version of a file: inode, size and modification time (`None`: unreadable).
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// Notices a change of the hosts file while `hosts.watch` is on.
#[derive(Debug)]
pub struct HostsWatch {
    /// The file the running configuration read, and its stamp then.
    seen: Option<(PathBuf, Stamp)>,
    /// A new stamp seen at the last look, not yet read.
    moved: Option<Stamp>,
    /// When to look next.
    next: Instant,
}

impl HostsWatch {
    /// Watches the hosts file of `config` as it is now (when that configuration read it).
    pub fn new(config: &Config, now: Instant) -> HostsWatch {
        let seen = config.hosts_source.as_ref().map(|s| (s.path.clone(), stamp(&s.path)));
        HostsWatch { seen, moved: None, next: now + HOSTS_LOOK }
    }

    /// The hosts file to read again, once it changed and then held still; `None` while watching
    /// is off, before the next look is due, or when nothing changed.
    pub fn changed(&mut self, config: &Config, now: Instant) -> Option<HostsSource> {
        let source = config.hosts_source.as_ref().filter(|s| s.watch)?;
        if now < self.next {
            return None;
        }
        self.next = now + HOSTS_LOOK;
        let current = stamp(&source.path);
        match &self.seen {
            Some((path, seen)) if *path == source.path && *seen == current => {
                self.moved = None;
                None
            }
            Some((path, _)) if *path == source.path && self.moved != Some(current) => {
                self.moved = Some(current);
                None
            }
            Some((path, _)) if *path == source.path => {
                self.seen = Some((source.path.clone(), current));
                self.moved = None;
                Some(source.clone())
            }
            // Another file (a reload changed hosts.file, and read it): the new baseline.
            _ => {
                self.seen = Some((source.path.clone(), current));
                self.moved = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own with a hosts file, and a configuration that reads it.
    fn setup(name: &str, watch: bool) -> (PathBuf, Config) {
        let dir = std::env::temp_dir().join(format!("dnlb-hosts-watch-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "192.0.2.10 phone.example.test\n").unwrap();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:5353\"]\n[hosts]\nfile = \"{}\"\nwatch = {watch}\n",
            hosts.display()
        );
        (hosts, Config::parse(&text).unwrap())
    }

    #[test]
    fn a_change_is_read_once_it_held_still_for_one_look() {
        let (hosts, config) = setup("still", true);
        let t0 = Instant::now();
        let mut watch = HostsWatch::new(&config, t0);
        assert!(watch.changed(&config, t0 + HOSTS_LOOK).is_none(), "nothing changed");
        std::fs::write(&hosts, "192.0.2.11 phone.example.test\n192.0.2.12 other.example.test\n").unwrap();
        assert!(watch.changed(&config, t0 + HOSTS_LOOK + HOSTS_LOOK / 2).is_none(), "not due yet");
        assert!(watch.changed(&config, t0 + 2 * HOSTS_LOOK).is_none(), "first seen: wait one look");
        // Still being written: the stamp moved again, so wait once more.
        std::fs::write(&hosts, "192.0.2.11 phone.example.test\n").unwrap();
        assert!(watch.changed(&config, t0 + 3 * HOSTS_LOOK).is_none(), "moved again: wait");
        let read = watch.changed(&config, t0 + 4 * HOSTS_LOOK).expect("held still for a look: read it");
        assert_eq!(read.path, hosts);
        assert!(watch.changed(&config, t0 + 5 * HOSTS_LOOK).is_none(), "read once, not again");
    }

    #[test]
    fn nothing_is_read_while_watching_is_off() {
        let (hosts, config) = setup("off", false);
        let t0 = Instant::now();
        let mut watch = HostsWatch::new(&config, t0);
        std::fs::write(&hosts, "192.0.2.13 phone.example.test\n192.0.2.14 x.example.test\n").unwrap();
        for look in 1..5 {
            assert!(watch.changed(&config, t0 + look * HOSTS_LOOK).is_none(), "look {look}");
        }
    }

    #[test]
    fn another_file_is_a_new_baseline() {
        let (_, config) = setup("first", true);
        let (_, other) = setup("second", true);
        let t0 = Instant::now();
        let mut watch = HostsWatch::new(&config, t0);
        for look in 1..4 {
            assert!(watch.changed(&other, t0 + look * HOSTS_LOOK).is_none(), "look {look}: the file a reload read");
        }
    }
}

//! The runtime directory of an instance: its control socket and its locks live there, named after
//! its first listen address, so `dnlb status --config PATH` finds the instance that config runs.
//!
//! The directory is `server.runtime_dir` if set, else `$RUNTIME_DIRECTORY` (systemd's
//! `RuntimeDirectory=`), else `/run/dnlb` when writable (root), else `$XDG_RUNTIME_DIR/dnlb`, else
//! `/tmp/dnlb-UID`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The runtime directory for an instance with this `configured` value (`server.runtime_dir`).
pub fn dir(configured: Option<&Path>) -> PathBuf {
    if let Some(d) = configured {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'; the first is ours.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first);
    }
    let run = Path::new("/run/dnlb");
    if run.is_dir() || std::fs::create_dir_all(run).is_ok() {
        return run.to_path_buf();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("dnlb");
    }
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0);
    PathBuf::from(format!("/tmp/dnlb-{uid}"))
}

/// A file name for a listen address: `127.0.0.1:5353` → `127.0.0.1-5353`, `[::1]:53` → `--1-53`.
pub fn address_name(addr: SocketAddr) -> String {
    format!("{}-{}", addr.ip(), addr.port()).replace([':', '[', ']'], "-")
}

/// The control socket of the instance whose first listen address is `first_listen`.
pub fn control_socket(dir: &Path, first_listen: SocketAddr) -> PathBuf {
    dir.join(format!("{}.sock", address_name(first_listen)))
}

/// The lock file of listen address `addr` (one instance per address).
pub fn lock_file(dir: &Path, addr: SocketAddr) -> PathBuf {
    dir.join(format!("{}.lock", address_name(addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        assert_eq!(address_name("127.0.0.1:5353".parse().unwrap()), "127.0.0.1-5353");
        assert_eq!(address_name("[::1]:53".parse().unwrap()), "--1-53");
        let d = Path::new("/run/dnlb");
        assert_eq!(control_socket(d, "127.0.0.1:53".parse().unwrap()), Path::new("/run/dnlb/127.0.0.1-53.sock"));
        assert_eq!(dir(Some(Path::new("/x"))), Path::new("/x"));
    }
}

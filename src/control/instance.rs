//! One dnlb per listen address: an exclusive lock on `ADDR.lock` in the runtime directory for
//! every address, taken before any socket is bound and held for the process's life.
//!
//! SO_REUSEPORT lets a second dnlb bind the same address without a word, and the kernel would then
//! split the clients between two processes that may run different configurations. The lock makes
//! the second one stop at once, naming the address, the lock file and the PID of the holder.
//! The lock is an advisory `flock`: the kernel releases it when the process ends, however it
//! ends, so a crashed instance never leaves a stale lock behind. The lock files are opened by
//! [`RuntimeDir::open_lock`]: never through a symbolic link, never a file of someone else's, and
//! only a file dnlb made is rewritten with its PID.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::runtime::{lock_file, RuntimeDir, RuntimeError};

/// Why this instance may not run. Either another instance holds an address (the operator's
/// doing), or the runtime directory or a lock file in it is unusable (the setup's).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A lock file could not be opened safely (a link, another user's file, no access).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A lock file could not be opened, locked or written.
    #[error("cannot lock {file} for {addr}: {source} (set server.runtime_dir to a writable directory)")]
    File {
        /// The listen address the lock is for.
        addr: SocketAddr,
        /// The lock file.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Another process holds the lock of a listen address.
    #[error(
        "another dnlb ({holder}) already serves {addr}: it holds {file}; stop it first, or give this one another listen address"
    )]
    Held {
        /// The listen address.
        addr: SocketAddr,
        /// The lock file.
        file: PathBuf,
        /// Who holds it: "PID n" from the file, or "PID unknown".
        holder: String,
    },
}

/// The held locks; dropping them (process exit) releases them.
#[derive(Debug)]
pub struct InstanceLocks {
    /// One open, locked file per listen address.
    files: Vec<(PathBuf, File)>,
}

impl InstanceLocks {
    /// Locks every address of `listen` in the runtime directory `dir`, writing this process's PID
    /// into each lock file dnlb may rewrite. Fails on the first address another process holds.
    pub fn acquire(dir: &RuntimeDir, listen: &[SocketAddr]) -> Result<InstanceLocks, LockError> {
        let mut files = Vec::with_capacity(listen.len());
        for &addr in listen {
            let path = lock_file(dir.path(), addr);
            let fail = |source| LockError::File { addr, file: path.clone(), source };
            // Not truncated on open: the holder's PID must survive a failed attempt to read it.
            let (mut file, writable) = dir.open_lock(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held { addr, holder: holder(&mut file), file: path });
                }
                Err(TryLockError::Error(e)) => return Err(fail(e)),
            }
            if !writable {
                // Root's file, and not held: a stale lock of a root instance this user cannot
                // rewrite.
                return Err(fail(std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
            }
            file.set_len(0).map_err(fail)?;
            file.rewind().map_err(fail)?;
            writeln!(file, "{}", std::process::id()).map_err(fail)?;
            files.push((path, file));
        }
        Ok(InstanceLocks { files })
    }

    /// The lock files held, in listen order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}

/// The PID written in a held lock file, as "PID n", or "PID unknown" if it cannot be read.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text).map(|_| text.trim().parse::<u32>()) {
        Ok(Ok(pid)) => format!("PID {pid}"),
        _ => "PID unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dnlb-lock-{name}-{}", std::process::id()));
        let _stale = std::fs::remove_dir_all(&d);
        d
    }

    fn prepared(dir: &Path) -> RuntimeDir {
        RuntimeDir::prepare(dir, None).unwrap()
    }

    #[test]
    fn a_second_holder_is_refused_with_the_pid() {
        let dir = scratch("second");
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:5353".parse().unwrap()];
        let first = InstanceLocks::acquire(&prepared(&dir), &addrs).unwrap();
        assert_eq!(first.paths().count(), 2);
        // flock locks belong to the open file, so a second open in this process conflicts too.
        match InstanceLocks::acquire(&prepared(&dir), &addrs[1..]) {
            Err(LockError::Held { addr, holder, file }) => {
                assert_eq!(addr, addrs[1]);
                assert_eq!(holder, format!("PID {}", std::process::id()));
                assert_eq!(file, std::fs::canonicalize(&dir).unwrap().join("--1-5353.lock"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = InstanceLocks::acquire(&prepared(&dir), &addrs).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! One dnlb per listen address: an exclusive lock on `ADDR.lock` in the runtime directory for
//! every address, taken before any socket is bound and held for the process's life.
//!
//! SO_REUSEPORT lets a second dnlb bind the same address without a word, and the kernel would then
//! split the clients between two processes that may run different configurations. The lock makes
//! the second one stop at once, naming the address, the lock file and the PID of the holder.
//! The lock is an advisory `flock`: the kernel releases it when the process ends, however it
//! ends, so a crashed instance never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::runtime::lock_file;

/// Why this instance may not run. Either another instance holds an address (the operator's
/// doing), or the runtime directory is unusable (our environment's).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The runtime directory could not be created.
    #[error("cannot create the runtime directory {dir}: {source} (set server.runtime_dir to a writable directory)")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
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
    /// Creates `dir` (mode 0755) if missing and locks every address of `listen` in it, writing
    /// this process's PID into each lock file. Fails on the first address another process holds.
    pub fn acquire(dir: &Path, listen: &[SocketAddr]) -> Result<InstanceLocks, LockError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| LockError::Dir { dir: dir.to_path_buf(), source })?;
        let mut files = Vec::with_capacity(listen.len());
        for &addr in listen {
            let path = lock_file(dir, addr);
            let fail = |source| LockError::File { addr, file: path.clone(), source };
            // Not truncated on open: the holder's PID must survive a failed attempt to read it.
            let mut file =
                match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(&path) {
                    Ok(file) => file,
                    // A root instance's lock file is not writable by another user, but flock needs
                    // only a read descriptor: a held lock then still reads as "already serves".
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        let file = File::open(&path).map_err(|_| fail(e))?;
                        return match file.try_lock() {
                            Err(TryLockError::WouldBlock) => {
                                let mut file = file;
                                Err(LockError::Held { addr, holder: holder(&mut file), file: path })
                            }
                            _ => Err(fail(std::io::Error::from(std::io::ErrorKind::PermissionDenied))),
                        };
                    }
                    Err(e) => return Err(fail(e)),
                };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held { addr, holder: holder(&mut file), file: path });
                }
                Err(TryLockError::Error(e)) => return Err(fail(e)),
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

    #[test]
    fn a_second_holder_is_refused_with_the_pid() {
        let dir = scratch("second");
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:5353".parse().unwrap()];
        let first = InstanceLocks::acquire(&dir, &addrs).unwrap();
        assert_eq!(first.paths().count(), 2);
        // flock locks belong to the open file, so a second open in this process conflicts too.
        match InstanceLocks::acquire(&dir, &addrs[1..]) {
            Err(LockError::Held { addr, holder, file }) => {
                assert_eq!(addr, addrs[1]);
                assert_eq!(holder, format!("PID {}", std::process::id()));
                assert_eq!(file, dir.join("--1-5353.lock"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = InstanceLocks::acquire(&dir, &addrs).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

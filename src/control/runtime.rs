//! The runtime directory of an instance: its control socket and its locks live there, named after
//! its first listen address, so `dnlb status --config PATH` finds the instance that config runs.
//!
//! ```text
//!  dir()      server.runtime_dir, else $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else
//!             /run/dnlb for root, else $XDG_RUNTIME_DIR/dnlb, else an error naming the fix
//!  prepare()  missing: created 0700 (chowned to server.user when root will drop to it)
//!             present: a directory owned by root or by the user dnlb runs as, writable by
//!             neither group nor others, and every folder above it owned the same way and not
//!             writable by others (unless sticky, as /tmp is: no one renames what is ours there)
//!  open_lock() / adopt()   files in it: O_NOFOLLOW, never a file of someone else's
//! ```
//!
//! Whoever could write into the directory could swap the lock file for a symbolic link to any
//! file (which dnlb, as root, would then empty and write its PID into), take the control socket's
//! name, or hold the lock so dnlb never starts. So the directory is checked before anything is
//! created in it, and there is no shared fallback such as `/tmp/dnlb-UID` that another user could
//! create first.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the runtime directory, or a file in it, cannot be used. The operator's setup each time
/// (a directory someone else owns or may write, no directory at all), or the system refusing a
/// call; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Not root, and nothing names a directory of this user's.
    #[error(
        "no runtime directory for uid {uid}: dnlb is not root, and neither server.runtime_dir, $RUNTIME_DIRECTORY nor $XDG_RUNTIME_DIR is set: set server.runtime_dir to a directory of this user's (mode 0700)"
    )]
    NoneFound {
        /// The uid dnlb runs as.
        uid: u32,
    },
    /// The directory (or a folder above it) could not be created or looked at.
    #[error("cannot use the runtime directory {path}: {source} (create it with `mkdir -m 0700 {path}`, or set server.runtime_dir)")]
    Access {
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The path is not a directory.
    #[error("the runtime directory {path} is not a directory: remove it, or set server.runtime_dir to another path")]
    NotDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory, a folder above it or a file in it belongs to another user.
    #[error(
        "{what} {path} belongs to {owner}, not to root or to the user dnlb runs as ({user}): `chown {user_id} {path}`, or set server.runtime_dir to a directory of that user's"
    )]
    Owner {
        /// "the runtime directory", "a folder above the runtime directory", "the lock file".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its owner, "uid N (name)".
        owner: String,
        /// The user dnlb runs as, "uid N (name)".
        user: String,
        /// That user's uid, for the command.
        user_id: u32,
    },
    /// The directory, or a folder above it, may be written by other users.
    #[error(
        "{what} {path} is writable by {who} (mode {mode:04o}): `chmod go-w {path}`, or set server.runtime_dir to a directory only its owner may write"
    )]
    Writable {
        /// "the runtime directory" or "a folder above the runtime directory".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// "group", "others" or "group and others".
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// A file dnlb would create in the directory is a symbolic link or not a regular file.
    #[error(
        "{path} is {kind}, not a file dnlb made: remove it (dnlb never writes through a link or into another file)"
    )]
    Foreign {
        /// The path.
        path: PathBuf,
        /// "a symbolic link", "not a regular file", "not a socket".
        kind: &'static str,
    },
    /// A file could not be given to the user dnlb will run as.
    #[error("cannot give {path} to uid {uid}: {source}")]
    Chown {
        /// The path.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// What the operating system said.
        source: io::Error,
    },
}

/// The runtime directory for an instance with this `configured` value (`server.runtime_dir`):
/// the configured one, else `$RUNTIME_DIRECTORY` (its first entry), else `/run/dnlb` for root,
/// else `$XDG_RUNTIME_DIR/dnlb`. Nothing is created or checked here (the client side calls it
/// too); [`RuntimeDir::prepare`] does that.
pub fn dir(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let env = |name: &str| std::env::var_os(name).filter(|d| !d.is_empty());
    choose(configured, env("RUNTIME_DIRECTORY").as_deref(), env("XDG_RUNTIME_DIR").as_deref(), euid())
}

/// [`dir`] with the environment and the uid passed in.
fn choose(
    configured: Option<&Path>,
    runtime_directory: Option<&OsStr>,
    xdg_runtime_dir: Option<&OsStr>,
    uid: u32,
) -> Result<PathBuf, RuntimeError> {
    if let Some(d) = configured {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = runtime_directory {
        // systemd may list several, separated by ':'; the first is ours.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return Ok(PathBuf::from(first));
    }
    if uid == 0 {
        return Ok(PathBuf::from("/run/dnlb"));
    }
    match xdg_runtime_dir {
        Some(d) => Ok(Path::new(d).join("dnlb")),
        None => Err(RuntimeError::NoneFound { uid }),
    }
}

/// The effective uid of this process.
fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// "uid N (name)".
fn describe(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
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

/// What is wrong with a folder for a process that runs as `uid`, if anything: its owner must be
/// root or `uid`, and group and others may not write it (unless `sticky_ok` and it is sticky).
fn check(path: &Path, meta: &Metadata, uid: u32, what: &'static str, sticky_ok: bool) -> Result<(), RuntimeError> {
    if meta.uid() != 0 && meta.uid() != uid {
        let (owner, user) = (describe(meta.uid()), describe(uid));
        return Err(RuntimeError::Owner { what, path: path.to_path_buf(), owner, user, user_id: uid });
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(sticky_ok && sticky) {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "group",
            _ => "others",
        };
        return Err(RuntimeError::Writable { what, path: path.to_path_buf(), who, mode });
    }
    Ok(())
}

/// A runtime directory checked fit for this process: its own, or root's, and no one else's to
/// write.
#[derive(Debug, Clone)]
pub struct RuntimeDir {
    /// The directory (symbolic links resolved).
    path: PathBuf,
    /// The uid dnlb runs as once it is serving (after dropping to `server.user`).
    uid: u32,
    /// Whom to give what dnlb creates here, when root will drop to another user.
    give_to: Option<(u32, u32)>,
}

impl RuntimeDir {
    /// Creates `path` (mode 0700, missing folders above it 0755) if it is missing, giving it to
    /// `user` (uid, gid: the `server.user` root will drop to, if any); then checks it and every
    /// folder above it.
    pub fn prepare(path: &Path, user: Option<(u32, u32)>) -> Result<RuntimeDir, RuntimeError> {
        fn access(p: &Path) -> impl Fn(io::Error) -> RuntimeError + '_ {
            move |source| RuntimeError::Access { path: p.to_path_buf(), source }
        }
        let me = euid();
        let uid = user.map_or(me, |(u, _)| u);
        let give_to = user.filter(|&(u, _)| me == 0 && u != 0);
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(access(parent))?;
                }
                match std::fs::DirBuilder::new().mode(0o700).create(path) {
                    // Another instance starting at the same moment made it: checked below.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(access(path)(e)),
                    Ok(()) => {
                        // The mode asked for is cut by the umask; 0700 is meant whatever it is.
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(access(path))?;
                        if let Some((u, g)) = give_to {
                            std::os::unix::fs::lchown(path, Some(u), Some(g))
                                .map_err(|source| RuntimeError::Chown { path: path.to_path_buf(), uid: u, source })?;
                        }
                    }
                }
            }
            Err(e) => return Err(access(path)(e)),
        }
        let real = std::fs::canonicalize(path).map_err(access(path))?;
        let meta = std::fs::metadata(&real).map_err(access(&real))?;
        if !meta.is_dir() {
            return Err(RuntimeError::NotDirectory { path: real });
        }
        check(&real, &meta, uid, "the runtime directory", false)?;
        for above in real.ancestors().skip(1) {
            let meta = std::fs::metadata(above).map_err(access(above))?;
            check(above, &meta, uid, "a folder above the runtime directory", true)?;
        }
        Ok(RuntimeDir { path: real, uid, give_to })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the lock file `path` in this directory for reading and writing, creating it (mode
    /// 0644, given to the user dnlb will run as) if missing, never through a symbolic link; an
    /// existing file must be a regular file of root's or of the user's. Returns the file and
    /// whether it may be rewritten (dnlb made it, now or in an earlier run); a file dnlb may only
    /// read (root's, with dnlb not root) comes back read-only, for `flock` and its PID.
    pub fn open_lock(&self, path: &Path) -> Result<(File, bool), RuntimeError> {
        let access = |source| RuntimeError::Access { path: path.to_path_buf(), source };
        let open = |write: bool, create: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .create_new(create)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
        };
        let (file, writable) = match open(true, true) {
            Ok(file) => {
                if let Some((u, g)) = self.give_to {
                    std::os::unix::fs::fchown(&file, Some(u), Some(g)).map_err(|source| RuntimeError::Chown {
                        path: path.to_path_buf(),
                        uid: u,
                        source,
                    })?;
                }
                return Ok((file, true));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match open(true, false) {
                Ok(file) => (file, true),
                // A root instance's lock file is not writable by another user, but flock needs
                // only a read descriptor: a held lock then still reads as "already serves".
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => (open(false, false).map_err(access)?, false),
                Err(e) => return Err(self.refusal(path, e)),
            },
            Err(e) => return Err(self.refusal(path, e)),
        };
        let meta = file.metadata().map_err(access)?;
        if !meta.is_file() {
            return Err(RuntimeError::Foreign { path: path.to_path_buf(), kind: "not a regular file" });
        }
        if meta.uid() != 0 && meta.uid() != self.uid && meta.uid() != euid() {
            let (owner, user) = (describe(meta.uid()), describe(self.uid));
            return Err(RuntimeError::Owner {
                what: "the lock file",
                path: path.to_path_buf(),
                owner,
                user,
                user_id: self.uid,
            });
        }
        Ok((file, writable))
    }

    /// Why opening `path` failed: a symbolic link in its place is named as such.
    fn refusal(&self, path: &Path, e: io::Error) -> RuntimeError {
        if e.raw_os_error() == Some(libc::ELOOP) {
            return RuntimeError::Foreign { path: path.to_path_buf(), kind: "a symbolic link" };
        }
        RuntimeError::Access { path: path.to_path_buf(), source: e }
    }

    /// Makes room for a socket at `path`: a stale socket there is removed; anything else there (a
    /// link, a file) is refused, not removed.
    pub fn clear_socket(&self, path: &Path) -> Result<(), RuntimeError> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Access { path: path.to_path_buf(), source: e }),
            Ok(m) if m.file_type().is_symlink() => {
                Err(RuntimeError::Foreign { path: path.to_path_buf(), kind: "a symbolic link" })
            }
            Ok(m) if !m.file_type().is_socket() => {
                Err(RuntimeError::Foreign { path: path.to_path_buf(), kind: "not a socket" })
            }
            Ok(_) => {
                std::fs::remove_file(path).map_err(|source| RuntimeError::Access { path: path.to_path_buf(), source })
            }
        }
    }

    /// Gives `path` (a socket dnlb just made here) to the user dnlb will run as, so that user can
    /// remove it at the end.
    pub fn adopt(&self, path: &Path) -> Result<(), RuntimeError> {
        match self.give_to {
            Some((u, g)) => std::os::unix::fs::lchown(path, Some(u), Some(g)).map_err(|source| RuntimeError::Chown {
                path: path.to_path_buf(),
                uid: u,
                source,
            }),
            None => Ok(()),
        }
    }
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
    }

    #[test]
    fn the_directory_is_configured_systemds_roots_or_the_users_and_never_shared() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(choose(Some(Path::new("/x")), os("/run/a"), None, 1000).unwrap(), Path::new("/x"));
        assert_eq!(choose(None, os("/run/a:/run/b"), os("/run/user/1000"), 1000).unwrap(), Path::new("/run/a"));
        assert_eq!(choose(None, None, os("/run/user/1000"), 0).unwrap(), Path::new("/run/dnlb"));
        assert_eq!(choose(None, None, os("/run/user/1000"), 1000).unwrap(), Path::new("/run/user/1000/dnlb"));
        let e = choose(None, None, None, 1000).unwrap_err().to_string();
        assert!(e.contains("uid 1000") && e.contains("set server.runtime_dir"), "{e}");
    }

    /// A scratch folder of this process's user, mode 0755.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dnlb-runtime-{name}-{}", std::process::id()));
        let _stale = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn a_missing_directory_is_made_private_and_a_shared_one_refused() {
        let base = scratch("modes");
        let run = base.join("a").join("run");
        let dir = RuntimeDir::prepare(&run, None).unwrap();
        assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(base.join("a")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(dir.path(), std::fs::canonicalize(&run).unwrap());
        for (mode, who) in [(0o770, "group"), (0o707, "others"), (0o777, "group and others")] {
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = RuntimeDir::prepare(&run, None).unwrap_err().to_string();
            assert!(e.contains(&format!("is writable by {who} (mode 0{mode:o})")) && e.contains("chmod go-w"), "{e}");
        }
        // A folder above it that others may write (not sticky) is refused too; /tmp, sticky, is not.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = RuntimeDir::prepare(&run, None).unwrap_err().to_string();
        assert!(e.starts_with("a folder above the runtime directory"), "{e}");
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        RuntimeDir::prepare(&run, None).unwrap();
        std::fs::write(base.join("file"), "").unwrap();
        assert!(matches!(RuntimeDir::prepare(&base.join("file"), None), Err(RuntimeError::NotDirectory { .. })));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lock_files_are_never_opened_through_links_nor_sockets_replaced_over_files() {
        let base = scratch("links");
        let dir = RuntimeDir::prepare(&base.join("run"), None).unwrap();
        let victim = base.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let lock = dir.path().join("127.0.0.1-53.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let e = dir.open_lock(&lock).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(matches!(dir.clear_socket(&lock), Err(RuntimeError::Foreign { .. })));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        std::fs::remove_file(&lock).unwrap();
        let (_file, writable) = dir.open_lock(&lock).unwrap();
        assert!(writable);
        assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o777, 0o644);
        let (_again, writable) = dir.open_lock(&lock).unwrap();
        assert!(writable, "a lock file of an earlier run is ours");
        assert!(matches!(dir.clear_socket(&lock), Err(RuntimeError::Foreign { kind: "not a socket", .. })));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

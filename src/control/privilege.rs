//! Dropping root: dnlb started as root binds port 53 (and anything else it needs), then becomes
//! `server.user` for the rest of its life.
//!
//! ```text
//!  run() ─► resolve(server.user)    the user must exist; not root and not that user: error
//!        ─► locks, Server::start, Prober::spawn    (every socket bound while still root)
//!        ─► Target::assume          setgroups(user's groups), setgid, setuid; then checked
//! ```
//!
//! The change is process-wide although worker threads already run: glibc's `setuid`/`setgid`
//! apply to every thread of the process (the kernel's credentials are per thread; glibc signals
//! each one), and the integration test reads every thread's `/proc/PID/task/*/status` to hold it
//! to that. Not root and `server.user` set is an error unless dnlb already runs as that user: a
//! configuration that asks for a drop must never run with more privileges than it asked for.

use std::ffi::CString;

use nix::unistd::{geteuid, getgrouplist, getresgid, getresuid, setgid, setgroups, setuid, Gid, Uid, User};

/// Why dnlb could not become `server.user`. The operator's doing (no such user, not started as
/// root) or, after a drop, the kernel refusing it.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user database has no such user.
    #[error(
        "server.user: no user `{name}` on this system: create it (`adduser --system --group --no-create-home {name}`) or remove server.user"
    )]
    NoSuchUser {
        /// The configured name.
        name: String,
    },
    /// The user database could not be read.
    #[error("server.user: cannot look up `{name}`: {source}")]
    Lookup {
        /// The configured name.
        name: String,
        /// What the C library said.
        source: nix::Error,
    },
    /// dnlb runs as neither root nor the user, so it cannot become the user.
    #[error(
        "server.user = \"{name}\": dnlb runs as uid {uid}, not root, so it cannot become {name} (uid {target}): start it as root (it drops after binding) or as {name}, or remove server.user"
    )]
    NotRoot {
        /// The configured name.
        name: String,
        /// The effective uid dnlb runs as.
        uid: u32,
        /// The user's uid.
        target: u32,
    },
    /// A set*id call failed, or the credentials afterwards are not the user's.
    #[error("cannot become {name}: {step}: {source}")]
    Switch {
        /// The configured name.
        name: String,
        /// The call that failed.
        step: &'static str,
        /// What the kernel said.
        source: nix::Error,
    },
}

/// The user to become, looked up before anything is bound, so a typo stops the start early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The configured name.
    name: String,
    /// Its uid.
    uid: Uid,
    /// Its primary group.
    gid: Gid,
    /// Every group it belongs to, the primary one included.
    groups: Vec<Gid>,
}

/// What [`Target::assume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// dnlb was root and now runs as the user.
    Dropped,
    /// dnlb already ran as the user; nothing changed.
    AlreadyUser,
}

/// Looks up `name` and checks that this process can become it (it is root, or already the user).
pub fn resolve(name: &str) -> Result<Target, PrivilegeError> {
    let user = User::from_name(name)
        .map_err(|source| PrivilegeError::Lookup { name: name.to_string(), source })?
        .ok_or_else(|| PrivilegeError::NoSuchUser { name: name.to_string() })?;
    let euid = geteuid();
    if !euid.is_root() && euid != user.uid {
        return Err(PrivilegeError::NotRoot { name: name.to_string(), uid: euid.as_raw(), target: user.uid.as_raw() });
    }
    let groups = match CString::new(name) {
        Ok(c) => {
            getgrouplist(&c, user.gid).map_err(|source| PrivilegeError::Lookup { name: name.to_string(), source })?
        }
        // The lookup above found the name, so it has no NUL; a primary group alone is the safe side.
        Err(_) => vec![user.gid],
    };
    Ok(Target { name: name.to_string(), uid: user.uid, gid: user.gid, groups })
}

impl Target {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its uid and primary gid: what dnlb gives the files it makes before it becomes the user.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid.as_raw(), self.gid.as_raw())
    }

    /// Becomes the user for good: supplementary groups, then the group, then the user (in that
    /// order: after setuid there is no right left to change groups), then checks that real,
    /// effective and saved ids are all the user's, so there is no way back to root.
    pub fn assume(&self) -> Result<Outcome, PrivilegeError> {
        if !geteuid().is_root() {
            // resolve() allowed this only for the user itself.
            return Ok(Outcome::AlreadyUser);
        }
        let fail = |step| move |source| PrivilegeError::Switch { name: self.name.clone(), step, source };
        setgroups(&self.groups).map_err(fail("setgroups"))?;
        setgid(self.gid).map_err(fail("setgid"))?;
        setuid(self.uid).map_err(fail("setuid"))?;
        let u = getresuid().map_err(fail("getresuid"))?;
        let g = getresgid().map_err(fail("getresgid"))?;
        let mismatch = [u.real, u.effective, u.saved].iter().any(|&id| id != self.uid)
            || [g.real, g.effective, g.saved].iter().any(|&id| id != self.gid);
        if mismatch {
            return Err(PrivilegeError::Switch {
                name: self.name.clone(),
                step: "checking the ids after setuid",
                source: nix::Error::EPERM,
            });
        }
        Ok(Outcome::Dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_names_the_field_and_the_fix() {
        let e = resolve("dnlb-no-such-user-here").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("server.user: no user `dnlb-no-such-user-here`"), "{text}");
        assert!(text.contains("adduser --system"), "{text}");
    }

    #[test]
    fn the_current_user_resolves_to_itself() {
        let me = User::from_uid(geteuid()).unwrap().expect("the test runs as a known user");
        let target = resolve(&me.name).unwrap();
        assert_eq!(target.uid, me.uid);
        assert_eq!(target.gid, me.gid);
        assert!(target.groups.contains(&me.gid));
    }
}

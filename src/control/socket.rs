//! The control socket: a Unix socket in the runtime directory that `dnlb status`, `dnlb explain`
//! and `dnlb reload` talk to. One JSON request per connection, one JSON reply, then close.
//!
//! ```text
//!  dnlb status ──connect──► dnlb-control thread ──► status / explain: from the snapshot, the
//!                                                    prober's reports and the running config
//!                                               ──► reload: handed to the main thread (which owns
//!                                                    the prober), answered when it is done
//!                                               ──► drain / undrain: handed to the prober, answered
//!                                                    once the answers without (or with) it are out
//! ```
//!
//! A request is at most 64 KiB and must arrive within 2 s; the socket is owner-only (0600), as
//! a reload is an operator's action.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::logging::RateLimited;

/// The longest request taken.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIME: Duration = Duration::from_secs(2);

/// Why the control socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on this socket: an instance already runs for this address.
    #[error("another dnlb already answers on {0}: stop it first, or give this one another listen address")]
    InUse(PathBuf),
    /// The socket could not be created (our environment's fault: permissions, a missing directory).
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// No instance answers on the socket (the client's side).
    #[error("no running dnlb answers on {path} ({source}): is it running with this configuration?")]
    NotRunning {
        /// The socket's path.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The instance's reply could not be read or understood.
    #[error("bad reply from the control socket: {0}")]
    Reply(String),
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every service's answers and every server's health.
    Status {
        /// Each server's last changes too.
        #[serde(default)]
        history: bool,
    },
    /// What dnlb would answer `client` for `name`/`qtype` now, and why.
    Explain {
        /// The name asked.
        name: String,
        /// The type asked (A, AAAA, SRV, NAPTR, ANY, ...).
        qtype: String,
        /// The client's address, if it matters (ACL, routes, rate limiting).
        client: Option<String>,
    },
    /// Re-read the configuration file and the hosts file.
    Reload,
    /// Take a server out of the answers (it is still probed).
    Drain {
        /// `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6).
        server: String,
        /// Only this service's server at that address.
        service: Option<String>,
    },
    /// Put a drained server back into the answers (if it is healthy).
    Undrain {
        /// `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6).
        server: String,
        /// Only this service's server at that address.
        service: Option<String>,
    },
}

/// What the instance answers: a rendered text for people and a JSON value for tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded (a reload of an invalid file did not).
    pub ok: bool,
    /// For people.
    pub text: String,
    /// For tools (`--json`).
    pub json: serde_json::Value,
}

/// Answers requests; [`super::answers::ControlAnswers`] implements it.
pub trait Answer: Send + 'static {
    /// Answers one request.
    fn answer(&self, request: Request) -> Reply;
}

/// A running control socket.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Binds `path` (a stale socket nobody answers on is replaced) and serves it with `answer`.
    pub fn start(path: &Path, answer: impl Answer) -> Result<ControlSocket, ControlError> {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        let bind = |source| ControlError::Bind { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dnlb-control".into())
            .spawn(move || serve(&listener, &answer, &s))
            .map_err(bind)?;
        Ok(ControlSocket { path: path.to_path_buf(), stop, thread: Some(thread) })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // The loop wakes every 50 ms; a panic there is already reported by the runtime.
            let _joined = t.join();
        }
        // Gone with the process anyway; a stale socket is replaced at the next start.
        let _removed = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, answer: &dyn Answer, stop: &AtomicBool) {
    // A local client that keeps failing (or a full descriptor table) must not flood the log.
    let mut limit = RateLimited::new(Duration::from_secs(60));
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle(stream, answer) {
                    if let Some(held) = limit.check(Instant::now()) {
                        tracing::warn!(held, "control: a request failed: {e}");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if let Some(held) = limit.check(Instant::now()) {
                    tracing::warn!(held, "control: accept failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(stream: UnixStream, answer: &dyn Answer) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIME))?;
    stream.set_write_timeout(Some(REQUEST_TIME))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => answer.answer(request),
        Err(e) => Reply { ok: false, text: format!("bad request: {e}"), json: serde_json::Value::Null },
    };
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

/// Sends `request` to the instance on `path` and returns its reply (the client's side). A reload
/// may take a few seconds (the prober restarts), so the reply is awaited that long.
pub fn ask(path: &Path, request: &Request) -> Result<Reply, ControlError> {
    let stream =
        UnixStream::connect(path).map_err(|source| ControlError::NotRunning { path: path.to_path_buf(), source })?;
    let reply_err = |e: io::Error| ControlError::Reply(e.to_string());
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(reply_err)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Reply(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(reply_err)?;
    let mut reply = String::new();
    BufReader::new((&stream).take(16 << 20)).read_line(&mut reply).map_err(reply_err)?;
    serde_json::from_str(reply.trim()).map_err(|e| ControlError::Reply(e.to_string()))
}

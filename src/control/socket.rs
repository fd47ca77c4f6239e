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
//! Clients are served many at once by [`super::listener`]: a request is at most 64 KiB and must
//! arrive whole within 2 s of the connect, the reply be taken within 2 s, 256 connections at
//! most (past that, the one that made progress least recently makes room), so silent or
//! dripping clients delay no other. Status and explain are answered on the listener's thread;
//! reloads and drains, which wait for the main thread or the prober, each on a thread of its own.
//! The socket is owner-only (0600), as a reload is an operator's action.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listener::{Cut, Limits, Response, Service, Serving};
use super::runtime::{RuntimeDir, RuntimeError};
use crate::config::DEFAULT_MAX_CONNECTIONS;

/// The longest request taken.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIME: Duration = Duration::from_secs(2);

/// Why the control socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The runtime directory refuses the socket's name (a link or a file is there, or the socket
    /// cannot be given to `server.user`).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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

/// Answers requests; [`super::answers::ControlAnswers`] implements it. Shared with the threads
/// that answer reloads and drains.
pub trait Answer: Send + Sync + 'static {
    /// Answers one request.
    fn answer(&self, request: Request) -> Reply;
}

/// A running control socket.
pub struct ControlSocket {
    path: PathBuf,
    serving: Option<Serving>,
}

impl ControlSocket {
    /// Binds `path` in the runtime directory `dir` (a stale socket nobody answers on is
    /// replaced; anything else there is refused) and serves it with `answer`.
    pub fn start(dir: &RuntimeDir, path: &Path, answer: impl Answer) -> Result<ControlSocket, ControlError> {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        let bind = |source| ControlError::Bind { path: path.to_path_buf(), source };
        dir.clear_socket(path)?;
        let listener = UnixListener::bind(path).map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        dir.adopt(path)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let limits = Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request: MAX_REQUEST,
            read_time: REQUEST_TIME,
            write_time: REQUEST_TIME,
            allow: Vec::new(),
        };
        let service = Lines { answer: Arc::new(answer) };
        let serving = Serving::start("dnlb-control", mio::net::UnixListener::from_std(listener), service, limits)
            .map_err(bind)?;
        Ok(ControlSocket { path: path.to_path_buf(), serving: Some(serving) })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.shutdown();
        }
        // Gone with the process anyway; a stale socket is replaced at the next start.
        let _removed = std::fs::remove_file(&self.path);
    }
}

/// One JSON request per line, one JSON reply per line.
struct Lines<A> {
    answer: Arc<A>,
}

impl<A: Answer> Service for Lines<A> {
    fn whole(&self, request: &[u8]) -> bool {
        memchr::memchr(b'\n', request).is_some()
    }

    fn answer(&self, request: &[u8], cut: Cut) -> Option<Response> {
        if cut == Cut::Eof && request.is_empty() {
            return None;
        }
        let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
        let parsed = std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Request>(text.trim()).map_err(|e| e.to_string()));
        let request = match parsed {
            Ok(request) => request,
            Err(e) => {
                let reply = Reply { ok: false, text: format!("bad request: {e}"), json: serde_json::Value::Null };
                return Some(Response::Now(encode(&reply)));
            }
        };
        match request {
            // From the snapshot and the reports: quick, answered here.
            Request::Status { .. } | Request::Explain { .. } => {
                Some(Response::Now(encode(&self.answer.answer(request))))
            }
            // A reload waits for the main thread, a drain for the prober's publish.
            slow @ (Request::Reload | Request::Drain { .. } | Request::Undrain { .. }) => {
                let answer = self.answer.clone();
                Some(Response::Later(Box::new(move || encode(&answer.answer(slow)))))
            }
        }
    }
}

/// A reply as one JSON line.
fn encode(reply: &Reply) -> Vec<u8> {
    // Strings and a JSON value always encode; the fallback only keeps the client from waiting.
    let mut out = serde_json::to_vec(reply)
        .unwrap_or_else(|_| br#"{"ok":false,"text":"cannot encode the reply","json":null}"#.to_vec());
    out.push(b'\n');
    out
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

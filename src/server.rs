//! Starting and stopping the data plane: worker threads and their sockets.
//!
//! ```text
//!  Server::start ─► server.xdp: XSKs, program and link on the interface (io::xdp), then the
//!                   capabilities that took are given up; a failure is one log line (or, with
//!                   xdp.required, the error)
//!                ─► bind every socket (errors surface here, before any thread runs)
//!                ─► per listen address × worker: a UDP socket and a TCP listener (SO_REUSEPORT),
//!                   the worker's relay and TCP side, then thread "dnlb-w<i>", pinned, own ring
//!                ─► per XDP queue: a worker with its relay, thread "dnlb-x<q>" (TCP stays with
//!                   the workers above, which also take what the XDP program passes on)
//!  Server::shutdown ─► Stop::fire ─► join ─► counter totals ─► the XDP program detached
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_utils::CachePadded;

use crate::config::{RelayConfig, ServerConfig};
use crate::counters::{CounterBlocks, Totals, WorkerCounters};
use crate::dns::answer::DnsTransport;
use crate::edge::conn::Limits;
use crate::edge::rrl::Settings as RrlSettings;
use crate::edge::tcp;
use crate::io::xdp::{self, XdpError};
use crate::io::{self, affinity, Backend, IoError, Stop};
use crate::relay::sockets::Relay;
use crate::relay::RelayError;
use crate::snapshot::SnapshotHandle;
use crate::worker::settings::{SettingsHandle, WorkerSettings};
use crate::worker::{Responder, Worker};

/// Reply bytes one TCP connection may have queued for a client that does not read.
const TCP_QUEUE_LIMIT: usize = 256 * 1024;

/// Why the data plane could not start. Our environment's fault (ports, kernel), not a client's.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The I/O backend or a UDP socket could not be set up.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The TCP listener could not be bound.
    #[error("cannot listen on TCP {addr}: {source}")]
    Tcp {
        /// The listen address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A thread could not be created.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// The stop pipe could not be created.
    #[error("cannot create the stop pipe: {0}")]
    Pipe(std::io::Error),
    /// A worker's relay could not be set up (no random source, no epoll).
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// XDP could not be set up and `server.xdp.required` is true. (Not a `source`: the message
    /// carries it whole, so a chain printer does not repeat it.)
    #[error("{0} (server.xdp.required = true: not starting without XDP)")]
    Xdp(XdpError),
}

/// Sets XDP up for `server.xdp`, if configured: its attachment and one queue per worker to
/// start, or none (the reason logged once) when it cannot be set up and is not required. The
/// capabilities the set-up needs are given up afterwards either way, before any worker thread
/// exists, so no thread started later has them.
fn set_up_xdp(
    config: &ServerConfig,
    backend: Backend,
) -> Result<(Option<xdp::Attachment>, Vec<xdp::Queue>), ServerError> {
    let Some(x) = &config.xdp else { return Ok((None, Vec::new())) };
    let set = match xdp::set_up(&x.interface, &config.listen) {
        Ok(set) => Some(set),
        Err(e) if x.required => return Err(ServerError::Xdp(e)),
        Err(e) => {
            tracing::warn!(
                "xdp on {} is not used: {e}; UDP is served on {backend} only (xdp.required = true refuses to start instead)",
                x.interface
            );
            None
        }
    };
    if let Err(e) = xdp::give_up_capabilities() {
        tracing::warn!("xdp: cannot give up the capabilities its set-up needed: {e}");
    }
    let Some((a, queues)) = set else { return Ok((None, Vec::new())) };
    let served: Vec<String> = a.served.iter().map(ToString::to_string).collect();
    let mode = if queues.iter().all(|q| q.mode() == xdp::xsk::Mode::ZeroCopy) { "zero-copy" } else { "copy mode" };
    tracing::info!(
        "xdp on {}: {} receive queue(s), one worker each ({mode}, {} attach, MTU {}), serving UDP to {}; `ethtool -L {} combined N` sets the queue count",
        a.interface,
        queues.len(),
        a.attach_mode,
        a.mtu,
        served.join(", "),
        a.interface
    );
    Ok((Some(a), queues))
}

/// Starts worker thread `name`, pinned to `core` if given (a failure to pin is logged, and the
/// worker runs unpinned), running `serve`.
fn spawn_pinned(
    name: String,
    core: Option<usize>,
    serve: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<JoinHandle<std::io::Result<()>>, ServerError> {
    let thread = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Some(core) = core {
                if let Err(e) = affinity::pin_current_thread(core) {
                    tracing::warn!("{thread}: cannot pin to core {core}: {e}; running unpinned");
                }
            }
            serve()
        })
        .map_err(ServerError::Thread)
}

/// The number of workers: the configured count, or one per core this process may use.
pub fn worker_count(configured: Option<usize>, allowed_cores: usize) -> usize {
    configured.unwrap_or(allowed_cores).max(1)
}

/// A running data plane.
pub struct Server {
    backend: Backend,
    fallback_reason: Option<String>,
    stop: Arc<Stop>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
    counters: CounterBlocks,
    workers_per_address: usize,
    settings: Arc<SettingsHandle>,
    /// The backend of each counter block's worker.
    backends: Vec<Backend>,
    /// The XDP program on its interface while XDP workers run; dropped (detached) after them.
    xdp: Option<xdp::Attachment>,
}

impl Server {
    /// Binds every socket and starts the workers; `relay` forwards the names dnlb does not
    /// manage, `rrl` limits UDP responses per client prefix.
    pub fn start(
        config: &ServerConfig,
        relay: Option<Arc<RelayConfig>>,
        rrl: Option<RrlSettings>,
        snapshots: SnapshotHandle,
    ) -> Result<Server, ServerError> {
        let (backend, fallback_reason) = Backend::choose(config.io)?;
        let (attachment, queues) = set_up_xdp(config, backend)?;
        let cores = affinity::allowed_cores();
        let n = worker_count(config.workers, cores.len());
        if config.tcp {
            crate::io::raise_fd_limit();
        }
        // Per listen address and worker: a UDP socket and (with TCP) a listener, all SO_REUSEPORT.
        let mut sockets: Vec<(usize, UdpSocket, Option<std::net::TcpListener>)> = Vec::new();
        for &addr in &config.listen {
            for i in 0..n {
                let udp = io::bind_udp(addr)?;
                let listener = if config.tcp {
                    Some(tcp::bind(addr).map_err(|source| ServerError::Tcp { addr, source })?)
                } else {
                    None
                };
                sockets.push((i, udp, listener));
            }
        }
        let blocks = sockets.len() + queues.len();
        let counters: CounterBlocks = (0..blocks).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        let stop = Arc::new(Stop::new().map_err(ServerError::Pipe)?);
        let settings = SettingsHandle::new(WorkerSettings { relay: relay.clone(), rrl: rrl.clone() });
        let transport = DnsTransport::Udp { max_payload: config.max_udp_payload };
        // Each worker holds its share of the TCP connections; the kernel spreads new ones.
        let limits = Limits {
            max_connections: config.tcp_max_connections.div_ceil(sockets.len().max(1)),
            max_per_client: config.tcp_max_connections_per_client,
            idle: config.tcp_idle_timeout,
            message: config.tcp_query_timeout,
            max_queued: TCP_QUEUE_LIMIT,
        };
        // Each worker's relay, readiness hub and TCP clients are made here, so one that cannot
        // work stops the start instead of a worker.
        let make_worker = |block: usize, listeners: Vec<std::net::TcpListener>| -> Result<Worker, ServerError> {
            let upstream = relay.clone().map(Relay::new).transpose()?;
            let responder =
                Responder::new(snapshots.clone(), counters.clone(), block).with_relay(relay.clone(), upstream);
            let mut worker = Worker::new(responder, transport, rrl.clone());
            worker.follow(settings.clone());
            worker.listen(listeners, limits).map_err(ServerError::Thread)?;
            Ok(worker)
        };
        let mut workers = Vec::new();
        let mut backends = Vec::with_capacity(blocks);
        let first_xdp_block = sockets.len();
        for (block, (i, socket, listener)) in sockets.into_iter().enumerate() {
            let mut worker = make_worker(block, listener.into_iter().collect())?;
            backends.push(backend);
            let _fresh = counters[block].backend.set(backend.name());
            let stop = stop.clone();
            let core = config.pin_workers.then(|| cores.get(i % cores.len().max(1)).copied()).flatten();
            workers.push(spawn_pinned(format!("dnlb-w{i}"), core, move || {
                let served = backend.serve(&socket, &mut worker, &stop);
                worker.publish_counters();
                served
            })?);
        }
        // One worker per XDP queue: its relay and hub like any worker's, no TCP listener.
        for (k, mut queue) in queues.into_iter().enumerate() {
            let mut worker = make_worker(first_xdp_block + k, Vec::new())?;
            backends.push(Backend::Xdp);
            let _fresh = counters[first_xdp_block + k].backend.set(Backend::Xdp.name());
            let stop = stop.clone();
            let q = queue.index();
            let core = config.pin_workers.then(|| cores.get(q as usize % cores.len().max(1)).copied()).flatten();
            workers.push(spawn_pinned(format!("dnlb-x{q}"), core, move || {
                let served = xdp::serve(&mut queue, &mut worker, &stop);
                worker.publish_counters();
                served
            })?);
        }
        Ok(Server {
            backend,
            fallback_reason,
            stop,
            workers,
            counters,
            workers_per_address: n,
            settings,
            backends,
            xdp: attachment,
        })
    }

    /// The backend of each counter block's worker, in block order (the metrics' `worker`
    /// label).
    pub fn backends(&self) -> Vec<Backend> {
        self.backends.clone()
    }

    /// Whether XDP workers run (`server.xdp` set up).
    pub fn xdp_running(&self) -> bool {
        self.xdp.is_some()
    }

    /// Gives every worker new relay and rate-limit settings (a reload); each applies them at its
    /// next batch or tick. A relay is changed, never added or removed (that needs a restart).
    pub fn reconfigure(&self, relay: Option<Arc<RelayConfig>>, rrl: Option<RrlSettings>) {
        self.settings.publish(WorkerSettings { relay, rrl });
    }

    /// The backend the workers run.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why io_uring was passed over in `auto` mode, if it was.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The workers' counter blocks, for readers off the hot path (the metrics endpoint).
    pub fn counters(&self) -> CounterBlocks {
        self.counters.clone()
    }

    /// Workers per listen address.
    pub fn workers_per_address(&self) -> usize {
        self.workers_per_address
    }

    /// Counter totals so far.
    pub fn totals(&self) -> Totals {
        Totals::sum(&self.counters)
    }

    /// Whether any worker thread has ended (it only ends on an I/O error it cannot recover from).
    pub fn worker_died(&self) -> bool {
        self.workers.iter().any(JoinHandle::is_finished)
    }

    /// Stops every thread and returns the final totals and any worker errors.
    pub fn shutdown(self) -> (Totals, Vec<String>) {
        self.stop.fire();
        let mut errors = Vec::new();
        for (i, w) in self.workers.into_iter().enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("worker {i}: {e}")),
                Err(_) => errors.push(format!("worker {i} panicked")),
            }
        }
        if let Some(a) = self.xdp {
            // The XDP workers' blocks are the last ones.
            let first = self.backends.iter().position(|b| *b == Backend::Xdp).unwrap_or(self.backends.len());
            let xdp_blocks = self.counters.get(first..).unwrap_or_default();
            tracing::info!("xdp workers on {}: {}", a.interface, Totals::sum(xdp_blocks));
            // Detached here, after its workers stopped; the kernel's path keeps serving until
            // the sockets close.
            drop(a);
        }
        (Totals::sum(&self.counters), errors)
    }
}

#[cfg(test)]
mod tests {
    use super::worker_count;

    #[test]
    fn one_worker_per_core_unless_configured() {
        assert_eq!(worker_count(None, 8), 8);
        assert_eq!(worker_count(Some(3), 8), 3);
        assert_eq!(worker_count(None, 0), 1);
    }
}

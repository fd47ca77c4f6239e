//! Starting and stopping the data plane: worker threads, their sockets, the TCP listeners.
//!
//! ```text
//!  Server::start ─► bind every socket (errors surface here, before any thread runs)
//!                ─► per listen address × worker: thread "dnlb-w<i>", pinned, own socket, own ring
//!                ─► per listen address: TCP acceptor
//!  Server::shutdown ─► Stop::fire ─► join ─► counter totals
//! ```

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::config::{RelayConfig, ServerConfig};
use crate::dns::answer::Transport;
use crate::io::{self, affinity, Backend, IoError, Stop};
use crate::metrics::{CounterBlocks, Totals, WorkerCounters};
use crate::relay::sockets::Relay;
use crate::relay::RelayError;
use crate::snapshot::SnapshotHandle;
use crate::tcp::{self, TcpContext};
use crate::worker::{Responder, UdpResponder};

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
    acceptors: Vec<(SocketAddr, JoinHandle<()>)>,
    counters: CounterBlocks,
    workers_per_address: usize,
}

impl Server {
    /// Binds every socket and starts the workers; `relay` forwards the names dnlb does not manage.
    pub fn start(
        config: &ServerConfig,
        relay: Option<Arc<RelayConfig>>,
        snapshots: SnapshotHandle,
    ) -> Result<Server, ServerError> {
        let (backend, fallback_reason) = Backend::choose(config.io)?;
        let cores = affinity::allowed_cores();
        let n = worker_count(config.workers, cores.len());
        let mut sockets: Vec<(usize, UdpSocket)> = Vec::new();
        for &addr in &config.listen {
            for i in 0..n {
                sockets.push((i, io::bind_udp(addr)?));
            }
        }
        let mut listeners = Vec::new();
        if config.tcp {
            for &addr in &config.listen {
                let l = tcp::bind(addr).map_err(|source| ServerError::Tcp { addr, source })?;
                // Port 0 is refused by config validation; tests may still pass it directly.
                let bound = l.local_addr().map_err(|source| ServerError::Tcp { addr, source })?;
                listeners.push((bound, l));
            }
        }
        // One block per UDP socket, plus one that all TCP connections share.
        let counters: CounterBlocks =
            (0..=sockets.len()).map(|_| CachePadded::new(WorkerCounters::default())).collect();
        let stop = Arc::new(Stop::new().map_err(ServerError::Pipe)?);
        let transport = Transport::Udp { max_payload: config.max_udp_payload };
        let mut workers = Vec::new();
        for (block, (i, socket)) in sockets.into_iter().enumerate() {
            // Each worker's relay is made here, so a relay that cannot work stops the start.
            let upstream = relay.clone().map(Relay::new).transpose()?;
            let (snapshots, counters, stop, relay) = (snapshots.clone(), counters.clone(), stop.clone(), relay.clone());
            let core = config.pin_workers.then(|| cores.get(i % cores.len().max(1)).copied()).flatten();
            let handle = std::thread::Builder::new()
                .name(format!("dnlb-w{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if let Err(e) = affinity::pin_current_thread(core) {
                            eprintln!("dnlb: worker {i}: cannot pin to core {core}: {e}; running unpinned");
                        }
                    }
                    let responder = Responder::new(snapshots, counters, block).with_relay(relay, upstream);
                    let mut handler = UdpResponder { responder, transport };
                    let served = backend.serve(&socket, &mut handler, &stop);
                    handler.publish_counters();
                    served
                })
                .map_err(ServerError::Thread)?;
            workers.push(handle);
        }
        let tcp_block = counters.len() - 1;
        let mut acceptors = Vec::new();
        let open = Arc::new(AtomicUsize::new(0));
        for (addr, listener) in listeners {
            let ctx = TcpContext {
                snapshots: snapshots.clone(),
                counters: counters.clone(),
                block: tcp_block,
                idle_timeout: config.tcp_idle_timeout,
                max_connections: config.tcp_max_connections,
                open: open.clone(),
                stop: stop.clone(),
                relay: relay.clone(),
            };
            acceptors.push((addr, tcp::spawn_acceptor(listener, ctx).map_err(ServerError::Thread)?));
        }
        Ok(Server { backend, fallback_reason, stop, workers, acceptors, counters, workers_per_address: n })
    }

    /// The backend the workers run.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why io_uring was passed over in `auto` mode, if it was.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
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
        for (addr, _) in &self.acceptors {
            // Wake the blocked accept(); it sees the stop flag and returns.
            let _woken = TcpStream::connect_timeout(addr, Duration::from_millis(200));
        }
        let mut errors = Vec::new();
        for (i, w) in self.workers.into_iter().enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("worker {i}: {e}")),
                Err(_) => errors.push(format!("worker {i} panicked")),
            }
        }
        for (addr, a) in self.acceptors {
            if a.join().is_err() {
                errors.push(format!("tcp acceptor {addr} panicked"));
            }
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

//! A worker's readiness hub: the one epoll instance its I/O backend waits on beside the UDP
//! socket, so a single descriptor wakes the worker for everything that is not a UDP datagram.
//!
//! ```text
//!  backend (io_uring PollAdd, or poll()) ─► hub fd readable ─► Worker::extra_ready
//!  hub (epoll, one per worker) ── listener and connection tokens ─► edge::tcp::TcpClients
//!                              └─ RELAY: the relay's own epoll descriptor, nested ─► the relay
//! ```
//!
//! A worker gets a hub when it has TCP listeners or a relay; a SIP-only worker over UDP has none
//! and its loop waits on its UDP socket alone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

/// The token of the relay's epoll descriptor, nested in the hub (no TCP token reaches it).
pub const RELAY: Token = Token(usize::MAX - 1);
/// Readiness events taken per epoll_wait.
const EVENTS: usize = 256;

/// A worker's epoll instance and what was ready at its last look.
pub struct Readiness {
    poll: Poll,
    events: Events,
    /// Tokens ready at the last [`Readiness::poll`], the relay's left out.
    ready: Vec<Token>,
}

impl Readiness {
    /// A hub with the relay's epoll descriptor `relay` (if there is a relay) nested in it; TCP
    /// registers its listeners through [`Readiness::registry`].
    pub fn new(relay: Option<BorrowedFd<'_>>) -> io::Result<Readiness> {
        let poll = Poll::new()?;
        if let Some(fd) = relay {
            poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), RELAY, Interest::READABLE)?;
        }
        Ok(Readiness { poll, events: Events::with_capacity(EVENTS), ready: Vec::with_capacity(EVENTS) })
    }

    /// The epoll descriptor the worker's backend waits on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.poll.registry().as_fd()
    }

    /// Where sources register to be watched.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Takes what is ready now, without waiting: returns whether the relay's descriptor is; the
    /// other tokens are in [`Readiness::ready`] until the next call.
    pub fn poll(&mut self) -> bool {
        self.ready.clear();
        // epoll_wait on our own valid descriptor fails only on a signal; the next wake-up or
        // tick comes back here.
        if self.poll.poll(&mut self.events, Some(Duration::ZERO)).is_err() {
            return false;
        }
        let mut relay = false;
        for token in self.events.iter().map(|e| e.token()) {
            if token == RELAY {
                relay = true;
            } else {
                self.ready.push(token);
            }
        }
        relay
    }

    /// The tokens other than the relay's that were ready at the last [`Readiness::poll`].
    pub fn ready(&self) -> &[Token] {
        &self.ready
    }
}

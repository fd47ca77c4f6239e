//! The serving loop the metrics endpoint and the control socket share: one request, one reply,
//! then close, for many clients at once on the listener's own thread (a small mio loop), each
//! bounded in bytes and time, so a client that is slow or silent delays no other.
//!
//! ```text
//!  accept ─► outside `allow`? close at once
//!         ─► table full? close the connection that made progress least recently (bytes of an
//!            unfinished request are not progress: a slowloris client counts as idle)
//!  readable ─► at most `max_request` bytes ─► Service::whole? ─► Service::answer
//!                                               ─► Now(reply) ──────────────┐
//!                                               ─► Later(job) ─► a thread ───┤ (channel + Waker)
//!  writable ─► the reply ◄───────────────────────────────────────────────────┘
//!           ─► shutdown(write) ─► drain what the client still sends (LINGER) ─► close
//!  every pass ─► deadlines: the request whole within `read_time` of the accept, the reply
//!                written within `write_time` of its start
//! ```
//!
//! What to close and when is decided by [`Session`] and [`victim`], with time passed in; the
//! loop only moves bytes. A [`Service`] knows its protocol: when a request is whole, and what
//! to answer (at once, or from a job on a thread of its own when answering may wait, such as a
//! reload).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::logging::RateLimited;
use crate::prefix::Prefix;

/// How long the loop sleeps at most between looks at its deadlines and the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// How long a replied connection is drained of what the client still sends: closing a socket
/// with unread input sends a reset, which can destroy the reply before the client reads it.
const LINGER: Duration = Duration::from_millis(200);
/// The most bytes drained from a replied connection.
const MAX_DRAIN: usize = 64 * 1024;
/// How long an answer left to a job may take before its client is closed.
const JOB_TIME: Duration = Duration::from_secs(30);
/// Jobs running at once at most; a request past that is closed unanswered.
const MAX_JOBS: usize = 8;
/// Bytes read per call.
const READ_CHUNK: usize = 4096;
/// The listener's token; the waker's; connections from [`FIRST`] on.
const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// The bounds a listener applies to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at most; a new one past this closes the least recently progressing.
    pub max_connections: usize,
    /// Request bytes read at most; a request still not whole then is answered as it is.
    pub max_request: usize,
    /// Time from the accept for the request to arrive whole.
    pub read_time: Duration,
    /// Time from the start of the reply for it to be written whole.
    pub write_time: Duration,
    /// Client addresses served (empty: every client); others are closed at once. A Unix socket's
    /// clients have no address and are always served (its file mode decides who connects).
    pub allow: Vec<Prefix>,
}

/// How a request ended, as far as the loop could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// [`Service::whole`] said it is whole.
    Whole,
    /// The client closed its side before that.
    Eof,
    /// [`Limits::max_request`] bytes arrived before that.
    Full,
}

/// What a service answers a request with.
pub enum Response {
    /// These bytes, at once.
    Now(Vec<u8>),
    /// The bytes this job returns, run on a thread of its own (it may wait, e.g. for a reload).
    Later(Box<dyn FnOnce() -> Vec<u8> + Send>),
}

/// A protocol of one request and one reply per connection.
pub trait Service: Send + 'static {
    /// Whether `request` (the bytes so far) is a whole request.
    fn whole(&self, request: &[u8]) -> bool;
    /// The answer to `request`, which ended as `cut` says; `None` closes without a reply.
    fn answer(&self, request: &[u8], cut: Cut) -> Option<Response>;
}

/// A listening socket the loop accepts from.
pub trait Listener: mio::event::Source + Send + 'static {
    /// Its connections.
    type Stream: Read + Write + mio::event::Source + Send + 'static;
    /// The next connection and its client's address (none for a Unix socket).
    fn accept_one(&self) -> io::Result<(Self::Stream, Option<IpAddr>)>;
    /// Closes the writing side of a connection (the reply is complete).
    fn shutdown_write(stream: &Self::Stream) -> io::Result<()>;
}

impl Listener for mio::net::TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept_one(&self) -> io::Result<(Self::Stream, Option<IpAddr>)> {
        self.accept().map(|(s, peer)| (s, Some(peer.ip())))
    }
    fn shutdown_write(stream: &Self::Stream) -> io::Result<()> {
        stream.shutdown(Shutdown::Write)
    }
}

impl Listener for mio::net::UnixListener {
    type Stream = mio::net::UnixStream;
    fn accept_one(&self) -> io::Result<(Self::Stream, Option<IpAddr>)> {
        self.accept().map(|(s, _)| (s, None))
    }
    fn shutdown_write(stream: &Self::Stream) -> io::Result<()> {
        stream.shutdown(Shutdown::Write)
    }
}

/// Where a connection is in its one exchange.
#[derive(Debug)]
enum Phase {
    /// Receiving the request.
    Reading(Vec<u8>),
    /// A job is making the reply.
    Waiting,
    /// Sending the reply, since the instant given.
    Writing {
        /// The reply.
        reply: Vec<u8>,
        /// Bytes of it sent.
        sent: usize,
        /// When the reply was ready.
        since: Instant,
    },
    /// Replied and shut for writing: reading what the client still sends, until the instant given.
    Draining {
        /// When to close anyway.
        until: Instant,
        /// Bytes drained so far.
        drained: usize,
    },
}

/// One connection's state (its socket lives beside it in the loop).
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    accepted: Instant,
    /// The last step taken: accepted, request whole, reply written. Bytes of an unfinished
    /// request are not a step.
    progress: Instant,
}

impl Session {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Session {
        Session { phase: Phase::Reading(Vec::new()), accepted: now, progress: now }
    }

    /// Whether the connection must close at `now`: its request not whole within the read time,
    /// its reply not written within the write time, its job too slow, its drain over.
    pub fn expired(&self, now: Instant, limits: &Limits) -> bool {
        let since = |t: Instant| now.saturating_duration_since(t);
        match &self.phase {
            Phase::Reading(_) => since(self.accepted) > limits.read_time,
            Phase::Waiting => since(self.progress) > JOB_TIME,
            Phase::Writing { since: start, .. } => since(*start) > limits.write_time,
            Phase::Draining { until, .. } => now >= *until,
        }
    }

    /// The earliest instant [`Session::expired`] may turn true.
    fn deadline(&self, limits: &Limits) -> Instant {
        match &self.phase {
            Phase::Reading(_) => self.accepted + limits.read_time,
            Phase::Waiting => self.progress + JOB_TIME,
            Phase::Writing { since, .. } => *since + limits.write_time,
            Phase::Draining { until, .. } => *until,
        }
    }

    /// The order in which connections make room: replied ones first, then the one whose last
    /// step is oldest.
    fn eviction_key(&self) -> (bool, Instant) {
        (!matches!(self.phase, Phase::Draining { .. }), self.progress)
    }

    /// The reply is ready at `now`.
    fn reply(&mut self, reply: Vec<u8>, now: Instant) {
        self.progress = now;
        self.phase = Phase::Writing { reply, sent: 0, since: now };
    }
}

/// Which of `sessions` (slot, session) makes room for a new connection: the one that made
/// progress least recently (replied ones first).
pub fn victim<'a>(sessions: impl Iterator<Item = (usize, &'a Session)>) -> Option<usize> {
    sessions.min_by_key(|(_, s)| s.eviction_key()).map(|(slot, _)| slot)
}

/// A running listener: its thread, its stop flag and the waker that ends its wait.
pub struct Serving {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    /// Starts thread `name` serving `listener` with `service` under `limits`.
    pub fn start<L: Listener>(
        name: &str,
        mut listener: L,
        service: impl Service,
        limits: Limits,
    ) -> io::Result<Serving> {
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = sync_channel(MAX_JOBS);
        let mut serve = Loop {
            poll,
            listener,
            service,
            limits,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            done_tx,
            done_rx,
            waker: waker.clone(),
            jobs: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            generation: 0,
            complaints: RateLimited::new(Duration::from_secs(60)),
            name: name.to_string(),
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || serve.run(&s))?;
        Ok(Serving { stop, waker, thread: Some(thread) })
    }

    /// Stops the thread and waits for it (it sees the flag at once, woken).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::debug!("waking a listener to stop: {e} (it sees the flag within {TICK:?})");
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("a listener's thread panicked");
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A connection: its socket, its state and the generation that tells a late job's reply for an
/// earlier connection in the same slot.
struct Conn<S> {
    stream: S,
    session: Session,
    generation: u64,
}

/// The loop's state.
struct Loop<L: Listener, S: Service> {
    poll: Poll,
    listener: L,
    service: S,
    limits: Limits,
    conns: Vec<Option<Conn<L::Stream>>>,
    free: Vec<usize>,
    open: usize,
    /// Replies from jobs: (slot, generation, reply).
    done_tx: SyncSender<(usize, u64, Vec<u8>)>,
    done_rx: Receiver<(usize, u64, Vec<u8>)>,
    waker: Arc<Waker>,
    /// Jobs running now.
    jobs: Arc<std::sync::atomic::AtomicUsize>,
    generation: u64,
    complaints: RateLimited,
    name: String,
}

/// What happened to a connection on one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Still open.
    Open,
    /// To be closed.
    Close,
}

impl<L: Listener, S: Service> Loop<L, S> {
    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let next = self.conns.iter().flatten().map(|c| c.session.deadline(&self.limits)).min();
            let wait = next.map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
            if let Err(e) = self.poll.poll(&mut events, Some(wait + Duration::from_millis(1))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.complain(&format!("poll: {e}"));
                    std::thread::sleep(TICK);
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.collect_jobs(),
                    Token(t) => {
                        let slot = t - FIRST;
                        if self.step(slot) == Step::Close {
                            self.close(slot);
                        }
                    }
                }
            }
            self.sweep(Instant::now());
        }
    }

    /// Logs a failure of the listener itself, at most once a minute.
    fn complain(&mut self, what: &str) {
        if let Some(held) = self.complaints.check(Instant::now()) {
            tracing::warn!(held, "{}: {what}", self.name);
        }
    }

    /// Takes every waiting connection (edge-triggered: until the kernel has none).
    fn accept(&mut self) {
        loop {
            match self.listener.accept_one() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and kin: the connection stays queued; look again next tick.
                    self.complain(&format!("accept: {e}"));
                    return;
                }
            }
        }
    }

    /// Takes a new connection in, making room if the table is full.
    fn admit(&mut self, mut stream: L::Stream, peer: Option<IpAddr>) {
        if let Some(ip) = peer.filter(|_| !self.limits.allow.is_empty()) {
            if !crate::prefix::allowed(&self.limits.allow, ip) {
                return;
            }
        }
        if self.open >= self.limits.max_connections.max(1) {
            let sessions = self.conns.iter().enumerate().filter_map(|(i, c)| c.as_ref().map(|c| (i, &c.session)));
            if let Some(slot) = victim(sessions) {
                self.close(slot);
            }
        }
        let slot = self.free.pop().unwrap_or(self.conns.len());
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(slot + FIRST), Interest::READABLE | Interest::WRITABLE)
        {
            self.complain(&format!("registering a connection: {e}"));
            self.free.push(slot);
            return;
        }
        self.generation += 1;
        let conn = Conn { stream, session: Session::new(Instant::now()), generation: self.generation };
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
        self.open += 1;
        // The request may already be there: its readable edge came with the connection.
        if self.step(slot) == Step::Close {
            self.close(slot);
        }
    }

    /// Closes the connection in `slot` (dropping its socket removes it from the poll set).
    fn close(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) {
            // A socket that cannot be deregistered is closed right after anyway.
            let _deregistered = self.poll.registry().deregister(&mut c.stream);
            self.open -= 1;
            self.free.push(slot);
        }
    }

    /// Closes every connection past its deadline.
    fn sweep(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.session.expired(now, &self.limits)) {
                self.close(slot);
            }
        }
    }

    /// Replies from jobs, into their connections if those are still the same.
    fn collect_jobs(&mut self) {
        while let Ok((slot, generation, reply)) = self.done_rx.try_recv() {
            self.jobs.fetch_sub(1, Ordering::AcqRel);
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut).filter(|c| c.generation == generation)
            else {
                continue;
            };
            if matches!(c.session.phase, Phase::Waiting) {
                c.session.reply(reply, Instant::now());
                if self.step(slot) == Step::Close {
                    self.close(slot);
                }
            }
        }
    }

    /// Moves the connection in `slot` as far as its socket lets it: reads, answers, writes,
    /// drains.
    fn step(&mut self, slot: usize) -> Step {
        loop {
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return Step::Open };
            let now = Instant::now();
            let next = match &mut c.session.phase {
                Phase::Reading(buf) => match read_request(&mut c.stream, buf, &self.service, self.limits.max_request) {
                    Ok(None) => return Step::Open,
                    Ok(Some(cut)) => {
                        let request = std::mem::take(buf);
                        c.session.progress = now;
                        match self.service.answer(&request, cut) {
                            None => return Step::Close,
                            Some(Response::Now(reply)) => Phase::Writing { reply, sent: 0, since: now },
                            Some(Response::Later(job)) => {
                                let generation = c.generation;
                                if !self.spawn(slot, generation, job) {
                                    return Step::Close;
                                }
                                return Step::Open;
                            }
                        }
                    }
                    Err(_) => return Step::Close,
                },
                Phase::Waiting => return Step::Open,
                Phase::Writing { reply, sent, .. } => {
                    match c.stream.write(&reply[*sent..]) {
                        Ok(0) => return Step::Close,
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::Close,
                    }
                    if *sent < reply.len() {
                        continue;
                    }
                    c.session.progress = now;
                    if L::shutdown_write(&c.stream).is_err() {
                        return Step::Close;
                    }
                    Phase::Draining { until: now + LINGER, drained: 0 }
                }
                Phase::Draining { drained, .. } => {
                    let mut sink = [0u8; READ_CHUNK];
                    match c.stream.read(&mut sink) {
                        Ok(0) => return Step::Close,
                        Ok(n) => *drained += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::Close,
                    }
                    if *drained >= MAX_DRAIN {
                        return Step::Close;
                    }
                    continue;
                }
            };
            c.session.phase = next;
        }
    }

    /// Runs `job` on a thread of its own for the connection in `slot`; `false` if too many run
    /// already or no thread could be started.
    fn spawn(&mut self, slot: usize, generation: u64, job: Box<dyn FnOnce() -> Vec<u8> + Send>) -> bool {
        if self.jobs.fetch_add(1, Ordering::AcqRel) >= MAX_JOBS {
            self.jobs.fetch_sub(1, Ordering::AcqRel);
            self.complain(&format!("{MAX_JOBS} requests are being answered already; one more was closed"));
            return false;
        }
        let (done, waker, jobs) = (self.done_tx.clone(), self.waker.clone(), self.jobs.clone());
        let spawned = std::thread::Builder::new().name(format!("{}-job", self.name)).spawn(move || {
            let reply = job();
            // A job counts until the loop collects its reply, so the channel's MAX_JOBS places
            // always have room: the send never waits and never fails for room. A stopped loop
            // no longer listens.
            if done.try_send((slot, generation, reply)).is_ok() {
                if let Err(e) = waker.wake() {
                    tracing::debug!("waking a listener with a reply: {e} (it looks again within {TICK:?})");
                }
            } else {
                jobs.fetch_sub(1, Ordering::AcqRel);
            }
        });
        match spawned {
            Ok(_) => {
                if let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                    c.session.phase = Phase::Waiting;
                }
                true
            }
            Err(e) => {
                self.jobs.fetch_sub(1, Ordering::AcqRel);
                self.complain(&format!("cannot start a thread to answer a request: {e}"));
                false
            }
        }
    }
}

/// Reads what the client sent into `buf` (at most `max` bytes in all) until the socket has no
/// more; how the request ended once it has, `None` while it is still coming.
fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    service: &impl Service,
    max: usize,
) -> io::Result<Option<Cut>> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if service.whole(buf) {
            return Ok(Some(Cut::Whole));
        }
        let room = max.saturating_sub(buf.len()).min(READ_CHUNK);
        if room == 0 {
            return Ok(Some(Cut::Full));
        }
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(Some(Cut::Eof)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 2,
        max_request: 16,
        read_time: Duration::from_secs(2),
        write_time: Duration::from_secs(2),
        allow: Vec::new(),
    };

    /// Lines: whole at a newline.
    struct Lines;

    impl Service for Lines {
        fn whole(&self, request: &[u8]) -> bool {
            request.contains(&b'\n')
        }
        fn answer(&self, request: &[u8], cut: Cut) -> Option<Response> {
            (cut != Cut::Eof || !request.is_empty()).then(|| Response::Now(format!("{cut:?}").into_bytes()))
        }
    }

    /// A client's bytes, given a few at a time, then "would block" (or the end).
    struct Drip {
        chunks: Vec<&'static [u8]>,
        end: bool,
    }

    impl Read for Drip {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.chunks.is_empty() {
                return if self.end { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let c = self.chunks.remove(0);
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            Ok(n)
        }
    }

    #[test]
    fn a_request_is_whole_at_its_end_at_the_bound_or_at_the_clients_close() {
        let mut buf = Vec::new();
        let mut s = Drip { chunks: vec![b"sta", b"tus"], end: false };
        assert_eq!(read_request(&mut s, &mut buf, &Lines, 16).unwrap(), None, "still coming");
        let mut s = Drip { chunks: vec![b"\nmore"], end: false };
        assert_eq!(read_request(&mut s, &mut buf, &Lines, 16).unwrap(), Some(Cut::Whole));
        let (mut buf, mut s) = (Vec::new(), Drip { chunks: vec![b"0123456789", b"0123456789"], end: false });
        assert_eq!(read_request(&mut s, &mut buf, &Lines, 16).unwrap(), Some(Cut::Full));
        assert_eq!(buf.len(), 16, "never more than the bound");
        let (mut buf, mut s) = (Vec::new(), Drip { chunks: vec![b"x"], end: true });
        assert_eq!(read_request(&mut s, &mut buf, &Lines, 16).unwrap(), Some(Cut::Eof));
    }

    #[test]
    fn deadlines_count_from_the_accept_not_from_the_last_byte() {
        let t = Instant::now();
        let s = Session::new(t);
        // A byte a second changes nothing: the request must be whole within the read time.
        assert!(!s.expired(t + Duration::from_secs(2), &LIMITS));
        assert!(s.expired(t + Duration::from_millis(2001), &LIMITS));
        let mut s = Session::new(t);
        s.reply(b"x".to_vec(), t + Duration::from_secs(1));
        assert!(!s.expired(t + Duration::from_secs(3), &LIMITS), "the write time starts with the reply");
        assert!(s.expired(t + Duration::from_millis(3001), &LIMITS));
        assert_eq!(s.deadline(&LIMITS), t + Duration::from_secs(3));
    }

    #[test]
    fn room_is_made_by_the_connection_that_progressed_least_recently() {
        let t = Instant::now();
        let s = |secs| t + Duration::from_secs(secs);
        // A slowloris client accepted first (its bytes are no progress), a newer silent one, and
        // one that has its reply and is only being drained.
        let slow = Session::new(s(0));
        let silent = Session::new(s(1));
        assert_eq!(victim([(0, &slow), (1, &silent)].into_iter()), Some(0));
        let mut replied = Session::new(s(0));
        replied.reply(Vec::new(), s(2));
        replied.phase = Phase::Draining { until: s(3), drained: 0 };
        assert_eq!(victim([(0, &slow), (1, &silent), (2, &replied)].into_iter()), Some(2), "replied first");
        // A request that became whole at 3 s has progressed more recently than both.
        let mut answered = Session::new(s(0));
        answered.progress = s(3);
        assert_eq!(victim([(5, &answered), (1, &silent)].into_iter()), Some(1));
        assert_eq!(victim(std::iter::empty()), None);
    }

    #[test]
    fn a_loop_serves_clients_over_a_real_socket_and_closes_the_silent_ones() {
        let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits { read_time: Duration::from_millis(300), ..LIMITS };
        let serving = Serving::start("dnlb-test-listener", listener, Lines, limits).unwrap();
        let silent = std::net::TcpStream::connect(addr).unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"hello\n").unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "Whole");
        // The silent one is closed by the read deadline.
        let mut silent = silent;
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        assert_eq!(silent.read(&mut [0u8; 8]).unwrap_or(0), 0);
        assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
        serving.shutdown();
    }
}

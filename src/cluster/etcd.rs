//! The cluster thread: the etcd client (etcd-client, over tonic) on a current-thread tokio
//! runtime of its own, so nothing of it ever runs on a worker or on the prober.
//!
//! ```text
//!  connect (one endpoint at a time, require-leader, 500 ms per call)
//!   └─► lease: the one still alive, or a new grant (TTL logged as granted)
//!   └─► members/<name> in a transaction (create if absent; someone else's: refused, naming the holder)
//!   └─► read drain/, members/, verdict/ at one revision (paged) ─► Fleet ─► write this instance's
//!       verdicts for its duty (taking over) ─► watch the prefix from revision + 1 ─► attached
//!   loop: keep-alive every TTL/3 while the prober's heartbeat moves · watch events ─► Fleet
//!         prober reports ─► put/delete verdict keys · control drains ─► drain keys (no lease)
//!         changes ─► publish (at most every 20 ms) ─► ArcSwap<Published>
//!   any failure (no leader, a call past its deadline, a keep-alive unanswered for 2/3 TTL,
//!   the lease gone) ─► Link::failed ─► publish detached ─► next endpoint
//! ```
//!
//! Reads are bounded: pages of 64 keys of at most etcd's own value limit, and only the three
//! ranges this instance reads; the watch's events are parsed one by one by [`Fleet`], which
//! refuses and counts what does not fit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::Notify;

use super::core::{Link, LinkState};
use super::fleet::{encode_verdict, DrainValue, Fleet};
use super::{ClusterError, DrainOrder, Handle, Inbox, Published, Report};
use crate::config::ClusterConfig;

/// The deadline of every etcd call: a member cut off from its leader answers at once
/// (require-leader); a frozen one must not hold this thread longer.
const CALL: Duration = Duration::from_millis(500);
/// Keys per page when reading the prefix.
const PAGE: i64 = 64;
/// The largest gRPC message read (a page of 64 values at etcd's 1.5 MiB request limit).
const MAX_MESSAGE: usize = 128 << 20;
/// The shortest time between two publishes (a flood of changes costs one view per 20 ms).
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 100;

/// What the thread needs to start.
pub struct Setup {
    /// `[cluster]`.
    pub config: ClusterConfig,
    /// The farm's servers, as [`super::core::server_key`] names them, in the configuration's order.
    pub servers: Vec<String>,
    /// This instance's configuration hash ([`super::core::config_hash`]).
    pub config_hash: String,
    /// Whether the prober is alive; `None`: its heartbeat through the [`Handle`] moved within
    /// half a TTL (the lease is kept alive only then, so a frozen prober's duty moves).
    pub alive: Option<Box<dyn Fn() -> bool + Send>>,
}

/// A running cluster thread.
pub struct ClusterThread {
    handle: Handle,
    stop: Arc<AtomicBool>,
    notify: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread learnt at its first attempt, for [`spawn`] to wait on.
enum First {
    Joined,
    Unreachable(String),
    Refused(ClusterError),
}

/// How long [`spawn`] waits for the first attempt before starting detached.
const FIRST_WAIT: Duration = Duration::from_secs(3);

/// Starts the cluster thread and waits (at most 3 s) for its first attempt: a name another
/// live instance holds is an error; an unreachable etcd is not (the instance starts detached
/// and keeps trying).
pub fn spawn(setup: Setup) -> Result<ClusterThread, ClusterError> {
    let auth = match &setup.config.auth {
        Some((user, file)) => {
            let text = crate::files::read_text(file).map_err(|e| ClusterError::File {
                field: "cluster.password_file",
                path: file.display().to_string(),
                why: e.to_string(),
            })?;
            Some((user.clone(), text.trim_end_matches(['\r', '\n']).to_string()))
        }
        None => None,
    };
    let tls = match &setup.config.tls {
        Some(t) => {
            let read = |field: &'static str, p: &std::path::Path| {
                crate::files::read_text(p).map_err(|e| ClusterError::File {
                    field,
                    path: p.display().to_string(),
                    why: e.to_string(),
                })
            };
            let mut opts = etcd_client::TlsOptions::new().with_native_roots();
            if let Some(ca) = &t.ca_file {
                opts = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read("cluster.ca_file", ca)?));
            }
            if let Some((cert, key)) = &t.identity {
                opts = opts.identity(etcd_client::Identity::from_pem(
                    read("cluster.cert_file", cert)?,
                    read("cluster.key_file", key)?,
                ));
            }
            Some(opts)
        }
        None => None,
    };
    let notify = Arc::new(Notify::new());
    let wake = {
        let n = notify.clone();
        Arc::new(move || n.notify_one()) as Arc<dyn Fn() + Send + Sync>
    };
    let initial = Published {
        generation: 0,
        link: LinkState::Starting,
        since: SystemTime::now(),
        ttl: Duration::ZERO,
        view: Default::default(),
        problem: None,
    };
    let (handle, inbox) = Handle::new(initial, wake);
    let stop = Arc::new(AtomicBool::new(false));
    let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let wiring = Wiring { notify: notify.clone(), stop: stop.clone(), auth, tls, first: first_tx };
    let mut state = State::new(setup, handle.clone(), inbox, wiring);
    let thread = std::thread::Builder::new().name("dnlb-cluster".into()).spawn(move || {
        runtime.block_on(state.run());
    })?;
    let running = ClusterThread { handle, stop, notify, thread: Some(thread) };
    match first_rx.recv_timeout(FIRST_WAIT) {
        Ok(First::Refused(e)) => {
            running.shutdown();
            Err(e)
        }
        Ok(First::Joined) => Ok(running),
        Ok(First::Unreachable(why)) => {
            tracing::warn!(why = %why, "etcd unreachable at start: serving detached, probing every server, retrying");
            Ok(running)
        }
        Err(_) => {
            tracing::warn!("etcd did not answer within 3 s of start: serving detached, probing every server, retrying");
            Ok(running)
        }
    }
}

impl ClusterThread {
    /// The prober's and control's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the thread: the lease is revoked (at most one second), so the others take this
    /// instance's duty at once instead of after its TTL.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _joined = t.join();
            }
        }
    }
}

impl Drop for ClusterThread {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Why a session with etcd ended.
enum End {
    /// Stop requested.
    Stop,
    /// Something failed; the reason for the log and status.
    Failed(String),
    /// The name is someone else's.
    NameTaken(ClusterError),
    /// A reload changed the farm: join again at once with the new configuration.
    Reconfigured,
}

fn failed(e: impl std::fmt::Display) -> End {
    End::Failed(e.to_string())
}

/// Awaits `f` for at most [`CALL`].
async fn call<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, End> {
    match tokio::time::timeout(CALL, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(End::Failed(format!("{what}: {e}"))),
        Err(_) => Err(End::Failed(format!("{what}: no answer within {} ms", CALL.as_millis()))),
    }
}

struct State {
    setup: Setup,
    handle: Handle,
    inbox: Inbox,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    auth: Option<(String, String)>,
    tls: Option<etcd_client::TlsOptions>,
    first: Option<std::sync::mpsc::SyncSender<First>>,
    fleet: Fleet,
    link: Link,
    lease: Option<i64>,
    ttl: Duration,
    /// Per server: what this instance last reported (what it would write).
    local: Vec<Option<Vec<(crate::config::Transport, super::core::Seen)>>>,
    /// This attach's epoch (see [`super::fleet`]): set at each attach, written in the member
    /// key before any verdict.
    epoch: u64,
    /// Per server: what is written under the current lease.
    written: Vec<Option<String>>,
    generation: u64,
    problem: Option<String>,
    since: SystemTime,
    member_key: String,
    endpoint: usize,
    /// The conflicting members last logged.
    conflicts: Vec<String>,
    /// The newest etcd revision seen while attached.
    seen: i64,
    /// Leases this instance held before the one in force (the newest few): a member key held
    /// by one of them is this instance's own from before a lost lease, not another's.
    old_leases: Vec<i64>,
    /// Back from a detached spell: members not attached since revision `.0` have their
    /// verdicts ignored until `.1` (one TTL: by then they have attached again or their lease
    /// has ended).
    distrust: Option<(i64, Instant)>,
}

/// What connects the thread to the rest of the process: its wake-up, its stop flag, the
/// credentials read at start, and where the first attempt's outcome goes.
struct Wiring {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    auth: Option<(String, String)>,
    tls: Option<etcd_client::TlsOptions>,
    first: std::sync::mpsc::SyncSender<First>,
}

impl State {
    fn new(setup: Setup, handle: Handle, inbox: Inbox, wiring: Wiring) -> State {
        let Wiring { notify, stop, auth, tls, first } = wiring;
        let n = setup.servers.len();
        let fleet = Fleet::new(&setup.config.farm, &setup.config.name, setup.servers.clone());
        let member_key = format!("{}members/{}", fleet.prefix(), setup.config.name);
        let ttl = setup.config.lease_ttl;
        State {
            setup,
            handle,
            inbox,
            notify,
            stop,
            auth,
            tls,
            first: Some(first),
            fleet,
            link: Link::new(ttl, Instant::now()),
            lease: None,
            ttl,
            local: vec![None; n],
            epoch: 0,
            written: vec![None; n],
            generation: 0,
            problem: None,
            since: SystemTime::now(),
            member_key,
            endpoint: 0,
            conflicts: Vec::new(),
            seen: 0,
            old_leases: Vec::new(),
            distrust: None,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopping() {
                break;
            }
            let endpoint = self.setup.config.etcd[self.endpoint % self.setup.config.etcd.len()].clone();
            let mut client = None;
            let end = self.session(&endpoint, &mut client).await;
            match end {
                End::Stop => {
                    if let (Some(c), Some(id)) = (client.as_mut(), self.lease) {
                        let _revoked = tokio::time::timeout(CALL, c.lease_revoke(id)).await;
                    }
                    break;
                }
                End::NameTaken(e) => {
                    if let Some(first) = self.first.take() {
                        let _told = first.try_send(First::Refused(e));
                        return;
                    }
                    tracing::error!(error = %e, "cannot rejoin the fleet: serving detached");
                    self.problem = Some(e.to_string());
                }
                End::Reconfigured => continue,
                End::Failed(why) => {
                    if let Some(first) = self.first.take() {
                        let _told = first.try_send(First::Unreachable(why.clone()));
                    }
                    self.lost(&why);
                }
            }
            self.endpoint = self.endpoint.wrapping_add(1);
            // Wait before the next attempt, still taking reports (kept for the next session)
            // and refusing drains (they need etcd).
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until && !self.stopping() {
                let wait = until.saturating_duration_since(tokio::time::Instant::now()).min(self.tick_wait());
                let _woken = tokio::time::timeout(wait, self.notify.notified()).await;
                self.take_inbox_offline();
                self.tick();
            }
            backoff = (backoff * 2).min(self.ttl / 4).max(Duration::from_millis(100));
        }
    }

    /// How long until the link machine next has something to do (at most 100 ms).
    fn tick_wait(&self) -> Duration {
        self.link
            .next_tick()
            .map_or(Duration::from_millis(100), |t| t.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(to) = self.link.tick(now) {
            self.transition(to);
        }
    }

    fn transition(&mut self, to: LinkState) {
        self.since = SystemTime::now();
        self.handle.stats.transitions.store(self.link.transitions(), Ordering::Relaxed);
        match to {
            LinkState::Attached => tracing::info!(farm = %self.setup.config.farm, "cluster attached"),
            LinkState::Detached => {
                tracing::warn!(
                    why = self.problem.as_deref().unwrap_or(""),
                    "cluster detached: keeping the others' verdicts for one lease TTL"
                )
            }
            LinkState::Alone => tracing::warn!(
                ttl_ms = self.ttl.as_millis() as u64,
                "cluster detached for a lease TTL: the others' verdicts dropped, probing every server"
            ),
            LinkState::Starting => {}
        }
        self.publish();
    }

    fn lost(&mut self, why: &str) {
        self.problem = Some(why.to_string());
        let now = Instant::now();
        match self.link.failed(now) {
            Some(to) => self.transition(to),
            None => self.publish(),
        }
    }

    fn publish(&mut self) {
        self.generation += 1;
        let c = &self.setup.config;
        let through = self.distrust.filter(|(_, until)| Instant::now() < *until).map_or(0, |(r, _)| r);
        let view = self.fleet.view_since(&self.setup.config_hash, c.site.as_deref(), c.probers_per_server, through);
        let conflicts: Vec<String> = view.conflicts.iter().map(|m| format!("{} ({})", m.name, m.config)).collect();
        if conflicts != self.conflicts {
            if conflicts.is_empty() {
                tracing::info!("cluster: every member runs this configuration again");
            } else {
                tracing::warn!(
                    config = %self.setup.config_hash,
                    others = %conflicts.join(", "),
                    "cluster: members with another configuration; no shared duty with them"
                );
            }
            self.conflicts = conflicts;
        }
        let (link, _) = self.link.state();
        self.handle.stats.refused.store(self.fleet.refused(), Ordering::Relaxed);
        self.handle.publish(Published {
            generation: self.generation,
            link,
            since: self.since,
            ttl: self.ttl,
            view,
            problem: if link == LinkState::Attached { None } else { self.problem.clone() },
        });
    }

    /// The lease in force is taken for lost; remembered, in case etcd still holds it.
    fn forget_lease(&mut self) {
        if let Some(id) = self.lease.take() {
            self.old_leases.push(id);
            if self.old_leases.len() > 8 {
                self.old_leases.remove(0);
            }
        }
    }

    /// Takes a reloaded farm: the old prober's reports are dropped (their indices are the old
    /// configuration's), the fleet starts over on the new servers. Returns the keys of this
    /// instance's verdicts that are written now, to delete.
    fn take_reconfigure(&mut self, r: &super::Reconfigure) -> Vec<String> {
        while self.inbox.reports.try_recv().is_ok() {}
        let old: Vec<String> = self
            .written
            .iter()
            .enumerate()
            .filter(|(_, w)| w.is_some())
            .filter_map(|(i, _)| self.fleet.servers().get(i))
            .map(|name| format!("{}verdict/{}/{}", self.fleet.prefix(), name, self.setup.config.name))
            .collect();
        let n = r.servers.len();
        self.setup.servers = r.servers.clone();
        self.setup.config_hash = r.config_hash.clone();
        self.fleet = Fleet::new(&self.setup.config.farm, &self.setup.config.name, r.servers.clone());
        self.local = vec![None; n];
        self.written = vec![None; n];
        old
    }

    /// Reports and drains while etcd is out of reach: reports are remembered (written at the
    /// next session), drains refused.
    fn take_inbox_offline(&mut self) {
        if let Ok(r) = self.inbox.reconfigure.try_recv() {
            let _old_keys = self.take_reconfigure(&r);
            self.publish();
            let _told = r.done.try_send(());
        }
        while let Ok(r) = self.inbox.reports.try_recv() {
            self.remember(r);
        }
        while let Ok(order) = self.inbox.drains.try_recv() {
            let _told = order.reply.try_send(Err("etcd is out of reach: the drain was not recorded".into()));
        }
    }

    /// Takes a report into `local`; returns the server it is about.
    fn remember(&mut self, r: Report) -> usize {
        match r {
            Report::Verdict { server, seen } => {
                if let Some(slot) = self.local.get_mut(server) {
                    *slot = Some(seen);
                }
                server
            }
            Report::Stopped { server } => {
                if let Some(slot) = self.local.get_mut(server) {
                    *slot = None;
                }
                server
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Client, End> {
        let mut opts = ConnectOptions::new()
            .with_require_leader(true)
            .with_timeout(CALL)
            .with_connect_timeout(CALL)
            .with_keep_alive(Duration::from_secs(1), CALL);
        if let Some((u, p)) = &self.auth {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.clone());
        }
        call("connect", Client::connect([endpoint], Some(opts))).await
    }

    async fn session(&mut self, endpoint: &str, slot: &mut Option<Client>) -> End {
        let client = match self.connect(endpoint).await {
            Ok(c) => slot.insert(c),
            Err(e) => return e,
        };
        // The lease: the one this instance holds, if etcd still has it; else a new one.
        let mut fresh = false;
        if let Some(id) = self.lease {
            match call("lease", client.lease_time_to_live(id, None)).await {
                Ok(r) if r.ttl() > 0 => {}
                Ok(_) => {
                    self.forget_lease();
                }
                Err(e) => return e,
            }
        }
        if self.lease.is_none() {
            let asked = self.setup.config.lease_ttl.as_secs() as i64;
            let grant = match call("lease grant", client.lease_grant(asked, None)).await {
                Ok(g) => g,
                Err(e) => return e,
            };
            let granted = Duration::from_secs(grant.ttl().clamp(1, 3600) as u64);
            if granted != self.setup.config.lease_ttl {
                tracing::warn!(
                    asked_s = asked,
                    granted_s = granted.as_secs(),
                    "etcd granted another lease TTL than cluster.lease_ttl_s (it raises short ones to its minimum, about 1.5 x its election timeout)"
                );
            } else {
                tracing::info!(ttl_s = granted.as_secs(), lease = grant.id(), "etcd lease granted");
            }
            self.ttl = granted;
            self.link.set_ttl(granted);
            self.lease = Some(grant.id());
            self.handle.stats.leases.fetch_add(1, Ordering::Relaxed);
            self.written.iter_mut().for_each(|w| *w = None);
            fresh = true;
        }
        let lease = self.lease.unwrap_or_default();
        // A new epoch at every attach: verdicts written before it (which etcd may have kept
        // through an outage by extending every lease) count for nothing until rewritten.
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        self.epoch = now_ms.max(self.epoch + 1);
        self.written.iter_mut().for_each(|w| *w = None);
        // Membership, taken in a transaction: create it if absent; if present, it must be ours.
        let value = serde_json::to_string(&super::fleet::MemberValue {
            site: self.setup.config.site.clone(),
            config: self.setup.config_hash.clone(),
            epoch: self.epoch,
            host: Some(holder_text()),
        })
        .unwrap_or_default();
        let key = self.member_key.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = match call("member", client.txn(txn)).await {
            Ok(a) => a,
            Err(e) => return e,
        };
        if !answer.succeeded() {
            let held = answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| (kv.lease(), String::from_utf8_lossy(kv.value()).into_owned()))
                }
                _ => None,
            });
            match held {
                Some((holder_lease, _)) if holder_lease == lease => {
                    // Ours (a reconnect within the lease): refresh the value.
                    if let Err(e) =
                        call("member", client.put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))).await
                    {
                        return e;
                    }
                }
                Some((holder_lease, _)) if self.old_leases.contains(&holder_lease) => {
                    // This instance's own key from a lease it gave up for lost: let that lease
                    // go (its keys with it) and take the name again at once.
                    let _revoked = call("lease revoke", client.lease_revoke(holder_lease)).await;
                    self.old_leases.retain(|l| *l != holder_lease);
                    return End::Reconfigured;
                }
                Some((holder_lease, text)) => {
                    let mut holder: String = text.chars().take(200).collect();
                    holder = format!("held by lease {holder_lease:x}: {holder}");
                    if fresh {
                        // Ours is of no use; let it go now rather than at its TTL.
                        let _revoked = tokio::time::timeout(CALL, client.lease_revoke(lease)).await;
                        self.forget_lease();
                    }
                    return End::NameTaken(ClusterError::NameTaken {
                        name: self.setup.config.name.clone(),
                        farm: self.setup.config.farm.clone(),
                        holder,
                    });
                }
                None => return End::Failed("member: the transaction failed without the holder's key".into()),
            }
        }
        // The fleet at one revision, then this instance's verdicts for its duty (taking over).
        let revision = match self.read(client).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        while let Ok(r) = self.inbox.reports.try_recv() {
            self.remember(r);
        }
        // This instance's verdicts for its duty in this epoch (taking over), in as few
        // transactions as there are hundreds of them: one disk write each at etcd, not one per server.
        let c = &self.setup.config;
        let view = self.fleet.view(&self.setup.config_hash, c.site.as_deref(), c.probers_per_server);
        let mut puts: Vec<(usize, String)> = Vec::new();
        for server in 0..self.local.len() {
            let duty = view.duty.get(server).copied().unwrap_or(false);
            if let Some(wanted) =
                self.local[server].as_ref().filter(|_| duty).map(|seen| encode_verdict(self.epoch, seen))
            {
                puts.push((server, wanted));
            }
        }
        for chunk in puts.chunks(TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .filter_map(|(server, v)| {
                    let key =
                        format!("{}verdict/{}/{}", self.fleet.prefix(), self.fleet.servers().get(*server)?, c.name);
                    Some(TxnOp::put(key, v.clone(), Some(PutOptions::new().with_lease(lease))))
                })
                .collect();
            if let Err(e) = call("verdicts", client.txn(Txn::new().and_then(ops))).await {
                return e;
            }
            for (server, v) in chunk {
                self.written[*server] = Some(v.clone());
            }
            self.handle.stats.verdict_writes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_progress_notify();
        let prefix = self.fleet.prefix().to_string();
        let mut watch = match call(
            "watch",
            client.watch_client().max_decoding_message_size(MAX_MESSAGE).watch(prefix, Some(options)),
        )
        .await
        {
            Ok(w) => w,
            Err(e) => return e,
        };
        let (mut keeper, mut alive) = match call("keep-alive", client.lease_keep_alive(lease)).await {
            Ok(k) => k,
            Err(e) => return e,
        };
        if let Some(first) = self.first.take() {
            let _told = first.try_send(First::Joined);
        }
        self.problem = None;
        let now = Instant::now();
        if matches!(self.link.state().0, LinkState::Detached | LinkState::Alone) && self.seen > 0 {
            // Back from a spell: a member whose key is not newer than this read may be cut off
            // still (etcd extends every lease when it elects a leader, so its old verdicts may
            // linger a TTL), so its verdicts wait a TTL: by then it has attached again (a newer
            // key) or its lease has ended.
            self.distrust = Some((revision, now + self.ttl + Duration::from_millis(250)));
        }
        self.seen = self.seen.max(revision);
        match self.link.ok(now) {
            Some(to) => self.transition(to),
            None => self.publish(),
        }
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        let mut next_beat = tokio::time::Instant::now();
        let mut last_answer = Instant::now();
        let mut dirty = false;
        let mut last_publish = Instant::now();
        loop {
            if self.stopping() {
                return End::Stop;
            }
            let now = Instant::now();
            // A keep-alive unanswered for two thirds of the TTL: the lease is about to go.
            if now.saturating_duration_since(last_answer) > self.ttl * 2 / 3 {
                return End::Failed("etcd stopped answering keep-alives".into());
            }
            let publish_at = if dirty {
                tokio::time::Instant::from_std(last_publish + PUBLISH_EVERY)
            } else {
                tokio::time::Instant::now() + Duration::from_secs(3600)
            };
            let deadline = tokio::time::Instant::from_std(last_answer + self.ttl * 2 / 3 + Duration::from_millis(1));
            let distrust_ends =
                self.distrust.map_or(tokio::time::Instant::now() + Duration::from_secs(3600), |(_, until)| {
                    tokio::time::Instant::from_std(until)
                });
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => {
                    next_beat += every;
                    let alive = match &self.setup.alive {
                        Some(f) => f(),
                        None => self.handle.prober_alive((self.ttl / 2).max(Duration::from_millis(300))),
                    };
                    if alive {
                        if let Err(e) = call("keep-alive", keeper.keep_alive()).await {
                            return e;
                        }
                    }
                }
                answer = alive.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => {
                        last_answer = Instant::now();
                        self.link.contact(last_answer);
                    }
                    Ok(Some(_)) => {
                        self.forget_lease();
                        return End::Failed("the lease expired".into());
                    }
                    Ok(None) => return End::Failed("the keep-alive stream ended".into()),
                    Err(e) => return failed(format!("keep-alive: {e}")),
                },
                message = watch.message() => match message {
                    Ok(Some(m)) => {
                        if let Some(h) = m.header() {
                            self.seen = self.seen.max(h.revision());
                        }
                        if m.canceled() {
                            self.handle.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                            let why = if m.compact_revision() > 0 { "compacted" } else { "cancelled" };
                            return End::Failed(format!("the watch was {why}: {}", m.cancel_reason()));
                        }
                        for event in m.events() {
                            let Some(kv) = event.kv() else { continue };
                            // A delete leaves the key with version 0; a put has 1 or more. (Not
                            // event_type(): it panics on a type it does not know.)
                            let changed = if kv.version() == 0 {
                                self.fleet.delete(kv.key())
                            } else {
                                self.fleet.put_at(kv.key(), kv.value(), kv.mod_revision()).is_ok()
                            };
                            dirty |= changed;
                        }
                        self.handle.stats.refused.store(self.fleet.refused(), Ordering::Relaxed);
                    }
                    Ok(None) => {
                        self.handle.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                        return End::Failed("the watch stream ended".into());
                    }
                    Err(e) => {
                        self.handle.stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                        return failed(format!("watch: {e}"));
                    }
                },
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(publish_at) => {}
                _ = tokio::time::sleep_until(distrust_ends) => {
                    self.distrust = None;
                    dirty = true;
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Reports and drains, whatever woke the loop.
            while let Ok(r) = self.inbox.reports.try_recv() {
                let server = self.remember(r);
                let epoch = self.epoch;
                let wanted = self.local.get(server).and_then(|l| l.as_ref().map(|seen| encode_verdict(epoch, seen)));
                if wanted != self.written.get(server).cloned().flatten() {
                    if let Err(e) = self.write(client, server, wanted).await {
                        return e;
                    }
                }
            }
            while let Ok(order) = self.inbox.drains.try_recv() {
                let outcome = self.drain(client, &order).await;
                let _told = order.reply.try_send(outcome);
            }
            if let Ok(r) = self.inbox.reconfigure.try_recv() {
                let old = self.take_reconfigure(&r);
                for key in old {
                    // Best effort: a key left behind goes with the lease, and counts for no
                    // one meanwhile (it names a server of the old farm or an old epoch).
                    let _deleted = tokio::time::timeout(CALL, client.delete(key, None)).await;
                }
                self.publish();
                let _told = r.done.try_send(());
                tracing::info!(config = %self.setup.config_hash, "cluster: rejoining with the reloaded configuration");
                return End::Reconfigured;
            }
            if dirty && Instant::now() >= last_publish + PUBLISH_EVERY {
                self.publish();
                dirty = false;
                last_publish = Instant::now();
            }
        }
    }

    /// Reads drains, members and verdicts at one revision, in pages; returns the revision.
    async fn read(&mut self, client: &mut Client) -> Result<i64, End> {
        self.fleet.clear();
        let mut revision = 0i64;
        let prefix = self.fleet.prefix().to_string();
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        // Members before verdicts: a verdict counts only from a member.
        for part in ["drain/", "members/", "verdict/"] {
            let start = format!("{prefix}{part}");
            let mut end = start.clone().into_bytes();
            if let Some(last) = end.last_mut() {
                *last += 1; // '/' + 1: the end of the range of keys under `start`
            }
            let mut from = start.into_bytes();
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision > 0 {
                    options = options.with_revision(revision);
                }
                let page = call("read", kv.get(from.clone(), Some(options))).await?;
                if revision == 0 {
                    revision = page.header().map_or(0, |h| h.revision());
                }
                for kv in page.kvs() {
                    let _refused = self.fleet.put_at(kv.key(), kv.value(), kv.mod_revision());
                }
                match page.kvs().last() {
                    Some(last) if page.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
        }
        self.handle.stats.refused.store(self.fleet.refused(), Ordering::Relaxed);
        Ok(revision)
    }

    /// Writes (or, with `None`, deletes) this instance's verdict of `server` on its lease.
    async fn write(&mut self, client: &mut Client, server: usize, value: Option<String>) -> Result<(), End> {
        let Some(name) = self.fleet.servers().get(server) else { return Ok(()) };
        let key = format!("{}verdict/{}/{}", self.fleet.prefix(), name, self.setup.config.name);
        match &value {
            Some(v) => {
                let lease = self.lease.unwrap_or_default();
                call("verdict", client.put(key, v.clone(), Some(PutOptions::new().with_lease(lease)))).await?;
            }
            None => {
                call("verdict", client.delete(key, None)).await?;
            }
        }
        self.written[server] = value;
        self.handle.stats.verdict_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes or deletes the drain keys of an order (no lease: they outlive every instance).
    async fn drain(&mut self, client: &mut Client, order: &DrainOrder) -> Result<(), String> {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let value = serde_json::to_string(&DrainValue { by: self.setup.config.name.clone(), at }).unwrap_or_default();
        let keys: Vec<String> = order
            .servers
            .iter()
            .filter_map(|&s| self.fleet.servers().get(s))
            .map(|name| format!("{}drain/{}", self.fleet.prefix(), name))
            .collect();
        for chunk in keys.chunks(TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| {
                    if order.drained {
                        TxnOp::put(k.clone(), value.clone(), None)
                    } else {
                        TxnOp::delete(k.clone(), None)
                    }
                })
                .collect();
            if let Err(End::Failed(why)) = call("drain", client.txn(Txn::new().and_then(ops))).await {
                return Err(why);
            }
        }
        Ok(())
    }
}

/// What this instance says about itself in its member key: host name and process id, so a
/// refused second instance can be told where the first one runs.
fn holder_text() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("pid {} on {}", std::process::id(), host.trim())
}

/// The member value this module writes parses as the fleet reads it.
#[cfg(test)]
mod tests {
    #[test]
    fn member_value_round_trips() {
        let text =
            serde_json::json!({"site": "east", "config": "0123456789abcdef", "host": super::holder_text()}).to_string();
        let v: super::super::fleet::MemberValue = serde_json::from_str(&text).unwrap();
        assert_eq!(v.site.as_deref(), Some("east"));
    }
}

//! Real etcd clusters (Debian's `etcd-server`, `/usr/bin/etcd`) on loopback addresses a test
//! chooses, each member a child process started and stopped by PID, with a scratch data folder.
//! Short timings (`--heartbeat-interval 50 --election-timeout 500`), so a 1-second lease is
//! granted as asked and a lost quorum shows within a second.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// One member.
pub struct Member {
    pub name: String,
    /// Its client URL, `http://IP:2379`.
    pub client: String,
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

/// A running cluster.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Starts members on `ips` (client port 2379, peer port 2380 each) and waits (10 s at
    /// most) until every member answers its health endpoint with a leader.
    pub fn start(tag: &str, ips: &[&str]) -> EtcdCluster {
        let bin = etcd_binary().expect("etcd is installed");
        let dir = std::env::temp_dir().join(format!("dnlb-etcd-{tag}-{}", std::process::id()));
        let _old = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let initial: Vec<String> = ips.iter().enumerate().map(|(i, ip)| format!("{tag}{i}=http://{ip}:2380")).collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("{tag}{i}");
            let data = dir.join(&name);
            let args = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{ip}:2379"),
                "--advertise-client-urls".into(),
                format!("http://{ip}:2379"),
                "--listen-peer-urls".into(),
                format!("http://{ip}:2380"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{ip}:2380"),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                format!("{tag}-{}", std::process::id()),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
                "--log-level".into(),
                "warn".into(),
                "--logger".into(),
                "zap".into(),
            ];
            let log = dir.join(format!("{name}.log"));
            let mut m = Member { name, client: format!("http://{ip}:2379"), child: None, args, log };
            m.spawn(&bin);
            members.push(m);
        }
        let cluster = EtcdCluster { members, dir };
        cluster.wait_healthy(Duration::from_secs(10));
        cluster
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// The endpoints as a TOML array.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Waits until `etcdctl endpoint health` passes on every running member.
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let running: Vec<&Member> = self.members.iter().filter(|m| m.child.is_some()).collect();
            let ok = running.iter().all(|m| self.ctl(&m.client, &["endpoint", "health"]).is_some());
            if ok {
                return;
            }
            assert!(start.elapsed() < limit, "etcd did not become healthy:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl ARGS` against `endpoint`: its stdout, or `None` if it failed.
    pub fn ctl(&self, endpoint: &str, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--command-timeout=1s", "--dial-timeout=1s"])
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `etcdctl ARGS` against the first running member.
    pub fn ctl_any(&self, args: &[&str]) -> Option<String> {
        let ep = self.members.iter().find(|m| m.child.is_some()).map(|m| m.client.clone())?;
        self.ctl(&ep, args)
    }

    /// Writes every `(key, value)` of `puts` in one `etcdctl txn` against the first member.
    pub fn put_all(&self, puts: &[(String, String)]) {
        use std::io::Write;
        let script: String = puts.iter().map(|(k, v)| format!("put {k} {v}\n")).collect();
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.members[0].client, "txn"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("etcdctl runs");
        child.stdin.take().unwrap().write_all(format!("\n{script}\n\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "etcdctl txn failed");
    }

    /// The index of the current leader (as the first running member reports it).
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            let out = self.ctl(&m.client, &["endpoint", "status", "-w", "json"])?;
            // "leader":N and "member_id":M in the header; the member whose id is the leader's.
            let leader = field(&out, "\"leader\":")?;
            let me = field(&out, "\"member_id\":")?;
            if leader == me {
                return Some(i);
            }
        }
        None
    }

    /// SIGSTOP member `i` (it keeps its sockets, answers nothing).
    pub fn freeze(&self, i: usize) {
        signal(&self.members[i], "-STOP");
    }

    /// SIGCONT member `i`.
    pub fn thaw(&self, i: usize) {
        signal(&self.members[i], "-CONT");
    }

    /// The members' logs (for failure messages).
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {}\n{}", m.name, std::fs::read_to_string(&m.log).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn field(json: &str, name: &str) -> Option<u64> {
    let at = json.find(name)? + name.len();
    json[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

fn signal(m: &Member, sig: &str) {
    if let Some(c) = &m.child {
        let _sent = Command::new("kill").args([sig, &c.id().to_string()]).status();
    }
}

impl Member {
    fn spawn(&mut self, bin: &PathBuf) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(bin).args(&self.args).stdout(Stdio::null()).stderr(log).spawn().expect("etcd starts");
        self.child = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // A frozen member must be thawed to die of SIGTERM; SIGKILL needs neither.
                let _killed = c.kill();
                let _reaped = c.wait();
            }
        }
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether something listens on `addr` (a quick TCP connect).
pub fn listening(addr: &str) -> bool {
    addr.parse().ok().is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
}

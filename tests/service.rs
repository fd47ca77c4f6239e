//! dnlb as a service: the systemd unit, sd_notify, one instance per address, dropping root.
//!
//! Every test but the unit's text check runs the real `dnlb` binary on a loopback port with a
//! temporary config and runtime directory. `systemd-analyze` and root are required under CI and
//! skipped visibly without them elsewhere.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{config_text, free_port, have, query, require, terminate, udp_raw};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

/// The unit file in the source tree.
fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/dnlb.service")
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dnlb-service-{name}-{}", std::process::id()));
    let _stale = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config on `port` with its runtime directory under `dir` and `extra` lines in `[server]`,
/// written to `dir/dnlb.toml`.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let text = config_text(port, 1, "")
        .replace("[server]\n", &format!("[server]\nruntime_dir = \"{}\"\n{extra}", dir.join("run").display()));
    let path = dir.join("dnlb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts dnlb on `config` with `env` set, its stderr in `dir/NAME.log`.
fn spawn(config: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnlb"));
    cmd.args(["--config", config.to_str().unwrap(), "--io", "portable"]);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Whether dnlb on `addr` answers an A query for the test service.
fn answers(addr: SocketAddr) -> bool {
    udp_raw(addr, &query("sip.example.test.", RecordType::A, 7, None), Duration::from_millis(300))
        .and_then(|raw| Message::from_vec(&raw).ok())
        .is_some_and(|m| !m.answers.is_empty())
}

/// Waits up to 10 s (a debug build on a busy machine) for dnlb on `addr` to answer.
fn wait_until_answering(child: &mut Child, addr: SocketAddr, log: &Path) {
    let start = Instant::now();
    while !answers(addr) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dnlb exited with {status}: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(start.elapsed() < Duration::from_secs(10), "dnlb did not answer on {addr} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `limit` for `child` to exit; its exit code, or `None` if it still runs.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn the_unit_has_every_hardening_directive() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for required in [
        "Type=notify",
        "ExecStart=/usr/bin/dnlb --config /etc/dnlb/dnlb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=10s",
        "Restart=on-failure",
        "User=dnlb",
        "Group=dnlb",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_XDP",
        "RuntimeDirectory=dnlb",
        "LimitNOFILE=65536",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register bpf",
        // server.xdp's capabilities, commented out: opt-in, never granted by default.
        "#AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN CAP_BPF CAP_IPC_LOCK",
    ] {
        assert!(lines.contains(&required), "dist/dnlb.service lacks the line `{required}`");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if !require(have("systemd-analyze"), "systemd-analyze (Debian package systemd)") {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = scratch("verify");
    let unit = std::fs::read_to_string(unit_path()).unwrap().replace("/usr/bin/dnlb", env!("CARGO_BIN_EXE_dnlb"));
    let path = dir.join("dnlb.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {stderr}");
    // verify exits 0 on unknown keys and unparsable values; it only says so on stderr.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("dnlb.service")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify complains about the unit: {ours:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ready_then_watchdog_pings_then_stopping_over_notify_socket() {
    let dir = scratch("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = free_port();
    let config = write_config(&dir, port, "");
    // WATCHDOG_USEC 400 ms: a ping every 200 ms, so a few arrive within a second.
    let mut child =
        spawn(&config, &dir, "dnlb", &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")])
            .spawn()
            .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while messages.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "no READY and three WATCHDOG pings in 10 s: {messages:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(messages[0].starts_with("READY=1\n"), "the first message is READY: {messages:?}");
    assert!(messages[0].contains("STATUS=serving 1 service(s) on 127.0.0.1:"), "{messages:?}");
    assert!(answers(SocketAddr::from(([127, 0, 0, 1], port))), "READY was sent before dnlb answers");
    terminate(&mut child);
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_instance_on_the_same_address_exits_and_the_first_keeps_serving() {
    let dir = scratch("second");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_config(&dir, port, "");
    let mut first = spawn(&config, &dir, "first", &[]).spawn().unwrap();
    wait_until_answering(&mut first, addr, &dir.join("first.log"));
    let mut second = spawn(&config, &dir, "second", &[]).spawn().unwrap();
    let code = wait_exit(&mut second, Duration::from_secs(1));
    if code.is_none() {
        terminate(&mut second);
    }
    let mut log = String::new();
    std::fs::File::open(dir.join("second.log")).unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(code, Some(1), "the second dnlb did not exit 1 within a second: {log}");
    let lock = dir.join("run").join(format!("127.0.0.1-{port}.lock"));
    for part in [format!("already serves 127.0.0.1:{port}"), lock.display().to_string(), format!("PID {}", first.id())]
    {
        assert!(log.contains(&part), "the error does not say `{part}`: {log}");
    }
    assert!(answers(addr), "the first dnlb stopped answering");
    assert_eq!(first.try_wait().unwrap(), None, "the first dnlb exited");
    terminate(&mut first);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Uid:` and `Gid:` (real, effective, saved, filesystem) and `Groups:` of one status file.
fn credentials(status: &str) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

#[test]
fn started_as_root_every_thread_becomes_the_user_and_still_answers() {
    let root = nix::unistd::geteuid().is_root();
    if !require(root, "running as root (to test dropping to server.user)") {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody exists");
    let dir = scratch("drop");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_config(&dir, port, "user = \"nobody\"\n");
    let mut child = spawn(&config, &dir, "dnlb", &[]).spawn().unwrap();
    wait_until_answering(&mut child, addr, &dir.join("dnlb.log"));
    // Answers start before the drop (the control socket and the metrics endpoint are bound
    // after the workers, still as root): the ids are read once the drop is logged.
    let log_path = dir.join("dnlb.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    common::wait_until(
        "the drop logged",
        Duration::from_secs(5),
        || read_log().contains("running as user nobody"),
        read_log,
    );
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|e| e.unwrap().path().join("status"))
        .collect();
    assert!(tasks.len() >= 3, "expected the main thread, two workers and the prober: {tasks:?}");
    for status in &tasks {
        let (uid, gid, groups) = credentials(&std::fs::read_to_string(status).unwrap());
        assert_eq!(uid, vec![nobody.uid.as_raw(); 4], "{}: Uid", status.display());
        assert_eq!(gid, vec![nobody.gid.as_raw(); 4], "{}: Gid", status.display());
        assert!(!groups.contains(&0), "{}: still in group root: {groups:?}", status.display());
    }
    assert!(answers(addr), "dnlb stopped answering after dropping root");
    let log = std::fs::read_to_string(dir.join("dnlb.log")).unwrap();
    assert!(log.contains("running as user nobody"), "{log}");

    // The same config started as nobody: the root-made lock file is not writable by nobody, yet
    // the lock still reads as held, with the holder's PID.
    let mut again = spawn(&config, &dir, "again", &[]);
    again.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    let status = again.status().unwrap();
    let log = std::fs::read_to_string(dir.join("again.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("another dnlb (PID {}) already serves {addr}", child.id())), "{log}");
    assert!(answers(addr), "the first dnlb stopped answering");
    terminate(&mut child);

    // Not root and not the user: refused before anything is bound.
    let other = write_config(&dir, free_port(), "user = \"daemon\"\n");
    let mut cmd = spawn(&other, &dir, "not-root", &[]);
    cmd.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    let status = cmd.status().unwrap();
    let log = std::fs::read_to_string(dir.join("not-root.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("server.user = \"daemon\": dnlb runs as uid"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reload whose new prober cannot start (here no thread can be made, as when a unit's
/// TasksMax is reached) must not leave dnlb answering on frozen health with no prober and no
/// word in the log: it says why and stops with an error, so the supervisor restarts it, as it
/// does when the prober stalls.
#[test]
fn a_reload_whose_prober_cannot_start_stops_with_an_error() {
    let root = nix::unistd::geteuid().is_root();
    if !require(root, "running as root (to limit the tasks of server.user)") || !require(have("prlimit"), "prlimit") {
        return;
    }
    let dir = scratch("no-prober");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_config(&dir, port, "user = \"nobody\"\n");
    // Root makes every thread at start (the limit does not bind it); as nobody, allowed one
    // task, dnlb can make no thread at all.
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nproc=1:1", "--", env!("CARGO_BIN_EXE_dnlb"), "--config", config.to_str().unwrap()]);
    cmd.args(["--io", "portable"]).stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(dir.join("dnlb.log")).unwrap());
    cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
    let mut child = cmd.spawn().unwrap();
    wait_until_answering(&mut child, addr, &dir.join("dnlb.log"));
    let hup = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let code = wait_exit(&mut child, Duration::from_secs(5));
    let log = std::fs::read_to_string(dir.join("dnlb.log")).unwrap();
    if code.is_none() {
        terminate(&mut child);
    }
    assert!(code.is_some_and(|c| c != 0), "still serving with no prober (exit {code:?}):\n{log}");
    assert!(log.contains("the prober for the new configuration could not start"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs dnlb on a fresh port until it answers and its log has the first server verdict (the
/// test server 127.0.0.11 has no SIP listener), then stops it; its log.
fn log_of_a_run(name: &str, args: &[&str], journal: bool) -> String {
    let dir = scratch(name);
    let port = free_port();
    let config = write_config(&dir, port, "");
    let log = dir.join(format!("{name}.log"));
    std::fs::write(&log, "").unwrap();
    // systemd names the journal stream by device and inode; `spawn` truncates this same file.
    let meta = std::fs::metadata(&log).unwrap();
    let stream =
        format!("{}:{}", std::os::unix::fs::MetadataExt::dev(&meta), std::os::unix::fs::MetadataExt::ino(&meta));
    let env: &[(&str, &str)] = if journal { &[("JOURNAL_STREAM", &stream)] } else { &[("JOURNAL_STREAM", "0:0")] };
    let mut child = spawn(&config, &dir, name, env).args(args).spawn().unwrap();
    wait_until_answering(&mut child, SocketAddr::from(([127, 0, 0, 1], port)), &log);
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("server out of the answers") {
        assert!(start.elapsed() < Duration::from_secs(10), "no verdict within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&mut child);
    std::fs::read_to_string(&log).unwrap()
}

/// Whether `line` starts with an RFC 3339 UTC timestamp (`2026-11-27T14:19:06.284579Z`).
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && line[..30.min(line.len())].contains('Z')
}

#[test]
fn under_the_journal_every_line_has_a_priority_and_no_timestamp() {
    let log = log_of_a_run("journal", &[], true);
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.iter().any(|l| l.starts_with("<6>serving 1 service(s) on 127.0.0.1:")), "{log}");
    assert!(lines.iter().any(|l| l.starts_with("<6>stopped: queries=")), "{log}");
    for line in &lines {
        let prio = line.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(p, _)| p);
        assert!(matches!(prio, Some("3" | "4" | "6" | "7")), "no syslog priority: {line}\n{log}");
        assert!(
            !line.contains("2026-") && !line.contains(" INFO "),
            "a timestamp or level word under the journal: {line}"
        );
    }
    // A JOURNAL_STREAM that is not this stderr (inherited, then redirected) keeps the timestamps.
    let log = log_of_a_run("not-journal", &[], false);
    assert!(log.lines().filter(|l| !l.is_empty()).all(stamped), "{log}");
    assert!(log.contains(" INFO serving 1 service(s)"), "{log}");
}

#[test]
fn json_logs_are_one_object_per_line_with_level_and_fields() {
    let log = log_of_a_run("json", &["--log-format", "json", "--log-level", "debug"], false);
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.iter().all(|e| e["timestamp"].is_string() && e["level"].is_string()), "{log}");
    let serving = events.iter().find(|e| e["message"].as_str().is_some_and(|m| m.starts_with("serving 1 service(s)")));
    assert_eq!(serving.map(|e| e["level"].clone()), Some(serde_json::json!("INFO")), "{log}");
    // The test server 127.0.0.11 has no SIP listener: its verdict is a warning with fields.
    let down = events.iter().find(|e| e["message"] == "server out of the answers").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["service"], "sip.example.test");
    assert_eq!(down["server"], "127.0.0.11:5060");
}

#[test]
fn log_options_name_their_choices() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_dnlb")).args(args).output().unwrap();
    let out = run(&["--config", "examples/dnlb.toml", "--log-format", "xml"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("text or json"), "{out:?}");
    let out = run(&["--config", "examples/dnlb.toml", "--log-level", "loud"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("error, warn, info or debug"));
    // A start that fails is a log line too: in JSON, an error object naming the file.
    let out = run(&["--config", "/nonexistent/dnlb.toml", "--log-format", "json"]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(out.stderr.trim_ascii()).unwrap();
    assert_eq!(err["level"], "ERROR");
    assert!(err["message"].as_str().unwrap().contains("/nonexistent/dnlb.toml: cannot read"), "{err}");
}

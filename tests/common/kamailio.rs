//! A real kamailio (Debian's package) answering OPTIONS on one loopback address, UDP and TCP
//! port 5060, in a scratch folder of its own, ended by its PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::terminate;

/// One kamailio process, ended by its PID on drop.
pub struct Kamailio {
    child: Child,
    dir: PathBuf,
}

impl Kamailio {
    /// Starts kamailio on `ip`:5060 (UDP and TCP).
    pub fn start(ip: &str) -> Kamailio {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dnlb-kamailio-{}-{ip}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let modules = ["/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules"]
            .into_iter()
            .find(|p| std::path::Path::new(p).join("sl.so").exists())
            .expect("kamailio's sl module");
        let cfg = format!(
            "#!KAMAILIO\ndebug=1\nlog_stderror=yes\nchildren=1\ntcp_children=1\nlisten=udp:{ip}:5060\nlisten=tcp:{ip}:5060\n\
             mpath=\"{modules}/\"\nloadmodule \"sl.so\"\n\
             request_route {{\n  if (method == \"OPTIONS\") {{ sl_send_reply(\"200\", \"OK\"); exit; }}\n  sl_send_reply(\"404\", \"Not Found\");\n}}\n"
        );
        std::fs::write(dir.join("kamailio.cfg"), cfg).unwrap();
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(dir.join("kamailio.cfg"))
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(&dir)
            .arg("-w")
            .arg(&dir)
            .args(["-DD", "-E"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kamailio");
        Kamailio { child, dir }
    }

    /// Ends it (SIGTERM by PID, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        let _cleanup = std::fs::remove_dir_all(&self.dir);
    }
}

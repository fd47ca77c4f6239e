//! A real kamailio (Debian's package) on the sockets a test names, strict about what it accepts:
//! a request must pass kamailio's `sanity` checks (request URI scheme and version, required
//! headers, CSeq, Content-Length, and the request, From and To URIs must parse) and its request
//! URI and From URI must name kamailio itself (`uri==myself`, `from_uri==myself`: host and port
//! of one of its listen sockets). Only then does OPTIONS or REGISTER get 200 OK; a request
//! addressed elsewhere gets 404 or 403, a malformed one kamailio's own 400. So a test that sees
//! `last_code == 200` knows the request line named this server, not just that something answered.
//! Ended by its PID on drop, its folder removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::terminate;

/// Where Debian keeps kamailio's modules (the tls module comes in kamailio-tls-modules).
const MODULE_DIRS: [&str; 2] = ["/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules"];

/// The folder holding kamailio's modules with `module` among them, if installed.
pub fn modules_with(module: &str) -> Option<&'static str> {
    MODULE_DIRS.into_iter().find(|p| Path::new(p).join(module).exists())
}

/// A certificate chain (the server's first) and its key, PEM, for kamailio's tls module.
pub struct TlsFiles {
    pub chain: String,
    pub key: String,
}

/// One strict kamailio process.
pub struct Kamailio {
    child: Child,
    dir: PathBuf,
}

impl Kamailio {
    /// Starts kamailio on `listens` (`udp:[::1]:5060`, `tcp:127.0.1.11:5060`, `tls:[::1]:5061`;
    /// TLS needs `tls`). `name` keeps the scratch folders of parallel tests apart.
    pub fn start(name: &str, listens: &[String], tls: Option<&TlsFiles>) -> Kamailio {
        // A folder per start: a restarted kamailio must not share one with the stopped one, whose
        // drop removes its folder.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dnlb-kamailio-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let module = if tls.is_some() { "tls.so" } else { "sanity.so" };
        let modules = modules_with(module).unwrap_or_else(|| panic!("kamailio's {module}"));
        let mut cfg = format!(
            "#!KAMAILIO\ndebug=1\nlog_stderror=yes\nchildren=1\ntcp_children=1\nauto_aliases=no\nmpath=\"{modules}/\"\n"
        );
        for listen in listens {
            cfg.push_str(&format!("listen={listen}\n"));
        }
        if let Some(files) = tls {
            std::fs::write(dir.join("chain.pem"), &files.chain).unwrap();
            std::fs::write(dir.join("key.pem"), &files.key).unwrap();
            let tls_cfg = format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n\
                 private_key = {}\ncertificate = {}\n",
                dir.join("key.pem").display(),
                dir.join("chain.pem").display()
            );
            std::fs::write(dir.join("tls.cfg"), tls_cfg).unwrap();
            cfg.push_str(&format!(
                "enable_tls=yes\nloadmodule \"tls.so\"\nmodparam(\"tls\", \"config\", \"{}\")\n",
                dir.join("tls.cfg").display()
            ));
        }
        // sanity_check("17895", "7"): R-URI version and scheme, required headers, CSeq method
        // and number, Content-Length, Expires, Proxy-Require, and the R-URI, From and To URIs
        // parse; a failure is answered 400 by the module itself.
        cfg.push_str(
            "loadmodule \"sl.so\"\nloadmodule \"sanity.so\"\n\
             request_route {\n\
               if (!sanity_check(\"17895\", \"7\")) { exit; }\n\
               if (!uri==myself) { sl_send_reply(\"404\", \"Not Addressed Here\"); exit; }\n\
               if (!from_uri==myself) { sl_send_reply(\"403\", \"From Elsewhere\"); exit; }\n\
               if (method == \"OPTIONS\" || method == \"REGISTER\") { sl_send_reply(\"200\", \"OK\"); exit; }\n\
               sl_send_reply(\"405\", \"Method Not Allowed\");\n\
             }\n",
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
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start kamailio");
        Kamailio { child, dir }
    }

    /// What kamailio wrote to stderr so far (for a failed assertion).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Ends it by its PID (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        let _cleanup = std::fs::remove_dir_all(&self.dir);
    }
}

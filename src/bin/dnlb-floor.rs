//! The no-work floor server: receives each datagram on dnlb's own I/O layer, sets QR and sends it
//! straight back. Its CPU per query is the cost of the kernel and the backend alone, the floor
//! that `perf/` compares dnlb against.
//!
//! usage: dnlb-floor ADDR [--io uring|portable] [--workers N]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use dnlb::config::IoMode;
use dnlb::io::{affinity, bind_udp, Backend, DropReason, Handler, Peer, Stop};

struct Echo;

impl Handler for Echo {
    fn begin_batch(&mut self) {}

    fn handle(&mut self, query: &[u8], _peer: Peer<'_>, reply: &mut [u8]) -> usize {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return 0;
        }
        let n = query.len().min(reply.len());
        reply[..n].copy_from_slice(&query[..n]);
        reply[2] |= 0x80;
        n
    }

    fn io_error(&mut self, _error: io::Error) {}

    fn dropped(&mut self, _reason: DropReason, _count: u64) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().ok_or("usage: dnlb-floor ADDR [--io MODE] [--workers N]")?.parse()?;
    let mut mode = IoMode::Auto;
    let mut workers = 1usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--io" => mode = args.next().ok_or("--io needs a value")?.parse()?,
            "--workers" => workers = args.next().ok_or("--workers needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (backend, _) = Backend::choose(mode)?;
    let stop = Arc::new(Stop::new()?);
    let cores = affinity::allowed_cores();
    let mut threads = Vec::new();
    for i in 0..workers {
        let socket = bind_udp(addr)?;
        let stop = stop.clone();
        let core = cores[i % cores.len()];
        threads.push(std::thread::spawn(move || {
            let _unpinned = affinity::pin_current_thread(core);
            backend.serve(&socket, &mut Echo, &stop)
        }));
    }
    eprintln!("dnlb-floor: echoing on {addr}, {workers} worker(s), io={backend}");
    for t in threads {
        t.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

//! A DNS client whose queries leave from a source address the test chooses (a site's client
//! prefix, an IPv6 address added to lo), matching replies to its queries by ID.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use super::{query, recv_retry};

/// A UDP socket bound to one source address, and the ID of its last query.
pub struct Client {
    pub socket: UdpSocket,
    pub id: u16,
}

impl Client {
    /// A client on `source` (any free port).
    pub fn bind(source: &str) -> Client {
        let ip: IpAddr = source.parse().unwrap_or_else(|e| panic!("{source}: {e}"));
        let socket = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {source}: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Client { socket, id: 0 }
    }

    /// Asks `dns` for `name`/`qtype` (with EDNS, 1,232 bytes); the reply to this query, or
    /// `None` after the timeout.
    pub fn ask(&mut self, dns: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
        self.id = self.id.wrapping_add(1);
        self.socket.send_to(&query(name, qtype, self.id, Some(1232)), dns).ok()?;
        let mut buf = [0u8; 4096];
        for _ in 0..4 {
            let (n, _) = recv_retry(&self.socket, &mut buf)?;
            if let Some(m) = Message::from_vec(&buf[..n]).ok().filter(|m| m.metadata.id == self.id) {
                return Some(m);
            }
        }
        None
    }
}

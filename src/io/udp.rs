//! The one UDP socket operation that neither std nor socket2 offers: dissolving a connected
//! socket's association (`connect` with `AF_UNSPEC`, POSIX). On Linux that also releases a port
//! the kernel bound on its own (`__udp_disconnect` unhashes a socket without `SO_BINDPORT` lock),
//! so the next `connect` draws a new random port: the relay reuses a socket, never a port.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Disconnects a UDP socket; an autobound source port is released with it.
pub fn disconnect(socket: BorrowedFd<'_>) -> io::Result<()> {
    let unspecified = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    // SAFETY: `socket` is an open descriptor for the duration of the borrow; `unspecified` is a
    // valid, initialised `sockaddr` on our stack, read by the kernel for the length given and not
    // kept after the call returns.
    let rc = unsafe {
        libc::connect(socket.as_raw_fd(), &unspecified, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn a_reconnected_socket_gets_a_new_random_port() {
        for (any, target) in [("127.0.0.1:0", "127.0.0.1:53"), ("[::1]:0", "[::1]:53")] {
            let Ok(probe) = UdpSocket::bind(any) else { continue }; // no IPv6 here
            drop(probe);
            let s = socket2::Socket::new(
                if target.starts_with('[') { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 },
                socket2::Type::DGRAM,
                None,
            )
            .unwrap();
            let s: UdpSocket = s.into();
            let mut ports = std::collections::HashSet::new();
            for _ in 0..50 {
                s.connect(target).unwrap();
                ports.insert(s.local_addr().unwrap().port());
                disconnect(s.as_fd()).unwrap();
            }
            assert!(ports.len() >= 45, "{target}: {} distinct ports of 50", ports.len());
        }
    }
}

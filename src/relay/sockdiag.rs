//! Who owns a TCP socket on this host, asked of the kernel with one netlink `sock_diag`
//! request for exactly that connection (what `ss` uses). Reading /proc/net/tcp instead costs
//! about a millisecond per message even on an idle host, because the kernel walks its whole
//! connection table to produce the text.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_LEN: usize = 56;
/// Offset of `idiag_uid` in `struct inet_diag_msg` (after family..retrans, id, expires,
/// rqueue, wqueue).
const UID_OFFSET: usize = 4 + 48 + 12;

/// The uid owning the TCP socket whose local end is `local` and remote end is `remote`.
pub fn tcp_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<u32> {
    let request = encode_request(local, remote);
    // SAFETY: socket() has no memory preconditions; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: request is a valid buffer of its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 512];
    // SAFETY: reply is writable for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    decode_reply(&reply[..n as usize])
}

fn encode_request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    m.push(family as u8);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // no extensions
    m.push(0);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&address_words(local.ip()));
    m.extend_from_slice(&address_words(remote.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}

/// An address as the 16 bytes of `__be32 [4]` (IPv4 in the first word).
fn address_words(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

fn decode_reply(reply: &[u8]) -> io::Result<u32> {
    let kind = reply
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))?;
    if kind == NLMSG_ERROR {
        let errno = reply
            .get(NLMSG_HDR..NLMSG_HDR + 4)
            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let at = NLMSG_HDR + UID_OFFSET;
    reply
        .get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_both_ends_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(tcp_owner(remote, local).unwrap(), me, "the accepted end");
        assert_eq!(tcp_owner(local, remote).unwrap(), me, "our end");
        // No such connection: an error, never a guess.
        let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp_owner(nowhere, local).is_err());
    }

    #[test]
    fn request_layout() {
        let r = encode_request(
            "127.0.0.1:825".parse().unwrap(),
            "127.0.0.1:45678".parse().unwrap(),
        );
        assert_eq!(r.len(), 72);
        assert_eq!(&r[24..26], &825u16.to_be_bytes());
        assert_eq!(&r[26..28], &45678u16.to_be_bytes());
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
    }
}

//! Makes sure nothing else listens on the broker's ports before the shards bind them.
//!
//! glommio binds with SO_REUSEPORT, so a second broker (same user) on a port already in use
//! would start without error and silently take a share of the first one's connections. A plain
//! bind cannot tell: it also fails on the connections a broker killed moments ago left closing
//! (FIN_WAIT, TIME_WAIT), which must not hold up a restart. So the kernel's socket table is read
//! instead: `/proc/net/tcp` and `/proc/net/tcp6`, listening sockets only.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// Waits until no socket listens where `addr` would, at most `wait`; fails naming the address
/// after that. A broker killed moments ago can still listen for a while: the kernel releases
/// its listeners when it tears down the dead process's io_uring, after the process is gone.
pub fn wait_until_free(addr: SocketAddr, what: &str, wait: Duration) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        let holder = match listeners_on(addr.port()) {
            Ok(found) => found.into_iter().find(|ip| overlaps(*ip, addr.ip())),
            Err(e) => {
                tracing::warn!("reading /proc/net/tcp to check the {what} port: {e}");
                return Ok(());
            }
        };
        let Some(holder) = holder else { return Ok(()) };
        let holder = SocketAddr::new(holder, addr.port());
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} listener on {addr}: {holder} is already listening (another broker?)"
            ));
        }
        if !logged {
            tracing::warn!(%addr, %holder, "another socket listens on the {what} port; waiting");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The local addresses of the sockets listening on `port`.
fn listeners_on(port: u16) -> io::Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{table}: {e}"))),
        };
        found.extend(text.lines().skip(1).filter_map(|line| listening_on(line, port)));
    }
    Ok(found)
}

/// The local address of a `/proc/net/tcp{,6}` row when it is a socket listening on `port`.
fn listening_on(row: &str, port: u16) -> Option<IpAddr> {
    let mut fields = row.split_whitespace().skip(1);
    let local = fields.next()?;
    let state = fields.nth(1)?;
    let (ip, row_port) = local.split_once(':')?;
    if state != TCP_LISTEN || u16::from_str_radix(row_port, 16).ok()? != port {
        return None;
    }
    parse_ip(ip)
}

/// The kernel prints an address as 32-bit words in host byte order, each holding four bytes of
/// the address in network order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for word in hex.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// Whether sockets bound to `a` and `b` on one port take the same connections: the same
/// address, or either a wildcard (which, for IPv6, takes IPv4 connections too).
fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.is_unspecified() || b.is_unspecified() || canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rows as this machine's kernel prints them (x86-64, little-endian).
    const V4_LISTEN: &str = "   3: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 \
                             00000000     0        0 20571 1 0000000000000000 100 0 0 10 0";
    const V4_TIME_WAIT: &str = "   7: 0100007F:2384 0100007F:D2F0 06 00000000:00000000 \
                                03:0000170B 00000000     0        0 0 3 0000000000000000";
    const V6_LISTEN: &str = "   0: 00000000000000000000000001000000:2384 \
                             00000000000000000000000000000000:0000 0A 00000000:00000000 \
                             00:00000000 00000000     0        0 21304 1 0000000000000000 100 0 0 10 0";

    #[cfg(target_endian = "little")]
    #[test]
    fn listening_rows_are_read_and_others_skipped() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(listening_on(V4_LISTEN, 9092), Some(localhost));
        assert_eq!(listening_on(V4_LISTEN, 9093), None, "another port");
        assert_eq!(listening_on(V4_TIME_WAIT, 9092), None, "a closing connection");
        assert_eq!(listening_on(V6_LISTEN, 9092), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(listening_on("garbage", 9092), None);
        assert_eq!(listening_on("  1: 0100007F:zz 0:0 0A", 9092), None);
    }

    #[test]
    fn wildcards_overlap_everything_and_addresses_only_themselves() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlaps(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(overlaps(ip("127.0.0.1"), ip("::")));
        assert!(overlaps(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(overlaps(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!overlaps(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!overlaps(ip("::1"), ip("127.0.0.1")));
    }
}

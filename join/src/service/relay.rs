//! A member's side of joins: relaying a joiner's connection to a master, bytes only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{APPROVAL_WAIT, CONNECT_TIMEOUT};
use crate::wire::{self, Hello, WireError};

/// Relays a join from `client` to a master, bytes only, until either side ends or is silent
/// for `idle`: a join with a token to the master that says the token is its own (each is
/// asked in turn), one without to the first master reachable. Only joins (with a token, or waiting for approval) are
/// relayed: a leave, which a master believes only from a member's own tunnel address, is
/// refused here.
pub fn relay(
    mut client: TcpStream,
    masters: &[SocketAddr],
    idle: Duration,
) -> Result<SocketAddr, RelayError> {
    let hello = wire::read_hello(&mut client).map_err(RelayError::Hello)?;
    if hello == Hello::Leave {
        return Err(RelayError::Hello(WireError::NotJoin));
    }
    // A join waiting for the operator is silent until the decision: the relay waits as long
    // as the master does (it dropped the connection after 5 s, and the joiner never got its
    // answer although it was admitted).
    let idle = if hello == Hello::Approval {
        APPROVAL_WAIT + Duration::from_secs(30)
    } else {
        idle
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no master in the policy");
    // Where the joiner came from first: the master checks its claimed endpoint.
    let mut first = client
        .peer_addr()
        .map(|a| wire::seen_record(a.ip()).to_vec())
        .map_err(RelayError::Master)?;
    first.extend_from_slice(&hello.to_bytes());
    for &m in masters {
        let master = TcpStream::connect_timeout(&m, CONNECT_TIMEOUT).and_then(|mut master| {
            master.write_all(&first)?;
            if matches!(hello, Hello::Join(_)) {
                // The master that made the token says so; any other ends the connection.
                master.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                let mut byte = [0u8; 1];
                master.read_exact(&mut byte)?;
                if byte[0] != wire::RELAY_MINE {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no master holds this token",
                    ));
                }
            }
            Ok(master)
        });
        match master {
            Ok(master) => {
                pipe(client, master, idle).map_err(RelayError::Master)?;
                return Ok(m);
            }
            Err(e) => last = e,
        }
    }
    Err(RelayError::Master(last))
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Not a join (counts against the source).
    #[error("{0}")]
    Hello(WireError),
    #[error("no master reachable: {0}")]
    Master(std::io::Error),
}

fn pipe(a: TcpStream, b: TcpStream, idle: Duration) -> std::io::Result<()> {
    for s in [&a, &b] {
        s.set_read_timeout(Some(idle))?;
        s.set_write_timeout(Some(idle))?;
    }
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut from = &a;
            let _ = std::io::copy(&mut from, &mut b2);
            let _ = b2.shutdown(std::net::Shutdown::Write);
        });
        let mut from = &b;
        let _ = std::io::copy(&mut from, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
    Ok(())
}

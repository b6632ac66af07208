//! A join connection whose reads must all be done by one instant. A timeout per read lets a
//! peer that sends one byte every few seconds (or an empty Noise message now and then) hold
//! a slot for as long as it likes; a deadline for all of them does not. Writes keep a timeout
//! per write only: the answer to a join waiting for the operator goes out minutes later.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `stream`, its reads bounded by `until` (and each by `per_read`).
#[derive(Debug)]
pub struct Deadline {
    stream: TcpStream,
    until: Instant,
    per_read: Duration,
}

impl Deadline {
    pub fn new(stream: TcpStream, within: Duration, per_read: Duration) -> Self {
        Self {
            stream,
            until: Instant::now() + within,
            per_read,
        }
    }
}

/// How long the next read may wait: what is left of the deadline, at most `per_read`;
/// `None` once it has passed.
pub fn next_wait(until: Instant, per_read: Duration, now: Instant) -> Option<Duration> {
    let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
    Some(left.min(per_read))
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = next_wait(self.until, self.per_read, Instant::now()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the exchange did not arrive in time",
            )
        })?;
        self.stream.set_read_timeout(Some(wait))?;
        self.stream.read(buf)
    }
}

impl std::os::fd::AsFd for Deadline {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (a slow peer, issue 26 #1): the 5 s timeout was per read, so a byte every 4 s
    /// kept a connection for ever. Steps: with 10 s in all and 5 s per read, the waits
    /// granted shrink with what is left, and none is granted at or past the deadline,
    /// however often the peer sends.
    #[test]
    fn a_byte_every_few_seconds_gets_no_more_time_than_the_deadline() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(10);
        let per = Duration::from_secs(5);
        assert_eq!(next_wait(until, per, t0), Some(per));
        assert_eq!(
            next_wait(until, per, t0 + Duration::from_secs(8)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(next_wait(until, per, until), None);
        assert_eq!(next_wait(until, per, t0 + Duration::from_secs(60)), None);
    }

    /// The same over a real socket: a peer that sends a byte every 300 ms is cut off at the
    /// deadline (1 s), not served for ever.
    #[test]
    fn a_dripping_peer_is_cut_off_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dripper = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            for _ in 0..20 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        let mut d = Deadline::new(stream, Duration::from_secs(1), Duration::from_secs(5));
        let mut buf = [0u8; 1];
        let err = loop {
            match d.read(&mut buf) {
                Ok(0) => panic!("the peer closed first"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let took = started.elapsed();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        drop(d);
        let _ = dripper.join();
    }
}

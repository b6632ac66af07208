//! The signed policy between members over TCP, inside the tunnels: a member connects, the
//! other sends its policy and signature, framed (`TYD1`, then each as a 4-byte big-endian
//! length and the bytes), then, if it has any, the masters' memberships in force (a 4-byte
//! count, then for each the master's node id in 2 bytes, the membership and its signature
//! framed alike), and closes. A sender with no memberships sends what older versions read,
//! and a receiver takes a close after the signature as none. Bounded in size and time both
//! ways; what arrives is verified by the receiver before anything is written.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Memberships in one transfer at most (one per master).
pub const MAX_MEMBERSHIPS: u32 = 64;
/// All the memberships of one transfer together weigh at most this.
pub const MAX_MEMBERSHIP_TOTAL: u64 = policy::load::MAX_POLICY_BYTES;

/// One master's signed membership, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipPart {
    pub master: u16,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What a transfer brings (unverified: the caller verifies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub policy: Vec<u8>,
    pub signature: Vec<u8>,
    pub memberships: Vec<MembershipPart>,
}

/// A whole exchange must finish in this time.
pub const TIMEOUT: Duration = Duration::from_secs(5);
const MAGIC: &[u8; 4] = b"TYD1";
const MAX_SIGNATURE: u32 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("not a policy transfer (bad magic)")]
    Magic,
    #[error("{0} memberships is more than the {MAX_MEMBERSHIPS} a transfer may carry")]
    TooManyMemberships(u32),
    #[error("{what} of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: u32,
        max: u32,
    },
}

/// Sends `policy` and `signature`, then `memberships` if there are any.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    policy: &[u8],
    signature: &[u8],
    memberships: &[MembershipPart],
) -> Result<(), TransferError> {
    let run = async {
        w.write_all(MAGIC).await?;
        write_part(w, policy).await?;
        write_part(w, signature).await?;
        if !memberships.is_empty() {
            let count = u32::try_from(memberships.len()).unwrap_or(u32::MAX);
            w.write_all(&count.to_be_bytes()).await?;
            for m in memberships {
                w.write_all(&m.master.to_be_bytes()).await?;
                write_part(w, &m.bytes).await?;
                write_part(w, &m.signature).await?;
            }
        }
        w.flush().await?;
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| TransferError::Timeout)?
}

async fn write_part<W: AsyncWrite + Unpin>(w: &mut W, part: &[u8]) -> Result<(), TransferError> {
    let len = u32::try_from(part.len()).map_err(|_| TransferError::TooLarge {
        what: "part",
        len: u32::MAX,
        max: u32::MAX,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(part).await?;
    Ok(())
}

async fn part<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: u32,
) -> Result<Vec<u8>, TransferError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(TransferError::TooLarge { what, len, max });
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Receives a policy, its signature and the memberships that follow, if any (unverified:
/// the caller verifies).
pub async fn receive<R: AsyncRead + Unpin>(r: &mut R) -> Result<Transfer, TransferError> {
    let max_policy = u32::try_from(policy::load::MAX_POLICY_BYTES).unwrap_or(u32::MAX);
    let run = async {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(TransferError::Magic);
        }
        let policy = part(r, "policy", max_policy).await?;
        let signature = part(r, "signature", MAX_SIGNATURE).await?;
        let memberships = memberships(r).await?;
        Ok(Transfer {
            policy,
            signature,
            memberships,
        })
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| TransferError::Timeout)?
}

/// The memberships after the signature: none if the sender closed there.
async fn memberships<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Vec<MembershipPart>, TransferError> {
    let mut count = [0u8; 4];
    match r.read_exact(&mut count).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    }
    let count = u32::from_be_bytes(count);
    if count > MAX_MEMBERSHIPS {
        return Err(TransferError::TooManyMemberships(count));
    }
    let mut left = MAX_MEMBERSHIP_TOTAL;
    let mut out = Vec::new();
    for _ in 0..count {
        let mut master = [0u8; 2];
        r.read_exact(&mut master).await?;
        // Each part within what is left of the total, so a sender cannot make this side hold
        // more than the total however it splits it.
        let max = u32::try_from(left).unwrap_or(u32::MAX);
        let bytes = part(r, "membership", max).await?;
        left -= bytes.len() as u64;
        let signature = part(r, "membership signature", MAX_SIGNATURE).await?;
        out.push(MembershipPart {
            master: u16::from_be_bytes(master),
            bytes,
            signature,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_policy_round_trips_and_oversized_or_foreign_input_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        send(&mut a, b"policy bytes", b"sig", &[]).await.unwrap();
        drop(a);
        let t = receive(&mut b).await.unwrap();
        assert_eq!(
            (t.policy.as_slice(), t.signature.as_slice()),
            (&b"policy bytes"[..], &b"sig"[..])
        );
        assert!(t.memberships.is_empty());
        let m = MembershipPart {
            master: 3,
            bytes: b"membership".to_vec(),
            signature: b"msig".to_vec(),
        };
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        send(&mut a, b"p", b"s", std::slice::from_ref(&m))
            .await
            .unwrap();
        assert_eq!(receive(&mut b).await.unwrap().memberships, [m]);
        // A count past the limit, and parts past the total, are refused before any is held.
        let (mut a, mut b) = tokio::io::duplex(1024);
        send(&mut a, b"p", b"s", &[]).await.unwrap();
        a.write_all(&(MAX_MEMBERSHIPS + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            receive(&mut b).await,
            Err(TransferError::TooManyMemberships(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        send(&mut a, b"p", b"s", &[]).await.unwrap();
        a.write_all(&1u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0, 1]).await.unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            receive(&mut b).await,
            Err(TransferError::TooLarge {
                what: "membership",
                ..
            })
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"TYD1").await.unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = receive(&mut b).await.unwrap_err();
        assert!(
            matches!(e, TransferError::TooLarge { what: "policy", .. }),
            "{e}"
        );

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        assert!(matches!(receive(&mut b).await, Err(TransferError::Magic)));
    }
}

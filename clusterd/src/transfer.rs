//! The signed policy between members over TCP, inside the tunnels: a member connects, the
//! other sends its policy and signature, framed (`TYD1`, then each as a 4-byte big-endian
//! length and the bytes), and closes. Bounded in size and time both ways; what arrives is
//! verified by the receiver before anything is written.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    #[error("{what} of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: u32,
        max: u32,
    },
}

/// Sends `policy` and `signature`.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    policy: &[u8],
    signature: &[u8],
) -> Result<(), TransferError> {
    let run = async {
        w.write_all(MAGIC).await?;
        for part in [policy, signature] {
            let len = u32::try_from(part.len()).map_err(|_| TransferError::TooLarge {
                what: "policy",
                len: u32::MAX,
                max: u32::MAX,
            })?;
            w.write_all(&len.to_be_bytes()).await?;
            w.write_all(part).await?;
        }
        w.flush().await?;
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| TransferError::Timeout)?
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

/// Receives a policy and its signature (unverified: the caller verifies).
pub async fn receive<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Vec<u8>, Vec<u8>), TransferError> {
    let max_policy = u32::try_from(policy::load::MAX_POLICY_BYTES).unwrap_or(u32::MAX);
    let run = async {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(TransferError::Magic);
        }
        let policy = part(r, "policy", max_policy).await?;
        let signature = part(r, "signature", MAX_SIGNATURE).await?;
        Ok((policy, signature))
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| TransferError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_policy_round_trips_and_oversized_or_foreign_input_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        send(&mut a, b"policy bytes", b"sig").await.unwrap();
        let (p, s) = receive(&mut b).await.unwrap();
        assert_eq!(
            (p.as_slice(), s.as_slice()),
            (&b"policy bytes"[..], &b"sig"[..])
        );

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

//! What a quote is made over. Every heartbeat carries a fresh random challenge; a node quotes
//! over the challenges of a few peers at once (rotating, so every peer's own challenge is
//! covered within a few intervals), and the heartbeat names which (peer, heartbeat seq) it
//! used. A peer recomputes the qualifying data from the challenges it saw, so a quote made
//! before a challenge existed cannot match it.

use blake3::Hasher;

pub const CHALLENGE_LEN: usize = 16;
pub type Challenge = [u8; CHALLENGE_LEN];

/// One challenge a quote covers: the peer's node id and the seq of the heartbeat that
/// carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Covered {
    pub peer: u16,
    pub seq: u64,
}

/// The 32 bytes given to TPM2_Quote as qualifying data (it comes back as `extraData`).
/// Bound to the cluster, the quoting node and its boot, and the challenges in the order the
/// heartbeat lists them.
pub fn qualifying_data(
    cluster: &str,
    node: u16,
    boot_id: &str,
    covered: &[(Covered, Challenge)],
) -> [u8; 32] {
    let mut h = Hasher::new_derive_key("tyd 2026 attestation quote v1");
    let field = |h: &mut Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, cluster.as_bytes());
    h.update(&node.to_le_bytes());
    field(&mut h, boot_id.as_bytes());
    h.update(&(covered.len() as u64).to_le_bytes());
    for (c, challenge) in covered {
        h.update(&c.peer.to_le_bytes());
        h.update(&c.seq.to_le_bytes());
        h.update(challenge);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_qualifying_data() {
        let c = |peer, seq, b| (Covered { peer, seq }, [b; CHALLENGE_LEN]);
        let base = qualifying_data("lab", 2, "boot", &[c(1, 5, 1), c(3, 9, 2)]);
        for other in [
            qualifying_data("lab2", 2, "boot", &[c(1, 5, 1), c(3, 9, 2)]),
            qualifying_data("lab", 3, "boot", &[c(1, 5, 1), c(3, 9, 2)]),
            qualifying_data("lab", 2, "boot2", &[c(1, 5, 1), c(3, 9, 2)]),
            qualifying_data("lab", 2, "boot", &[c(1, 6, 1), c(3, 9, 2)]),
            qualifying_data("lab", 2, "boot", &[c(1, 5, 9), c(3, 9, 2)]),
            qualifying_data("lab", 2, "boot", &[c(3, 9, 2), c(1, 5, 1)]),
            qualifying_data("lab", 2, "boot", &[c(1, 5, 1)]),
        ] {
            assert_ne!(base, other);
        }
    }
}

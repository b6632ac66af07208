//! What a quote is made over. Every heartbeat carries a fresh random challenge. A node puts
//! the latest challenge of each peer in a Merkle tree (`rs_merkle`, BLAKE3) and quotes once
//! over its root, so one quote answers every peer at once; the quote message to each peer
//! carries that peer's inclusion proof (the peer makes the root from it and its own
//! challenge). A peer checks only its own challenge: what a
//! hostile member says to others cannot make this node's quote fail here.

use rs_merkle::{Hasher, MerkleProof, MerkleTree};

pub const CHALLENGE_LEN: usize = 16;
pub type Challenge = [u8; CHALLENGE_LEN];

/// The most leaves (peers) a tree may have, and so the longest proof accepted.
pub const MAX_LEAVES: usize = 4096;
pub const MAX_PROOF: usize = 12;

/// One challenge a quote covers: the peer's node id and the seq of the heartbeat that
/// carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Covered {
    pub peer: u16,
    pub seq: u64,
}

#[derive(Clone, Debug)]
struct Blake3;

impl Hasher for Blake3 {
    type Hash = [u8; 32];

    fn hash(data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&NODE_KEY, data).as_bytes()
    }
}

/// Domain separation of inner nodes from leaves: each is a keyed hash with its own key.
const NODE_KEY: [u8; 32] = *b"tyd 2026 attest merkle node key!";

/// A leaf: one peer's challenge at one seq.
pub fn leaf(c: Covered, challenge: &Challenge) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tyd 2026 attestation leaf v1");
    h.update(&c.peer.to_le_bytes());
    h.update(&c.seq.to_le_bytes());
    h.update(challenge);
    *h.finalize().as_bytes()
}

/// The peers' challenges one quote covers.
pub struct Challenges {
    covered: Vec<Covered>,
    tree: MerkleTree<Blake3>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("covered", &self.covered)
            .finish_non_exhaustive()
    }
}

/// A peer's proof that its challenge is in a quote's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    /// The seq of the peer's heartbeat whose challenge is covered.
    pub seq: u64,
    pub index: usize,
    pub leaves: usize,
    pub proof: Vec<[u8; 32]>,
}

impl Challenges {
    /// The tree of these challenges (at most [`MAX_LEAVES`]; more are left out).
    pub fn new(mut leaves: Vec<(Covered, Challenge)>) -> Self {
        leaves.sort_by_key(|(c, _)| c.peer);
        leaves.dedup_by_key(|(c, _)| c.peer);
        leaves.truncate(MAX_LEAVES);
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|(c, ch)| leaf(*c, ch)).collect();
        Self {
            covered: leaves.into_iter().map(|(c, _)| c).collect(),
            tree: MerkleTree::<Blake3>::from_leaves(&hashes),
        }
    }

    /// The challenges in the tree, by peer.
    pub fn covered(&self) -> &[Covered] {
        &self.covered
    }

    /// The root the quote is made over (all zeros with no peer).
    pub fn root(&self) -> [u8; 32] {
        self.tree.root().unwrap_or([0; 32])
    }

    /// `peer`'s proof, if its challenge is in the tree.
    pub fn inclusion(&self, peer: u16) -> Option<Inclusion> {
        let index = self.covered.iter().position(|c| c.peer == peer)?;
        Some(Inclusion {
            seq: self.covered[index].seq,
            index,
            leaves: self.covered.len(),
            proof: self.tree.proof(&[index]).proof_hashes().to_vec(),
        })
    }
}

/// The root `inc` leads to from `challenge`, which `peer` sent at `inc.seq`; None for a
/// proof out of range. A quote over the qualifying data of that root covers the challenge:
/// so the root need not travel, and a forged proof makes a root the quote is not over.
pub fn root_of(inc: &Inclusion, peer: u16, challenge: &Challenge) -> Option<[u8; 32]> {
    if inc.leaves == 0
        || inc.leaves > MAX_LEAVES
        || inc.index >= inc.leaves
        || inc.proof.len() > MAX_PROOF
    {
        return None;
    }
    let l = leaf(Covered { peer, seq: inc.seq }, challenge);
    MerkleProof::<Blake3>::new(inc.proof.clone())
        .root(&[inc.index], &[l], inc.leaves)
        .ok()
}

/// Whether `inc` proves that `root` covers `challenge`, which `peer` sent at `inc.seq`.
pub fn included(root: &[u8; 32], inc: &Inclusion, peer: u16, challenge: &Challenge) -> bool {
    root_of(inc, peer, challenge) == Some(*root)
}

/// The qualifying data of the quote a joiner sends with its join request: bound to the
/// WireGuard key it joins with and to this one exchange, by `exchange`, the Noise handshake
/// hash that only the joiner and the master hold (a relaying member forwards ciphertext, and
/// each side's ephemeral key makes it new at every exchange). So the quote proves that this
/// TPM's holder asks, now and over this channel, to join with that key: a proof recorded
/// from an earlier join (the TPM clean then) is refused in any other exchange, even by the
/// holder of the WireGuard key, and one made for a party in the middle is over that party's
/// exchange, not the master's.
pub fn join_qualifying_data(wireguard_key: &[u8; 32], exchange: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tyd 2026 join attestation v2");
    h.update(wireguard_key);
    h.update(exchange);
    *h.finalize().as_bytes()
}

/// The 32 bytes given to TPM2_Quote as qualifying data (it comes back as `extraData`):
/// the cluster, the quoting node and its boot, and the root of the challenges it covers.
pub fn qualifying_data(cluster: &str, node: u16, boot_id: &str, root: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("tyd 2026 attestation quote v1");
    h.update(&(cluster.len() as u64).to_le_bytes());
    h.update(cluster.as_bytes());
    h.update(&node.to_le_bytes());
    h.update(&(boot_id.len() as u64).to_le_bytes());
    h.update(boot_id.as_bytes());
    h.update(root);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(peer: u16, seq: u64, b: u8) -> (Covered, Challenge) {
        (Covered { peer, seq }, [b; CHALLENGE_LEN])
    }

    #[test]
    fn every_field_changes_the_qualifying_data() {
        let base = qualifying_data("lab", 2, "boot", &[1; 32]);
        for other in [
            qualifying_data("lab2", 2, "boot", &[1; 32]),
            qualifying_data("lab", 3, "boot", &[1; 32]),
            qualifying_data("lab", 2, "boot2", &[1; 32]),
            qualifying_data("lab", 2, "boot", &[2; 32]),
        ] {
            assert_ne!(base, other);
        }
    }

    /// Steps: a tree of 1, 2, 7 and 50 peers: each peer's proof holds for its own challenge
    /// and seq, and not for another challenge, another seq, another peer's place, or
    /// another root; a proof with a count or index out of range is refused, not a panic.
    #[test]
    fn each_peer_can_check_its_own_challenge_and_nothing_else() {
        for n in [1u16, 2, 7, 50] {
            let t = Challenges::new((1..=n).map(|p| c(p, u64::from(p) * 10, p as u8)).collect());
            let root = t.root();
            for p in 1..=n {
                let inc = t.inclusion(p).unwrap();
                assert_eq!(inc.seq, u64::from(p) * 10);
                assert!(inc.proof.len() <= 6, "{n}: {}", inc.proof.len());
                assert!(included(&root, &inc, p, &[p as u8; CHALLENGE_LEN]));
                assert!(!included(&root, &inc, p, &[0xee; CHALLENGE_LEN]));
                let mut stale = inc.clone();
                stale.seq -= 1;
                assert!(!included(&root, &stale, p, &[p as u8; CHALLENGE_LEN]));
                assert!(!included(&[9; 32], &inc, p, &[p as u8; CHALLENGE_LEN]));
                if n > 1 {
                    let q = if p == 1 { 2 } else { 1 };
                    assert!(!included(&root, &inc, q, &[q as u8; CHALLENGE_LEN]));
                }
                for bad in [
                    Inclusion {
                        leaves: 0,
                        ..inc.clone()
                    },
                    Inclusion {
                        index: inc.leaves,
                        ..inc.clone()
                    },
                    Inclusion {
                        leaves: MAX_LEAVES + 1,
                        ..inc.clone()
                    },
                    Inclusion {
                        proof: vec![[0; 32]; MAX_PROOF + 1],
                        ..inc.clone()
                    },
                ] {
                    assert!(!included(&root, &bad, p, &[p as u8; CHALLENGE_LEN]));
                }
            }
            assert!(t.inclusion(n + 1).is_none());
        }
    }
}

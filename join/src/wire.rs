//! The join exchange on the wire, over any byte stream (TCP in practice), with `snow`:
//!
//! 1. joiner → member, in clear: `TYDJ`, version 1, the token's public id (6 bytes);
//! 2. a Noise `NNpsk0` handshake whose pre-shared key is derived from the whole token, with
//!    the id in the prologue: only someone holding the token completes it, on either side, and
//!    the secret never crosses the wire;
//! 3. in transport mode: the joiner's request, then the master's answer.
//!
//! The request travels only after the handshake, under keys from both sides' fresh ephemeral
//! keys: a recorded first message replayed gets a new answer that only the real joiner could
//! read, and no request can follow it. Every Noise message is framed by a 2-byte length; an
//! application message is a 4-byte length then its bytes, cut into as many Noise messages as it
//! needs, and bounded.

use std::io::{Read, Write};

use crate::token::{Psk, TokenId};

const MAGIC: &[u8; 4] = b"TYDJ";
const VERSION: u8 = 1;
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Noise's own limit on one message.
const NOISE_MAX: usize = 65535;
const TAG: usize = 16;
/// The largest request or answer (an answer carries the signed policy: 16 MiB at most).
pub const MAX_MESSAGE: usize = 17 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a tyd join request")]
    NotJoin,
    #[error("join protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u8),
    #[error("{0}")]
    BadTokenId(String),
    /// The handshake failed: a wrong or unknown token on one side, or tampering.
    #[error("handshake failed: the token does not match (wrong, unknown, or not for this cluster)")]
    Handshake,
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("the peer closed the connection")]
    Closed,
    /// The master's nonce is not the one it committed to (someone in the middle).
    #[error(
        "the other side's code nonce does not match its commitment: someone may be in the middle"
    )]
    Commitment,
}

fn noise_err(_: snow::Error) -> WireError {
    WireError::Handshake
}

fn prologue(id: &TokenId) -> Vec<u8> {
    let mut p = b"tyd join v1 ".to_vec();
    p.extend_from_slice(id.as_str().as_bytes());
    p
}

/// A handshake state for `psk` and `prologue` (snow copies both in).
fn handshake(
    psk: &Psk,
    prologue: &[u8],
    initiator: bool,
) -> Result<snow::HandshakeState, WireError> {
    let params = PATTERN.parse().map_err(noise_err)?;
    let b = snow::Builder::new(params)
        .psk(0, psk.as_bytes())
        .map_err(noise_err)?
        .prologue(prologue)
        .map_err(noise_err)?;
    if initiator {
        b.build_initiator().map_err(noise_err)
    } else {
        b.build_responder().map_err(noise_err)
    }
}

fn write_frame(w: &mut impl Write, bytes: &[u8]) -> Result<(), WireError> {
    let len = u16::try_from(bytes.len()).map_err(|_| WireError::TooLarge(bytes.len()))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)?;
    Ok(())
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), WireError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })
}

fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read_exact(r, &mut buf)?;
    Ok(buf)
}

/// Both ends after the handshake: sends and receives whole application messages.
pub struct Channel<S> {
    stream: S,
    noise: snow::TransportState,
    /// The Noise handshake hash: the same at both ends, new at every exchange, and known to
    /// nobody else (a party in the middle holds two handshakes, with two hashes).
    hash: [u8; 32],
}

impl<S> std::fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

impl<S> Channel<S> {
    /// The channel a finished handshake over `stream` gives.
    fn from_handshake(stream: S, hs: snow::HandshakeState) -> Result<Self, WireError> {
        // BLAKE2s: 32 bytes.
        let hash =
            <[u8; 32]>::try_from(hs.get_handshake_hash()).map_err(|_| WireError::Handshake)?;
        let noise = hs.into_transport_mode().map_err(noise_err)?;
        Ok(Self {
            stream,
            noise,
            hash,
        })
    }

    /// What binds something to this one exchange (a joiner's TPM quote, issue 29): the
    /// handshake hash.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

impl<S: Read + Write> Channel<S> {
    pub fn send(&mut self, message: &[u8]) -> Result<(), WireError> {
        if message.len() > MAX_MESSAGE {
            return Err(WireError::TooLarge(message.len()));
        }
        let mut plain = (message.len() as u32).to_be_bytes().to_vec();
        plain.extend_from_slice(message);
        let mut out = vec![0u8; NOISE_MAX];
        for chunk in plain.chunks(NOISE_MAX - TAG) {
            let n = self
                .noise
                .write_message(chunk, &mut out)
                .map_err(noise_err)?;
            write_frame(&mut self.stream, &out[..n])?;
        }
        self.stream.flush()?;
        Ok(())
    }

    pub fn receive(&mut self) -> Result<Vec<u8>, WireError> {
        self.receive_limited(MAX_MESSAGE)
    }

    /// Receives one message of at most `max` bytes.
    pub fn receive_limited(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let mut plain = Vec::new();
        let mut buf = vec![0u8; NOISE_MAX];
        let mut want = None;
        loop {
            let frame = read_frame(&mut self.stream)?;
            let n = self
                .noise
                .read_message(&frame, &mut buf)
                .map_err(noise_err)?;
            plain.extend_from_slice(&buf[..n]);
            if want.is_none() && plain.len() >= 4 {
                let len = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
                if len > max.min(MAX_MESSAGE) {
                    return Err(WireError::TooLarge(len));
                }
                want = Some(len + 4);
            }
            if let Some(w) = want
                && plain.len() >= w
            {
                plain.truncate(w);
                return Ok(plain.split_off(4));
            }
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: std::os::fd::AsFd> Channel<S> {
    /// Whether the other end hung up (or sent something when it should be waiting): a joiner
    /// waiting for the operator sends nothing until the answer, so either ends the wait.
    pub fn peer_hung_up(&self) -> bool {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd;
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        !matches!(
            recv(self.stream.as_fd().as_raw_fd(), &mut byte, flags),
            Err(nix::errno::Errno::EAGAIN)
        )
    }
}

/// The joiner's side: hello, handshake; returns the channel to send the request on.
pub fn connect<S: Read + Write>(
    mut stream: S,
    id: &TokenId,
    psk: &Psk,
) -> Result<Channel<S>, WireError> {
    stream.write_all(&Hello::Join(id.clone()).to_bytes())?;
    let hs = handshake(psk, &prologue(id), true)?;
    let (stream, hs) = initiate(stream, hs)?;
    Channel::from_handshake(stream, hs)
}

/// The initiator's two handshake messages (`-> e`, `<- e, ee`), empty payloads.
fn initiate<S: Read + Write>(
    mut stream: S,
    mut hs: snow::HandshakeState,
) -> Result<(S, snow::HandshakeState), WireError> {
    let mut buf = vec![0u8; NOISE_MAX];
    let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
    write_frame(&mut stream, &buf[..n])?;
    stream.flush()?;
    let frame = read_frame(&mut stream)?;
    hs.read_message(&frame, &mut buf).map_err(noise_err)?;
    Ok((stream, hs))
}

/// The responder's side of the same two messages.
fn respond<S: Read + Write>(
    mut stream: S,
    mut hs: snow::HandshakeState,
) -> Result<(S, snow::HandshakeState), WireError> {
    let mut buf = vec![0u8; NOISE_MAX];
    let frame = read_frame(&mut stream)?;
    hs.read_message(&frame, &mut buf).map_err(noise_err)?;
    let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
    write_frame(&mut stream, &buf[..n])?;
    stream.flush()?;
    Ok((stream, hs))
}

/// A relay's record of where the joiner it carries came from, sent to the master before the
/// joiner's bytes: `TYDS`, 4 or 6, then the address in 16 bytes (an IPv4 one in the first
/// 4). The master checks the joiner's claimed endpoint against it, as it checks a direct
/// joiner's against the connection's source.
const SEEN_MAGIC: &[u8; 4] = b"TYDS";
pub const SEEN_LEN: usize = 4 + 1 + 16;

/// The record a relay sends for a joiner seen at `ip`.
pub fn seen_record(ip: std::net::IpAddr) -> [u8; SEEN_LEN] {
    let mut out = [0u8; SEEN_LEN];
    out[..4].copy_from_slice(SEEN_MAGIC);
    match ip {
        std::net::IpAddr::V4(v4) => {
            out[4] = 4;
            out[5..9].copy_from_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            out[4] = 6;
            out[5..].copy_from_slice(&v6.octets());
        }
    }
    out
}

/// A master's first byte to a relay carrying a join with a token: the token is this
/// master's (the exchange follows), or not (the connection ends, and the relay asks the next
/// master: a token is kept only on the master that made it). Joins without a token get no
/// such byte: any master can take them.
pub const RELAY_MINE: u8 = b'Y';
pub const RELAY_NOT_MINE: u8 = b'N';

/// Whether a connection's first bytes are a relay's record.
pub fn starts_with_seen(prefix: &[u8]) -> bool {
    prefix.starts_with(SEEN_MAGIC)
}

/// Reads a relay's record.
pub fn read_seen(r: &mut impl Read) -> Result<std::net::IpAddr, WireError> {
    let mut rec = [0u8; SEEN_LEN];
    read_exact(r, &mut rec)?;
    if !starts_with_seen(&rec) {
        return Err(WireError::NotJoin);
    }
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&rec[5..]);
    match rec[4] {
        4 => Ok(std::net::IpAddr::from([v6[0], v6[1], v6[2], v6[3]])),
        6 => Ok(std::net::IpAddr::from(v6)),
        _ => Err(WireError::NotJoin),
    }
}

/// What a connection to the join port is for, from its first 11 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A join with the token of this id.
    Join(TokenId),
    /// A member asking to be removed (only believed through the tunnel: the source address
    /// is the node).
    Leave,
    /// A join without a token, waiting for the operator's approval on the master.
    Approval,
}

const LEAVE_MAGIC: &[u8; 4] = b"TYDL";
const APPROVAL_MAGIC: &[u8; 4] = b"TYDA";
/// The unauthenticated handshake of a join that waits for approval: both ends show a code
/// from its hash, and the operator approves only if they match (no one in the middle).
const APPROVAL_PATTERN: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";
/// v2: the code covers both sides' nonces, the master's committed first (v1's code came
/// from the handshake hash alone); a v1 joiner's handshake fails on it.
const APPROVAL_PROLOGUE: &[u8] = b"tyd join v2 approval";
const HELLO_LEN: usize = 4 + 1 + crate::token::ID_LEN;

impl Hello {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        match self {
            Hello::Join(id) => {
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.extend_from_slice(id.as_str().as_bytes());
            }
            Hello::Leave => {
                out.extend_from_slice(LEAVE_MAGIC);
                out.push(VERSION);
                out.extend_from_slice(&[b'-'; crate::token::ID_LEN]);
            }
            Hello::Approval => {
                out.extend_from_slice(APPROVAL_MAGIC);
                out.push(VERSION);
                out.extend_from_slice(&[b'-'; crate::token::ID_LEN]);
            }
        }
        out
    }
}

/// Reads the first bytes of a connection to the join port.
pub fn read_hello(stream: &mut impl Read) -> Result<Hello, WireError> {
    let mut hello = [0u8; HELLO_LEN];
    read_exact(stream, &mut hello)?;
    let (leave, approval) = (&hello[..4] == LEAVE_MAGIC, &hello[..4] == APPROVAL_MAGIC);
    if &hello[..4] != MAGIC && !leave && !approval {
        return Err(WireError::NotJoin);
    }
    if hello[4] != VERSION {
        return Err(WireError::Version(hello[4]));
    }
    if leave {
        return Ok(Hello::Leave);
    }
    if approval {
        return Ok(Hello::Approval);
    }
    let id = String::from_utf8_lossy(&hello[5..]).into_owned();
    TokenId::try_from(id)
        .map(Hello::Join)
        .map_err(|e| WireError::BadTokenId(e.to_string()))
}

/// The master's side, after [`read_hello`]: the handshake with the token's key. With no key
/// (an unknown token) the handshake is still run, with a random key, so it fails the same way
/// a wrong secret does and the joiner learns nothing about which ids exist.
pub fn accept<S: Read + Write>(
    stream: S,
    id: &TokenId,
    psk: Option<&Psk>,
) -> Result<Channel<S>, WireError> {
    let decoy;
    let psk = match psk {
        Some(p) => p,
        None => {
            decoy = crate::token::Token::generate(&mut rand_core::OsRng).psk();
            &decoy
        }
    };
    let hs = handshake(psk, &prologue(id), false)?;
    let (stream, hs) = respond(stream, hs)?;
    Channel::from_handshake(stream, hs)
}

/// The code both ends of an approval join show: 6 digits from the handshake hash and both
/// sides' nonces, grouped.
fn approval_code(hash: &[u8], joiner: &Nonce, master: &Nonce) -> String {
    let mut input = hash.to_vec();
    input.extend_from_slice(joiner);
    input.extend_from_slice(master);
    let h = blake3::derive_key("tyd join approval code 2026-12", &input);
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 1_000_000;
    format!("{:03}-{:03}", n / 1000, n % 1000)
}

/// A random value each side adds to the approval code.
type Nonce = [u8; 32];

/// The master's commitment to its nonce, bound to the handshake.
fn commitment(hash: &[u8], nonce: &Nonce) -> [u8; 32] {
    let mut input = hash.to_vec();
    input.extend_from_slice(nonce);
    blake3::derive_key("tyd join approval commitment 2026-12", &input)
}

fn nonce() -> Nonce {
    let mut n = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
    n
}

fn receive_32<S: Read + Write>(ch: &mut Channel<S>) -> Result<[u8; 32], WireError> {
    let got = ch.receive_limited(32)?;
    <[u8; 32]>::try_from(got.as_slice()).map_err(|_| WireError::Handshake)
}

fn unauthenticated(initiator: bool) -> Result<snow::HandshakeState, WireError> {
    let params = APPROVAL_PATTERN.parse().map_err(noise_err)?;
    let b = snow::Builder::new(params)
        .prologue(APPROVAL_PROLOGUE)
        .map_err(noise_err)?;
    if initiator {
        b.build_initiator().map_err(noise_err)
    } else {
        b.build_responder().map_err(noise_err)
    }
}

/// The joiner's side of a join without a token: the channel and the code to show.
///
/// A handshake hash alone could be ground: a man in the middle picks its own key for one
/// side until that side's code equals the other's (about 10^6 tries). So after the
/// handshake the master commits to a nonce, the joiner sends its own, and only then does
/// the master reveal its nonce; the code covers both. Whoever sits in the middle has
/// committed to everything it controls on each side before the last random part of that
/// side's code is known to it: each code matches the other by chance alone, one in 10^6.
pub fn connect_for_approval<S: Read + Write>(
    mut stream: S,
) -> Result<(Channel<S>, String), WireError> {
    stream.write_all(&Hello::Approval.to_bytes())?;
    let (stream, hs) = initiate(stream, unauthenticated(true)?)?;
    let mut ch = Channel::from_handshake(stream, hs)?;
    let hash = *ch.handshake_hash();
    let committed = receive_32(&mut ch)?;
    let mine = nonce();
    ch.send(&mine)?;
    let theirs = receive_32(&mut ch)?;
    if commitment(&hash, &theirs) != committed {
        return Err(WireError::Commitment);
    }
    let code = approval_code(&hash, &mine, &theirs);
    Ok((ch, code))
}

/// The master's side, after [`read_hello`] said `Approval`: the channel and the code.
pub fn accept_for_approval<S: Read + Write>(stream: S) -> Result<(Channel<S>, String), WireError> {
    let (stream, hs) = respond(stream, unauthenticated(false)?)?;
    let mut ch = Channel::from_handshake(stream, hs)?;
    let hash = *ch.handshake_hash();
    let mine = nonce();
    ch.send(&commitment(&hash, &mine))?;
    let theirs = receive_32(&mut ch)?;
    ch.send(&mine)?;
    let code = approval_code(&hash, &theirs, &mine);
    Ok((ch, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;
    use rand_core::OsRng;
    use std::os::unix::net::UnixStream;

    /// Runs the master's side in a thread: hello, handshake with `known` (if the id matches),
    /// then echoes one message back reversed.
    fn master(
        stream: UnixStream,
        known: Token,
    ) -> std::thread::JoinHandle<Result<Vec<u8>, WireError>> {
        std::thread::spawn(move || {
            let mut s = stream;
            let Hello::Join(id) = read_hello(&mut s)? else {
                return Err(WireError::NotJoin);
            };
            let psk = (id == known.id).then(|| known.psk());
            let mut ch = accept(s, &id, psk.as_ref())?;
            let got = ch.receive()?;
            let mut back = got.clone();
            back.reverse();
            ch.send(&back)?;
            Ok(got)
        })
    }

    #[test]
    fn the_right_token_opens_a_channel_that_carries_large_messages() {
        let t = Token::generate(&mut OsRng);
        let (a, b) = UnixStream::pair().unwrap();
        let m = master(b, t.clone());
        let mut ch = connect(a, &t.id, &t.psk()).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ch.send(&big).unwrap();
        let mut want = big.clone();
        want.reverse();
        assert_eq!(ch.receive().unwrap(), want);
        assert_eq!(m.join().unwrap().unwrap(), big);
    }

    #[test]
    fn a_wrong_secret_or_an_unknown_id_fails_the_handshake_on_both_sides() {
        let t = Token::generate(&mut OsRng);
        let wrong: Token = format!("{}.{}", t.id, "0".repeat(crate::token::SECRET_LEN))
            .parse()
            .unwrap();
        let stranger = Token::generate(&mut OsRng);
        for bad in [wrong, stranger] {
            let (a, b) = UnixStream::pair().unwrap();
            let m = master(b, t.clone());
            let r = connect(a, &bad.id, &bad.psk());
            // The master refuses the first message; the joiner sees the connection end.
            assert!(matches!(m.join().unwrap(), Err(WireError::Handshake)));
            assert!(r.is_err());
        }
    }

    #[test]
    fn a_replayed_first_message_leads_nowhere() {
        let t = Token::generate(&mut OsRng);
        // Record a genuine joiner's hello and first message.
        let (a, mut b) = UnixStream::pair().unwrap();
        let (id, psk) = (t.id.clone(), t.psk());
        let joiner = std::thread::spawn(move || connect(a, &id, &psk).map(|_| ()));
        let mut recorded = vec![0u8; 4 + 1 + crate::token::ID_LEN];
        b.read_exact(&mut recorded).unwrap();
        let first = read_frame(&mut b).unwrap();
        drop(b);
        let _ = joiner.join();
        // Replayed to the master that holds the token: it answers the handshake, but no
        // request can follow without the joiner's ephemeral key; anything else is refused.
        let (mut a, b) = UnixStream::pair().unwrap();
        let m = master(b, t);
        a.write_all(&recorded).unwrap();
        write_frame(&mut a, &first).unwrap();
        read_frame(&mut a).unwrap();
        write_frame(&mut a, &[0u8; 64]).unwrap();
        assert!(matches!(m.join().unwrap(), Err(WireError::Handshake)));
    }

    #[test]
    fn both_ends_of_an_approval_join_show_the_same_code_and_another_connection_another() {
        let run = || {
            let (a, mut b) = UnixStream::pair().unwrap();
            let master = std::thread::spawn(move || {
                assert_eq!(read_hello(&mut b).unwrap(), Hello::Approval);
                accept_for_approval(b).map(|(_, code)| code).unwrap()
            });
            let (_, code) = connect_for_approval(a).unwrap();
            (code, master.join().unwrap())
        };
        let (joiner, master) = run();
        assert_eq!(joiner, master);
        assert_eq!(joiner.len(), 7, "{joiner}");
        let (other, _) = run();
        assert_ne!(
            joiner, other,
            "codes must differ per connection (a man in the middle shows two)"
        );
    }

    /// Attack (approval codes made to match, issue 26 #3): a rogue answering `join any` sat
    /// between joiner and master, chose its own key knowing both the joiner's and the code
    /// of its own session with the master, ground about 10^6 keys, and both ends showed the
    /// same 6 digits. Steps: the rogue plays the master to the joiner; after the handshake
    /// it must commit to its nonce before the joiner sends its own; it then reveals another
    /// nonce, ground to make the codes match: the joiner refuses and shows no code.
    #[test]
    fn a_man_in_the_middle_cannot_change_its_nonce_after_the_joiner_spoke() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let joiner = std::thread::spawn(move || connect_for_approval(a).map(|(_, code)| code));
        assert_eq!(read_hello(&mut b).unwrap(), Hello::Approval);
        let (stream, hs) = respond(b, unauthenticated(false).unwrap()).unwrap();
        let mut rogue = Channel::from_handshake(stream, hs).unwrap();
        let hash = *rogue.handshake_hash();
        let committed = nonce();
        rogue.send(&commitment(&hash, &committed)).unwrap();
        let joiners = receive_32(&mut rogue).unwrap();
        // The code of the rogue's own session with the master, which it wants shown here.
        let target = "123-456";
        let ground = (0u32..)
            .map(|i| {
                let mut n = [0u8; 32];
                n[..4].copy_from_slice(&i.to_be_bytes());
                n
            })
            .find(|n| approval_code(&hash, &joiners, n)[..2] == target[..2])
            .unwrap();
        rogue.send(&ground).unwrap();
        assert!(
            matches!(joiner.join().unwrap(), Err(WireError::Commitment)),
            "a nonce other than the committed one must be refused"
        );
    }

    /// The code is not the handshake's alone: with the handshake and the master's nonce
    /// fixed (all a party in the middle could grind before the joiner speaks), the joiner's
    /// nonce still spreads the code over the whole range.
    #[test]
    fn the_joiners_nonce_decides_the_code_after_the_master_committed() {
        let (hash, master) = ([7u8; 32], [9u8; 32]);
        let codes: std::collections::BTreeSet<String> = (0..50u8)
            .map(|i| approval_code(&hash, &[i; 32], &master))
            .collect();
        assert!(codes.len() >= 49, "{codes:?}");
    }

    #[test]
    fn hostile_hellos_and_frames_are_refused_plainly() {
        let mut s: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_hello(&mut s), Err(WireError::NotJoin)));
        let mut s: &[u8] = b"TYDJ\x02abcdef";
        assert!(matches!(read_hello(&mut s), Err(WireError::Version(2))));
        let mut s: &[u8] = b"TYDJ\x01ABC/EF";
        assert!(matches!(read_hello(&mut s), Err(WireError::BadTokenId(_))));
        let mut s: &[u8] = b"TYDJ\x01abc";
        assert!(matches!(read_hello(&mut s), Err(WireError::Closed)));
        let leave = Hello::Leave.to_bytes();
        assert_eq!(read_hello(&mut leave.as_slice()).unwrap(), Hello::Leave);
    }

    /// A relay's record of where it saw the joiner reads back as that address, both
    /// families; anything else is not a record.
    #[test]
    fn a_relays_record_of_the_joiners_address_round_trips() {
        for ip in ["198.18.0.7", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let rec = seen_record(ip);
            assert!(starts_with_seen(&rec));
            assert_eq!(read_seen(&mut &rec[..]).unwrap(), ip);
        }
        let mut bad = seen_record("198.18.0.7".parse().unwrap());
        bad[4] = 5;
        assert!(read_seen(&mut &bad[..]).is_err());
        assert!(read_seen(&mut &b"TYDJ\x01abcdef"[..]).is_err());
    }
}

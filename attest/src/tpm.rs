//! The shell that talks to a TPM: a device (`/dev/tpmrm0`, the kernel's resource manager) or
//! swtpm's server socket, both carrying raw TPM 2.0 commands. Four commands:
//! CreatePrimary (the attestation key, from a fixed template in the endorsement hierarchy),
//! Quote, PCR_Extend (the ratchet) and PCR_Read. Each operation makes the key, uses it and
//! flushes it, so nothing is left in the TPM between operations (swtpm has no resource
//! manager) and two daemons may share one TPM one operation at a time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use tpm2_protocol::data::{
    Tpm2bData, Tpm2bDigest, Tpm2bEccParameter, Tpm2bPublic, Tpm2bSensitiveCreate, TpmAlgId,
    TpmEccCurve, TpmRc, TpmRcBase, TpmSt, TpmaObject, TpmaSession, TpmlDigestValues,
    TpmlPcrSelection, TpmsAuthCommand, TpmsEccParms, TpmsEccPoint, TpmsPcrSelection,
    TpmsSchemeHash, TpmtEccScheme, TpmtHa, TpmtKdfScheme, TpmtPublic, TpmtSigScheme, TpmtSymDef,
    TpmuAsymScheme, TpmuHa, TpmuPublicId, TpmuPublicParms, TpmuSigScheme, TpmuSignature,
};
use tpm2_protocol::frame::{
    TpmCreatePrimaryCommand, TpmCreatePrimaryResponse, TpmFlushContextCommand,
    TpmFlushContextResponse, TpmFrame, TpmPcrExtendCommand, TpmPcrExtendResponse,
    TpmPcrReadCommand, TpmPcrReadResponse, TpmQuoteCommand, TpmQuoteResponse, TpmResponse,
    TpmUnmarshalBody, tpm_marshal_command,
};
use tpm2_protocol::{TpmWriter, basic::TpmHandle};

use crate::key::AttestationKey;
use crate::pcr::{self, PcrValue};
use crate::quote::{Quote, SIGNATURE_LEN};

/// TPM_RH_ENDORSEMENT.
const ENDORSEMENT: u32 = 0x4000_000B;
/// TPM_RS_PW: a password session with the empty password.
const PASSWORD_SESSION: u32 = 0x4000_0009;
/// Attempts of a command the TPM asks to retry.
const RETRIES: u64 = 5;
/// The largest response read.
const MAX_RESPONSE: usize = 4096;
/// What makes this key ours: the template's `unique` field seeds the primary key, so the
/// same TPM always derives the same key from it, and no other template the same one.
const KEY_UNIQUE: &[u8] = b"tyd cluster attestation key v1";

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    /// Neither a TPM device nor a socket: nothing is written to it (a state file named by
    /// mistake would be overwritten, `/dev/port` written to).
    #[error("{path}: is {kind}, not a TPM (a device such as /dev/tpmrm0, or swtpm's socket)")]
    NotATpm { path: String, kind: &'static str },
    #[error("the TPM did not answer within {} s", .0.as_secs_f32())]
    NoAnswer(Duration),
    #[error("TPM I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TPM answered {what}: {rc}")]
    Command { what: &'static str, rc: String },
    #[error("TPM answer to {what} malformed: {why}")]
    Malformed { what: &'static str, why: String },
}

/// One connection to a TPM.
#[derive(Debug)]
pub struct Tpm {
    io: Io,
    /// What bounds everything done through this handle on a socket (for the error).
    timeout: Duration,
    /// When that bound runs out: from the open, over the connect, every command and every
    /// retry (a socket dripping a byte a second, or asking again and again, is cut there).
    deadline: std::time::Instant,
}

#[derive(Debug)]
enum Io {
    Device(File),
    Socket(UnixStream),
}

/// Whether `e` is a socket's timeout running out (Linux says EAGAIN).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Whether the character device `meta` describes is a TPM: its class in sysfs
/// (`/sys/dev/char/MAJOR:MINOR/subsystem`) is `tpm` or `tpmrm`.
fn is_tpm_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.rdev();
    let class = std::fs::read_link(format!(
        "/sys/dev/char/{}:{}/subsystem",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    ));
    class.is_ok_and(|c| c.file_name().is_some_and(|n| n == "tpm" || n == "tpmrm"))
}

/// A connection to the Unix socket at `path` whose connect, reads and writes are each
/// bounded by `timeout`: on Linux a Unix socket's connect waits for room in the listener's
/// backlog at most its send timeout, so the timeouts are set before it.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

impl Tpm {
    /// A TPM device (`/dev/tpmrm0`, `/dev/tpm0`: a character device of the kernel's `tpm`
    /// or `tpmrm` class), or, if `path` is a socket, swtpm's server socket; anything else
    /// is refused untouched (a command written to `/dev/port` or `/dev/mem` would not be).
    /// On a socket, `timeout` bounds everything done through the handle, from now: the
    /// connect (a stopped swtpm's full backlog would hold it for ever), each command, each
    /// retry. A device answers in one read, bounded by the kernel's TPM driver.
    pub fn open(path: &Path, timeout: Duration) -> Result<Self, TpmError> {
        use std::os::unix::fs::FileTypeExt;
        let deadline = std::time::Instant::now() + timeout;
        let shown = || path.display().to_string();
        let err = |source| TpmError::Open {
            path: shown(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let kind = meta.file_type();
        let io = if kind.is_socket() {
            Io::Socket(connect(path, timeout).map_err(|e| {
                if timed_out(&e) {
                    TpmError::NoAnswer(timeout)
                } else {
                    err(e)
                }
            })?)
        } else if kind.is_char_device() && is_tpm_device(&meta) {
            Io::Device(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(err)?,
            )
        } else {
            let kind = if kind.is_dir() {
                "a directory"
            } else if kind.is_file() {
                "a regular file"
            } else if kind.is_char_device() {
                "a character device of no TPM"
            } else {
                "neither a device nor a socket"
            };
            return Err(TpmError::NotATpm {
                path: shown(),
                kind,
            });
        };
        Ok(Self {
            io,
            timeout,
            deadline,
        })
    }

    /// What an I/O error during an exchange means: a socket that timed out is a TPM that
    /// did not answer.
    fn io_error(&self, e: std::io::Error) -> TpmError {
        if timed_out(&e) {
            TpmError::NoAnswer(self.timeout)
        } else {
            TpmError::Io(e)
        }
    }

    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, TpmError> {
        self.exchange(cmd).map_err(|e| self.io_error(e))
    }

    fn exchange(&mut self, cmd: &[u8]) -> Result<Vec<u8>, std::io::Error> {
        let mut buf = vec![0u8; MAX_RESPONSE];
        let mut have = 0;
        match &mut self.io {
            Io::Device(f) => {
                f.write_all(cmd)?;
                have = f.read(&mut buf)?;
            }
            Io::Socket(s) => {
                let deadline = self.deadline;
                // What is left of the bound, before each write and read.
                let left = || {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
                    } else {
                        Ok(Some(left))
                    }
                };
                s.set_write_timeout(left()?)?;
                s.write_all(cmd)?;
                loop {
                    s.set_read_timeout(left()?)?;
                    let n = s.read(&mut buf[have..])?;
                    if n == 0 {
                        break;
                    }
                    have += n;
                    if have >= 10 {
                        let size = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                        if size <= have || size > MAX_RESPONSE {
                            break;
                        }
                    }
                }
            }
        }
        buf.truncate(have);
        Ok(buf)
    }

    fn call<C: TpmFrame, R: TpmUnmarshalBody>(
        &mut self,
        what: &'static str,
        cmd: &C,
        auth: bool,
    ) -> Result<R, TpmError> {
        let mut out = vec![0u8; MAX_RESPONSE];
        let sessions = [TpmsAuthCommand {
            session_handle: TpmHandle::from(PASSWORD_SESSION),
            nonce: Default::default(),
            session_attributes: TpmaSession::CONTINUE_SESSION,
            hmac: Default::default(),
        }];
        let (tag, sessions): (TpmSt, &[TpmsAuthCommand]) = if auth {
            (TpmSt::Sessions, &sessions)
        } else {
            (TpmSt::NoSessions, &[])
        };
        let len = {
            let mut w = TpmWriter::new(&mut out);
            tpm_marshal_command(cmd, tag, sessions, &mut w).map_err(|e| TpmError::Malformed {
                what,
                why: e.to_string(),
            })?;
            w.len()
        };
        let malformed = |why: String| TpmError::Malformed { what, why };
        // A TPM may ask for the same command again (TPM_RC_RETRY, YIELDED, TESTING): a few
        // times, then it is an error like any other.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self.transact(&out[..len])?;
            let resp = TpmResponse::cast(&answer).map_err(|e| malformed(e.to_string()))?;
            let rc = resp.rc().map_err(|e| malformed(e.to_string()))?;
            match rc {
                TpmRc::Fmt0(TpmRcBase::Success) => {
                    return resp.unmarshal::<R>().map_err(|e| malformed(e.to_string()));
                }
                TpmRc::Warn(TpmRcBase::Retry | TpmRcBase::Yielded | TpmRcBase::Testing)
                    if attempt < RETRIES =>
                {
                    std::thread::sleep(Duration::from_millis(10 * attempt));
                    if matches!(self.io, Io::Socket(_))
                        && std::time::Instant::now() >= self.deadline
                    {
                        return Err(TpmError::NoAnswer(self.timeout));
                    }
                }
                rc => {
                    return Err(TpmError::Command {
                        what,
                        rc: format!("{rc}"),
                    });
                }
            }
        }
    }

    /// Makes the attestation key (the same one each time on one TPM); returns its handle,
    /// to be flushed.
    fn create_key(&mut self) -> Result<(TpmHandle, AttestationKey), TpmError> {
        let mut unique = Tpm2bEccParameter::default();
        unique
            .try_extend_from_slice(KEY_UNIQUE)
            .map_err(|e| TpmError::Malformed {
                what: "CreatePrimary",
                why: e.to_string(),
            })?;
        let public = TpmtPublic {
            object_type: TpmAlgId::Ecc,
            name_alg: TpmAlgId::Sha256,
            object_attributes: TpmaObject::FIXED_TPM
                | TpmaObject::FIXED_PARENT
                | TpmaObject::SENSITIVE_DATA_ORIGIN
                | TpmaObject::USER_WITH_AUTH
                | TpmaObject::RESTRICTED
                | TpmaObject::SIGN_ENCRYPT,
            auth_policy: Tpm2bDigest::default(),
            parameters: TpmuPublicParms::Ecc(TpmsEccParms {
                symmetric: TpmtSymDef::default(),
                scheme: TpmtEccScheme {
                    scheme: TpmAlgId::Ecdsa,
                    details: TpmuAsymScheme::Hash(TpmsSchemeHash {
                        hash_alg: TpmAlgId::Sha256,
                    }),
                },
                curve_id: TpmEccCurve::NistP256,
                kdf: TpmtKdfScheme::default(),
            }),
            unique: TpmuPublicId::Ecc(TpmsEccPoint {
                x: unique,
                y: Tpm2bEccParameter::default(),
            }),
        };
        let cmd = TpmCreatePrimaryCommand {
            handles: [TpmHandle::from(ENDORSEMENT)],
            in_sensitive: Tpm2bSensitiveCreate::default(),
            in_public: Tpm2bPublic { inner: public },
            outside_info: Tpm2bData::default(),
            creation_pcr: TpmlPcrSelection::default(),
        };
        let r: TpmCreatePrimaryResponse = self.call("CreatePrimary", &cmd, true)?;
        let handle = r.handles[0];
        let TpmuPublicId::Ecc(point) = &r.out_public.inner.unique else {
            let _ = self.flush(handle);
            return Err(TpmError::Malformed {
                what: "CreatePrimary",
                why: "not an ECC key".into(),
            });
        };
        match AttestationKey::from_xy(&point.x, &point.y) {
            Ok(k) => Ok((handle, k)),
            Err(e) => {
                let _ = self.flush(handle);
                Err(TpmError::Malformed {
                    what: "CreatePrimary",
                    why: e.to_string(),
                })
            }
        }
    }

    fn flush(&mut self, handle: TpmHandle) -> Result<(), TpmError> {
        let _: TpmFlushContextResponse = self.call(
            "FlushContext",
            &TpmFlushContextCommand {
                handles: [],
                flush_handle: handle,
            },
            false,
        )?;
        Ok(())
    }

    /// This TPM's attestation key.
    pub fn attestation_key(&mut self) -> Result<AttestationKey, TpmError> {
        let (handle, key) = self.create_key()?;
        self.flush(handle)?;
        Ok(key)
    }

    /// A quote over PCRs 4 and 15 (SHA-256) with `nonce` as qualifying data, signed by the
    /// attestation key; returns it with the key that signed it.
    pub fn quote(&mut self, nonce: &[u8; 32]) -> Result<(Quote, AttestationKey), TpmError> {
        let (handle, key) = self.create_key()?;
        let result = self.quote_with(handle, nonce);
        let flushed = self.flush(handle);
        let quote = result?;
        flushed?;
        Ok((quote, key))
    }

    fn quote_with(&mut self, handle: TpmHandle, nonce: &[u8; 32]) -> Result<Quote, TpmError> {
        let malformed = |why: String| TpmError::Malformed { what: "Quote", why };
        let mut data = Tpm2bData::default();
        data.try_extend_from_slice(nonce)
            .map_err(|e| malformed(e.to_string()))?;
        let cmd = TpmQuoteCommand {
            handles: [handle],
            qualifying_data: data,
            in_scheme: TpmtSigScheme {
                scheme: TpmAlgId::Ecdsa,
                details: TpmuSigScheme::Hash(TpmsSchemeHash {
                    hash_alg: TpmAlgId::Sha256,
                }),
            },
            pcr_select: selection().map_err(|e| malformed(e.to_string()))?,
        };
        let r: TpmQuoteResponse = self.call("Quote", &cmd, true)?;
        let TpmuSignature::Ecdsa(sig) = &r.signature.signature else {
            return Err(malformed("not an ECDSA signature".into()));
        };
        let mut signature = [0u8; SIGNATURE_LEN];
        for (part, dst) in [(&sig.signature_r, 0), (&sig.signature_s, 32)] {
            if part.len() > 32 {
                return Err(malformed(format!("a {}-byte signature half", part.len())));
            }
            signature[dst + 32 - part.len()..dst + 32].copy_from_slice(part);
        }
        let mut attest = vec![0u8; crate::quote::MAX_ATTEST];
        let len = {
            let mut w = TpmWriter::new(&mut attest);
            use tpm2_protocol::TpmMarshal;
            r.quoted
                .inner
                .marshal(&mut w)
                .map_err(|e| malformed(e.to_string()))?;
            w.len()
        };
        attest.truncate(len);
        Ok(Quote { attest, signature })
    }

    /// Extends the ratchet PCR with "integrity lost" (SHA-256 bank).
    pub fn extend_ratchet(&mut self) -> Result<(), TpmError> {
        let mut digests = TpmlDigestValues::default();
        let mut d = tpm2_protocol::basic::TpmBuffer::default();
        d.try_extend_from_slice(&pcr::ratchet_digest())
            .map_err(|e| TpmError::Malformed {
                what: "PCR_Extend",
                why: e.to_string(),
            })?;
        digests
            .try_push(TpmtHa {
                hash_alg: TpmAlgId::Sha256,
                digest: TpmuHa::Digest(d),
            })
            .map_err(|e| TpmError::Malformed {
                what: "PCR_Extend",
                why: e.to_string(),
            })?;
        let _: TpmPcrExtendResponse = self.call(
            "PCR_Extend",
            &TpmPcrExtendCommand {
                handles: [TpmHandle::from(u32::from(pcr::RATCHET_PCR))],
                digests,
            },
            true,
        )?;
        Ok(())
    }

    /// PCRs 4 and 15 of the SHA-256 bank.
    pub fn read_pcrs(&mut self) -> Result<(PcrValue, PcrValue), TpmError> {
        let malformed = |why: String| TpmError::Malformed {
            what: "PCR_Read",
            why,
        };
        let r: TpmPcrReadResponse = self.call(
            "PCR_Read",
            &TpmPcrReadCommand {
                handles: [],
                pcr_selection_in: selection().map_err(|e| malformed(e.to_string()))?,
            },
            false,
        )?;
        let values: Vec<&Tpm2bDigest> = r.pcr_values.iter().collect();
        let take = |d: &Tpm2bDigest| -> Result<PcrValue, TpmError> {
            <[u8; 32]>::try_from(&d[..]).map_err(|_| malformed(format!("a {}-byte PCR", d.len())))
        };
        match values.as_slice() {
            [image, ratchet] => Ok((take(image)?, take(ratchet)?)),
            other => Err(malformed(format!("{} PCR values, expected 2", other.len()))),
        }
    }
}

fn selection() -> Result<TpmlPcrSelection, tpm2_protocol::TpmError> {
    let mut sel = TpmlPcrSelection::default();
    sel.try_push(TpmsPcrSelection {
        hash: TpmAlgId::Sha256,
        pcr_select: pcr::SELECT[..].try_into()?,
    })?;
    Ok(sel)
}

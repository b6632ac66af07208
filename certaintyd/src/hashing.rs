//! Content hashing of one regular file, opened the safe way and checked to be what was walked.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{Whence, lseek};

/// Files above this size are hashed with BLAKE3's own multi-threading, chunk by chunk.
const LARGE_FILE: u64 = 4 << 20;
const CHUNK: usize = 1 << 20;
/// Read size for other files: small enough that what was read is still in the core's cache
/// when BLAKE3 reads it (1 MiB reads made the kernel's copy 2.5x as costly).
const PIECE: usize = 64 << 10;

thread_local! {
    /// One read buffer per thread, reused from file to file: zeroing a fresh buffer for each
    /// file cost 4% of a pass.
    static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot open: {0}")]
    Open(nix::Error),
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("opened inode {found} is not walked inode {walked}")]
    Swapped { walked: u64, found: u64 },
}

/// Opens `name` under `dir` without following a final symlink or touching atime, without
/// blocking on FIFOs, and fails if what was opened is not the walked inode.
pub fn open_checked(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    dev: u64,
    ino: u64,
    extra: OFlag,
) -> Result<File, HashError> {
    let base = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | extra;
    let raw = match openat(
        Some(dir.as_raw_fd()),
        name,
        base | OFlag::O_NOATIME,
        Mode::empty(),
    ) {
        // O_NOATIME needs ownership or CAP_FOWNER; without it, read atime-neutral anyway
        // on relatime mounts.
        Err(nix::Error::EPERM) => openat(Some(dir.as_raw_fd()), name, base, Mode::empty()),
        other => other,
    }
    .map_err(HashError::Open)?;
    // SAFETY: `raw` was just returned by openat and is owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let st = fstat(file.as_raw_fd()).map_err(HashError::Open)?;
    if st.st_dev != dev || st.st_ino != ino {
        return Err(HashError::Swapped {
            walked: ino,
            found: st.st_ino,
        });
    }
    Ok(file)
}

/// BLAKE3 of a file's content. Sparse files are hashed extent by extent (offsets framed in),
/// so a huge sparse file costs what its data costs, not its apparent size.
pub fn hash_file(file: &mut File, size: u64, blocks: u64) -> Result<[u8; 32], HashError> {
    let mut hasher = blake3::Hasher::new();
    if blocks.saturating_mul(512) < size {
        hash_extents(file, size, &mut hasher)?;
    } else {
        hash_range(file, u64::MAX, size, size > LARGE_FILE, &mut hasher)?;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Hashes up to `limit` bytes from the file's position. `end` is where the walk saw the
/// file end: a short read that stops exactly there is the end, and the read of zero bytes
/// that would confirm it is skipped (a regular file's read is short only at its end). Bytes
/// appended after the walk's stat are left to the next pass, which sees the new size.
fn hash_range(
    file: &mut File,
    limit: u64,
    end: u64,
    large: bool,
    hasher: &mut blake3::Hasher,
) -> Result<u64, HashError> {
    // Taken out of the slot, not borrowed: while BLAKE3's rayon join waits, this thread may
    // hash another file, which then finds the slot empty and uses a buffer of its own.
    let mut buf = BUFFER.take();
    if buf.len() < CHUNK {
        buf = vec![0u8; CHUNK];
    }
    let piece = if large { CHUNK } else { PIECE };
    let result = read_and_hash(file, &mut buf[..piece], limit, end, large, hasher);
    BUFFER.set(buf);
    result
}

fn read_and_hash(
    file: &mut File,
    buf: &mut [u8],
    limit: u64,
    end: u64,
    large: bool,
    hasher: &mut blake3::Hasher,
) -> Result<u64, HashError> {
    let mut total = 0u64;
    while total < limit {
        let want = usize::try_from((limit - total).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HashError::Read(e)),
        };
        if large {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        total += n as u64;
        if n < want && total == end {
            break;
        }
    }
    Ok(total)
}

fn hash_extents(file: &mut File, size: u64, hasher: &mut blake3::Hasher) -> Result<(), HashError> {
    hasher.update(b"sparse");
    hasher.update(&size.to_le_bytes());
    let fd = file.as_fd().as_raw_fd();
    let mut pos: i64 = 0;
    loop {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::Error::ENXIO) => break, // no data after pos
            Err(e) => return Err(HashError::Read(e.into())),
        };
        let hole = lseek(fd, data, Whence::SeekHole).map_err(|e| HashError::Read(e.into()))?;
        lseek(fd, data, Whence::SeekSet).map_err(|e| HashError::Read(e.into()))?;
        let len = u64::try_from(hole - data).unwrap_or(0);
        hasher.update(&data.to_le_bytes());
        hasher.update(&len.to_le_bytes());
        hash_range(file, len, len, len > LARGE_FILE, hasher)?;
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hash_of(content: &[u8], walked_size: u64) -> [u8; 32] {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        lseek(f.as_raw_fd(), 0, Whence::SeekSet).unwrap();
        hash_file(&mut f, walked_size, u64::MAX).unwrap()
    }

    #[test]
    fn a_file_is_hashed_to_its_end_whatever_size_the_walk_saw() {
        let content = vec![5u8; 200_000]; // more than one read piece
        let whole = *blake3::hash(&content).as_bytes();
        assert_eq!(hash_of(&content, 200_000), whole);
        // Grown or shrunk since the walk's stat: still read to the end.
        assert_eq!(hash_of(&content, 100), whole);
        assert_eq!(hash_of(&content, 300_000), whole);
        assert_eq!(hash_of(b"", 0), *blake3::hash(b"").as_bytes());
        // Exactly one piece long: the short-read shortcut cannot apply; the end is found.
        let piece = vec![1u8; PIECE];
        assert_eq!(
            hash_of(&piece, PIECE as u64),
            *blake3::hash(&piece).as_bytes()
        );
    }
}

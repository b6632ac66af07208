//! Small file helpers with the guarantees a security tool needs: atomic replacement,
//! secret files that are never overwritten and never readable by others.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: already exists, refusing to overwrite", path.display())]
    Exists { path: PathBuf },
    #[error("{}: secret key file is readable by group or others (mode {mode:03o}); chmod 600 it", path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: not a regular file (a key file is expected)", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {size} bytes is more than the {limit} bytes allowed", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `a` and `b` name the same place (their directories resolved, links included), so
/// a file a daemon writes can be told apart from one it must never overwrite.
pub fn same_location(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| -> Option<PathBuf> {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(fs::canonicalize(dir).ok()?.join(p.file_name()?))
    };
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Replaces `path` with `bytes` so a reader sees the old or the new file, never a torn one,
/// and the new one survives a crash: temp file, fsync, rename, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    replace(path, bytes, mode, true)
}

/// Replaces a signed pair, `path` and `signature`, so that no reader using
/// [`read_signed_pair`] sees one new and the other old: both are written and synced beside
/// their places first, then renamed in one after the other while the directory is locked
/// (flock, exclusive) against such readers.
pub fn write_signed_pair(
    path: &Path,
    signature: &Path,
    bytes: &[u8],
    sig: &[u8],
    mode: u32,
) -> Result<(), FileError> {
    replace_signed_pair(path, signature, bytes, sig, mode, None, || None::<()>).map(|_| ())
}

/// What [`replace_signed_pair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairWrite<K> {
    /// The pair is in place; `locked`: under the directory's lock (false only when a wait
    /// bound was given and passed).
    Written { locked: bool },
    /// The check said to keep what is there, with this.
    Kept(K),
}

/// [`write_signed_pair`], with `keep` run under the lock just before the renames (a writer
/// that must not replace what another put there meanwhile): when it returns a value,
/// nothing is replaced. `lock_wait`: how long to wait for the lock before going on without
/// it (None: as long as it takes).
pub fn replace_signed_pair<K>(
    path: &Path,
    signature: &Path,
    bytes: &[u8],
    sig: &[u8],
    mode: u32,
    lock_wait: Option<std::time::Duration>,
    keep: impl FnOnce() -> Option<K>,
) -> Result<PairWrite<K>, FileError> {
    let dir = parent_dir(path);
    let sig_tmp = write_temp(signature, sig, mode, "pair")?;
    let tmp = match write_temp(path, bytes, mode, "pair") {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&sig_tmp);
            return Err(e);
        }
    };
    let result = (|| {
        let d = File::open(&dir).map_err(io_err(&dir))?;
        let locked = match lock_wait {
            None => d.lock().map(|()| true).map_err(io_err(&dir))?,
            Some(wait) => lock_within(&d, wait, File::try_lock),
        };
        if let Some(k) = keep() {
            return Ok(PairWrite::Kept(k));
        }
        fs::rename(&sig_tmp, signature).map_err(io_err(signature))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        d.sync_all().map_err(io_err(&dir))?;
        Ok(PairWrite::Written { locked })
    })();
    // Left over when kept or failed (gone when renamed).
    let _ = fs::remove_file(&sig_tmp);
    let _ = fs::remove_file(&tmp);
    result
}

/// Takes a lock on `d` with `try_lock` (exclusive or shared), trying until `wait` has passed;
/// whether it has it (released when `d` is closed).
fn lock_within(
    d: &File,
    wait: std::time::Duration,
    try_lock: fn(&File) -> Result<(), fs::TryLockError>,
) -> bool {
    let until = std::time::Instant::now() + wait;
    loop {
        match try_lock(d) {
            Ok(()) => return true,
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return false,
        }
    }
}

/// How long a reader of a signed pair waits for a writer's two renames before it reads
/// anyway (a writer holds the lock only for them; a stuck one must not stop a daemon).
const PAIR_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads a signed pair written by [`write_signed_pair`]: the file (at most `limit` bytes)
/// and its signature (at most `sig_limit`), under a shared lock of their directory. Without
/// the lock (a directory this process cannot open) it reads them anyway.
pub fn read_signed_pair(
    path: &Path,
    signature: &Path,
    limit: u64,
    sig_limit: u64,
) -> (Result<Vec<u8>, FileError>, Result<Vec<u8>, FileError>) {
    let _locked = File::open(parent_dir(path))
        .ok()
        .filter(|d| lock_within(d, PAIR_LOCK_WAIT, File::try_lock_shared));
    (
        read_limited(path, limit),
        read_limited(signature, sig_limit),
    )
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to a synced temp file beside `path` (named for `what` and this process),
/// for a rename into place; nothing is left behind on failure.
pub fn write_temp(path: &Path, bytes: &[u8], mode: u32, what: &str) -> Result<PathBuf, FileError> {
    temp_file(path, bytes, mode, what, true)
}

fn temp_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    what: &str,
    durable: bool,
) -> Result<PathBuf, FileError> {
    let name = path
        .file_name()
        .map_or_else(|| "policy".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent_dir(path).join(format!(".{name}.{what}.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        if durable {
            f.sync_all().map_err(io_err(&tmp))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `path` with `bytes` atomically (temp file, rename) but without fsync: for
/// run-time state that lives in `/run` and is rewritten every second (a reader sees the old
/// or the new file; a crash may lose the last write, never leave a torn one). A daemon's
/// event loop must not wait on the disk for it.
pub fn replace_volatile(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    replace(path, bytes, mode, false)
}

/// A file replaced whole at every write (a daemon's metrics export), whose failures are
/// worth one log line per reason: a full disk must not flood the log.
#[derive(Debug)]
pub struct ReplacedFile {
    path: PathBuf,
    mode: u32,
    last_error: Option<String>,
}

impl ReplacedFile {
    pub fn new(path: PathBuf, mode: u32) -> Self {
        Self {
            path,
            mode,
            last_error: None,
        }
    }

    /// Replaces the file with `bytes` ([`replace_volatile`]). Returns the failure's reason
    /// when it is news: the first failure, or one for another reason than the last. A
    /// success clears it, so the next failure is news again.
    pub fn replace(&mut self, bytes: &[u8]) -> Option<String> {
        match replace_volatile(&self.path, bytes, self.mode) {
            Ok(()) => {
                self.last_error = None;
                None
            }
            Err(e) => {
                let reason = e.to_string();
                if self.last_error.as_deref() == Some(reason.as_str()) {
                    return None;
                }
                self.last_error = Some(reason.clone());
                Some(reason)
            }
        }
    }
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let tmp = temp_file(path, bytes, mode, "tmp", durable)?;
    let result = (|| {
        fs::rename(&tmp, path).map_err(io_err(path))?;
        if durable {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new secret file (mode 0600); never replaces an existing one.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                FileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                FileError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Reads a secret key file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<String, FileError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io_err(path))
}

pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(io_err(path))
}

/// Reads at most `limit` bytes: a larger file is refused before it is read (a policy of
/// 50 MB is a mistake or an attack, and its content would be echoed in errors).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read as _;
    let f = File::open(path).map_err(io_err(path))?;
    let size = f.metadata().map_err(io_err(path))?.len();
    if size > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_reports_each_failure_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let mut f = ReplacedFile::new(missing.join("metrics.prom"), 0o644);
        let first = f.replace(b"a").expect("the first failure is news");
        assert!(first.contains("gone"), "{first}");
        assert_eq!(f.replace(b"a"), None, "the same reason again is not");
        fs::create_dir(&missing).unwrap();
        assert_eq!(f.replace(b"b"), None);
        assert_eq!(fs::read(missing.join("metrics.prom")).unwrap(), b"b");
        fs::remove_file(missing.join("metrics.prom")).unwrap();
        fs::remove_dir(&missing).unwrap();
        assert!(
            f.replace(b"c").is_some(),
            "after a success, a failure is news again"
        );
    }

    #[test]
    fn secrets_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new_secret(&p, b"one").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write_new_secret(&p, b"two").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("already exists, refusing to overwrite")
        );
        assert_eq!(read_secret(&p).unwrap(), "one");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_secret(&p).unwrap_err().to_string();
        assert!(
            err.contains("readable by group or others (mode 640)"),
            "{err}"
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"a", 0o644).unwrap();
        atomic_write(&p, b"b", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"b");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

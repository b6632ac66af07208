//! Walks the monitored root and builds a [`Snapshot`]: descriptor-relative all the way down,
//! never following symlinks, never crossing into other filesystems (mount points are recorded,
//! not entered), never opening anything but regular files and directories.
//!
//! Content is hashed on the other cores (rayon) while the walk goes on: each directory's
//! files are handed out as tasks as soon as it is listed. Descriptors held open stay bounded:
//! a directory is opened only when its turn comes (so the walk holds those on the current
//! path, not every pending one), a task holds files of at most `TASK_DIRS + 1` directories,
//! and at most `TASKS_IN_FLIGHT` tasks are pending; past that the walker hashes its own. Any entry that cannot be opened, for
//! whatever reason (descriptors exhausted included), is reported as a problem, never left out
//! of the manifest.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, open, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use rayon::prelude::*;

use crate::entry::{Difference, Entry, Kind};
use crate::hashing::{HashError, hash_file, open_checked};
use crate::manifest::{Problem, Snapshot, join};

/// Files per hashing task: enough work that waking a thread for it is cheap beside it.
const TASK_FILES: usize = 64;
/// Files are handed out once this many directories have some waiting, even if fewer than
/// `TASK_FILES`: this bounds the directory descriptors a task holds.
const TASK_DIRS: usize = 16;
/// Hashing tasks pending at most.
const TASKS_IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("{}: cannot open monitored root: {source}", root.display())]
pub struct RootError {
    pub root: std::path::PathBuf,
    pub source: nix::Error,
}

/// Raw xattr (name, value) pairs, sorted.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A hashed file's content hash and xattrs, or why it could not be read.
type Hashed = Result<([u8; 32], Xattrs), Problem>;

struct FileJob {
    dir: Arc<OwnedFd>,
    name: OsString,
    path: Vec<u8>,
    dev: u64,
    ino: u64,
    size: u64,
    blocks: u64,
}

/// A directory recorded but not yet opened: it is opened when its turn comes, through its
/// parent's descriptor, and checked to be the inode that was recorded.
struct PendingDir {
    parent: Arc<OwnedFd>,
    name: OsString,
    path: Vec<u8>,
    dev: u64,
    ino: u64,
}

fn base_entry(st: &FileStat, kind: Kind) -> Entry {
    Entry {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
        nlink: st.st_nlink,
        ino: st.st_ino,
        dev: st.st_dev,
        rdev: st.st_rdev,
        ctime: (st.st_ctime, st.st_ctime_nsec),
        mtime: (st.st_mtime, st.st_mtime_nsec),
        target: None,
        xattrs: Vec::new(),
        content: None,
    }
}

fn read_xattrs_fd(fd: BorrowedFd<'_>) -> std::io::Result<Xattrs> {
    use xattr::FileExt;
    // SAFETY: the File is never dropped (ManuallyDrop), so it does not close the borrowed
    // descriptor, which outlives this call.
    let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    let mut out = Vec::new();
    for name in file.list_xattr()? {
        if let Some(value) = file.get_xattr(&name)? {
            out.push((name.into_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// xattrs of an entry that must not be opened (symlink, FIFO, socket, device), through the
/// parent directory's descriptor: `/proc/self/fd/N/name`, final component not followed.
fn read_xattrs_at(dir: RawFd, name: &OsStr) -> std::io::Result<Xattrs> {
    let mut p = OsString::from(format!("/proc/self/fd/{dir}/"));
    p.push(name);
    let path = Path::new(&p);
    let mut out = Vec::new();
    for n in xattr::list(path)? {
        if let Some(value) = xattr::get(path, &n)? {
            out.push((n.into_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

fn problem(path: &[u8], kind: Difference, detail: impl ToString) -> Problem {
    Problem {
        path: path.to_vec(),
        kind,
        detail: detail.to_string(),
    }
}

fn open_dir_at(dir: RawFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let raw = openat(Some(dir), name, flags, Mode::empty())?;
    // SAFETY: `raw` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A previous manifest whose content hashes may be reused: a file whose metadata is unchanged
/// is re-hashed only on every `every`-th pass (its turn is fixed by its path), so the content
/// of every file is still re-read at least once per `every` passes.
#[derive(Debug, Clone, Copy)]
pub struct Reuse<'a> {
    pub baseline: &'a crate::manifest::Manifest,
    pub pass: u64,
    pub every: u32,
}

impl Reuse<'_> {
    /// The baseline's hash and xattrs for `entry`, if it is unchanged and not due this pass.
    fn reusable(&self, path: &[u8], entry: &Entry) -> Option<([u8; 32], Xattrs)> {
        if self.every <= 1 {
            return None;
        }
        let slot = u64::from_le_bytes(blake3::hash(path).as_bytes()[..8].try_into().ok()?);
        if slot % u64::from(self.every) == self.pass % u64::from(self.every) {
            return None;
        }
        let b = self.baseline.entries.get(path)?;
        let same = b.kind == entry.kind
            && (b.size, b.ino, b.dev, b.nlink, b.mode, b.uid, b.gid)
                == (
                    entry.size,
                    entry.ino,
                    entry.dev,
                    entry.nlink,
                    entry.mode,
                    entry.uid,
                    entry.gid,
                )
            && b.ctime == entry.ctime
            && b.mtime == entry.mtime;
        Some((b.content?, b.xattrs.clone())).filter(|_| same)
    }
}

/// State of one walk.
struct Walker<'a> {
    reuse: Option<Reuse<'a>>,
    root_dev: u64,
    snapshot: Snapshot,
    jobs: Vec<FileJob>,
    /// Directories with files in `jobs`.
    job_dirs: usize,
}

/// Hashing tasks handed to the thread pool, and their results coming back.
struct Pipeline<'s, 'scope> {
    scope: &'s rayon::Scope<'scope>,
    done_tx: Sender<Vec<(Vec<u8>, Hashed)>>,
    done_rx: Receiver<Vec<(Vec<u8>, Hashed)>>,
    in_flight: usize,
}

/// Opens the monitored root (following a symlink there: the operator named it) and stats it.
fn open_root(root: &Path) -> Result<(Arc<OwnedFd>, FileStat), RootError> {
    let root_err = |source| RootError {
        root: root.to_path_buf(),
        source,
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let raw = open(root, flags, Mode::empty()).map_err(root_err)?;
    // SAFETY: `raw` was just returned by open and is owned by nothing else.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let st = fstat(fd.as_raw_fd()).map_err(root_err)?;
    Ok((fd, st))
}

impl<'a> Walker<'a> {
    fn new(reuse: Option<Reuse<'a>>, root_dev: u64) -> Self {
        Self {
            reuse,
            root_dev,
            snapshot: Snapshot::default(),
            jobs: Vec::new(),
            job_dirs: 0,
        }
    }
}

impl Walker<'_> {
    /// Records one directory entry found in `dir`; returns it if it is a directory to
    /// descend into (its xattrs are read when it is opened).
    fn visit(&mut self, dir: &Arc<OwnedFd>, name: &OsStr, path: Vec<u8>) -> Option<PendingDir> {
        let fd = dir.as_raw_fd();
        let st = match fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone between listing and stat: the comparison reports it as removed.
            Err(nix::Error::ENOENT) => return None,
            Err(e) => {
                self.snapshot
                    .problems
                    .push(problem(&path, Difference::Unreadable, e));
                return None;
            }
        };
        let mut kind = Kind::from_mode(st.st_mode);
        if kind == Kind::Dir && st.st_dev != self.root_dev {
            kind = Kind::Mount;
        }
        let mut entry = base_entry(&st, kind);
        let mut descend = None;
        let xattrs = match kind {
            Kind::File => {
                if let Some((content, xattrs)) = self.reuse.and_then(|r| r.reusable(&path, &entry))
                {
                    entry.content = Some(content);
                    entry.xattrs = xattrs;
                    self.snapshot.manifest.entries.insert(path, entry);
                    return None;
                }
                self.jobs.push(FileJob {
                    dir: Arc::clone(dir),
                    name: name.to_os_string(),
                    path: path.clone(),
                    dev: st.st_dev,
                    ino: st.st_ino,
                    size: entry.size,
                    blocks: u64::try_from(st.st_blocks).unwrap_or(0),
                });
                Ok(Vec::new()) // read from the open file when hashing
            }
            Kind::Dir => {
                descend = Some(PendingDir {
                    parent: Arc::clone(dir),
                    name: name.to_os_string(),
                    path: path.clone(),
                    dev: st.st_dev,
                    ino: st.st_ino,
                });
                Ok(Vec::new()) // read from the open directory when its turn comes
            }
            Kind::Symlink => {
                match readlinkat(Some(fd), name) {
                    Ok(t) => entry.target = Some(t.into_vec()),
                    Err(e) => {
                        self.snapshot
                            .problems
                            .push(problem(&path, Difference::Unreadable, e));
                    }
                }
                read_xattrs_at(fd, name)
            }
            Kind::Mount => Ok(Vec::new()),
            _ => read_xattrs_at(fd, name),
        };
        match xattrs {
            Ok(x) => entry.xattrs = x,
            Err(e) => self.snapshot.problems.push(problem(
                &path,
                Difference::Unreadable,
                format!("xattrs: {e}"),
            )),
        }
        self.snapshot.manifest.entries.insert(path, entry);
        descend
    }

    /// Hashes all pending files in parallel and records their hashes (and xattrs).
    fn flush(&mut self) {
        let jobs = std::mem::take(&mut self.jobs);
        let results: Vec<(Vec<u8>, Hashed)> = jobs
            .into_par_iter()
            .map(|job| {
                let r = hash_job(&job);
                (job.path, r)
            })
            .collect();
        self.record(results);
    }

    /// Records what finished meanwhile; then, once enough files are waiting (or at the end,
    /// `all`), hands them to the pool in tasks, or hashes them here when enough tasks are
    /// pending.
    fn dispatch(&mut self, pipe: &mut Pipeline<'_, '_>, all: bool) {
        while let Ok(done) = pipe.done_rx.try_recv() {
            pipe.in_flight -= 1;
            self.record(done);
        }
        if !all && self.jobs.len() < TASK_FILES && self.job_dirs < TASK_DIRS {
            return;
        }
        self.job_dirs = 0;
        let mut jobs = std::mem::take(&mut self.jobs);
        while !jobs.is_empty() {
            let task: Vec<FileJob> = jobs.drain(..jobs.len().min(TASK_FILES)).collect();
            if pipe.in_flight < TASKS_IN_FLIGHT {
                pipe.in_flight += 1;
                let done = pipe.done_tx.clone();
                pipe.scope.spawn(move |_| {
                    // The receiver lives until the scope ends, after every task.
                    let _ = done.send(hash_jobs(task));
                });
            } else {
                self.record(hash_jobs(task));
            }
        }
    }

    /// Records hashes (and xattrs) into the entries the walk made, or the problems.
    fn record(&mut self, results: Vec<(Vec<u8>, Hashed)>) {
        for (path, result) in results {
            match result {
                Ok((hash, xattrs)) => {
                    if let Some(e) = self.snapshot.manifest.entries.get_mut(&path) {
                        e.content = Some(hash);
                        e.xattrs = xattrs;
                    }
                }
                Err(p) => self.snapshot.problems.push(p),
            }
        }
    }
}

fn hash_jobs(jobs: Vec<FileJob>) -> Vec<(Vec<u8>, Hashed)> {
    jobs.into_iter()
        .map(|job| {
            let r = hash_job(&job);
            (job.path, r)
        })
        .collect()
}

fn hash_job(job: &FileJob) -> Hashed {
    let mut file = open_checked(job.dir.as_fd(), &job.name, job.dev, job.ino, OFlag::empty())
        .map_err(|e| {
            let kind = match e {
                HashError::Swapped { .. } => Difference::Swapped,
                _ => Difference::Unreadable,
            };
            problem(&job.path, kind, e)
        })?;
    let xattrs = read_xattrs_fd(file.as_fd())
        .map_err(|e| problem(&job.path, Difference::Unreadable, format!("xattrs: {e}")))?;
    let hash = hash_file(&mut file, job.size, job.blocks)
        .map_err(|e| problem(&job.path, Difference::Unreadable, e))?;
    Ok((hash, xattrs))
}

/// Raises this process's soft limit on open descriptors to its hard limit, so that a deep
/// tree does not run the walk out of descriptors (systemd's default soft limit is 1024, the
/// hard one 524288). Returns the limit now in force.
pub fn raise_descriptor_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Walks `root` and hashes everything in it.
pub fn snapshot(root: &Path) -> Result<Snapshot, RootError> {
    snapshot_with(root, None)
}

/// Walks `root`; with `reuse`, unchanged files not due this pass keep their baseline hash.
pub fn snapshot_with(root: &Path, reuse: Option<Reuse<'_>>) -> Result<Snapshot, RootError> {
    let (root_fd, st) = open_root(root)?;
    let mut w = Walker::new(reuse, st.st_dev);
    w.record_root(&root_fd, &st);

    let (done_tx, done_rx) = channel();
    let done_rx = rayon::scope(|scope| {
        let mut pipe = Pipeline {
            scope,
            done_tx,
            done_rx,
            in_flight: 0,
        };
        let mut stack: Vec<PendingDir> = Vec::new();
        w.list(&root_fd, b"/", &mut stack);
        w.dispatch(&mut pipe, false);
        drop(root_fd);
        while let Some(pending) = stack.pop() {
            if let Some(dir) = w.open_pending(&pending) {
                w.list(&dir, &pending.path, &mut stack);
                w.dispatch(&mut pipe, false);
            }
        }
        w.dispatch(&mut pipe, true);
        pipe.done_rx
    });
    // Every task has finished and dropped its sender: this drains and ends.
    for done in done_rx {
        w.record(done);
    }
    Ok(w.snapshot)
}

impl Walker<'_> {
    /// Records the monitored root itself (its xattrs read through its open descriptor).
    fn record_root(&mut self, root_fd: &OwnedFd, st: &FileStat) {
        let mut entry = base_entry(st, Kind::Dir);
        match read_xattrs_fd(root_fd.as_fd()) {
            Ok(x) => entry.xattrs = x,
            Err(e) => self.snapshot.problems.push(problem(
                b"/",
                Difference::Unreadable,
                format!("xattrs: {e}"),
            )),
        }
        self.snapshot.manifest.entries.insert(b"/".to_vec(), entry);
    }

    /// Opens a recorded directory, checks it is still the recorded inode, and reads its
    /// xattrs into its entry. Every failure is a problem for that path.
    fn open_pending(&mut self, p: &PendingDir) -> Option<Arc<OwnedFd>> {
        let fail = |w: &mut Self, kind, detail: String| {
            w.snapshot.problems.push(problem(&p.path, kind, detail));
            None
        };
        let dir = match open_dir_at(p.parent.as_raw_fd(), &p.name) {
            Ok(d) => d,
            Err(e) => return fail(self, Difference::Unreadable, e.to_string()),
        };
        match fstat(dir.as_raw_fd()) {
            Ok(s) if s.st_dev == p.dev && s.st_ino == p.ino => {}
            Ok(s) => {
                let detail = format!("directory inode {} became {}", p.ino, s.st_ino);
                return fail(self, Difference::Swapped, detail);
            }
            Err(e) => return fail(self, Difference::Unreadable, e.to_string()),
        }
        match read_xattrs_fd(dir.as_fd()) {
            Ok(x) => {
                if let Some(e) = self.snapshot.manifest.entries.get_mut(&p.path) {
                    e.xattrs = x;
                }
            }
            Err(e) => return fail(self, Difference::Unreadable, format!("xattrs: {e}")),
        }
        Some(Arc::new(dir))
    }

    /// Lists an open directory and records each entry; directories go on `stack`.
    fn list(&mut self, dir: &Arc<OwnedFd>, dir_path: &[u8], stack: &mut Vec<PendingDir>) {
        let listing = dir
            .try_clone()
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|fd| Dir::from_fd(fd_into_raw(fd)));
        let mut listing = match listing {
            Ok(l) => l,
            Err(e) => {
                self.snapshot
                    .problems
                    .push(problem(dir_path, Difference::Unreadable, e));
                return;
            }
        };
        let mut names = Vec::new();
        for item in listing.iter() {
            match item {
                Ok(ent) => {
                    let name = ent.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        names.push(OsStr::from_bytes(name).to_os_string());
                    }
                }
                Err(e) => {
                    self.snapshot
                        .problems
                        .push(problem(dir_path, Difference::Unreadable, e));
                    break;
                }
            }
        }
        drop(listing);
        let jobs_before = self.jobs.len();
        for name in names {
            let path = join(dir_path, name.as_bytes());
            if let Some(sub) = self.visit(dir, &name, path) {
                stack.push(sub);
            }
        }
        if self.jobs.len() > jobs_before {
            self.job_dirs += 1;
        }
    }
}

fn fd_into_raw(fd: OwnedFd) -> RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(fd)
}

/// Re-reads the entries at `paths` only (what an inotify event points at), for a targeted
/// check between full verifications. A path that no longer exists is simply absent.
pub fn capture_paths(root: &Path, paths: &[Vec<u8>]) -> Result<Snapshot, RootError> {
    let (root_fd, st) = open_root(root)?;
    let mut w = Walker::new(None, st.st_dev);
    for path in paths {
        if path.as_slice() == b"/" {
            w.record_root(&root_fd, &st);
            continue;
        }
        let parent = crate::manifest::parent(path);
        let name = &path[parent.len() + usize::from(parent != b"/")..];
        let dir = if parent == b"/" {
            Arc::clone(&root_fd)
        } else {
            let rel = OsStr::from_bytes(&parent[1..]);
            match open_dir_at(root_fd.as_raw_fd(), rel) {
                Ok(fd) => Arc::new(fd),
                Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => continue,
                Err(e) => {
                    w.snapshot
                        .problems
                        .push(problem(path, Difference::Unreadable, e));
                    continue;
                }
            }
        };
        // A directory's own record (its xattrs included); its children are not re-read.
        if let Some(sub) = w.visit(&dir, OsStr::from_bytes(name), path.clone()) {
            w.open_pending(&sub);
        }
    }
    w.flush();
    Ok(w.snapshot)
}

/// A manifest of one block device, in 1 MiB blocks (`/block/000000`...), so a difference
/// names the blocks that changed. For CHAOS-style RAM disks (`source = "device:/dev/ram0"`).
pub fn snapshot_device(device: &Path) -> Result<Snapshot, RootError> {
    use std::io::Read;
    let err = |source| RootError {
        root: device.to_path_buf(),
        source,
    };
    let raw = open(device, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(err)?;
    // SAFETY: `raw` was just returned by open and is owned by nothing else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let st = fstat(file.as_raw_fd()).map_err(err)?;
    let mut snap = Snapshot::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut index = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    snap.problems.push(problem(
                        device.as_os_str().as_bytes(),
                        Difference::Unreadable,
                        e,
                    ));
                    return Ok(snap);
                }
            }
        }
        if filled == 0 {
            break;
        }
        let mut entry = base_entry(&st, Kind::File);
        entry.size = filled as u64;
        entry.content = Some(
            *blake3::Hasher::new()
                .update_rayon(&buf[..filled])
                .finalize()
                .as_bytes(),
        );
        // Per-block records carry only what belongs to the block.
        entry.ctime = (0, 0);
        entry.mtime = (0, 0);
        snap.manifest
            .entries
            .insert(format!("/block/{index:06}").into_bytes(), entry);
        index += 1;
        if filled < buf.len() {
            break;
        }
    }
    Ok(snap)
}

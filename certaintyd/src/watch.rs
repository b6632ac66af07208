//! Filesystem and mount-table events, from threads that feed the daemon's loop.
//!
//! inotify watches every directory of the baseline; each event becomes the paths to re-check.
//! A queue overflow, a watch that cannot be added, or a watcher that stops are reported as
//! such: the daemon treats them as a loss of certainty, never as "nothing happened".

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::mpsc;

use crate::manifest::{Manifest, join};

#[derive(Debug)]
pub enum WatchEvent {
    /// These paths may have changed: check them now.
    Paths(Vec<Vec<u8>>),
    /// These files were open for writing and were closed (IN_CLOSE_WRITE). On a RAM root,
    /// after the baseline and outside a maintenance window, that opening is itself the
    /// change: a write through a shared mapping read first, or through io_uring's
    /// registered pages, can be made and undone with no other trace before the close.
    WriteClosed(Vec<Vec<u8>>),
    /// The kernel dropped events: anything may have changed.
    Overflow,
    /// The mount table changed.
    Mounts,
    /// A watcher stopped working.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start inotify: {0}")]
    Init(std::io::Error),
    #[error("{}: cannot watch directory: {source} (raise fs.inotify.max_user_watches?)", path.display())]
    Add {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

/// Stops the watcher threads when dropped.
#[derive(Debug)]
pub struct Watchers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn fs_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"/" {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(&rel[1..]))
    }
}

/// Watches every directory in `manifest` and the mount table; events arrive on `tx`.
pub fn start(
    root: &Path,
    manifest: &Manifest,
    tx: mpsc::UnboundedSender<WatchEvent>,
) -> Result<Watchers, WatchError> {
    let inotify = Inotify::init().map_err(WatchError::Init)?;
    let mut dirs: HashMap<WatchDescriptor, Vec<u8>> = HashMap::new();
    for (path, entry) in &manifest.entries {
        if entry.kind != crate::entry::Kind::Dir {
            continue;
        }
        let p = fs_path(root, path);
        let wd = inotify
            .watches()
            .add(&p, mask())
            .map_err(|source| WatchError::Add { path: p, source })?;
        dirs.insert(wd, path.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let fs_thread = {
        let stop = Arc::clone(&stop);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || inotify_loop(inotify, dirs, &tx, &stop))
            .map_err(WatchError::Init)?
    };
    let mount_thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("mountinfo".into())
            .spawn(move || mountinfo_loop(&tx, &stop))
            .map_err(WatchError::Init)?
    };
    Ok(Watchers {
        stop,
        threads: vec![fs_thread, mount_thread],
    })
}

fn inotify_loop(
    mut inotify: Inotify,
    dirs: HashMap<WatchDescriptor, Vec<u8>>,
    tx: &mpsc::UnboundedSender<WatchEvent>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(200u16))
        };
        match ready {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                let _ = tx.send(WatchEvent::Failed(format!("inotify poll: {e}")));
                return;
            }
        }
        let events = match inotify.read_events(&mut buf) {
            Ok(ev) => ev,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = tx.send(WatchEvent::Failed(format!("inotify read: {e}")));
                return;
            }
        };
        let mut paths = Vec::new();
        let mut written = Vec::new();
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                let _ = tx.send(WatchEvent::Overflow);
                continue;
            }
            let Some(dir) = dirs.get(&ev.wd) else {
                continue;
            };
            let path = match ev.name {
                Some(name) => join(dir, name.as_bytes()),
                None => dir.clone(),
            };
            if ev.mask.contains(EventMask::CLOSE_WRITE) {
                written.push(path.clone());
            }
            paths.push(path);
            if ev.mask.contains(EventMask::IGNORED) {
                // The watch is gone (directory removed or unmounted): check it, and its parent.
                paths.push(crate::manifest::parent(dir).to_vec());
            }
        }
        if !paths.is_empty() && tx.send(WatchEvent::Paths(paths)).is_err() {
            return;
        }
        if !written.is_empty() && tx.send(WatchEvent::WriteClosed(written)).is_err() {
            return;
        }
    }
}

/// `/proc/self/mountinfo` signals changes to the mount table with POLLPRI.
fn mountinfo_loop(tx: &mpsc::UnboundedSender<WatchEvent>, stop: &AtomicBool) {
    let file = match std::fs::File::open("/proc/self/mountinfo") {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(WatchEvent::Failed(format!("/proc/self/mountinfo: {e}")));
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {}
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLPRI | PollFlags::POLLERR) {
                    // Re-arm by reading the file again from the start.
                    let _ = std::fs::read("/proc/self/mountinfo");
                    let _ = nix::unistd::lseek(file.as_raw_fd(), 0, nix::unistd::Whence::SeekSet);
                    let mut sink = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut &file, &mut sink);
                    if tx.send(WatchEvent::Mounts).is_err() {
                        return;
                    }
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                let _ = tx.send(WatchEvent::Failed(format!("mountinfo poll: {e}")));
                return;
            }
        }
    }
}

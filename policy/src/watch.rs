//! Change events for files a daemon reads (the policy and its signature, a list another
//! daemon writes), over inotify: a file written in place, created, renamed over or deleted
//! is reported by what it is to the caller. The stamps of [`PolicyInForce::poll`] are the
//! fall-back for a missed event.
//!
//! [`PolicyInForce::poll`]: crate::in_force::PolicyInForce::poll

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchMask};

/// Watches the directories of `files` (created if missing) from a thread of its own, and
/// calls `send` with the tag of each file that changed, until `send` returns `false`. A file
/// name ending in `*` stands for every name that starts with what comes before it.
pub fn watch_files<T: Copy + Send + 'static>(
    files: &[(PathBuf, T)],
    mut send: impl FnMut(T) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let mut inotify = Inotify::init()?;
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE;
    let mut watched = Vec::new();
    for (path, tag) in files {
        let dir = dir_of(path);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
        }
        let wd = inotify.watches().add(&dir, mask)?;
        if let Some(name) = path.file_name() {
            watched.push((wd, name.as_bytes().to_vec(), *tag));
        }
    }
    std::thread::Builder::new()
        .name("file-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for e in events {
                    let Some(name) = e.name else { continue };
                    let hit = watched
                        .iter()
                        .find(|(wd, n, _)| *wd == e.wd && names_match(n, name.as_bytes()));
                    if let Some((_, _, tag)) = hit
                        && !send(*tag)
                    {
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// Whether a watched name is `name`: the same bytes, or, for a watched name ending in `*`,
/// its start.
fn names_match(watched: &[u8], name: &[u8]) -> bool {
    match watched.strip_suffix(b"*") {
        Some(prefix) => name.starts_with(prefix),
        None => watched == name,
    }
}

/// The masters' memberships beside `policy` (`membership-*`, their signatures included), as
/// [`watch_files`] takes them.
pub fn membership_files<T: Copy>(policy: &Path, tag: T) -> (PathBuf, T) {
    (policy.with_file_name("membership-*"), tag)
}

/// The policy and its signature, as [`watch_files`] takes them.
pub fn policy_files<T: Copy>(policy: &Path, tag: T) -> [(PathBuf, T); 2] {
    [
        (policy.to_path_buf(), tag),
        (crate::signature_path(policy), tag),
    ]
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

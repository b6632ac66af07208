//! Every kind of change is detected, on ordinary temporary directories (no root needed,
//! except where a test says so).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use certaintyd::entry::Difference::{self, *};
use certaintyd::verdict::{Finding, compare, compare_paths};
use certaintyd::walk::{capture_paths, snapshot};

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::create_dir_all(r.join("bin")).unwrap();
    fs::create_dir_all(r.join("etc/deep")).unwrap();
    fs::write(r.join("bin/sh"), b"#!shell binary").unwrap();
    fs::write(r.join("etc/passwd"), b"root:x:0:0\n").unwrap();
    fs::write(r.join("etc/deep/conf"), vec![7u8; 100_000]).unwrap();
    symlink("sh", r.join("bin/bash")).unwrap();
    d
}

/// Takes a baseline, applies `change`, and returns what a full verification finds.
fn detect(change: impl FnOnce(&Path)) -> Vec<Finding> {
    let d = tree();
    let base = snapshot(d.path()).unwrap();
    assert!(base.problems.is_empty(), "{:?}", base.problems);
    change(d.path());
    compare(&base.manifest, &snapshot(d.path()).unwrap())
}

fn changes_of<'a>(findings: &'a [Finding], path: &str) -> &'a [Difference] {
    findings
        .iter()
        .find(|f| f.path == path)
        .map(|f| f.changes.as_slice())
        .unwrap_or_else(|| panic!("no finding for {path} in {findings:?}"))
}

fn tick() {
    // Timestamps have nanosecond precision, but make sure the clock visibly moves.
    std::thread::sleep(std::time::Duration::from_millis(20));
}

#[test]
fn snapshots_are_deterministic() {
    let d = tree();
    let a = snapshot(d.path()).unwrap();
    let b = snapshot(d.path()).unwrap();
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.manifest.root_hash(), b.manifest.root_hash());
    assert!(compare(&a.manifest, &b).is_empty());
    assert_eq!(a.manifest.files(), 3);
    assert_eq!(a.manifest.bytes(), 14 + 11 + 100_000);
}

#[test]
fn root_hash_changes_with_any_change() {
    let d = tree();
    let a = snapshot(d.path()).unwrap().manifest.root_hash();
    fs::write(d.path().join("etc/deep/conf"), vec![8u8; 100_000]).unwrap();
    assert_ne!(snapshot(d.path()).unwrap().manifest.root_hash(), a);
}

#[test]
fn same_size_content_change() {
    let f = detect(|r| {
        tick();
        fs::write(r.join("bin/sh"), b"#!evil  binary").unwrap();
    });
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(changes_of(&f, "/bin/sh").starts_with(&[Content]));
}

#[test]
fn mode_change() {
    let f = detect(|r| {
        fs::set_permissions(r.join("bin/sh"), fs::Permissions::from_mode(0o4755)).unwrap()
    });
    assert!(changes_of(&f, "/bin/sh").contains(&Mode));
}

#[test]
fn owner_change() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP owner_change: needs root to chown");
        return;
    }
    let f = detect(|r| std::os::unix::fs::chown(r.join("bin/sh"), Some(1234), None).unwrap());
    assert!(changes_of(&f, "/bin/sh").contains(&Owner));
}

#[test]
fn xattr_change() {
    let f = detect(|r| xattr::set(r.join("etc/passwd"), "user.tag", b"x").unwrap());
    assert!(changes_of(&f, "/etc/passwd").contains(&Xattr));
}

#[test]
fn new_file_and_removed_file() {
    let f = detect(|r| {
        fs::write(r.join("bin/new"), b"x").unwrap();
        fs::remove_file(r.join("etc/passwd")).unwrap();
    });
    assert_eq!(changes_of(&f, "/bin/new"), [Added]);
    assert_eq!(changes_of(&f, "/etc/passwd"), [Removed]);
}

#[test]
fn rename() {
    let f = detect(|r| fs::rename(r.join("bin/sh"), r.join("bin/sh2")).unwrap());
    assert_eq!(changes_of(&f, "/bin/sh"), [Removed]);
    assert_eq!(changes_of(&f, "/bin/sh2"), [Added]);
}

#[test]
fn symlink_retargeted() {
    let f = detect(|r| {
        fs::remove_file(r.join("bin/bash")).unwrap();
        symlink("/tmp/evil", r.join("bin/bash")).unwrap();
    });
    assert!(changes_of(&f, "/bin/bash").contains(&SymlinkTarget));
}

#[test]
fn hard_link_added() {
    let f = detect(|r| fs::hard_link(r.join("bin/sh"), r.join("etc/sh-copy")).unwrap());
    assert!(changes_of(&f, "/bin/sh").contains(&LinkCount));
    assert_eq!(changes_of(&f, "/etc/sh-copy"), [Added]);
}

#[test]
fn timestamps_forged_back_still_show_ctime() {
    let f = detect(|r| {
        let p = r.join("bin/sh");
        let before = fs::metadata(&p).unwrap();
        tick();
        fs::write(&p, b"#!evil  binary").unwrap();
        // `touch -d` the old mtime back.
        let mtime = nix::sys::time::TimeSpec::new(
            std::os::unix::fs::MetadataExt::mtime(&before),
            std::os::unix::fs::MetadataExt::mtime_nsec(&before),
        );
        nix::sys::stat::utimensat(
            None,
            &p,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    });
    let c = changes_of(&f, "/bin/sh");
    assert!(
        c.contains(&Content) && c.contains(&Ctime) && !c.contains(&Mtime),
        "{c:?}"
    );
}

#[test]
fn modify_then_restore_between_ticks_is_still_caught() {
    let f = detect(|r| {
        let p = r.join("etc/passwd");
        tick();
        fs::write(&p, b"root::0:0\n").unwrap();
        fs::write(&p, b"root:x:0:0\n").unwrap();
        // And the replace-by-rename way: same bytes, new inode.
        fs::write(r.join("bin/.sh.tmp"), b"#!shell binary").unwrap();
        fs::rename(r.join("bin/.sh.tmp"), r.join("bin/sh")).unwrap();
    });
    assert!(changes_of(&f, "/etc/passwd").contains(&Ctime));
    assert!(!changes_of(&f, "/etc/passwd").contains(&Content));
    assert!(changes_of(&f, "/bin/sh").contains(&Inode));
}

#[test]
fn targeted_check_sees_only_what_it_is_asked_about() {
    let d = tree();
    let base = snapshot(d.path()).unwrap();
    fs::write(d.path().join("bin/dropper"), b"x").unwrap();
    fs::remove_file(d.path().join("etc/passwd")).unwrap();
    let paths = vec![
        b"/bin/dropper".to_vec(),
        b"/etc/passwd".to_vec(),
        b"/bin/sh".to_vec(),
    ];
    let now = capture_paths(d.path(), &paths).unwrap();
    let f = compare_paths(&base.manifest, &now, &paths);
    assert_eq!(changes_of(&f, "/bin/dropper"), [Added]);
    assert_eq!(changes_of(&f, "/etc/passwd"), [Removed]);
    assert_eq!(f.len(), 2, "{f:?}");
}

#[test]
fn odd_entries_neither_crash_nor_hang_the_walk() {
    let d = tree();
    let r = d.path();
    // Non-UTF-8 and control characters in names.
    let odd = std::ffi::OsStr::from_bytes(b"bad\xffname\n");
    fs::write(r.join(odd), b"x").unwrap();
    // A FIFO: opening it would block; it must only be recorded.
    nix::unistd::mkfifo(
        &r.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // A socket.
    let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
    // Deep nesting beyond what a recursive walk would like.
    let mut deep = r.to_path_buf();
    for _ in 0..300 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    // A huge sparse file: 64 GiB apparent, a few bytes of data.
    let sparse = fs::File::create(r.join("sparse")).unwrap();
    sparse.set_len(64 << 30).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"data", 1 << 30).unwrap();

    let started = std::time::Instant::now();
    let a = snapshot(r).unwrap();
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "walk too slow"
    );
    assert!(
        a.manifest
            .entries
            .contains_key(b"/bad\xffname\n".as_slice())
    );
    assert!(a.manifest.entries.contains_key(b"/fifo".as_slice()));
    assert!(a.manifest.entries.contains_key(b"/sock".as_slice()));
    let b = snapshot(r).unwrap();
    assert!(compare(&a.manifest, &b).is_empty());

    // A change in the sparse file's data is seen.
    std::os::unix::fs::FileExt::write_at(&sparse, b"DATA", 1 << 30).unwrap();
    let f = compare(&a.manifest, &snapshot(r).unwrap());
    assert!(changes_of(&f, "/sparse").contains(&Content), "{f:?}");
    // The odd name is reported printable.
    fs::remove_file(r.join(odd)).unwrap();
    let f = compare(&a.manifest, &snapshot(r).unwrap());
    assert_eq!(changes_of(&f, "/bad\\xffname\\n"), [Removed]);
}

#[test]
fn device_node_is_recorded_not_opened() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP device_node_is_recorded_not_opened: needs root for mknod");
        return;
    }
    let d = tree();
    let p = d.path().join("null");
    nix::sys::stat::mknod(
        &p,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let a = snapshot(d.path()).unwrap();
    assert!(a.problems.is_empty());
    assert_eq!(
        a.manifest.entries[b"/null".as_slice()].rdev,
        nix::sys::stat::makedev(1, 3)
    );
}

#[test]
fn unreadable_entry_is_reported() {
    if nix::unistd::geteuid().is_root() {
        // Root reads through permissions; make a directory unreadable by swapping it instead.
        let d = tree();
        let base = snapshot(d.path()).unwrap();
        fs::remove_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc"), b"now a file").unwrap();
        let f = compare(&base.manifest, &snapshot(d.path()).unwrap());
        assert!(changes_of(&f, "/etc").contains(&Type));
        assert_eq!(changes_of(&f, "/etc/passwd"), [Removed]);
        return;
    }
    let d = tree();
    fs::set_permissions(
        d.path().join("etc/passwd"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let s = snapshot(d.path()).unwrap();
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].kind, Unreadable);
}

#[test]
fn missing_root_is_a_clear_error() {
    let err = snapshot(Path::new("/nonexistent/root")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/root: cannot open monitored root: ENOENT: No such file or directory"
    );
}

#[test]
fn stable_root_ignores_inodes_and_ctimes_but_not_content() {
    // Two copies of the same tree (as two boots of one image would be) share the stable root.
    let a = tree();
    let b = tree();
    let mtime = nix::sys::time::TimeSpec::new(1_700_000_000, 0);
    for d in [&a, &b] {
        for p in [
            "bin/sh",
            "etc/passwd",
            "etc/deep/conf",
            "etc/deep",
            "etc",
            "bin",
        ] {
            nix::sys::stat::utimensat(
                None,
                &d.path().join(p),
                &mtime,
                &mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        nix::sys::stat::utimensat(
            None,
            &d.path().join("bin/bash"),
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    let sa = snapshot(a.path()).unwrap().manifest;
    let sb = snapshot(b.path()).unwrap().manifest;
    assert_ne!(sa.root_hash(), sb.root_hash());
    assert_eq!(sa.stable_root(), sb.stable_root());
    fs::write(b.path().join("bin/sh"), b"#!evil  binary").unwrap();
    nix::sys::stat::utimensat(
        None,
        &b.path().join("bin/sh"),
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    assert_ne!(
        sa.stable_root(),
        snapshot(b.path()).unwrap().manifest.stable_root()
    );
}

#[test]
fn rolling_content_rehash_reaches_every_file_within_n_passes() {
    use certaintyd::walk::{Reuse, snapshot_with};
    let d = tree();
    let base = snapshot(d.path()).unwrap().manifest;
    // Pretend every file's content changed without any metadata change (what a write through
    // a short-lived shared mapping can look like): the baseline remembers other hashes.
    let mut pretend = base.clone();
    for e in pretend.entries.values_mut() {
        if e.content.is_some() {
            e.content = Some([0xAB; 32]);
        }
    }
    let every = 3;
    let mut caught = std::collections::BTreeSet::new();
    for pass in 1..=every {
        let now = snapshot_with(
            d.path(),
            Some(Reuse {
                baseline: &pretend,
                pass: u64::from(pass),
                every,
            }),
        )
        .unwrap();
        for f in compare(&pretend, &now) {
            assert_eq!(f.changes, [Content], "{f:?}");
            caught.insert(f.path);
        }
    }
    assert_eq!(
        caught.len(),
        base.files(),
        "every file re-hashed within {every} passes: {caught:?}"
    );
    // With every = 1 nothing is reused: one pass sees it all.
    let now = snapshot_with(
        d.path(),
        Some(Reuse {
            baseline: &pretend,
            pass: 1,
            every: 1,
        }),
    )
    .unwrap();
    assert_eq!(compare(&pretend, &now).len(), base.files());
}

/// `certaintyd --hash-only` on `root` under a shell's descriptor limit (`ulimit` arguments):
/// (entries, unreadable, exit code).
fn hash_only_limited(root: &Path, ulimit: &str) -> (u64, u64, i32) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" --hash-only --root \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_certaintyd"))
        .arg(root)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (
        v["entries"].as_u64().unwrap(),
        v["unreadable"].as_u64().unwrap(),
        out.status.code().unwrap(),
    )
}

#[test]
fn a_tree_wider_or_deeper_than_the_descriptor_limit_is_walked_whole_or_reported() {
    // Wide: 1000 directories side by side, under a hard limit of 400 descriptors. The walk
    // opens a directory only when its turn comes, and a hashing batch holds at most 256, so
    // all of it is recorded.
    let wide = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        let d = wide.path().join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
    }
    assert_eq!(hash_only_limited(wide.path(), "-n 400"), (1 + 2000, 0, 0));

    // Deep: 200 nested levels, each with a sibling directory still to visit, hold a
    // descriptor per level. With only the soft limit low, certaintyd raises it and records
    // everything.
    let deep = tempfile::tempdir().unwrap();
    let mut p = deep.path().to_path_buf();
    for _ in 0..200 {
        fs::create_dir(p.join("e")).unwrap();
        p.push("d");
        fs::create_dir(&p).unwrap();
    }
    fs::write(p.join("f"), b"x").unwrap();
    assert_eq!(
        hash_only_limited(deep.path(), "-Sn 64"),
        (1 + 400 + 1, 0, 0)
    );

    // With the hard limit low too, what cannot be opened is reported (and the exit code
    // says so): never an entry silently left out of the manifest.
    let (_, unreadable, code) = hash_only_limited(deep.path(), "-n 64");
    assert!(
        unreadable > 0,
        "descriptors ran out but nothing was reported"
    );
    assert_eq!(code, 1);
}

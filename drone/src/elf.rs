//! A dynamically linked program's shared libraries, as `ldd` resolves them on the build host.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: cannot run ldd: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: ldd cannot resolve {missing}")]
    Missing { path: PathBuf, missing: String },
}

/// A library `ldd` could not resolve, by the name it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound(pub String);

/// The library files named in `ldd` output (the loader included, the vDSO not). A line
/// `libx.so => not found` is returned as an error name.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, NotFound> {
    let mut out = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(NotFound(
                line.split_whitespace().next().unwrap_or(line).to_string(),
            ));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The shared libraries `program` loads; empty for a static program.
pub fn libraries(program: &Path) -> Result<Vec<PathBuf>, ElfError> {
    let out = Command::new("ldd")
        .arg(program)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ElfError::Spawn {
            path: program.into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to bundle.
        return Ok(Vec::new());
    }
    parse_ldd(&text).map_err(|missing| ElfError::Missing {
        path: program.into(),
        missing: missing.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd1)\n\
                   \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libnftables.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tlibgone.so.3 => not found\n"),
            Err(NotFound("libgone.so.3".to_string()))
        );
    }

    #[test]
    fn a_real_dynamic_program_has_libc_and_a_static_one_nothing() {
        let libs = libraries(Path::new("/bin/ls")).unwrap();
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        if Path::new("/bin/busybox").exists() {
            assert!(libraries(Path::new("/bin/busybox")).unwrap().is_empty());
        }
    }
}

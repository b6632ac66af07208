//! Boot-time hardening from the signed policy: sysctls, then the module lock.

use std::path::{Path, PathBuf};

use policy::{Hardening, Lockdown};

/// One write of a kernel setting: the file and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub name: String,
    pub file: PathBuf,
    pub value: String,
    pub check: ReadBack,
}

/// How a written setting shows when read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// The value itself (sysctls).
    Same,
    /// One of a list, the chosen one in brackets (`none [integrity] confidentiality`).
    Bracketed,
}

/// The writes `hardening` asks for, under `proc_sys` (normally `/proc/sys`). Names were
/// validated with the policy, so they cannot leave `proc_sys`.
///
/// A `net.ipv4.conf.default.X` or `net.ipv6.conf.default.X` setting only reaches interfaces
/// created later, and `all` does not override every per-interface value (`accept_ra` among
/// them): so such a setting is also written to each interface that exists already (the LAN
/// interface is up before hardening runs).
pub fn plan(hardening: &Hardening, proc_sys: &Path) -> Vec<Write> {
    let mut writes = Vec::new();
    for (name, value) in hardening.sysctls() {
        for family in ["net.ipv4.conf.default.", "net.ipv6.conf.default."] {
            if let Some(setting) = name.strip_prefix(family) {
                let conf = &family[..family.len() - "default.".len()];
                for iface in interfaces(proc_sys, conf) {
                    writes.push(sysctl(proc_sys, format!("{conf}{iface}.{setting}"), &value));
                }
            }
        }
        writes.push(sysctl(proc_sys, name, &value));
    }
    writes
}

fn sysctl(proc_sys: &Path, name: String, value: &str) -> Write {
    Write {
        file: proc_sys.join(name.replace('.', "/")),
        name,
        value: value.to_string(),
        check: ReadBack::Same,
    }
}

/// The interfaces under `proc_sys`'s `conf` directory (`net.ipv6.conf.`), in name order,
/// without `all` and `default`; names with a dot are left out (they cannot be sysctl names).
fn interfaces(proc_sys: &Path, conf: &str) -> Vec<String> {
    let dir = proc_sys.join(conf.trim_end_matches('.').replace('.', "/"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "all" && n != "default" && !n.contains('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The write that raises kernel lockdown (under securityfs), if the policy asks for one.
pub fn lockdown(level: Lockdown, securityfs: &Path) -> Option<Write> {
    (level != Lockdown::None).then(|| Write {
        name: "lockdown".into(),
        file: securityfs.join("lockdown"),
        value: level.to_string(),
        check: ReadBack::Bracketed,
    })
}

/// The write that forbids loading any further module (one way: only a reboot undoes it).
pub fn module_lock(proc_sys: &Path) -> Write {
    Write {
        name: "kernel.modules_disabled".into(),
        file: proc_sys.join("kernel/modules_disabled"),
        value: "1".into(),
        check: ReadBack::Same,
    }
}

/// Applies each write and reads it back; returns the failures, one line each.
pub fn apply(writes: &[Write]) -> Vec<String> {
    let mut failures = Vec::new();
    for w in writes {
        let result = std::fs::write(&w.file, format!("{}\n", w.value))
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::read_to_string(&w.file).map_err(|e| e.to_string()))
            .and_then(|now| {
                // The kernel prints some values with tabs for spaces.
                let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                let ok = match w.check {
                    ReadBack::Same => norm(&now) == norm(&w.value),
                    ReadBack::Bracketed => now
                        .split_whitespace()
                        .any(|word| word == format!("[{}]", w.value)),
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("reads back {:?}", now.trim()))
                }
            });
        match result {
            Ok(()) => tracing::info!(sysctl = %w.name, value = %w.value, "applied"),
            Err(e) => {
                tracing::error!(sysctl = %w.name, value = %w.value, file = %w.file.display(), reason = %e, "not applied");
                failures.push(format!("{} = {}: {e}", w.name, w.value));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_under_proc_sys_and_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hardening {
            recommended: false,
            sysctl: [("kernel.kptr_restrict".to_string(), "2".to_string())]
                .into_iter()
                .collect(),
            lock_modules: true,
            lockdown: Lockdown::Integrity,
        };
        let writes = plan(&h, dir.path());
        assert_eq!(writes[0].file, dir.path().join("kernel/kptr_restrict"));
        // A name this "kernel" lacks (no such file) fails, and says which.
        let failures = apply(&writes);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].starts_with("kernel.kptr_restrict = 2: "),
            "{failures:?}"
        );
        std::fs::create_dir(dir.path().join("kernel")).unwrap();
        assert!(apply(&writes).is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("kernel/kptr_restrict")).unwrap(),
            "2\n"
        );
        assert!(apply(&[module_lock(dir.path())]).is_empty());
    }

    #[test]
    fn lockdown_reads_back_as_the_bracketed_choice() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lockdown(Lockdown::None, dir.path()), None);
        let w = lockdown(Lockdown::Integrity, dir.path()).unwrap();
        // A plain file keeps what was written: not the kernel's bracketed form, so refused.
        let failures = apply(std::slice::from_ref(&w));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("reads back \"integrity\""),
            "{failures:?}"
        );
    }

    #[test]
    fn recommended_plan_covers_the_issue_list() {
        let writes = plan(&Hardening::default(), Path::new("/proc/sys"));
        for name in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.ip_forward",
            "kernel.kptr_restrict",
            "kernel.dmesg_restrict",
            "kernel.yama.ptrace_scope",
            "kernel.unprivileged_bpf_disabled",
        ] {
            assert!(writes.iter().any(|w| w.name == name), "{name}");
        }
    }

    /// Regression (issue 9 item 2): a drone on an untrusted LAN must not take router
    /// advertisements. A new interface inherits `default.accept_ra`, but the LAN interface
    /// exists before hardening runs, and `all.accept_ra` does not override its own value:
    /// 1. eth0 comes up with accept_ra = 1 (the kernel's default);
    /// 2. a rogue sends an RA with the tunnel prefix; eth0 takes an address in it.
    ///
    /// Now the plan writes accept_ra = 0 to every existing interface as well.
    #[test]
    fn router_advertisements_are_refused_on_interfaces_that_already_exist() {
        let dir = tempfile::tempdir().unwrap();
        for iface in ["all", "default", "eth0", "lo"] {
            std::fs::create_dir_all(dir.path().join(format!("net/ipv6/conf/{iface}"))).unwrap();
        }
        let writes = plan(&Hardening::default(), dir.path());
        for name in [
            "net.ipv6.conf.all.accept_ra",
            "net.ipv6.conf.default.accept_ra",
            "net.ipv6.conf.eth0.accept_ra",
            "net.ipv6.conf.lo.accept_ra",
            "net.ipv6.conf.eth0.accept_redirects",
        ] {
            let w = writes
                .iter()
                .find(|w| w.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(w.value, "0");
            assert_eq!(w.file, dir.path().join(name.replace('.', "/")));
        }
    }
}

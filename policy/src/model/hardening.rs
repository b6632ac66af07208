//! `[hardening]`: the kernel hardening a drone applies at boot, before it joins.

use super::*;

/// Boot-time kernel hardening a drone applies before it joins the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardening {
    /// Start from [`RECOMMENDED_SYSCTLS`]; `sysctl` adds to or overrides them.
    #[serde(default = "yes")]
    pub recommended: bool,
    /// `"kernel.kptr_restrict" = "2"`: written to `/proc/sys/kernel/kptr_restrict`.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// Set `kernel.modules_disabled = 1` once the drone's own modules are loaded, so a root
    /// compromise cannot load a rootkit module.
    #[serde(default = "yes")]
    pub lock_modules: bool,
    /// The kernel lockdown level to raise to at boot (it can only be raised): `integrity`
    /// keeps even root from changing the running kernel (/dev/mem, unsigned modules, kexec,
    /// MSR writes...); `confidentiality` also from reading kernel memory.
    #[serde(default = "default_lockdown")]
    pub lockdown: Lockdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lockdown {
    None,
    Integrity,
    Confidentiality,
}

impl fmt::Display for Lockdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lockdown::None => "none",
            Lockdown::Integrity => "integrity",
            Lockdown::Confidentiality => "confidentiality",
        })
    }
}

fn default_lockdown() -> Lockdown {
    Lockdown::Integrity
}

fn yes() -> bool {
    true
}

impl Default for Hardening {
    fn default() -> Self {
        Self {
            recommended: true,
            sysctl: BTreeMap::new(),
            lock_modules: true,
            lockdown: default_lockdown(),
        }
    }
}

/// What a drone needs and nothing more: no routing, strict source checks, no router
/// advertisements or redirects from the LAN, kernel pointers and logs hidden, no ptrace attach, no unprivileged BPF or perf, no kexec, no magic SysRq.
pub const RECOMMENDED_SYSCTLS: &[(&str, &str)] = &[
    ("kernel.dmesg_restrict", "1"),
    ("kernel.kexec_load_disabled", "1"),
    ("kernel.kptr_restrict", "2"),
    ("kernel.perf_event_paranoid", "3"),
    ("kernel.sysrq", "0"),
    ("kernel.unprivileged_bpf_disabled", "1"),
    ("kernel.yama.ptrace_scope", "3"),
    ("net.core.bpf_jit_harden", "2"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.ipv4.conf.all.rp_filter", "1"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv4.conf.default.rp_filter", "1"),
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
];

impl Hardening {
    /// The sysctls to apply, in name order: the recommended ones (if asked) with the
    /// policy's own on top.
    pub fn sysctls(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = if self.recommended {
            RECOMMENDED_SYSCTLS
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        } else {
            BTreeMap::new()
        };
        out.extend(self.sysctl.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

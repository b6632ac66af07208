//! A network namespace holding one bridge, with a tap device per VM. Deleted on drop, even
//! when the test fails.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Lab {
    pub netns: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// A fresh namespace `vmlab-<pid>-<n>` with bridge `br0` up and no address of its own.
    pub fn new() -> Result<Self, String> {
        let netns = format!(
            "vmlab-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &netns])?;
        let lab = Self { netns };
        lab.ipn(&["link", "add", "br0", "type", "bridge"])?;
        lab.ipn(&["link", "set", "br0", "up"])?;
        lab.ipn(&["link", "set", "lo", "up"])?;
        Ok(lab)
    }

    pub fn ipn(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A tap device on the bridge, for one VM's NIC.
    pub fn tap(&self, name: &str) -> Result<(), String> {
        self.ipn(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.ipn(&["link", "set", name, "master", "br0"])?;
        self.ipn(&["link", "set", name, "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

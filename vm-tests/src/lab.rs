//! A network namespace holding one bridge, with a tap device per VM. Deleted on drop, even
//! when the test fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct Lab {
    pub netns: String,
    /// Servers on the LAN (udhcpd, dnsmasq): stopped by PID when the lab goes.
    children: Vec<Child>,
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
        let lab = Self {
            netns,
            children: Vec::new(),
        };
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

    /// Gives the bridge address `cidr` (the lab's own host on the LAN), once: the master and
    /// the DHCP server share 198.18.0.1.
    pub fn address(&self, cidr: &str) -> Result<(), String> {
        match self.ipn(&["addr", "add", cidr, "dev", "br0"]) {
            Err(e) if e.contains("File exists") || e.contains("already assigned") => Ok(()),
            other => other,
        }
    }

    /// A tap device on the bridge, for one VM's NIC.
    /// A tap device `name` on the bridge; one left by a VM of this lab that is gone (a drone
    /// booted again on its own NIC) is made anew.
    pub fn tap(&self, name: &str) -> Result<(), String> {
        let _ = self.ipn(&["link", "del", name]);
        self.ipn(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.ipn(&["link", "set", name, "master", "br0"])?;
        self.ipn(&["link", "set", name, "up"])
    }
}

impl Lab {
    /// A DHCP server (busybox udhcpd) on the bridge at 198.18.0.1, leasing .100-.120, and
    /// the fixed addresses in `statics` (MAC, address).
    pub fn dhcp_server(&mut self, dir: &Path, statics: &[(&str, &str)]) -> Result<(), String> {
        self.address("198.18.0.1/24")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("udhcpd.conf");
        let leases = dir.join("udhcpd.leases");
        let _ = std::fs::remove_file(&leases);
        std::fs::write(&leases, b"").map_err(|e| e.to_string())?;
        std::fs::write(
            &conf,
            format!(
                "start 198.18.0.100\nend 198.18.0.120\ninterface br0\nlease_file {}\n\
                 pidfile {}\noption subnet 255.255.255.0\n{}",
                leases.display(),
                dir.join("udhcpd.pid").display(),
                statics
                    .iter()
                    .map(|(mac, ip)| format!("static_lease {mac} {ip}\n"))
                    .collect::<String>()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("udhcpd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "busybox", "udhcpd", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start udhcpd: {e}"))?;
        self.children.push(child);
        Ok(())
    }

    /// An IPv6 router on the LAN, as most have (dnsmasq sending router advertisements for
    /// fd00:18::/64, nothing else). Without one, iPXE waits about 14 s for advertisements
    /// before it boots (its IPv6 autoconfiguration times out).
    pub fn ipv6_router(&mut self, dir: &Path) -> Result<(), String> {
        match self.ipn(&["addr", "add", "fd00:18::1/64", "dev", "br0", "nodad"]) {
            Err(e) if e.contains("File exists") || e.contains("already assigned") => {}
            other => other?,
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let arg = |name: &str, file: &str| format!("--{name}={}", dir.join(file).display());
        self.run(
            Path::new("dnsmasq"),
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
                "--enable-ra",
                "--dhcp-range=::,constructor:br0,ra-only,64",
                &arg("dhcp-leasefile", "router.leases"),
                &arg("pid-file", "router.pid"),
                "--log-facility=-",
            ],
            &dir.join("router.log"),
        )
    }

    /// Runs `program` in the lab's namespace until the lab goes; its output goes to `log`.
    pub fn run(&mut self, program: &Path, args: &[&str], log: &Path) -> Result<(), String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

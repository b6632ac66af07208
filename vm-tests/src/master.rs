//! A master on the test LAN, for drones that join at boot. It runs in the lab's own network
//! namespace (198.18.0.1 on the bridge): netguard (userspace WireGuard), clusterd (no
//! certaintyd: `--certainty-socket none`), joind with an admission key (never the operator
//! key: that stays with the test harness, off every VM and off the master) and clusterd's
//! view, and a service on tcp 4660 that answers "master". Its policy is the test cluster's
//! with a master node (id 10) and its admission key (`tyd admission add`: drones and
//! servers, ids 100-199 in 10.77.0.128/26) added and signed, as an operator would. Stopped,
//! by PID, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cluster::Cluster;
use crate::lab::Lab;
use crate::scratch;

/// The master's LAN and tunnel addresses.
pub const MASTER_LAN: &str = "198.18.0.1";
pub const MASTER_TUNNEL: &str = "10.77.0.10";

#[derive(Debug)]
pub struct Master {
    pub dir: PathBuf,
    /// A join token with two uses.
    pub token: String,
    /// An ephemeral join token (`tyd token create --ephemeral`) with ten uses.
    pub ephemeral_token: String,
    netns: String,
    children: Vec<Child>,
}

fn spawn(netns: &str, program: &Path, args: &[&str], log: &Path) -> Result<Child, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

impl Cluster {
    /// Starts the master in `lab`'s namespace; files under the test's scratch directory.
    pub fn start_master(&self, lab: &Lab, test: &str) -> Result<Master, String> {
        self.start_master_with(lab, test, false)
    }

    /// As [`Cluster::start_master`]; with `boot_server`, the policy opens the LAN's DHCP
    /// and the boot server's ports (udp 67, 69, 4011, TFTP transfers 6900-6999) on masters, as an operator serving
    /// `drone pxe` from a master does.
    pub fn start_master_with(
        &self,
        lab: &Lab,
        test: &str,
        boot_server: bool,
    ) -> Result<Master, String> {
        let dir = scratch().join(test).join("master");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let p = |name: &str| dir.join(name).display().to_string();
        std::fs::copy(&self.policy, dir.join("cluster.toml")).map_err(|e| e.to_string())?;
        let trust = self.policy.with_file_name("operator.key.pub");
        let operator = self.operator_key.display().to_string();
        self.tyd(&["keygen", "node", "--out", &p("node.key")])?;
        self.tyd(&[
            "node",
            "add",
            &p("cluster.toml"),
            "--id",
            "10",
            "--name",
            "master",
            "--public-key-file",
            &p("node.key.pub"),
            "--endpoint",
            &format!("{MASTER_LAN}:51820"),
            "--role",
            "master",
        ])?;
        self.tyd(&[
            "admission",
            "add",
            &p("cluster.toml"),
            "--master",
            "10",
            "--key-out",
            &p("admission.key"),
        ])?;
        if boot_server {
            let path = dir.join("cluster.toml");
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let text = text.replacen(
                "[firewall.allow.ssh]",
                "[firewall.allow.pxe]\nudp = [67, 69, 4011, \"6900-6999\"]\nroles = [\"master\"]\n\n[firewall.allow.ssh]",
                1,
            );
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
        }
        self.tyd(&[
            "policy",
            "sign",
            &p("cluster.toml"),
            "--key",
            &operator,
            "--bump",
        ])?;
        let trust_s = trust.display().to_string();
        let tokens = p("tokens.json");
        let token = |extra: &[&str]| -> Result<String, String> {
            let mut args = vec!["token", "create", "--tokens", &tokens, "--trust", &trust_s];
            args.extend_from_slice(extra);
            Ok(self.tyd(&args)?.trim().to_string())
        };
        let (token, ephemeral_token) = (
            token(&["--uses", "2"])?,
            token(&["--uses", "10", "--ephemeral"])?,
        );
        lab.address(&format!("{MASTER_LAN}/24"))?;
        let mut master = Master {
            dir: dir.clone(),
            token,
            ephemeral_token,
            netns: lab.netns.clone(),
            children: Vec::new(),
        };
        // Each daemon with the master's policy, trust and key, then its own arguments.
        let (policy, key) = (p("cluster.toml"), p("node.key"));
        let (quarantine, view) = (p("quarantine.json"), p("cluster-status.json"));
        let (accepted, clusterd_state) = (p("accepted.json"), p("clusterd.json"));
        let joind_state = p("joind.json");
        let admission_key = p("admission.key");
        let daemons: [(&str, Vec<&str>); 3] = [
            (
                "netguard",
                vec![
                    "--state",
                    &accepted,
                    "--interface",
                    "tydm0",
                    "--backend",
                    "userspace",
                    "--quarantine",
                    &quarantine,
                ],
            ),
            (
                "clusterd",
                vec![
                    "--state",
                    &clusterd_state,
                    "--certainty-socket",
                    "none",
                    "--quarantine",
                    &quarantine,
                    "--view",
                    &view,
                ],
            ),
            (
                "joind",
                vec![
                    "--state",
                    &joind_state,
                    "--admission-key",
                    &admission_key,
                    "--tokens",
                    &tokens,
                    "--view",
                    &view,
                ],
            ),
        ];
        for (name, extra) in daemons {
            let mut args = vec!["--policy", &policy, "--trust", &trust_s, "--key", &key];
            args.extend(extra);
            master.children.push(spawn(
                &lab.netns,
                &self.bin.join(name),
                &args,
                &dir.join(format!("{name}.log")),
            )?);
        }
        let server = "import socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 4660)); s.listen()\n\
             while True:\n    c, _ = s.accept(); c.sendall(b'master\\n'); c.close()\n";
        master.children.push(spawn(
            &lab.netns,
            Path::new("python3"),
            &["-c", server],
            &dir.join("service.log"),
        )?);
        Ok(master)
    }
}

impl Master {
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["netguard.log", "clusterd.log", "joind.log"] {
                eprintln!("--- master {name}\n{}", self.log(name));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What netguard left running (wireguard-go), by PID, through the lab's namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // wireguard-go killed that way leaves its control socket in the shared
        // /var/run/wireguard. The name is fixed, so only once it refuses connections: the
        // killed process may take a moment to die, and another master lab's would answer.
        let sock = "/var/run/wireguard/tydm0.sock";
        for _ in 0..40 {
            if std::os::unix::net::UnixStream::connect(sock).is_err() {
                let _ = std::fs::remove_file(sock);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

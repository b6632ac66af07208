//! One VM: a qemu process with its serial console on a pipe (read and typed into) and a
//! second serial port, where the drone's daemons log, in a file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::lab::Lab;

/// What to boot.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub boot: Boot,
    /// The last byte of the MAC address (52:54:00:12:34:NN) and of the tap's name.
    pub nic: u8,
    pub model: NicModel,
    /// UEFI firmware (OVMF) instead of SeaBIOS, with a TPM: what measured boot needs.
    pub uefi: Option<Uefi>,
}

/// OVMF and a TPM for one VM (issue 29).
#[derive(Debug, Clone)]
pub struct Uefi {
    /// This VM's copy of OVMF's variable store.
    pub vars: PathBuf,
    /// swtpm's control socket (`testsupport::Swtpm::for_qemu`).
    pub tpm: PathBuf,
}

/// Debian's OVMF, with TPM support, for the 4 MiB flash layout.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Where the VM's kernel comes from.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Given to qemu (`-kernel`, `-initrd`, `-append`).
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// A unified kernel image given to OVMF with `-kernel` (the firmware measures it into
    /// PCR 4); `cmdline` replaces the one inside (Secure Boot is off), which changes PCR 12
    /// only.
    Uki { image: PathBuf, cmdline: String },
    /// From the network: the NIC's iPXE ROM (qemu's ipxe-qemu), `-boot n`, again at every
    /// reboot. A failed network boot is retried after 2 s, as PCs set up for network boot
    /// do (once in about ten runs on this 2-core machine, iPXE gave up on DHCP while three
    /// emulated CPUs shared it).
    Network,
}

/// The emulated NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    Virtio,
    /// Intel 82540EM, as on many real PCs: the cloud kernel has no driver for it.
    E1000,
}

impl NicModel {
    fn device(self) -> &'static str {
        match self {
            Self::Virtio => "virtio-net-pci",
            Self::E1000 => "e1000",
        }
    }
}

/// The two serial ports.
#[derive(Debug, Clone, Copy)]
enum Port {
    Console,
    Log,
}

/// Bytes read from the console so far.
#[derive(Debug, Default)]
struct Stream {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

#[derive(Debug)]
pub struct Vm {
    pub name: String,
    /// When qemu was started.
    pub started: Instant,
    child: Child,
    stdin: ChildStdin,
    console: Arc<Stream>,
    console_file: PathBuf,
    log_file: PathBuf,
    /// Waits look only after these offsets (in cleaned text).
    console_mark: usize,
    log_mark: usize,
    seq: u32,
}

/// The text of a serial stream without colour codes and carriage returns.
pub fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

impl Vm {
    /// Starts qemu inside `lab`'s namespace on a new tap. Console and log files go to `dir`.
    pub fn boot(lab: &Lab, spec: &Spec, dir: &Path) -> Result<Vm, String> {
        let tap = format!("tap{}", spec.nic);
        lab.tap(&tap)?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let console_file = dir.join(format!("{}.console", spec.name));
        let log_file = dir.join(format!("{}.log", spec.name));
        let _ = std::fs::remove_file(&log_file);
        let mut cmd = Command::new("ip");
        // OVMF wants more memory than SeaBIOS to unpack a 50 MB image.
        let memory = if spec.uefi.is_some() { "512" } else { "256" };
        cmd.args(["netns", "exec", &lab.netns, "qemu-system-x86_64"])
            .args(["-accel", "tcg", "-cpu", "max", "-m", memory, "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", log_file.display()));
        match &spec.boot {
            Boot::Direct {
                kernel,
                initrd,
                cmdline,
            } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", cmdline]);
            }
            Boot::Uki { image, cmdline } => {
                cmd.arg("-kernel").arg(image).args(["-append", cmdline]);
            }
            Boot::Network => {
                cmd.args(["-boot", "order=n,reboot-timeout=2000"]);
            }
        }
        if let Some(u) = &spec.uefi {
            cmd.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    u.vars.display()
                ))
                .arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", u.tpm.display()))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .args(["-device", "tpm-crb,tpmdev=tpm0"]);
        }
        let mut child = cmd
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                "-device",
                &format!(
                    "{},netdev=n0,mac=52:54:00:12:34:{:02x}",
                    spec.model.device(),
                    spec.nic
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu: {e}"))?;
        let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("qemu without pipes".into());
        };
        let console = Arc::new(Stream::default());
        let sink = Arc::clone(&console);
        let mut file = std::fs::File::create(&console_file)
            .map_err(|e| format!("{}: {e}", console_file.display()))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = file.write_all(&buf[..n]);
                if let Ok(mut b) = sink.bytes.lock() {
                    b.extend_from_slice(&buf[..n]);
                }
                sink.grew.notify_all();
            }
        });
        let errs = Arc::clone(&console);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            if !text.is_empty()
                && let Ok(mut b) = errs.bytes.lock()
            {
                b.extend_from_slice(format!("\n[qemu stderr] {text}").as_bytes());
            }
        });
        Ok(Vm {
            name: spec.name.clone(),
            started: Instant::now(),
            child,
            stdin,
            console,
            console_file,
            log_file,
            console_mark: 0,
            log_mark: 0,
            seq: 0,
        })
    }

    pub fn console_text(&self) -> String {
        self.console
            .bytes
            .lock()
            .map(|b| clean(&b))
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_file)
            .map(|b| clean(&b))
            .unwrap_or_default()
    }

    /// The console after the mark.
    pub fn console_since_mark(&self) -> String {
        let text = self.console_text();
        text.get(self.console_mark..)
            .unwrap_or_default()
            .to_string()
    }

    /// The daemons' log after the mark.
    pub fn log_since_mark(&self) -> String {
        let text = self.log_text();
        text.get(self.log_mark..).unwrap_or_default().to_string()
    }

    /// Forget what was seen so far: later waits only match new output.
    pub fn mark(&mut self) {
        self.console_mark = self.console_text().len();
        self.log_mark = self.log_text().len();
    }

    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{}: qemu exited ({status})", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Waits until qemu exits (the guest powered off); returns how long that took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("{}: still running after {timeout:?}", self.name))
    }

    /// Waits until `what` appears on the console after the mark; moves the mark past it.
    pub fn wait_console(&mut self, what: &str, timeout: Duration) -> Result<Duration, String> {
        self.wait_on(Port::Console, what, timeout)
    }

    /// Waits until `what` appears in the daemons' log after the mark; moves the mark past it.
    pub fn wait_log(&mut self, what: &str, timeout: Duration) -> Result<Duration, String> {
        self.wait_on(Port::Log, what, timeout)
    }

    fn wait_on(&mut self, port: Port, what: &str, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let (text, mark) = match port {
                Port::Console => (self.console_text(), &mut self.console_mark),
                Port::Log => (self.log_text(), &mut self.log_mark),
            };
            if let Some(at) = text.get(*mark..).and_then(|t| t.find(what)) {
                *mark += at + what.len();
                return Ok(start.elapsed());
            }
            self.alive()?;
            if start.elapsed() > timeout {
                let place = match port {
                    Port::Console => "on the console",
                    Port::Log => "in the log",
                };
                return Err(format!(
                    "{}: no {what:?} {place} within {timeout:?}",
                    self.name
                ));
            }
            match port {
                Port::Console => {
                    if let Ok(guard) = self.console.bytes.lock() {
                        let _ = self
                            .console
                            .grew
                            .wait_timeout(guard, Duration::from_millis(100));
                    }
                }
                Port::Log => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Types `line` and a newline into the console.
    pub fn type_line(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("{}: cannot type into the console: {e}", self.name))
    }

    /// Runs `cmd` in the console shell; returns its exit status and output (stdout and
    /// stderr). The output is framed by markers the typed line itself does not contain.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        self.seq += 1;
        let n = self.seq;
        self.type_line(&format!(
            "{{ {cmd}\n}} >/tmp/.out 2>&1; printf '@@%s@@%d@@\\n' B{n} $?; cat /tmp/.out; printf '@@%s@@\\n' E{n}"
        ))?;
        let begin = format!("@@B{n}@@");
        let end = format!("@@E{n}@@");
        self.wait_console(&end, timeout)
            .map_err(|e| format!("{e} (running {cmd:?})"))?;
        let text = self.console_text();
        let stop = text.rfind(&end).unwrap_or(text.len());
        let start = text[..stop]
            .rfind(&begin)
            .ok_or_else(|| format!("{}: lost the output of {cmd:?}", self.name))?;
        let rest = &text[start + begin.len()..stop];
        let (status, output) = rest.split_once("@@\n").unwrap_or(("-1", rest));
        Ok((status.trim().parse().unwrap_or(-1), output.to_string()))
    }

    /// Like [`Vm::sh`], but a non-zero status is an error.
    pub fn sh_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String, String> {
        let (status, out) = self.sh(cmd, timeout)?;
        if status == 0 {
            Ok(out)
        } else {
            Err(format!("{}: {cmd:?} exited {status}: {out}", self.name))
        }
    }

    /// Writes `bytes` to `path` on the VM (typed as base64, then moved into place).
    pub fn put_file(&mut self, path: &str, bytes: &[u8]) -> Result<(), String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut script = format!("base64 -d > {path}.part <<'B64EOF'\n");
        for chunk in b64.as_bytes().chunks(76) {
            script.push_str(&String::from_utf8_lossy(chunk));
            script.push('\n');
        }
        script.push_str("B64EOF\n");
        script.push_str(&format!("mv {path}.part {path}"));
        self.sh_ok(&script, Duration::from_secs(60)).map(|_| ())
    }

    /// Starts a TCP service on `port` that answers with the VM's host name (busybox nc).
    pub fn serve_hostname(&mut self, port: u16) -> Result<(), String> {
        self.sh_ok(
            &format!("nc -ll -p {port} -e /bin/hostname >/dev/null 2>&1 &"),
            Duration::from_secs(30),
        )
        .map(|_| ())
    }

    /// Whether this VM connects to `addr:port` within 4 s (nc's exit status), and what it
    /// reads.
    pub fn fetch(&mut self, addr: &str, port: u16) -> Result<Option<String>, String> {
        let (status, out) = self.sh(
            &format!("nc -w 4 {addr} {port} </dev/null"),
            Duration::from_secs(30),
        )?;
        Ok((status == 0).then_some(out))
    }

    /// The console and log, for a failure report.
    pub fn transcript(&self) -> String {
        let tail = |s: String, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "===== {} console ({}) =====\n{}\n===== {} log ({}) =====\n{}\n",
            self.name,
            self.console_file.display(),
            tail(self.console_text(), 150),
            self.name,
            self.log_file.display(),
            tail(self.log_text(), 150)
        )
    }
}

/// Asks `probe` every `every` until it is done (`Ok`), for at most `within`; then gives back
/// what it last saw instead (`Err`), for the caller's message.
pub fn eventually<T, Seen>(
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, Seen>,
) -> Result<T, Seen> {
    let until = Instant::now() + within;
    loop {
        match probe() {
            Ok(done) => return Ok(done),
            Err(seen) if Instant::now() >= until => return Err(seen),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Whether a fetch got `want` as a line (a stray kernel message may share the console).
pub fn answered(got: &Option<String>, want: &str) -> bool {
    got.as_ref()
        .is_some_and(|o| o.lines().any(|l| l.trim() == want))
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! gendocs: the man pages and shell completions of every tyd program, made from their clap
//! command lines so they cannot drift from `--help`. `scripts/build-deb.sh` runs it before it
//! packages: `gendocs OUT` writes `OUT/man/man{1,8}/` (a page per program and per
//! subcommand, as `tyd-policy-sign.1`) and `OUT/completions/{bash,zsh,fish}/`, named as
//! Debian installs them.

use std::path::Path;
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use policy::exit::{Exit, Failure, finish};

/// One program: its command line, its manual section, what its page points to.
struct Program {
    cmd: Command,
    section: &'static str,
    see_also: &'static [&'static str],
}

fn programs() -> Vec<Program> {
    const DAEMONS: &[&str] = &[
        "tyd(1)",
        "netguard(8)",
        "clusterd(8)",
        "joind(8)",
        "certaintyd(8)",
        "drone(1)",
    ];
    vec![
        Program {
            cmd: tyd::command(),
            section: "1",
            see_also: DAEMONS,
        },
        Program {
            cmd: netguard::cli::Args::command(),
            section: "8",
            see_also: DAEMONS,
        },
        Program {
            cmd: clusterd::cli::Args::command(),
            section: "8",
            see_also: DAEMONS,
        },
        Program {
            cmd: join::cli::Args::command(),
            section: "8",
            see_also: DAEMONS,
        },
        Program {
            cmd: certaintyd::cli::Args::command(),
            section: "8",
            see_also: DAEMONS,
        },
        Program {
            cmd: drone::cli::Args::command(),
            section: "1",
            see_also: &["drone-boot(8)", "tyd(1)", "dnsmasq(8)"],
        },
        Program {
            cmd: drone_boot::cli::Args::command(),
            section: "8",
            see_also: &["drone(1)", "netguard(8)"],
        },
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    finish(
        "gendocs",
        match args.as_slice() {
            [_, out] => generate(Path::new(out)).map(|n| {
                println!("gendocs: {n} files in {out}");
            }),
            _ => Err(Failure::new(Exit::Usage, "usage: gendocs OUT")),
        },
    )
}

/// Writes every page and completion under `out`; returns how many files.
fn generate(out: &Path) -> Result<usize, Failure> {
    let date = date_epoch().map(|t| t.strftime("%Y-%m-%d").to_string());
    let mut written = 0;
    for p in programs() {
        let name = p.cmd.get_name().to_string();
        let dir = out.join("man").join(format!("man{}", p.section));
        written += man_pages(&p, p.cmd.clone(), &name, &name, &dir, date.as_deref())?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut p.cmd.clone(), &name, &mut text);
            write(&out.join("completions").join(dir).join(file), &text)?;
            written += 1;
        }
    }
    // An example policy, as `tyd init` starts one (valid for a year from the build).
    let built = date_epoch().unwrap_or_else(jiff::Timestamp::now);
    let expires = built
        .checked_add(jiff::SignedDuration::from_hours(365 * 24))
        .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    let example = policy::template::init_template("example", expires);
    write(
        &out.join("examples").join("cluster.toml"),
        example.as_bytes(),
    )?;
    Ok(written + 1)
}

/// The build's time for reproducible output (`SOURCE_DATE_EPOCH`), if given.
fn date_epoch() -> Option<jiff::Timestamp> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()?
        .parse::<i64>()
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
}

/// The page of `cmd` (called `page`, as `tyd-policy-sign`, run as `bin`, as `tyd policy
/// sign`) and of each of its subcommands.
fn man_pages(
    p: &Program,
    cmd: Command,
    page: &str,
    bin: &str,
    dir: &Path,
    date: Option<&str>,
) -> Result<usize, Failure> {
    let mut cmd = cmd.name(page.to_string()).bin_name(bin.to_string());
    cmd.build();
    let mut man = clap_mangen::Man::new(cmd.clone())
        .section(p.section)
        .manual("tyd")
        .source(format!("tyd {}", env!("CARGO_PKG_VERSION")));
    if let Some(date) = date {
        man = man.date(date);
    }
    let mut text = Vec::new();
    man.render(&mut text)
        .map_err(|e| Failure::new(Exit::Runtime, format!("{page}: {e}")))?;
    let mut see_also: Vec<String> = p.see_also.iter().map(|s| s.to_string()).collect();
    let own = format!("{}({})", page, p.section);
    see_also.retain(|s| *s != own);
    text.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", see_also.join(", ")).as_bytes());
    write(&dir.join(format!("{page}.{}", p.section)), &text)?;
    let mut written = 1;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        let sub_page = format!("{page}-{}", sub.get_name());
        let sub_bin = format!("{bin} {}", sub.get_name());
        written += man_pages(p, sub.clone(), &sub_page, &sub_bin, dir, date)?;
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let io = |what: &Path, e: std::io::Error| {
        Failure::new(Exit::Runtime, format!("{}: {e}", what.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (sub)command that gets a page: `tyd-policy-sign` and so on.
    fn pages(cmd: &Command, page: &str, out: &mut Vec<String>) {
        out.push(page.to_string());
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" && !sub.is_hide_set() {
                pages(sub, &format!("{page}-{}", sub.get_name()), out);
            }
        }
    }

    #[test]
    fn every_program_and_subcommand_gets_a_page_and_every_program_completions() {
        let dir = tempfile::tempdir().unwrap();
        let n = generate(dir.path()).unwrap();
        let mut expected = Vec::new();
        for p in programs() {
            let name = p.cmd.get_name().to_string();
            let mut names = Vec::new();
            pages(&p.cmd, &name, &mut names);
            for page in &names {
                let file = dir
                    .path()
                    .join(format!("man/man{}/{page}.{}", p.section, p.section));
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(text.contains(".SH NAME"), "{page}: no NAME section");
                assert!(text.contains("SEE ALSO"), "{page}: no SEE ALSO");
                expected.push(file);
            }
            for f in [
                format!("completions/bash/{name}"),
                format!("completions/zsh/_{name}"),
                format!("completions/fish/{name}.fish"),
            ] {
                let text = std::fs::read_to_string(dir.path().join(&f)).unwrap();
                assert!(text.contains(&name), "{f} does not name {name}");
                expected.push(dir.path().join(f));
            }
        }
        // Nothing else but the example policy, which is a valid policy.
        assert_eq!(n, expected.len() + 1);
        let example = std::fs::read(dir.path().join("examples/cluster.toml")).unwrap();
        policy::parse_policy("example", &example, jiff::Timestamp::now()).unwrap();
        // A subcommand's page shows how it is run, and its own options.
        let sign = std::fs::read_to_string(dir.path().join("man/man1/tyd-policy-sign.1")).unwrap();
        assert!(sign.contains("tyd policy sign"), "{sign}");
        assert!(sign.contains("\\-\\-yes"), "{sign}");
        let netguard = std::fs::read_to_string(dir.path().join("man/man8/netguard.8")).unwrap();
        assert!(netguard.contains("SIGHUP"), "signals missing: {netguard}");
    }
}

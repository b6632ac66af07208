//! `tyd tpm`: what this machine's TPM says, for the operator pinning it (issue 29): its
//! attestation key (`[[node]] attestation_key`, `tyd node add --attestation-key`) and the
//! PCRs its quotes cover (PCR 4: the image UEFI measured, for `[attestation] images`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use policy::exit::Exit;

use crate::failure::{CliResult, EXIT_CODES_HELP, Failure};

#[derive(Debug, Subcommand)]
pub enum TpmCmd {
    /// Print this TPM's attestation key (the same at every boot).
    #[command(after_help = EXIT_CODES_HELP)]
    Key {
        /// The TPM: a device, or swtpm's server socket.
        #[arg(long, default_value = "/dev/tpmrm0")]
        tpm: PathBuf,
    },
    /// Print PCR 4 (the image the firmware started) and PCR 15 (the integrity-lost ratchet:
    /// zero until certaintyd sets it) of the SHA-256 bank.
    #[command(after_help = EXIT_CODES_HELP)]
    Pcrs {
        #[arg(long, default_value = "/dev/tpmrm0")]
        tpm: PathBuf,
    },
}

pub fn run(cmd: TpmCmd) -> CliResult {
    let (tpm, pcrs) = match &cmd {
        TpmCmd::Key { tpm } => (tpm, false),
        TpmCmd::Pcrs { tpm } => (tpm, true),
    };
    let failed = |e: attest::tpm::TpmError| Failure::new(Exit::Runtime, e.to_string());
    let mut t = attest::tpm::Tpm::open(tpm, Duration::from_secs(10)).map_err(failed)?;
    if pcrs {
        let (image, ratchet) = t.read_pcrs().map_err(failed)?;
        println!("pcr4  {}", hex::encode(image));
        println!("pcr15 {}", hex::encode(ratchet));
    } else {
        println!("{}", t.attestation_key().map_err(failed)?);
    }
    Ok(())
}

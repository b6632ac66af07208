//! A software TPM per VM (issue 29): `testsupport::Swtpm::for_qemu` serves qemu's TPM
//! device, its state kept in a directory so that a reboot of the VM (or a new qemu on the
//! same state) is the same TPM; and the attestation key that state makes, read before qemu
//! starts.

use std::path::Path;
use std::time::Duration;

pub use testsupport::Swtpm;

/// The attestation key the TPM with this state makes (the same at every boot): swtpm
/// serves raw commands for a moment, tyd's own shell asks, swtpm stops.
pub fn attestation_key(state: &Path) -> Result<String, String> {
    let tpm = Swtpm::start(state);
    let key = attest::tpm::Tpm::open(&tpm.socket, Duration::from_secs(10))
        .and_then(|mut t| t.attestation_key())
        .map(|k| k.to_string())
        .map_err(|e| format!("reading the attestation key: {e}"));
    tpm.stop();
    key
}

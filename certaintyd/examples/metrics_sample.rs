//! Prints what certaintyd's metrics file holds after a few verifications and a violation:
//! scripts/check-metrics.sh feeds it to node_exporter.

use certaintyd::control::Status;
use certaintyd::metrics::Metrics;

fn main() {
    let m = Metrics::new();
    for ms in [120.0, 95.0, 101.0] {
        m.verified(ms / 1000.0);
    }
    m.violation("event");
    let status = Status {
        state: certaintyd::control::State::Verifying,
        files: 93,
        bytes: 35_891_689,
        ..Status::default()
    };
    print!("{}", m.render(&status));
}

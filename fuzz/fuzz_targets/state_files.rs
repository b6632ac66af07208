//! Files one daemon writes and another reads, which a member's input shapes: the quarantine
//! list (netguard reads what clusterd wrote), the cluster view (tyd status --cluster and
//! joind read it) and a master's journal of admissions. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<proto::quarantine::QuarantineList>(data).map(|q| q.ids());
    if let Ok(v) = serde_json::from_slice::<clusterd::view::ClusterView>(data) {
        let v = v.sorted();
        let _ = v.problems();
        for n in &v.nodes {
            let _ = v.problem_of(n);
        }
    }
    let _ = join::lost::lost_nodes(data, jiff::Timestamp::UNIX_EPOCH);
    // joind's journal of admissions: joiners chose the names and endpoints in it.
    if let Ok(mut j) = serde_json::from_slice::<join::fork::Journal>(data) {
        j.prune(jiff::Timestamp::UNIX_EPOCH);
        let _: Vec<_> = j.admitted.iter().map(join::fork::Admitted::request).collect();
    }
});

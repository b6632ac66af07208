//! What a member sends when another fetches its policy over TCP: the `TYD1` framing with two
//! length-prefixed parts, then the memberships. Never a panic, never more than the limits
//! allow.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(t) = runtime().block_on(clusterd::transfer::receive(&mut input)) {
        let memberships: usize = t
            .memberships
            .iter()
            .map(|m| m.bytes.len() + m.signature.len() + 10)
            .sum();
        assert!(t.policy.len() + t.signature.len() + 12 + memberships <= data.len());
        assert!(t.memberships.len() <= clusterd::transfer::MAX_MEMBERSHIPS as usize);
    }
});

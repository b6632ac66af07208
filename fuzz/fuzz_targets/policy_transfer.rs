//! What a member sends when another fetches its policy over TCP: the `TYD1` framing with two
//! length-prefixed parts. Never a panic, never more than the limits allow.
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
    if let Ok((policy, signature)) = runtime().block_on(clusterd::transfer::receive(&mut input)) {
        assert!(policy.len() + signature.len() + 12 <= data.len());
    }
});

#![no_main]
//! See fuzz/checks.rs for what this target checks. The sessions' stores live in one scratch
//! directory per fuzzing process (set TMPDIR=/dev/shm to keep it in memory).

use std::sync::OnceLock;

#[path = "../checks.rs"]
mod checks;

fn stores() -> &'static checks::MemcacheStores {
    static STORES: OnceLock<checks::MemcacheStores> = OnceLock::new();
    STORES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("textkv-fuzz-mc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        checks::MemcacheStores::open(&dir)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::memcache_parse(data, stores()));

#![no_main]
//! See fuzz/checks.rs for what this target checks. Each input is written to a file in one
//! scratch directory per fuzzing process (set TMPDIR=/dev/shm to keep it in memory).

use std::path::PathBuf;
use std::sync::OnceLock;

#[path = "../checks.rs"]
mod checks;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("textkv-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::recovery_load(data, scratch()));

//! Throughput of the value escaper and decoder on 64 MiB of random bytes, the worst case (most
//! bytes become `\xHH`), and on 64 MiB of base64-like text (a `\n` every 77 bytes):
//! `cargo run --release --example escape_speed`. Pin it (`taskset -c 1`) and run it a few times.
//!
//! Times are the thread's CPU time, not the wall clock, so other work on a shared machine
//! slows the figures less (it still shares caches and cores).
use std::time::Duration;

use textkv::escape::{escape_into, unescape, unescape_canonical};

/// CPU time this thread has used.
fn cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn main() {
    let mut x = 0x12345678u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let random: Vec<u8> = (0..64 << 20).map(|_| next() as u8).collect();
    let text: Vec<u8> =
        (0..64 << 20).map(|i| if i % 77 == 76 { b'\n' } else { ALPHABET[(next() % 64) as usize] }).collect();
    for (name, data) in [("random", &random), ("text", &text)] {
        let mib = data.len() as f64 / f64::from(1 << 20);
        let mut out = Vec::new();
        let t = cpu_time();
        escape_into(data, &mut out);
        let escape = cpu_time() - t;
        let t = cpu_time();
        let back = unescape(&out).expect("the escaper's output decodes");
        let decode = cpu_time() - t;
        let t = cpu_time();
        let (checked, canonical) = unescape_canonical(&out).expect("the escaper's output decodes");
        let decode_checked = cpu_time() - t;
        assert!(back == *data && checked == *data && canonical);
        println!(
            "{name}: escape {:.0} MiB/s, unescape {:.0} MiB/s, unescape_canonical {:.0} MiB/s (MiB of value per second)",
            mib / escape.as_secs_f64(),
            mib / decode.as_secs_f64(),
            mib / decode_checked.as_secs_f64()
        );
    }
}

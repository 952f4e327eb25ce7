//! Throughput of the value escaper and unescaper on 64 MiB of random bytes, the worst case
//! (most bytes become `\xHH`): `cargo run --release --example escape_speed`.
fn main() {
    let mut x = 0x12345678u64;
    let data: Vec<u8> = (0..64 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut out = Vec::new();
    let t = std::time::Instant::now();
    textkv::escape::escape_into(&data, &mut out);
    let e = t.elapsed();
    let t = std::time::Instant::now();
    let back = textkv::escape::unescape(&out).unwrap();
    let u = t.elapsed();
    assert_eq!(back, data);
    println!("escape {:.0} MiB/s, unescape {:.0} MiB/s", 64.0 / e.as_secs_f64(), 64.0 / u.as_secs_f64());
}

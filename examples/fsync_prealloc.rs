//! What `fdatasync` costs on this disk when it must commit a size change (appending at the
//! end of the file) and when it need not (overwriting zeros written earlier, the log's
//! preallocated tail): the measurement behind issue 11 item 3.
//!
//! Each round runs every mode for `SECS` seconds in turn, in a rotated order (so a
//! neighbour's load spreads over all of them), and prints fdatasyncs and records per second;
//! then the medians, and the median of each round's ratio to appending (robust to a load
//! that changes from round to round). A "batch" of N is
//! what a group commit of N writers puts on disk: one pwrite of N 64-byte records, one
//! fdatasync. Preallocating modes extend the file by `chunk` bytes of written zeros (not
//! fallocate: unwritten extents still need a metadata commit when first written) whenever
//! the next batch would pass the written end; that extension is counted in the time.
//! `GAP_MICROS` spins that long after each fdatasync, standing in for the request round
//! trip a server has between two of them.
//!
//! ```text
//! cargo build --release --example fsync_prealloc
//! taskset -c 1 target/release/examples/fsync_prealloc [DIR] [ROUNDS=15] [SECS=0.5] [GAP_MICROS=0]
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const RECORD: usize = 64;

/// Appends `batch` records per fdatasync for `secs`, preallocating `chunk` bytes of zeros
/// ahead of the end when `chunk` > 0; returns fdatasyncs per second.
fn run(path: &Path, batch: usize, chunk: u64, secs: f64, gap: Duration) -> io::Result<f64> {
    let file: File = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let buf = vec![b'x'; RECORD * batch];
    let zeros = vec![0u8; 1 << 20];
    let mut written_end = 0u64;
    let extend = |from: u64| -> io::Result<u64> {
        let mut at = from;
        while at < from + chunk {
            file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        Ok(at)
    };
    if chunk > 0 {
        written_end = extend(0)?;
        file.sync_data()?;
    }
    let (mut offset, mut syncs) = (0u64, 0u64);
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    while start.elapsed() < deadline {
        if chunk > 0 && offset + buf.len() as u64 > written_end {
            written_end = extend(written_end)?;
        }
        file.write_all_at(&buf, offset)?;
        file.sync_data()?;
        offset += buf.len() as u64;
        syncs += 1;
        // What a server does between two fdatasyncs (a request's round trip), spun, not slept.
        let spin = Instant::now();
        while spin.elapsed() < gap {
            std::hint::spin_loop();
        }
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(path)?;
    Ok(rate)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.5);
    let gap = Duration::from_micros(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
    let path = Path::new(&dir).join("fsync_prealloc.tmp");
    let modes: [(&str, u64); 4] =
        [("append", 0), ("prealloc-1MiB", 1 << 20), ("prealloc-8MiB", 8 << 20), ("prealloc-64MiB", 64 << 20)];
    // rates[batch][mode] over the rounds; each round runs the modes in a rotated order.
    let mut rates = vec![vec![Vec::new(); modes.len()]; 2];
    println!("round\tbatch\tmode\tfdatasync/s\trecords/s");
    for round in 0..rounds {
        for (b, batch) in [1, 8].into_iter().enumerate() {
            for i in 0..modes.len() {
                let m = (i + round) % modes.len();
                let (name, chunk) = modes[m];
                let rate = run(&path, batch, chunk, secs, gap)?;
                println!("{}\t{batch}\t{name}\t{rate:.0}\t{:.0}", round + 1, rate * batch as f64);
                rates[b][m].push(rate);
            }
        }
    }
    println!("\nmedians of {rounds} rounds ({secs} s each); ratio = median over rounds of mode / append in that round");
    println!("batch\tmode\tfdatasync/s\trecords/s\tratio");
    for (b, batch) in [1, 8].into_iter().enumerate() {
        for (m, (name, _)) in modes.iter().enumerate() {
            let ratios = rates[b][m].iter().zip(&rates[b][0]).map(|(r, a)| r / a).collect();
            let rate = median(rates[b][m].clone());
            println!("{batch}\t{name}\t{rate:.0}\t{:.0}\t{:.2}", rate * batch as f64, median(ratios));
        }
    }
    Ok(())
}

//! `kvbench`: a closed-loop load generator for textkv, memcached and Redis.
//!
//! N connections (one thread each, or spread over --threads) send batches of `--pipeline` GET/SET requests, wait for
//! the replies, and send the next batch, for `--duration` seconds or `--requests` requests in
//! total, whichever comes first. Prints one summary line per run (or one JSON object with
//! `--json`): throughput and p50/p99/p99.9/max latency from an HDR histogram, plus the counts
//! of misses, error replies and verification failures.
//!
//! ```text
//! kvbench --protocol line --addr 127.0.0.1:7878 --connections 8 --pipeline 1 \
//!         --keys 100000 --value-size 32 --get-ratio 0.5 --duration 5 --prefill --verify
//! ```
//!
//! Exit status: 0 on success, 1 if the server answered any request with an error or a value
//! failed verification, 2 if the run could not be carried out (connection refused, a
//! malformed reply, a timeout).

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use textkv::bench::protocol::Protocol;
use textkv::bench::runner::{self, Hist, Outcome, Spec};

/// A closed-loop load generator for textkv (line or memcached protocol), memcached and Redis.
#[derive(Debug, Parser)]
#[command(name = "kvbench", version)]
struct Args {
    /// Wire protocol: textkv's line protocol, memcached ASCII, or Redis RESP (GET/SET only).
    #[arg(long, value_enum, default_value_t = Protocol::Line)]
    protocol: Protocol,

    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Connections (each with its own thread unless --threads says fewer).
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,

    /// Threads driving the connections; default one per connection. With fewer, each thread
    /// sends a batch on each of its connections, then reads their replies in turn (closer to
    /// an event-loop client such as memcaslap or redis-benchmark; less client CPU).
    #[arg(long, short = 't')]
    threads: Option<usize>,

    /// Requests written per batch (in one write) before reading their replies.
    #[arg(long, short = 'P', default_value_t = 1)]
    pipeline: usize,

    /// Key space: keys `key:0000000000` … `key:<keys-1>`, picked uniformly.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,

    /// Bytes per value (printable ASCII).
    #[arg(long, default_value_t = 32)]
    value_size: usize,

    /// Fraction of requests that are GETs: a number in [0, 1] (0.9), or a GET:SET ratio
    /// (9:1). 1 is GET only, 0 is SET only.
    #[arg(long, default_value = "0.5", value_parser = parse_get_ratio)]
    get_ratio: f64,

    /// Seconds the measured phase lasts (fractions allowed); with --requests, the phase ends
    /// at whichever limit comes first.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,

    /// Total requests of the measured phase (across all connections).
    #[arg(long)]
    requests: Option<u64>,

    /// Seed for key choice and values; the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Before measuring, SET every key once (pipelined, not measured).
    #[arg(long)]
    prefill: bool,

    /// After measuring, GET every key written in this run and check it holds the value of
    /// the version last written (each connection writes only its own share of the keys, so
    /// the last version is known).
    #[arg(long)]
    verify: bool,

    /// Line protocol only: after this many seconds of load, send `compact` on another
    /// connection; report latency during compaction separately. The run ends one second after
    /// the compaction (or at --duration).
    #[arg(long)]
    compact_after: Option<f64>,

    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    json: bool,

    /// Seconds to wait for the server on connect and on each read before failing.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

fn parse_get_ratio(text: &str) -> Result<f64, String> {
    let ratio = match text.split_once(':') {
        Some((gets, sets)) => {
            let gets: f64 = gets.trim().parse().map_err(|_| format!("bad GET count in {text:?}"))?;
            let sets: f64 = sets.trim().parse().map_err(|_| format!("bad SET count in {text:?}"))?;
            if gets < 0.0 || sets < 0.0 || gets + sets <= 0.0 {
                return Err(format!("{text:?}: counts must be non-negative and not both zero"));
            }
            gets / (gets + sets)
        }
        None => text.trim().parse().map_err(|_| format!("{text:?} is neither a fraction nor G:S"))?,
    };
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!("{text:?}: the GET fraction must be between 0 and 1"));
    }
    Ok(ratio)
}

fn seconds(name: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

fn spec(args: &Args) -> Result<Spec, String> {
    let addr: SocketAddr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {}: {e}", args.addr))?
        .next()
        .ok_or_else(|| format!("--addr {} resolves to nothing", args.addr))?;
    if args.connections == 0 || args.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if args.keys < args.connections as u64 {
        return Err("--keys must be at least --connections (each connection owns a share)".into());
    }
    if args.keys > 10_000_000_000 {
        return Err("--keys must be below 10^10 (keys have ten digits)".into());
    }
    if args.value_size == 0 {
        return Err("--value-size must be at least 1".into());
    }
    if args.compact_after.is_some() && args.protocol != Protocol::Line {
        return Err("--compact-after needs --protocol line".into());
    }
    Ok(Spec {
        protocol: args.protocol,
        addr,
        connections: args.connections,
        threads: args.threads.unwrap_or(args.connections).clamp(1, args.connections),
        pipeline: args.pipeline,
        keys: args.keys,
        value_size: args.value_size,
        get_ratio: args.get_ratio,
        duration: seconds("duration", args.duration)?,
        requests: args.requests,
        seed: args.seed,
        prefill: args.prefill,
        verify: args.verify,
        compact_after: args.compact_after.map(|s| seconds("compact-after", s)).transpose()?,
        timeout: seconds("timeout", args.timeout)?,
    })
}

/// Microseconds at a quantile.
fn us(hist: &Hist, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// The report as (name, value) pairs, shared by the text and JSON forms. Values that are not
/// numbers are JSON strings.
fn fields(args: &Args, out: &Outcome) -> Vec<(&'static str, String)> {
    let secs = out.elapsed.as_secs_f64();
    let mut f = vec![
        ("protocol", format!("\"{}\"", args.protocol.name())),
        ("addr", format!("\"{}\"", args.addr)),
        ("connections", args.connections.to_string()),
        ("threads", args.threads.unwrap_or(args.connections).clamp(1, args.connections).to_string()),
        ("pipeline", args.pipeline.to_string()),
        ("keys", args.keys.to_string()),
        ("value_size", args.value_size.to_string()),
        ("get_ratio", format!("{:.3}", args.get_ratio)),
        ("seed", args.seed.to_string()),
        ("ops", out.ops.to_string()),
        ("gets", out.gets.to_string()),
        ("sets", out.sets.to_string()),
        ("secs", format!("{secs:.3}")),
        ("ops_per_sec", format!("{:.0}", out.ops as f64 / secs.max(1e-9))),
        ("p50_us", format!("{:.1}", us(&out.hist, 0.5))),
        ("p99_us", format!("{:.1}", us(&out.hist, 0.99))),
        ("p999_us", format!("{:.1}", us(&out.hist, 0.999))),
        ("max_us", format!("{:.1}", out.hist.max() as f64 / 1000.0)),
        ("misses", out.misses.to_string()),
        ("errors", out.errors.to_string()),
        ("verified", out.verified.to_string()),
        ("verify_errors", out.verify_errors.to_string()),
    ];
    if let Some(prefill) = out.prefill {
        f.push(("prefill_secs", format!("{:.3}", prefill.as_secs_f64())));
    }
    if let Some(c) = &out.compaction {
        f.push(("compaction_ms", format!("{:.0}", c.took.as_secs_f64() * 1000.0)));
        f.push(("compaction_ops", c.hist.len().to_string()));
        f.push(("compaction_p50_us", format!("{:.1}", us(&c.hist, 0.5))));
        f.push(("compaction_p99_us", format!("{:.1}", us(&c.hist, 0.99))));
        f.push(("compaction_p999_us", format!("{:.1}", us(&c.hist, 0.999))));
        f.push(("compaction_max_us", format!("{:.1}", c.hist.max() as f64 / 1000.0)));
    }
    f
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = match spec(&args) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("kvbench: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match runner::run(&spec) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("kvbench: run failed: {}", e.0);
            return ExitCode::from(2);
        }
    };
    let fields = fields(&args, &outcome);
    if args.json {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        println!("{{{}}}", body.join(","));
    } else {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", v.trim_matches('"'))).collect();
        println!("{}", body.join(" "));
    }
    if let Some(failure) = &outcome.first_failure {
        eprintln!("kvbench: {} verification failures; first: {failure}", outcome.verify_errors);
    }
    if outcome.errors > 0 || outcome.verify_errors > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_ratio_accepts_fractions_and_ratios() {
        assert_eq!(parse_get_ratio("0.9"), Ok(0.9));
        assert_eq!(parse_get_ratio("1:1"), Ok(0.5));
        assert_eq!(parse_get_ratio("9:1"), Ok(0.9));
        assert_eq!(parse_get_ratio("0:1"), Ok(0.0));
        assert!(parse_get_ratio("1.5").is_err());
        assert!(parse_get_ratio("0:0").is_err());
        assert!(parse_get_ratio("x").is_err());
    }
}

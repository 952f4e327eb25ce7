//! `kvserver`: parse the command line, open the database, serve until SIGINT/SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;

use textkv::config::Config;
use textkv::protocol::Context;
use textkv::server::{Protocol, Server};
use textkv::stats::ServerStats;
use textkv::store::Store;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config::parse();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), String> {
    config.validate()?;
    // With a file size limit (RLIMIT_FSIZE) SIGXFSZ would kill the process; handled, the write
    // fails with EFBIG instead and the client gets "out of disk space".
    signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false))).map_err(|e| e.to_string())?;
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let store = Store::open(config.store()).map_err(|e| e.to_string())?;
    let stats = store.stats();
    log::info!(
        "textkv {} opened {}: {} keys, {} bytes, loaded in {} ms, fsync {}",
        env!("CARGO_PKG_VERSION"),
        config.db.display(),
        stats.keys,
        stats.file_bytes,
        stats.load_millis,
        config.fsync
    );
    let mut listeners = vec![(bind(config.listen)?, Protocol::Line)];
    if let Some(addr) = config.memcached {
        listeners.push((bind(addr)?, Protocol::Memcached));
    }
    let ctx = Arc::new(Context {
        store: Arc::new(store),
        stats: Arc::new(ServerStats::default()),
        limits: config.limits(),
    });
    let server = Server::new(ctx, config.server());
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::info!("received signal {signal}, shutting down");
                handle.shutdown();
            }
        })
        .map_err(|e| e.to_string())?;
    server.serve(listeners).map_err(|e| e.to_string())?;
    log::info!("kvserver stopped cleanly");
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    if !addr.ip().is_loopback() {
        log::warn!(
            "listening on non-loopback address {addr}: anyone who can reach it can read and write every key"
        );
    }
    Ok(listener)
}

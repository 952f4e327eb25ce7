//! `kvserver`: parse the command line, open the database, serve until SIGINT/SIGTERM (SIGHUP
//! reloads the TLS certificate). `kvserver hash-password` makes a users-file line.

use std::io::{self, IsTerminal};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;

use textkv::auth::{self, Role, Users};
use textkv::cluster::Cluster;
use textkv::config::Config;
use textkv::protocol::Context;
use textkv::server::{descriptors, Protocol, Server};
use textkv::stats::ServerStats;
use textkv::store::Store;
use textkv::tls::{self, CertStore};

/// A durable key-value server whose database is a plain, human-readable text file.
#[derive(Debug, Parser)]
#[command(name = "kvserver", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    config: Config,

    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Print a users-file line (`name:hash:role`) for a new password. The password is read
    /// from the terminal without echo (twice), or as one line from standard input when that
    /// is not a terminal.
    HashPassword {
        /// The user's name: letters, digits, '_', '-', '.' or '@'.
        #[arg(long)]
        user: String,
        /// What the user may do: read, write (and read) or admin (everything).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
    },
}

/// glibc's malloc gives threads their own arenas (up to 8 per core). Items are allocated by
/// the connection thread that leads a write group, so a data set written over many
/// connections ended up spread over many arenas: 109 bytes of RSS per key instead of 100
/// with 1,000,000 keys (`bench/startup_rss.sh`). Two arenas keep it at 101 without making
/// the threads queue for one. An operator's own MALLOC_ARENA_MAX wins.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.tool {
        Some(Tool::HashPassword { user, role }) => hash_password(&user, &role),
        None => run(&cli.config),
    };
    match result {
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
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let open_file_limit =
        descriptors::raise_open_file_limit().map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let users = match &config.users {
        Some(path) => {
            let users = Users::load(path)?;
            log::info!("authentication on: {} users from {}", users.len(), path.display());
            Some(Arc::new(users))
        }
        None => None,
    };
    let certs = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(CertStore::load(cert, key)?)),
        _ => None,
    };

    log::info!("loading {}", config.db.display());
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
    let mut listeners: Vec<(TcpListener, Protocol)> =
        bind("--listen", &config.listen, config)?.into_iter().map(|l| (l, Protocol::Line)).collect();
    if let Some(addr) = &config.memcached {
        listeners.extend(bind("--memcached", addr, config)?.into_iter().map(|l| (l, Protocol::Memcached)));
    }
    let store = Arc::new(store);
    let cluster = match config.cluster() {
        Some(cluster) => Some(Cluster::start(cluster, Arc::clone(&store))?),
        None => None,
    };
    let ctx = Arc::new(Context {
        store,
        stats: Arc::new(ServerStats::default()),
        limits: config.limits(),
        users,
        cluster,
    });
    let mut server_config = config.server();
    server_config.max_connections =
        descriptors::fit_connections(server_config.max_connections, open_file_limit);
    let mut server = Server::new(ctx, server_config);
    if let Some(certs) = &certs {
        server = server.with_tls(tls::server_config(Arc::clone(certs))?);
    }
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if signal != SIGHUP && stopping {
                    // A second SIGINT/SIGTERM: the operator does not want to wait. Every
                    // acknowledged write is already in the file, so exiting now is safe.
                    log::warn!("received signal {signal} again, exiting without waiting");
                    std::process::exit(1);
                }
                if signal != SIGHUP {
                    log::info!("received signal {signal}, shutting down");
                    handle.shutdown();
                    stopping = true;
                    continue;
                }
                match &certs {
                    Some(certs) => match certs.reload_within(tls::RELOAD_TIMEOUT) {
                        Ok(()) => log::info!("SIGHUP: reloaded the TLS certificate and key"),
                        Err(e) => log::error!("SIGHUP: keeping the current TLS certificate: {e}"),
                    },
                    None => log::info!("SIGHUP: nothing to reload (no TLS)"),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    server.serve(listeners).map_err(|e| e.to_string())?;
    log::info!("kvserver stopped cleanly");
    Ok(())
}

/// Binds every address `host:port` resolves to (a name such as `localhost` may give both
/// `127.0.0.1` and `::1`). An address that cannot be bound is skipped with a warning as long
/// as another one can; none at all is an error naming the flag.
fn bind(flag: &str, host_port: &str, config: &Config) -> Result<Vec<TcpListener>, String> {
    let mut addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{flag} {host_port}: cannot resolve the address: {e}"))?
        .collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{flag} {host_port}: the name resolves to no address"));
    }
    let mut listeners = Vec::new();
    let mut failures = Vec::new();
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                warn_if_exposed(addr, config);
                listeners.push(listener);
            }
            Err(e) => failures.push(format!("cannot listen on {addr}: {e}")),
        }
    }
    if listeners.is_empty() {
        return Err(format!("{flag} {host_port}: {}", failures.join("; ")));
    }
    for failure in failures {
        log::warn!("{flag} {host_port}: {failure}; serving its other addresses");
    }
    Ok(listeners)
}

fn warn_if_exposed(addr: SocketAddr, config: &Config) {
    if !addr.ip().is_loopback() {
        if config.users.is_none() {
            log::warn!(
                "UNPROTECTED: listening on non-loopback address {addr} without --users: anyone who can \
                 reach it can read, change and delete every key. Give a users file (--users) and TLS \
                 (--tls-cert, --tls-key), or listen on 127.0.0.1"
            );
        } else if config.tls_cert.is_none() {
            log::warn!(
                "listening on non-loopback address {addr} without TLS: passwords and data cross the \
                 network in clear; use --tls-cert and --tls-key"
            );
        }
    }
}

/// `kvserver hash-password`: prints `name:hash:role` for the users file.
fn hash_password(user: &str, role: &str) -> Result<(), String> {
    auth::validate_name(user)?;
    let role = Role::parse(role).ok_or_else(|| format!("unknown role {role:?}"))?;
    let password = read_password()?;
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    println!("{user}:{}:{role}", auth::hash_password(password.as_bytes())?);
    Ok(())
}

/// The new password: typed twice without echo on a terminal, else one line of stdin.
fn read_password() -> Result<String, String> {
    if io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_string())
}

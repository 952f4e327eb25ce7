//! `kvclient`: one-shot commands, a scriptable pipe mode, and an interactive prompt.
//!
//! Exit codes: 0 success; 1 a missing key or file (`get`, `del`, `rm`, `stat`, …); 2 any
//! error (cannot connect, `ERROR` reply, broken connection, a refused key). In pipe mode: 2 if
//! any request got `ERROR`.
//!
//! `--tls` connects over TLS (`--ca` names the CA or self-signed certificate to trust;
//! default: the system's bundle). `--user` logs in first, with the password from
//! `KVCLIENT_PASSWORD` or typed at the terminal without echo. Over TLS, pipe mode sends one
//! request at a time (a TLS session cannot be shared by the sending and reading threads).
//!
//! Modules: [`commands`] (what each command does), [`files`] (files of any size: chunks and
//! manifests), [`tree`] (directories over `/` paths), [`paths`] (key rules and path
//! resolution), [`reply`] (raw or redis-cli-like output), [`repl`] (the prompt).

mod commands;
mod error;
mod files;
mod paths;
mod repl;
mod reply;
mod tree;

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;

use textkv::client::{reply_shape, Client, ClientError, ReplyShape};

use commands::{Command, Shell};
use error::Error;

/// Client for kvserver's line protocol. With no command: an interactive prompt on a
/// terminal, or one request per input line when standard input is a pipe or file.
#[derive(Debug, Parser)]
#[command(
    name = "kvclient",
    version,
    about = "Client for kvserver's line protocol: one-shot commands, files and directories, a pipe mode and an interactive prompt"
)]
pub struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:7878", global = true)]
    addr: String,

    /// Connect over TLS (the server runs with --tls-cert and --tls-key).
    #[arg(long, global = true)]
    tls: bool,

    /// With --tls: trust the certificates in this PEM file (a private CA, or the server's own
    /// self-signed certificate) instead of the system's CA bundle.
    #[arg(long, value_name = "FILE", global = true, requires = "tls")]
    ca: Option<PathBuf>,

    /// Log in as this user (the server runs with --users). The password comes from the
    /// KVCLIENT_PASSWORD environment variable, or is asked for on the terminal.
    #[arg(long, value_name = "NAME", global = true)]
    user: Option<String>,

    /// Show replies exactly as the server sends them (the default when output is not a
    /// terminal).
    #[arg(long, global = true, conflicts_with = "no_raw")]
    raw: bool,

    /// Show replies as redis-cli does (`OK`, `(nil)`, `(integer) n`) even when output is not
    /// a terminal.
    #[arg(long, global = true)]
    no_raw: bool,

    /// Run the command this many times (-1: until interrupted).
    #[arg(short = 'r', value_name = "COUNT", default_value_t = 1, allow_negative_numbers = true)]
    repeat: i64,

    /// Seconds to wait between repetitions (-r); fractions allowed.
    #[arg(short = 'i', value_name = "SECONDS", default_value_t = 0.0)]
    interval: f64,

    #[command(subcommand)]
    command: Option<Command>,
}

impl Args {
    /// Whether replies are shown the redis-cli way.
    fn human(&self) -> bool {
        !self.raw && (self.no_raw || io::stdout().is_terminal())
    }
}

/// Environment variable holding the password for `--user`.
const PASSWORD_VAR: &str = "KVCLIENT_PASSWORD";

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(ref command) => one_shot(&args, command),
        None if io::stdin().is_terminal() => repl::run(&args),
        None => pipe(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if !e.to_string().is_empty() {
                eprintln!("kvclient: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Connects as the arguments say: TLS or not, then `auth` if `--user` was given.
pub fn connect(args: &Args) -> Result<Client, ClientError> {
    let mut client = if args.tls {
        let config = textkv::tls::client_config(args.ca.as_deref()).map_err(ClientError::Setup)?;
        Client::connect_tls(&args.addr, config)?
    } else {
        Client::connect(&args.addr)?
    };
    if let Some(user) = &args.user {
        let password = match std::env::var(PASSWORD_VAR) {
            Ok(password) => password,
            Err(_) => rpassword::prompt_password(format!("password for {user}: ")).map_err(|e| {
                ClientError::Setup(format!("cannot read a password ({e}); set {PASSWORD_VAR}"))
            })?,
        };
        client.auth(user, &password)?;
    }
    Ok(client)
}

/// Runs `command` (`-r` times, `-i` seconds apart) and returns the last run's exit code.
fn one_shot(args: &Args, command: &Command) -> Result<ExitCode, Error> {
    if matches!(command, Command::Cd { .. } | Command::Pwd) {
        return Err(Error::Refused("cd and pwd work at the interactive prompt".into()));
    }
    let mut client = connect(args)?;
    let mut shell = Shell { cwd: Vec::new(), human: args.human() };
    let mut stdout = io::stdout().lock();
    let mut run = 0i64;
    loop {
        let result = commands::run(&mut client, command, &mut shell, &mut stdout);
        stdout.flush()?;
        run += 1;
        if args.repeat >= 0 && run >= args.repeat {
            return result.map(|()| ExitCode::SUCCESS);
        }
        if let Err(e) = result {
            if e.exit_code() != 1 {
                return Err(e);
            }
        }
        thread::sleep(Duration::from_secs_f64(args.interval.max(0.0)));
    }
}

/// Standard input is not a terminal: send every line, print every reply. Requests are
/// pipelined (a sender thread writes while this thread reads), so replaying a large file
/// does not cost a round trip per line.
fn pipe(args: &Args) -> Result<ExitCode, Error> {
    let mut client = connect(args)?;
    let human = !args.raw && args.no_raw;
    if args.tls {
        return pipe_one_at_a_time(&mut client, human);
    }
    let mut sender = client.try_clone()?;
    let (shapes_tx, shapes_rx) = crossbeam_channel::bounded::<ReplyShape>(4096);
    let writer = thread::spawn(move || -> io::Result<()> {
        for line in io::stdin().lock().split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let shape = reply_shape(&line);
            if shape == ReplyShape::None {
                continue;
            }
            sender.send(&line)?;
            if shapes_tx.is_full() {
                sender.flush()?;
            }
            if shapes_tx.send(shape).is_err() || shape == ReplyShape::Closes {
                break;
            }
        }
        sender.flush()
    });
    let mut stdout = io::stdout().lock();
    let mut failed = false;
    for shape in shapes_rx {
        let lines = client.read_reply(shape).map_err(ClientError::from)?;
        failed |= lines.first().is_some_and(|line| line.starts_with(b"ERROR"));
        reply::show(&lines, human, &mut stdout)?;
    }
    stdout.flush()?;
    match writer.join() {
        Ok(result) => result?,
        Err(_) => return Err(ClientError::Protocol("input thread panicked".into()).into()),
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// Pipe mode over TLS: each request is answered before the next is sent.
fn pipe_one_at_a_time(client: &mut Client, human: bool) -> Result<ExitCode, Error> {
    let mut stdout = io::stdout().lock();
    let mut failed = false;
    for line in io::stdin().lock().split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let shape = reply_shape(&line);
        let lines = client.request(&line).map_err(ClientError::from)?;
        failed |= lines.first().is_some_and(|line| line.starts_with(b"ERROR"));
        reply::show(&lines, human, &mut stdout)?;
        if shape == ReplyShape::Closes {
            break;
        }
    }
    stdout.flush()?;
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

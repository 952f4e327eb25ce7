//! `kvclient`: one-shot commands, a scriptable pipe mode, and an interactive REPL.
//!
//! Exit codes: 0 success; 1 `get`/`del` of a missing key; 2 any error (cannot connect,
//! `ERROR` reply, broken connection). In pipe mode: 2 if any request got `ERROR`.
//!
//! `--tls` connects over TLS (`--ca` names the CA or self-signed certificate to trust;
//! default: the system's bundle). `--user` logs in first, with the password from
//! `KVCLIENT_PASSWORD` or typed at the terminal without echo. Over TLS, pipe mode sends one
//! request at a time (a TLS session cannot be shared by the sending and reading threads).

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;

use clap::{Parser, Subcommand};
use rustyline::error::ReadlineError;

use textkv::client::{reply_shape, Client, ClientError, ReplyShape};

/// Client for kvserver's line protocol. With no command: an interactive prompt on a
/// terminal, or one request per input line when standard input is a pipe or file.
#[derive(Debug, Parser)]
#[command(
    name = "kvclient",
    version,
    about = "Client for kvserver's line protocol: one-shot commands, a pipe mode and an interactive prompt"
)]
struct Args {
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

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value stored under KEY (exactly its bytes); exit 1 if there is none.
    Get { key: OsString },
    /// Store VALUE under KEY; several words are joined with single spaces. Any bytes are
    /// stored as given (kvclient escapes them for the wire).
    Set {
        key: OsString,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        value: Vec<OsString>,
    },
    /// Delete KEY; exit 1 if there was none.
    Del { key: OsString },
    /// List keys (optionally only those starting with PREFIX), sorted.
    Keys { prefix: Option<OsString> },
    /// Print the server's statistics.
    Stats,
    /// Check that the server answers.
    Ping,
    /// Rewrite the database file to hold only live keys.
    Compact,
}

/// Environment variable holding the password for `--user`.
const PASSWORD_VAR: &str = "KVCLIENT_PASSWORD";

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(ref command) => one_shot(&args, command),
        None if io::stdin().is_terminal() => repl(&args),
        None => pipe(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvclient: {e}");
            ExitCode::from(2)
        }
    }
}

/// Connects as the arguments say: TLS or not, then `auth` if `--user` was given.
fn connect(args: &Args) -> Result<Client, ClientError> {
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

fn one_shot(args: &Args, command: &Command) -> Result<ExitCode, ClientError> {
    let mut client = connect(args)?;
    let mut stdout = io::stdout().lock();
    match command {
        Command::Get { key } => match client.get(key.as_bytes())? {
            Some(value) => {
                stdout.write_all(&value)?;
                if io::stdout().is_terminal() {
                    stdout.write_all(b"\n")?;
                }
            }
            None => return Ok(ExitCode::from(1)),
        },
        Command::Set { key, value } => {
            let value: Vec<u8> = value.iter().map(|w| w.as_bytes()).collect::<Vec<_>>().join(&b' ');
            client.set(key.as_bytes(), &value)?;
        }
        Command::Del { key } => {
            if !client.del(key.as_bytes())? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Keys { prefix } => {
            let mut line = b"keys".to_vec();
            if let Some(prefix) = prefix {
                line.push(b' ');
                line.extend_from_slice(prefix.as_bytes());
            }
            print_listing(&mut client, &line, b"KEY ", &mut stdout)?;
        }
        Command::Stats => print_listing(&mut client, b"stats", b"STAT ", &mut stdout)?,
        Command::Ping => expect(&mut client, b"ping", b"PONG", &mut stdout)?,
        Command::Compact => expect(&mut client, b"compact", b"OK", &mut stdout)?,
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the reply lines of a listing without their prefix and the closing `END`.
fn print_listing(
    client: &mut Client,
    line: &[u8],
    prefix: &[u8],
    out: &mut impl Write,
) -> Result<(), ClientError> {
    for reply in client.request(line)? {
        if let Some(reason) = reply.strip_prefix(b"ERROR ") {
            return Err(ClientError::Server(String::from_utf8_lossy(reason).into_owned()));
        }
        if let Some(item) = reply.strip_prefix(prefix) {
            out.write_all(item)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

fn expect(client: &mut Client, line: &[u8], wanted: &[u8], out: &mut impl Write) -> Result<(), ClientError> {
    let reply = client.request(line)?.concat();
    if reply == wanted {
        out.write_all(&reply)?;
        out.write_all(b"\n")?;
        Ok(())
    } else if let Some(reason) = reply.strip_prefix(b"ERROR ") {
        Err(ClientError::Server(String::from_utf8_lossy(reason).into_owned()))
    } else {
        Err(ClientError::Protocol(String::from_utf8_lossy(&reply).into_owned()))
    }
}

/// Standard input is not a terminal: send every line, print every reply. Requests are
/// pipelined (a sender thread writes while this thread reads), so replaying a large file
/// does not cost a round trip per line.
fn pipe(args: &Args) -> Result<ExitCode, ClientError> {
    let mut client = connect(args)?;
    if args.tls {
        return pipe_one_at_a_time(&mut client);
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
        for line in client.read_reply(shape)? {
            failed |= line.starts_with(b"ERROR");
            stdout.write_all(&line)?;
            stdout.write_all(b"\n")?;
        }
    }
    stdout.flush()?;
    match writer.join() {
        Ok(result) => result?,
        Err(_) => return Err(ClientError::Protocol("input thread panicked".into())),
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// Pipe mode over TLS: each request is answered before the next is sent.
fn pipe_one_at_a_time(client: &mut Client) -> Result<ExitCode, ClientError> {
    let mut stdout = io::stdout().lock();
    let mut failed = false;
    for line in io::stdin().lock().split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let shape = reply_shape(&line);
        for reply in client.request(&line)? {
            failed |= reply.starts_with(b"ERROR");
            stdout.write_all(&reply)?;
            stdout.write_all(b"\n")?;
        }
        if shape == ReplyShape::Closes {
            break;
        }
    }
    stdout.flush()?;
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// The interactive prompt: line editing and history (rustyline); each line goes to the server
/// as typed and the reply is shown. `VALUE` replies are shown as sent (escaped), so they can be
/// pasted back into `set`.
fn repl(args: &Args) -> Result<ExitCode, ClientError> {
    let addr = &args.addr;
    let mut client = connect(args)?;
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| ClientError::Protocol(e.to_string()))?;
    let history =
        std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".kvclient_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("connected to {addr}; type help for commands, quit or Ctrl-D to leave");
    let prompt = format!("{addr}> ");
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        if !line.trim_start().to_ascii_lowercase().starts_with("auth ") {
            // A password must not end up in ~/.kvclient_history.
            let _ = editor.add_history_entry(line);
        }
        if reply_shape(line.as_bytes()) == ReplyShape::Closes || line.trim() == "exit" {
            break;
        }
        for reply in client.request(line.as_bytes())? {
            println!("{}", String::from_utf8_lossy(&reply));
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(ExitCode::SUCCESS)
}

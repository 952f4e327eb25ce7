//! The commands kvclient runs itself, the same from the command line and from the prompt.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::Subcommand;

use textkv::client::Client;

use crate::error::{Error, Result};
use crate::files;
use crate::paths::{as_dir, checked_key, file_key, resolve};
use crate::reply;
use crate::tree;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the value or file stored under KEY (exactly its bytes; a chunked file is
    /// streamed and checked); exit 1 if there is none. -o writes it to a local file.
    Get {
        key: OsString,
        /// Write to this local file (`-` = standard output) instead.
        #[arg(short = 'o', long = "output", value_name = "LOCAL-FILE")]
        output: Option<PathBuf>,
    },
    /// Store VALUE under KEY; several words are joined with single spaces, any bytes are
    /// stored as given. -x reads the value from standard input instead (binary-safe). A
    /// chunked file that was under KEY is replaced whole (its chunks deleted).
    Set {
        key: OsString,
        /// Read the value from standard input (as redis-cli's -x).
        #[arg(short = 'x')]
        from_stdin: bool,
        #[arg(required_unless_present = "from_stdin", conflicts_with = "from_stdin", num_args = 1.., allow_hyphen_values = true)]
        value: Vec<OsString>,
    },
    /// Delete KEYs (and the chunks of any that held a chunked file); prints how many
    /// existed, exit 1 if none did.
    Del {
        #[arg(required = true)]
        keys: Vec<OsString>,
    },
    /// Print how many of the KEYs exist.
    Exists {
        #[arg(required = true)]
        keys: Vec<OsString>,
    },
    /// Print the value of each KEY, one per line (an empty line for a missing one).
    Mget {
        #[arg(required = true)]
        keys: Vec<OsString>,
    },
    /// List keys (optionally only those matching PATTERN: a glob, or a prefix).
    Keys { pattern: Option<OsString> },
    /// Print the server's statistics.
    Stats,
    /// Check that the server answers.
    Ping,
    /// Rewrite the database file to hold only live keys.
    Compact,
    /// Store a local file (`-` = standard input) under KEY, any size (chunked when larger
    /// than the server's value limit; see README "Files and directories").
    Put { local: PathBuf, key: OsString },
    /// List a directory (or show one file); -l adds size and time of last write.
    Ls {
        #[arg(short = 'l')]
        long: bool,
        path: Option<OsString>,
    },
    /// Make a directory (it exists, empty, until removed).
    Mkdir { path: OsString },
    /// Copy a file (server-side), or a directory with -r.
    Cp {
        #[arg(short = 'r')]
        recursive: bool,
        src: OsString,
        dst: OsString,
    },
    /// Move or rename a file or a directory (server-side rename).
    Mv { src: OsString, dst: OsString },
    /// Remove files; -r removes a directory and everything in it (asking first when it is not
    /// empty, unless -f).
    Rm {
        #[arg(short = 'r')]
        recursive: bool,
        #[arg(short = 'f')]
        force: bool,
        #[arg(required = true)]
        paths: Vec<OsString>,
    },
    /// Show a file's size, storage, SHA-256, times and flags, or a directory's contents.
    #[command(alias = "info")]
    Stat { path: OsString },
    /// Bytes stored under a directory (or in a file).
    Du { path: Option<OsString> },
    /// Keys, database size and free disk space of the server.
    Df,
    /// At the prompt: change the current directory.
    Cd { path: Option<OsString> },
    /// At the prompt: print the current directory.
    Pwd,
}

/// The state commands share: the prompt's current directory and how replies are shown.
pub struct Shell {
    /// `""` (the root) or a directory ending with `/`.
    pub cwd: Vec<u8>,
    /// Show replies as redis-cli does (`OK`, `(nil)`, `(integer) n`) rather than raw.
    pub human: bool,
}

impl Shell {
    fn path(&self, arg: &OsString) -> Vec<u8> {
        resolve(&self.cwd, arg.as_bytes())
    }
}

fn keys_of(args: &[OsString]) -> Result<Vec<&[u8]>> {
    args.iter().map(|key| checked_key(key.as_bytes())).collect()
}

fn integer(n: u64, shell: &Shell, out: &mut impl Write) -> io::Result<()> {
    if shell.human {
        writeln!(out, "(integer) {n}")
    } else {
        writeln!(out, "{n}")
    }
}

/// Runs one command; `Err(Error::NotFound)` is exit code 1.
pub fn run(client: &mut Client, command: &Command, shell: &mut Shell, out: &mut impl Write) -> Result<()> {
    match command {
        Command::Get { key, output } => {
            let key = checked_key(key.as_bytes())?;
            let found = match output.as_deref() {
                Some(path) if path.is_dir() => {
                    // `get docs/report.pdf -o ~/Downloads` writes ~/Downloads/report.pdf.
                    let name = std::ffi::OsStr::from_bytes(crate::paths::base_name(key));
                    files::get_to_file(client, key, &path.join(name))?
                }
                Some(path) if path.as_os_str() != "-" => files::get_to_file(client, key, path)?,
                _ => {
                    let found = files::get(client, key, out, &String::from_utf8_lossy(key))?;
                    if found.is_some() && output.is_none() && io::stdout().is_terminal() {
                        out.write_all(b"\n")?;
                    }
                    found
                }
            };
            found
                .map(drop)
                .ok_or_else(|| Error::NotFound(format!("{}: no such key", String::from_utf8_lossy(key))))
        }
        Command::Set { key, from_stdin, value } => {
            let key = checked_key(key.as_bytes())?;
            let value = if *from_stdin {
                let limit = files::max_value_bytes(client)?;
                let mut value = Vec::new();
                io::stdin().lock().take(limit as u64 + 1).read_to_end(&mut value)?;
                if value.len() > limit {
                    return Err(Error::Refused(format!(
                        "value larger than the server's limit of {limit} bytes; store it with `kvclient put - {}`",
                        String::from_utf8_lossy(key)
                    )));
                }
                value
            } else {
                value.iter().map(|w| w.as_bytes()).collect::<Vec<_>>().join(&b' ')
            };
            client.set(key, &value)?;
            // The key may have held a chunked file: its chunks would be orphans now.
            files::remove_chunks(client, key, None)
        }
        Command::Del { keys } => {
            let keys = keys_of(keys)?;
            let mut deleted = Vec::new();
            let requests = keys.iter().map(|key| Ok([b"del ", *key].concat()));
            client.pipelined(requests, 128, |i, reply| {
                match reply.concat().as_slice() {
                    b"DELETED" => deleted.push(keys[i]),
                    b"NOT_FOUND" => {}
                    other => {
                        return Err(textkv::client::ClientError::Protocol(
                            String::from_utf8_lossy(other).into_owned(),
                        ))
                    }
                }
                Ok(())
            })?;
            for key in &deleted {
                // A deleted chunked file's chunks go too (as `rm` does).
                files::remove_chunks(client, key, None)?;
            }
            integer(deleted.len() as u64, shell, out)?;
            if deleted.is_empty() {
                return Err(Error::NotFound(String::new()));
            }
            Ok(())
        }
        Command::Exists { keys } => {
            let n = client.exists(&keys_of(keys)?)?;
            Ok(integer(n, shell, out)?)
        }
        Command::Mget { keys } => {
            let values = client.mget(&keys_of(keys)?)?;
            for (i, value) in values.iter().enumerate() {
                match (shell.human, value) {
                    (false, Some(value)) => out.write_all(value)?,
                    (false, None) => {}
                    (true, Some(value)) => {
                        let mut escaped = Vec::new();
                        textkv::escape::escape_into(value, &mut escaped);
                        write!(out, "{}) \"{}\"", i + 1, String::from_utf8_lossy(&escaped))?;
                    }
                    (true, None) => write!(out, "{}) (nil)", i + 1)?,
                }
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Command::Keys { pattern } => {
            let mut line = b"keys".to_vec();
            if let Some(pattern) = pattern {
                line.push(b' ');
                line.extend_from_slice(pattern.as_bytes());
            }
            let lines = client.request(&line)?;
            if let Some(reason) = lines.first().and_then(|l| l.strip_prefix(b"ERROR ")) {
                return Err(textkv::client::ClientError::Server(
                    String::from_utf8_lossy(reason).into_owned(),
                )
                .into());
            }
            for key in lines.iter().filter_map(|l| l.strip_prefix(b"KEY ")) {
                out.write_all(key)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Command::Stats => {
            for (name, value) in client.stats()? {
                writeln!(out, "{name} {value}")?;
            }
            Ok(())
        }
        Command::Ping => expect(client, b"ping", b"PONG", out),
        Command::Compact => expect(client, b"compact", b"OK", out),
        Command::Put { local, key } => {
            let mut path = shell.path(key);
            if (path.is_empty() || path.ends_with(b"/")) && local.as_os_str() != "-" {
                // `put report.pdf docs/` puts docs/report.pdf, as cp does.
                path.extend_from_slice(local.file_name().map(|n| n.as_bytes()).unwrap_or_default());
            }
            let key = file_key(path, &key.to_string_lossy())?;
            let stored = if local.as_os_str() == "-" {
                let bar = files::progress(None, &String::from_utf8_lossy(&key));
                let stored = files::put(client, &key, io::stdin().lock(), &bar)?;
                bar.finish_and_clear();
                stored
            } else {
                let file = std::fs::File::open(local)
                    .map_err(|e| Error::Refused(format!("{}: {e}", local.display())))?;
                let bar = files::progress(Some(file.metadata()?.len()), &local.display().to_string());
                let stored = files::put(client, &key, file, &bar)?;
                bar.finish_and_clear();
                stored
            };
            if shell.human {
                writeln!(out, "stored {stored} bytes in {}", String::from_utf8_lossy(&key))?;
            }
            Ok(())
        }
        Command::Ls { long, path } => {
            let path = path.as_ref().map_or_else(|| shell.cwd.clone(), |p| shell.path(p));
            tree::ls(client, &path, *long, out)
        }
        Command::Mkdir { path } => tree::mkdir(client, &shell.path(path)),
        Command::Cp { recursive, src, dst } => {
            tree::copy_or_move(client, &shell.path(src), &shell.path(dst), *recursive, false)
        }
        Command::Mv { src, dst } => {
            tree::copy_or_move(client, &shell.path(src), &shell.path(dst), true, true)
        }
        Command::Rm { recursive, force, paths } => {
            for path in paths {
                tree::rm(client, &shell.path(path), *recursive, *force, out)?;
            }
            Ok(())
        }
        Command::Stat { path } => tree::stat(client, &shell.path(path), out),
        Command::Du { path } => {
            let path = path.as_ref().map_or_else(|| shell.cwd.clone(), |p| shell.path(p));
            tree::du(client, &path, out)
        }
        Command::Df => tree::df(client, out),
        Command::Cd { path } => {
            let dir = as_dir(&path.as_ref().map_or_else(Vec::new, |p| shell.path(p)));
            if !tree::dir_exists(client, &dir)? {
                return Err(Error::NotFound(format!(
                    "cd: {}: no such directory",
                    String::from_utf8_lossy(&dir)
                )));
            }
            shell.cwd = dir;
            Ok(())
        }
        Command::Pwd => pwd(shell, out),
    }
}

/// `pwd`: needs no server.
pub fn pwd(shell: &Shell, out: &mut impl Write) -> Result<()> {
    writeln!(out, "/{}", String::from_utf8_lossy(&shell.cwd))?;
    Ok(())
}

fn expect(client: &mut Client, line: &[u8], wanted: &[u8], out: &mut impl Write) -> Result<()> {
    let reply = client.request(line)?.concat();
    if reply == wanted {
        reply::show(&[reply], false, out)?;
        Ok(())
    } else if let Some(reason) = reply.strip_prefix(b"ERROR ") {
        Err(textkv::client::ClientError::Server(String::from_utf8_lossy(reason).into_owned()).into())
    } else {
        Err(textkv::client::ClientError::Protocol(String::from_utf8_lossy(&reply).into_owned()).into())
    }
}

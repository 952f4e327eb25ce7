//! The interactive prompt, as redis-cli users expect it.
//!
//! - Each line is either one of kvclient's own commands (`ls`, `cd`, `pwd`, `mkdir`, `cp`,
//!   `mv`, `rm`, `put`, `stat`/`info`, `du`, `df`, and `get <key> -o <file>`), parsed like the
//!   command line (words, `'…'`/`"…"` quoting), or a protocol request sent as typed — with
//!   its key arguments taken relative to the current directory once `cd` left the root.
//! - Replies are shown as redis-cli does (`OK`, `(nil)`, `(integer) n`), raw with `--raw`.
//! - The connection is checked before each request; when the server restarted or dropped
//!   the connection the prompt reconnects, and while it cannot the prompt says
//!   `not connected> ` and tries again on the next command, instead of exiting.
//! - History (`~/.kvclient_history`, never `auth` lines) is appended after every line, so a
//!   killed session keeps it.
//! - Tab completes command names, and keys/paths under the cursor (one `scan match
//!   <prefix>*` walk, capped, one path component at a time).

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use clap::Parser;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use textkv::client::{glob_escape, parse_value, reply_shape, Client, ReplyShape};
use textkv::store::format::split_token;

use crate::commands::{self, Command, Shell};
use crate::error::Error;
use crate::files::{is_chunk_key, Manifest};
use crate::paths::{as_dir, resolve};
use crate::reply;
use crate::{connect, Args};

/// Commands kvclient runs itself at the prompt (others go to the server as typed).
const OWN_COMMANDS: &[&str] =
    &["ls", "cd", "pwd", "mkdir", "cp", "mv", "rm", "put", "stat", "info", "du", "df"];
/// Every command name, for completion.
const ALL_COMMANDS: &[&str] = &[
    "append",
    "auth",
    "cd",
    "compact",
    "copy",
    "cp",
    "decr",
    "del",
    "delprefix",
    "df",
    "du",
    "exists",
    "exit",
    "expire",
    "flush",
    "get",
    "help",
    "incr",
    "info",
    "keys",
    "ls",
    "mget",
    "mkdir",
    "mv",
    "ping",
    "put",
    "pwd",
    "quit",
    "rename",
    "rm",
    "scan",
    "set",
    "setmeta",
    "stat",
    "stats",
    "ttl",
];
/// Completion looks at most this many `scan` pages and offers at most this many names.
const COMPLETION_PAGES: usize = 50;
const COMPLETION_CANDIDATES: usize = 200;

/// The connection, reopened when it broke.
struct Connection<'a> {
    args: &'a Args,
    client: Option<Client>,
}

impl Connection<'_> {
    /// The client, reconnecting first if there is none or the server closed it.
    fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.as_ref().is_some_and(Client::peer_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(connect(self.args)?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }
}

#[derive(Parser)]
#[command(no_binary_name = true, name = "")]
struct PromptLine {
    #[command(subcommand)]
    command: Command,
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    let connection = Rc::new(RefCell::new(Connection { args, client: None }));
    let shell = Rc::new(RefCell::new(Shell { cwd: Vec::new(), human: !args.raw }));
    let mut editor: Editor<PathCompleter, DefaultHistory> =
        Editor::new().map_err(|e| Error::Refused(e.to_string()))?;
    editor.set_helper(Some(PathCompleter { connection: Rc::clone(&connection), shell: Rc::clone(&shell) }));
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kvclient_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    match connection.borrow_mut().client() {
        Ok(_) => println!("connected to {}; type help for commands, quit or Ctrl-D to leave", args.addr),
        Err(e) => println!("(error) {e}"),
    }
    loop {
        let prompt = {
            let connected = connection.borrow().client.is_some();
            let cwd = &shell.borrow().cwd;
            match (connected, cwd.is_empty()) {
                (false, _) => "not connected> ".to_string(),
                (true, true) => format!("{}> ", args.addr),
                (true, false) => format!("{} /{}> ", args.addr, String::from_utf8_lossy(cwd)),
            }
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Error::Refused(e.to_string())),
        };
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        if !line.trim_start().to_ascii_lowercase().starts_with("auth ") {
            // A password must not end up in ~/.kvclient_history.
            let _ = editor.add_history_entry(line);
            if let Some(path) = &history {
                let _ = editor.append_history(path);
            }
        }
        if reply_shape(line.as_bytes()) == ReplyShape::Closes || line.trim() == "exit" {
            break;
        }
        let mut connection = connection.borrow_mut();
        let mut shell = shell.borrow_mut();
        if let Err(e) = run_line(&mut connection, &mut shell, line) {
            if e.is_disconnect() {
                connection.client = None;
            }
            if !e.to_string().is_empty() {
                println!("(error) {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_line(connection: &mut Connection, shell: &mut Shell, line: &str) -> Result<(), Error> {
    let words = split_words(line).map_err(Error::Refused)?;
    let first = words.first().map(|w| w.to_ascii_lowercase()).unwrap_or_default();
    let own = OWN_COMMANDS.contains(&first.as_str())
        || (first == "get" && words.iter().any(|w| w == "-o" || w.starts_with("--output")));
    let mut stdout = io::stdout().lock();
    if own {
        let parsed = match PromptLine::try_parse_from(words.iter().map(OsString::from)) {
            Ok(parsed) => parsed,
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                writeln!(stdout, "{}", e.render().to_string().trim_end())?;
                return Ok(());
            }
            Err(e) => {
                let text = e.render().to_string();
                return Err(Error::Refused(text.trim_end().to_string()));
            }
        };
        if matches!(parsed.command, Command::Pwd) {
            return commands::pwd(shell, &mut stdout);
        }
        let client = connection.client()?;
        let result = commands::run(client, &parsed.command, shell, &mut stdout);
        stdout.flush()?;
        return match result {
            Err(Error::NotFound(reason)) if reason.is_empty() => Ok(()),
            other => other,
        };
    }
    let request = relative_keys(&shell.cwd, line.as_bytes());
    let client = connection.client()?;
    let reply = client.request(&request).map_err(textkv::client::ClientError::from)?;
    reply::show(&reply, shell.human, &mut stdout)?;
    let manifest =
        reply.first().and_then(|line| parse_value(line)).flatten().and_then(|v| Manifest::parse(&v));
    if let (Some(manifest), true) = (manifest, first == "get") {
        writeln!(
            stdout,
            "(a file of {} bytes in {} chunks: `get <key> -o <local-file>` fetches it)",
            manifest.size, manifest.chunks
        )?;
    }
    Ok(())
}

/// Splits a prompt line into words: blanks separate, `'…'` and `"…"` quote, `\` escapes the
/// next character outside single quotes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some(c) => w.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// A protocol request with its key arguments resolved against the current directory (as
/// typed when at the root). Which arguments are keys depends on the command; a value is
/// never touched.
fn relative_keys(cwd: &[u8], line: &[u8]) -> Vec<u8> {
    let (word, rest) = split_token(line);
    let keys = match word.to_ascii_lowercase().as_slice() {
        b"get" | b"del" | b"exists" | b"mget" | b"ttl" => usize::MAX,
        b"set" | b"setmeta" | b"append" | b"expire" | b"incr" | b"decr" => 1,
        b"copy" | b"rename" => 2,
        _ => 0,
    };
    let Some(rest) = rest.filter(|_| keys > 0 && !cwd.is_empty()) else { return line.to_vec() };
    let mut out = word.to_vec();
    for (i, arg) in rest.splitn(keys.saturating_add(1), |&b| b == b' ').enumerate() {
        out.push(b' ');
        if i < keys && !arg.is_empty() && !arg.eq_ignore_ascii_case(b"NX") {
            out.extend_from_slice(&resolve(cwd, arg));
        } else {
            out.extend_from_slice(arg);
        }
    }
    out
}

/// Tab completion of command names and of keys/paths.
struct PathCompleter<'a> {
    connection: Rc<RefCell<Connection<'a>>>,
    shell: Rc<RefCell<Shell>>,
}

impl PathCompleter<'_> {
    /// Names under the directory part of `word`, one component at a time.
    fn paths(&self, word: &str) -> Vec<Pair> {
        let (typed_dir, partial) = match word.rfind('/') {
            Some(slash) => (&word[..=slash], &word[slash + 1..]),
            None => ("", word),
        };
        let Ok(shell) = self.shell.try_borrow() else { return Vec::new() };
        let dir = as_dir(&resolve(&shell.cwd, typed_dir.as_bytes()));
        let prefix = [&dir[..], partial.as_bytes()].concat();
        let Ok(mut connection) = self.connection.try_borrow_mut() else { return Vec::new() };
        let Some(client) = connection.client.as_mut() else { return Vec::new() };
        let mut pattern = glob_escape(&prefix);
        pattern.push(b'*');
        let mut names = std::collections::BTreeSet::new();
        let mut cursor = b"0".to_vec();
        for _ in 0..COMPLETION_PAGES {
            let Ok((next, keys)) = client.scan(&cursor, Some(&pattern), 1000) else { break };
            for key in keys {
                let rest = &key[dir.len()..];
                let name = match rest.iter().position(|&b| b == b'/') {
                    Some(slash) => &rest[..=slash],
                    None => rest,
                };
                if !name.is_empty() && !is_chunk_key(name) {
                    names.insert(String::from_utf8_lossy(name).into_owned());
                }
            }
            if next == b"0" || names.len() >= COMPLETION_CANDIDATES {
                break;
            }
            cursor = next;
        }
        names
            .into_iter()
            .take(COMPLETION_CANDIDATES)
            .map(|name| Pair { display: name.clone(), replacement: format!("{typed_dir}{name}") })
            .collect()
    }
}

impl Completer for PathCompleter<'_> {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        if start == 0 {
            let lower = word.to_ascii_lowercase();
            let names = ALL_COMMANDS
                .iter()
                .filter(|c| c.starts_with(&lower))
                .map(|c| Pair { display: c.to_string(), replacement: format!("{c} ") })
                .collect();
            return Ok((0, names));
        }
        Ok((start, self.paths(word)))
    }
}

impl Hinter for PathCompleter<'_> {
    type Hint = String;
}

impl Highlighter for PathCompleter<'_> {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for PathCompleter<'_> {}

impl Helper for PathCompleter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("put 'my file.txt' docs/f").unwrap(), ["put", "my file.txt", "docs/f"]);
        assert_eq!(split_words("ls  -l \"a b\"").unwrap(), ["ls", "-l", "a b"]);
        assert_eq!(split_words(r"put my\ file x").unwrap(), ["put", "my file", "x"]);
        assert!(split_words("put 'open").is_err());
    }

    #[test]
    fn keys_are_relative_to_the_directory_values_are_not() {
        let r = |cwd: &str, line: &str| {
            String::from_utf8(relative_keys(cwd.as_bytes(), line.as_bytes())).unwrap()
        };
        assert_eq!(r("docs/", "get a"), "get docs/a");
        assert_eq!(r("docs/", "set a x  y/../z"), "set docs/a x  y/../z");
        assert_eq!(r("docs/", "mget a ../b /c"), "mget docs/a b c");
        assert_eq!(r("docs/", "rename a b NX"), "rename docs/a docs/b NX");
        assert_eq!(r("docs/", "ping"), "ping");
        assert_eq!(r("", "get a//b"), "get a//b", "at the root requests go as typed");
    }
}

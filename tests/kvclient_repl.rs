//! kvclient's interactive prompt, driven as a person would: in a terminal (tmux), typing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{temp_db, Server, KVCLIENT, KVSERVER};

/// A tmux session running one command; killed on drop.
struct Terminal {
    name: String,
}

impl Terminal {
    fn start(name: &str, home: &Path, command: &str) -> Terminal {
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", name, "-x", "120", "-y", "40"])
            .arg(format!("HOME={} {command}", home.display()))
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session");
        Terminal { name: name.to_string() }
    }

    fn send(&self, keys: &[&str]) {
        let status = Command::new("tmux").args(["send-keys", "-t", &self.name]).args(keys).status().unwrap();
        assert!(status.success(), "tmux send-keys");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text` `times` times.
    fn wait_for(&self, text: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= times {
                return screen;
            }
            assert!(Instant::now() < deadline, "never saw {text:?} {times}x on:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}

/// Is tmux there? (CI must have it: .ci/run installs it.)
fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run this test (.ci/run installs tmux)");
    eprintln!("skipping: tmux is not installed");
    false
}

#[test]
fn the_prompt_edits_recalls_history_and_shows_replies() {
    if !have_tmux() {
        return;
    }
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let name = format!("kvclient-repl-{}", std::process::id());
    let term = Terminal::start(&name, dir.path(), &format!("{KVCLIENT} --addr {}", server.addr));
    let prompt = format!("{}>", server.addr); // capture-pane drops trailing spaces
    term.wait_for(&prompt, 1);

    term.send(&["set greeting hello wrld", "Left", "Left", "Left", "o", "Enter"]);
    term.wait_for("OK", 1);
    term.send(&["get greeting", "Enter"]);
    term.wait_for("\"hello world\"", 1);
    // Arrow up twice recalls the `set`; edit its value in place and send it again.
    term.send(&["Up", "Up", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "there", "Enter"]);
    term.wait_for("OK", 2);
    term.send(&["get greeting", "Enter"]);
    term.wait_for("\"hello there\"", 1);
    term.send(&["get nothing", "Enter"]);
    term.wait_for("(nil)", 1);
    term.send(&["frobnicate", "Enter"]);
    let screen = term.wait_for("(error) unknown command 'frobnicate'", 1);
    assert!(screen.contains(&prompt), "{screen}");

    term.send(&["C-d"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let history = dir.path().join(".kvclient_history");
    while !history.exists() {
        assert!(Instant::now() < deadline, "history was not saved:\n{}", term.screen());
        std::thread::sleep(Duration::from_millis(50));
    }
    let history = std::fs::read_to_string(history).unwrap();
    assert!(history.contains("set greeting hello there") && history.contains("frobnicate"), "{history}");
    assert_eq!(server.client().get(b"greeting").unwrap().as_deref(), Some(&b"hello there"[..]));
}

/// Waits until `path` contains `text`.
fn wait_for_file(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.contains(text) {
            return content;
        }
        assert!(Instant::now() < deadline, "{} never contained {text:?}: {content:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_prompt_survives_a_server_restart_and_keeps_history_line_by_line() {
    if !have_tmux() {
        return;
    }
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let addr = server.addr;
    let name = format!("kvclient-reconnect-{}", std::process::id());
    let term = Terminal::start(&name, dir.path(), &format!("{KVCLIENT} --addr {addr}"));
    term.wait_for(&format!("{addr}>"), 1);
    term.send(&["set k before", "Enter"]);
    term.wait_for("OK", 1);
    // History is on disk after each line, not only at a clean exit.
    wait_for_file(&dir.path().join(".kvclient_history"), "set k before");

    server.kill();
    term.send(&["get k", "Enter"]);
    term.wait_for("connection refused", 1);
    term.wait_for("not connected>", 1);

    // The same port again, the same file: the next command reconnects by itself.
    let mut command = Command::new(KVSERVER);
    command
        .arg("--db")
        .arg(&db)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let restarted = Server::start_command(command, &db).unwrap_or_else(|e| panic!("restart: {}", e.log));
    term.send(&["get k", "Enter"]);
    term.wait_for("\"before\"", 1);
    term.wait_for(&format!("{addr}>"), 2);
    term.send(&["set k after", "Enter"]);
    term.wait_for("OK", 2);
    assert_eq!(restarted.client().get(b"k").unwrap().as_deref(), Some(&b"after"[..]));
    wait_for_file(&dir.path().join(".kvclient_history"), "set k after");
}

#[test]
fn a_large_transfer_shows_a_progress_bar_on_a_terminal_and_none_when_piped() {
    if !have_tmux() {
        return;
    }
    let (dir, db) = temp_db();
    let server = Server::start(&db, &["--fsync", "never"]);
    let file = dir.path().join("big.bin");
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let name = format!("kvclient-progress-{}", std::process::id());
    let command =
        format!("{KVCLIENT} --addr {} put {} big; echo put-exited-$?; sleep 60", server.addr, file.display());
    let term = Terminal::start(&name, dir.path(), &command);
    let screen = term.wait_for(" eta ", 1);
    assert!(screen.contains("big.bin"), "the bar names the file: {screen}");
    term.wait_for("put-exited-0", 1);
    let manifest = server.client().get(b"big").unwrap().unwrap();
    assert!(manifest.starts_with(b"textkv-file v1 size=25165824 chunks=24 "), "{manifest:?}");

    let piped = Command::new(KVCLIENT)
        .args(["--addr", &server.addr.to_string(), "get", "big", "-o", "-"])
        .output()
        .unwrap();
    assert!(piped.status.success() && piped.stdout == data);
    assert!(
        piped.stderr.is_empty(),
        "nothing but the file when piped: {:?}",
        String::from_utf8_lossy(&piped.stderr)
    );
}

#[test]
fn the_prompt_has_a_current_directory_completes_paths_and_asks_before_rm_r() {
    if !have_tmux() {
        return;
    }
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut client = server.client();
    for (key, value) in
        [("docs/report.txt", "r"), ("docs/notes/a", "a"), ("docs/notes/b", "b"), ("other", "o")]
    {
        client.set(key.as_bytes(), value.as_bytes()).unwrap();
    }
    let addr = server.addr;
    let name = format!("kvclient-dirs-{}", std::process::id());
    let term = Terminal::start(&name, dir.path(), &format!("{KVCLIENT} --addr {addr}"));
    term.wait_for(&format!("{addr}>"), 1);

    // Tab completes a command, then a path one component at a time.
    term.send(&["ge", "Tab", "do", "Tab", "rep", "Tab", "Enter"]);
    term.wait_for("\"r\"", 1);
    term.send(&["cd docs", "Enter"]);
    term.wait_for(&format!("{addr} /docs/>"), 1);
    term.send(&["pwd", "Enter"]);
    term.wait_for("\n/docs/", 1);
    term.send(&["ls", "Enter"]);
    term.wait_for("notes/", 1);
    term.send(&["get notes/a", "Enter"]); // protocol requests take paths relative to it too
    term.wait_for("\"a\"", 1);
    term.send(&["cd ..", "Enter"]);
    term.wait_for(&format!("{addr}>"), 3);

    // rm -r of a non-empty directory asks; "n" keeps it, "y" removes it.
    term.send(&["rm -r docs/notes", "Enter"]);
    term.wait_for("remove directory docs/notes/ and the 2 file(s) in it? [y/N]", 1);
    term.send(&["n", "Enter"]);
    term.wait_for("not removed", 1);
    assert!(client.get(b"docs/notes/a").unwrap().is_some());
    term.send(&["rm -r docs/notes", "Enter"]);
    term.wait_for("[y/N]", 2);
    term.send(&["y", "Enter"]);
    term.wait_for(&format!("{addr}>"), 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(b"docs/notes/a").unwrap().is_some() {
        assert!(Instant::now() < deadline, "rm -r did not remove:\n{}", term.screen());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.get(b"docs/report.txt").unwrap().as_deref(), Some(&b"r"[..]), "only that directory");
}

//! kvclient's interactive prompt, driven as a person would: in a terminal (tmux), typing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{temp_db, Server, KVCLIENT};

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

#[test]
fn the_prompt_edits_recalls_history_and_shows_replies() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run this test (.ci/run installs tmux)"
        );
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let name = format!("kvclient-repl-{}", std::process::id());
    let term = Terminal::start(&name, dir.path(), &format!("{KVCLIENT} --addr {}", server.addr));
    let prompt = format!("{}>", server.addr); // capture-pane drops trailing spaces
    term.wait_for(&prompt, 1);

    term.send(&["set greeting hello wrld", "Left", "Left", "Left", "o", "Enter"]);
    term.wait_for("STORED", 1);
    term.send(&["get greeting", "Enter"]);
    term.wait_for("VALUE hello world", 1);
    // Arrow up twice recalls the `set`; edit its value in place and send it again.
    term.send(&["Up", "Up", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "there", "Enter"]);
    term.wait_for("STORED", 2);
    term.send(&["get greeting", "Enter"]);
    term.wait_for("VALUE hello there", 1);
    term.send(&["frobnicate", "Enter"]);
    let screen = term.wait_for("ERROR unknown command 'frobnicate'", 1);
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

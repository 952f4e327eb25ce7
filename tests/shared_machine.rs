//! What the server promises on a machine it shares with other people and processes, and on
//! a disk that fills up or fails: the database under other names (symbolic and hard links),
//! files planted beside it, the file changed behind the server's back, a write refused by
//! the disk that must never come back, and a full disk recovered by compacting.
//!
//! The fault-injection tests use strace (`-e inject=…`) to make exactly one fsync or
//! truncate fail, and the full-disk tests mount a small tmpfs; both need root and say so
//! when they skip.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::faults::Conn;
use common::{temp_db, wrapped_command, Server};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn conn(server: &Server) -> Conn {
    Conn::connect(server.addr, IO_TIMEOUT).expect("connect")
}

fn call(conn: &mut Conn, request: &str) -> String {
    String::from_utf8(conn.call(request.as_bytes()).expect("reply")).expect("utf-8 reply")
}

fn refused_because_in_use(db: &Path) {
    match Server::try_start(db, &[]) {
        Ok(_) => panic!("a second server opened {}", db.display()),
        Err(exited) => {
            assert!(!exited.status.success());
            assert!(exited.log.contains("in use by another kvserver"), "{}", exited.log);
        }
    }
}

#[test]
fn a_second_server_is_refused_under_any_name_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b", "c"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let real = dir.path().join("a/database.txt");
    let first = Server::start(&real, &[]);
    let mut c = conn(&first);
    assert_eq!(call(&mut c, "set owner first"), "STORED");

    let symlink = dir.path().join("b/database.txt");
    std::os::unix::fs::symlink(&real, &symlink).unwrap();
    refused_because_in_use(&symlink);
    let hard_link = dir.path().join("c/database.txt");
    fs::hard_link(&real, &hard_link).unwrap();
    refused_because_in_use(&hard_link);
    // The lock is on the file itself, so there is no lock file anyone could delete.
    let names: Vec<_> = fs::read_dir(dir.path().join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".lock")), "{names:?}");
    assert_eq!(call(&mut c, "get owner"), "VALUE first", "the first server is unaffected");
    drop(c);
    first.kill();

    // With the extra hard link, compaction would leave one name stale: refused with a reason.
    match Server::try_start(&real, &[]) {
        Ok(_) => panic!("a database with two hard links was opened"),
        Err(exited) => assert!(exited.log.contains("has 2 hard links"), "{}", exited.log),
    }
    fs::remove_file(&hard_link).unwrap();
    let server = Server::start(&symlink, &[]);
    assert_eq!(call(&mut conn(&server), "get owner"), "VALUE first");
}

#[test]
fn the_lock_passes_to_the_new_file_a_compaction_installs() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set k v"), "STORED");
    assert_eq!(call(&mut c, "compact"), "OK");
    refused_because_in_use(&db);
    assert_eq!(call(&mut c, "set k2 v2"), "STORED");
}

#[test]
fn compacting_a_symlinked_database_rewrites_the_real_file_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.txt");
    let link = dir.path().join("database.txt");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let server = Server::start(&link, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set before compaction"), "STORED");
    assert_eq!(call(&mut c, "set before again"), "STORED");
    assert_eq!(call(&mut c, "compact"), "OK");
    assert_eq!(call(&mut c, "set after compaction"), "STORED");
    drop(c);
    server.kill();
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is still a link");
    let text = fs::read_to_string(&real).unwrap();
    assert!(text.contains("set before again") && text.contains("set after compaction"), "{text}");
    let server = Server::start(&real, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "get before"), "VALUE again");
    assert_eq!(call(&mut c, "get after"), "VALUE compaction");
}

#[test]
fn compaction_never_writes_through_a_link_planted_at_its_temporary_name() {
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let victim = dir.path().join("victim");
    fs::write(&victim, "not yours").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("database.txt.compact")).unwrap();
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set k v"), "STORED");
    assert_eq!(call(&mut c, "compact"), "OK");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "not yours");
    assert_eq!(fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(!dir.path().join("database.txt.compact").exists());
    assert_eq!(call(&mut c, "get k"), "VALUE v");
}

#[test]
fn a_file_changed_behind_the_servers_back_is_never_overwritten() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set a 1"), "STORED");
    // Someone appends a line by hand while the server runs.
    let mut text = fs::read(&db).unwrap();
    text.extend_from_slice(b"set by-hand yes\n");
    fs::write(&db, &text).unwrap();
    let reply = call(&mut c, "set b 2");
    assert!(reply.starts_with("ERROR") && reply.contains("changed by another process"), "{reply}");
    assert!(call(&mut c, "set c 3").contains("writes refused until restart"));
    assert_eq!(call(&mut c, "get a"), "VALUE 1", "reads go on");
    assert_eq!(fs::read(&db).unwrap(), text, "the hand-written line is intact");
    // The log is read by another thread of the harness: wait for the line, do not race it.
    assert!(server.wait_for_log("changed by another process", IO_TIMEOUT), "{}", server.log());
    drop(c);
    server.kill();
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "get by-hand"), "VALUE yes");
    assert_eq!(call(&mut c, "get b"), "NOT_FOUND");
}

#[test]
fn a_database_replaced_while_the_server_runs_is_noticed() {
    let (dir, db) = temp_db();
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set a 1"), "STORED");
    fs::rename(&db, dir.path().join("moved-away.txt")).unwrap();
    fs::write(&db, "set other file\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reply = call(&mut c, "set b 2");
    while reply == "STORED" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        reply = call(&mut c, "set b 2");
    }
    assert!(reply.contains("no longer names the file"), "{reply}");
    assert_eq!(fs::read_to_string(&db).unwrap(), "set other file\n");
}

#[test]
fn db_errors_name_the_path_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no/such/dir/database.txt");
    let exited = Server::try_start(&missing_dir, &[]).err().expect("refused");
    assert!(exited.log.contains(&missing_dir.display().to_string()), "{}", exited.log);

    let a_dir = dir.path().join("a-directory");
    fs::create_dir(&a_dir).unwrap();
    let exited = Server::try_start(&a_dir, &[]).err().expect("refused");
    assert!(exited.log.contains(&a_dir.display().to_string()), "{}", exited.log);

    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let exited = Server::try_start(&fifo, &[]).err().expect("refused");
    assert!(exited.log.contains("not a regular file"), "{}", exited.log);

    let not_a_db = dir.path().join("notes.md");
    fs::write(&not_a_db, "# notes\nhello world\n").unwrap();
    let exited = Server::try_start(&not_a_db, &[]).err().expect("refused");
    assert!(exited.log.contains("notes.md:2: unknown command 'hello'"), "{}", exited.log);
    let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["a-directory", "fifo", "notes.md"], "no lock, reserve or other file left");
}

#[test]
fn a_value_over_the_value_limit_loads_with_a_warning_naming_its_line() {
    let (_dir, db) = temp_db();
    let big = "x".repeat(2 << 20);
    fs::write(&db, format!("set small 1\nset big {big}\n")).unwrap();
    let server = Server::start(&db, &[]);
    assert!(
        server
            .log()
            .contains("database.txt:2: value of 2097152 bytes is larger than --max-value-bytes (1048576)"),
        "{}",
        server.log()
    );
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "get big").len(), "VALUE ".len() + big.len());
}

// --- strace fault injection ---

fn strace_available() -> bool {
    let ok = Command::new("strace")
        .args(["-qq", "-e", "trace=none", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: strace is not installed or cannot trace here (.ci/run installs it)");
    }
    ok
}

/// `kvserver` run under `strace -f <strace_args>`, and the PID of kvserver itself (signals
/// must go to it: strace would detach rather than pass them on).
/// The PID of a kvserver run under strace, killed on drop: killing strace (what `Server`
/// does) would only detach it, and a failed assertion must not leave it running.
struct TracedPid(i32);

impl Drop for TracedPid {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

fn traced_server(db: &Path, strace_args: &[&str], args: &[&str]) -> (Server, TracedPid) {
    let wrapper: Vec<&str> =
        ["strace", "-f", "-qq", "-o", "/dev/null"].iter().chain(strace_args).copied().collect();
    let command = wrapped_command(&wrapper, db, args);
    let server = Server::start_command(command, db).unwrap_or_else(|e| panic!("{}", e.log));
    let pid = TracedPid(child_of(server.pid()).expect("kvserver runs under strace"));
    (server, pid)
}

fn child_of(parent: u32) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// The write the disk refused (its fsync fails, and so does the truncate that would cut it
/// off) is answered with an error, and does not come back after a clean stop or a crash.
fn an_error_answered_flush_stays_undone(stop_with: i32) {
    let (dir, db) = temp_db();
    let inject = ["-e", "inject=fdatasync:error=EIO:when=2", "-e", "inject=ftruncate:error=EIO:when=1"];
    let (server, pid) = traced_server(&db, &inject, &["--compact-reserve-bytes", "0"]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "set important keep-me"), "STORED");
    let reply = call(&mut c, "flush");
    assert!(reply.starts_with("ERROR I/O error"), "{reply}");
    assert_eq!(call(&mut c, "get important"), "VALUE keep-me");
    // Never retried into a lie: no write is acknowledged after a failed fsync.
    let reply = call(&mut c, "set later x");
    assert!(reply.contains("writes refused until restart") && reply.contains("fsync"), "{reply}");
    assert!(dir.path().join("database.txt.cut").exists(), "the pending cut is recorded:\n{}", server.log());
    drop(c);
    unsafe {
        libc::kill(pid.0, stop_with);
    }
    let exited = server.signal_and_wait(0);
    if stop_with == libc::SIGTERM {
        assert!(exited.status.success(), "{}", exited.log);
        assert!(exited.log.contains("cut the refused write off"), "{}", exited.log);
        assert!(!dir.path().join("database.txt.cut").exists(), "{}", exited.log);
    }
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "get important"), "VALUE keep-me", "{}", server.log());
    assert_eq!(call(&mut c, "get later"), "NOT_FOUND");
    assert_eq!(call(&mut c, "set later y"), "STORED", "a restart clears the refusal");
    assert!(!dir.path().join("database.txt.cut").exists());
}

#[test]
fn an_error_answered_write_does_not_come_back_after_a_clean_stop() {
    if strace_available() {
        an_error_answered_flush_stays_undone(libc::SIGTERM);
    }
}

#[test]
fn an_error_answered_write_does_not_come_back_after_a_crash() {
    if strace_available() {
        an_error_answered_flush_stays_undone(libc::SIGKILL);
    }
}

#[test]
fn what_was_loaded_is_fsynced_before_it_is_served() {
    if !strace_available() {
        return;
    }
    let (dir, db) = temp_db();
    fs::write(&db, "set a 1\n").unwrap();
    let trace = dir.path().join("trace");
    let trace_arg = trace.to_str().unwrap().to_string();
    let wrapper = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,listen", "-o", &trace_arg];
    let server = Server::start_command(wrapped_command(&wrapper, &db, &[]), &db)
        .unwrap_or_else(|e| panic!("{}", e.log));
    // Stop kvserver itself so that strace exits and flushes its trace.
    let pid = TracedPid(child_of(server.pid()).expect("kvserver runs under strace"));
    unsafe {
        libc::kill(pid.0, libc::SIGTERM);
    }
    assert!(server.signal_and_wait(0).status.success());
    let text = fs::read_to_string(&trace).unwrap();
    let listen = text.find("listen(").expect("listen traced");
    let synced = text[..listen]
        .find("database.txt>)")
        .unwrap_or_else(|| panic!("an fsync of the database before listen:\n{text}"));
    assert!(text[..synced].rsplit('\n').next().unwrap().contains("fsync("), "{text}");
}

// --- a real, small, full file system ---

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = unsafe { libc::geteuid() } == 0
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("database.txt")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Overwrites a small set of keys with `value_len`-byte values until the disk refuses a
/// write; returns the number of writes acknowledged. Bounded in count and time.
fn fill_the_disk(c: &mut Conn, keys: usize, value_len: usize) -> usize {
    let value = "v".repeat(value_len);
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..100_000 {
        let reply = call(c, &format!("set key{} {value}", n % keys));
        if reply != "STORED" {
            assert_eq!(reply, "ERROR out of disk space");
            return n;
        }
        assert!(Instant::now() < deadline, "the disk never filled");
    }
    panic!("the disk never filled");
}

#[test]
fn a_full_disk_is_recovered_by_compacting_thanks_to_the_reserve() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let db = disk.db();
    let no_auto = ["--compact-min-bytes", "1000000000"];

    // Without a reserve, compaction has no room for its copy.
    let server = Server::start(&db, &[&no_auto[..], &["--compact-reserve-bytes", "0"]].concat());
    let mut c = conn(&server);
    assert!(fill_the_disk(&mut c, 40, 4000) > 0);
    assert_eq!(call(&mut c, "compact"), "ERROR out of disk space");
    drop(c);
    server.kill();
    fs::remove_file(&db).unwrap();

    let server = Server::start(&db, &[&no_auto[..], &["--compact-reserve-bytes", "2000000"]].concat());
    let reserve = disk.dir.path().join("database.txt.reserve");
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 2_000_000);
    let mut c = conn(&server);
    let acked = fill_the_disk(&mut c, 40, 4000);
    assert!(acked > 500, "{acked} writes before the disk was full");
    assert_eq!(call(&mut c, "compact"), "OK", "{}", server.log());
    assert!(server.wait_for_log("released the disk reserve", IO_TIMEOUT), "{}", server.log());
    assert_eq!(call(&mut c, "set after-recovery yes"), "STORED");
    assert!(fs::metadata(&db).unwrap().len() < 400_000, "the file is down to the live set");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&reserve).map(|m| m.len()).unwrap_or(0) != 2_000_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::metadata(&reserve).unwrap().len(), 2_000_000, "the reserve is written again");
    drop(c);
    server.kill();
    let server = Server::start(&db, &[]);
    let mut c = conn(&server);
    assert_eq!(call(&mut c, "get after-recovery"), "VALUE yes");
    assert_eq!(call(&mut c, "get key0").len(), "VALUE ".len() + 4000);
}

#[test]
fn failed_automatic_compactions_back_off_instead_of_eating_the_free_space() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let db = disk.db();
    let args =
        ["--compact-min-bytes", "100000", "--compact-garbage-ratio", "0.05", "--compact-reserve-bytes", "0"];
    let server = Server::start(&db, &args);
    let mut c = conn(&server);
    // A live set of 4.5 MB, rewritten: once the garbage threshold is passed a copy no longer
    // fits in what is free, so every automatic compaction would fail.
    let value = "v".repeat(3000);
    let mut first_failure_at = None;
    for round in 0..2 {
        for k in 0..1500 {
            if call(&mut c, &format!("set key{k} {round}{value}")) != "STORED" && first_failure_at.is_none() {
                first_failure_at = Some(fs::metadata(&db).unwrap().len());
            }
        }
    }
    assert!(server.wait_for_log("automatic compaction paused for 10 s", IO_TIMEOUT), "{}", server.log());
    let log = server.log();
    assert!(log.contains("automatic compaction postponed"), "{log}");
    let attempts = log.matches("starting automatic compaction").count();
    let postponed = log.matches("automatic compaction postponed").count();
    assert!(attempts + postponed <= 3, "{attempts} attempts, {postponed} postponed in a few seconds:\n{log}");
    // Writes failed only once the log itself had filled the disk, not because temporary
    // files of retried compactions took the room.
    let full_at = first_failure_at.expect("the disk filled up");
    assert!(full_at > 7_500_000, "the first write failed with the log at {full_at} bytes:\n{log}");
    assert!(
        !disk.dir.path().join("database.txt.compact").exists(),
        "a failed compaction leaves no temporary file taking the space"
    );
}

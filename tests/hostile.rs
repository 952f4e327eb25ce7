//! A shared or hostile machine: a low open-file limit, refused clients that talk at once,
//! requests sent a byte at a time.
//!
//! Each test starts the real `kvserver` on loopback and stops it when done (the harness kills
//! it on drop); every wait is bounded by a socket timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{dribble, temp_db, Server};

/// How long any one reply may take before a test calls it a hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

const LINE_REFUSAL: &[u8] = b"ERROR too many connections\n";
const MEMCACHED_REFUSAL: &[u8] = b"SERVER_ERROR too many open connections\r\n";

/// Raises this test process's own soft open-file limit to its hard limit and returns it.
fn raise_own_open_file_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_cur = limit.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_cur
}

/// A kvserver whose open-file limit is `soft:hard` from the start, as `prlimit --nofile` or a
/// systemd unit would set it.
fn start_with_open_file_limit(
    db: &std::path::Path,
    soft: libc::rlim_t,
    hard: libc::rlim_t,
    args: &[&str],
) -> Server {
    let mut command = Server::command(db, args);
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::start_command(command, db)
        .unwrap_or_else(|e| panic!("kvserver exited with {}:\n{}", e.status, e.log))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream
}

/// Reads one `\n`-terminated line (or what came before the end of stream).
fn read_line(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte)? {
            0 => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(line)
}

/// Issue 10 item 7: under the common limit of 1,024 descriptors, with the default
/// `--max-connections 1024`, every client is either served or told "too many connections";
/// none is left without a reply, the log is not flooded, and `compact` still works with
/// every slot taken. Before the fix each connection held two descriptors: about 500 were
/// served and the rest hung in the accept queue.
#[test]
fn under_a_1024_descriptor_limit_every_client_is_served_or_told_why() {
    const CLIENTS: usize = 1000;
    let own_limit = raise_own_open_file_limit();
    if own_limit < CLIENTS as libc::rlim_t + 100 {
        eprintln!("skipped: this test process may open only {own_limit} files, it needs {}", CLIENTS + 100);
        return;
    }
    let (_dir, db) = temp_db();
    let server = start_with_open_file_limit(&db, 1024, 1024, &[]);
    let started = Instant::now();
    let (mut served, mut refused) = (Vec::new(), 0);
    for i in 0..CLIENTS {
        let mut client = connect(server.addr);
        client.write_all(b"ping\n").unwrap();
        let reply = read_line(&mut client).unwrap_or_else(|e| {
            panic!(
                "client {i} ({} served, {refused} refused) got no reply: {e}\n{}",
                served.len(),
                server.log()
            )
        });
        match reply.as_slice() {
            b"PONG\n" => served.push(client),
            LINE_REFUSAL => refused += 1,
            other => panic!("client {i}: unexpected reply {:?}", String::from_utf8_lossy(other)),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{} served, {refused} refused with the reply, in {elapsed:?}", served.len());
    assert!(served.len() >= 900, "only {} of {CLIENTS} served", served.len());
    assert_eq!(served.len() + refused, CLIENTS);
    let log = server.log();
    assert!(log.contains("does not fit the open-file limit of 1024"), "{log}");
    assert!(!log.contains("accept failed"), "{log}");
    assert!(log.matches("refused a connection").count() <= 2, "the refusals flood the log:\n{log}");

    // Every slot is taken, and the reserve still leaves room for compaction.
    served[0].write_all(b"set k v\ncompact\nget k\n").unwrap();
    let replies: Vec<Vec<u8>> = (0..3).map(|_| read_line(&mut served[0]).unwrap()).collect();
    assert_eq!(replies, [b"STORED\n".to_vec(), b"OK\n".to_vec(), b"VALUE v\n".to_vec()]);
}

/// Issue 14 item 5: a client refused over the cap that sent its requests at once still
/// reads the refusal and then a clean end of stream, not a connection reset.
#[test]
fn a_refused_client_that_sent_its_requests_at_once_reads_the_refusal() {
    let (_dir, db) = temp_db();
    let (server, memcached) = Server::start_memcached(&db, &["--max-connections", "1"]);
    let mut held = connect(server.addr);
    held.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut held).unwrap(), b"PONG\n");

    for (addr, request, refusal) in
        [(server.addr, "set k v\n", LINE_REFUSAL), (memcached, "set k 0 0 1\r\nv\r\n", MEMCACHED_REFUSAL)]
    {
        for _ in 0..20 {
            let mut refused = connect(addr);
            refused.write_all(request.repeat(2000).as_bytes()).unwrap();
            let mut reply = Vec::new();
            let read = refused.read_to_end(&mut reply);
            assert!(read.is_ok(), "{read:?} after {:?}", String::from_utf8_lossy(&reply));
            assert_eq!(reply, refusal);
        }
    }
    held.write_all(b"get k\n").unwrap();
    assert_eq!(read_line(&mut held).unwrap(), b"NOT_FOUND\n", "a refused request was run");
}

/// Issue 10 item 6: with no idle timeout (the default), a request sent a byte at a time is
/// closed at the request deadline with an error line on both listeners, and runs nothing;
/// a connection quiet between requests is not. Before the fix such a client held its
/// connection (and up to --max-line-bytes of buffer) for ever.
#[test]
fn a_request_sent_a_byte_at_a_time_is_closed_at_the_request_deadline() {
    let (_dir, db) = temp_db();
    let (server, memcached) = Server::start_memcached(&db, &["--request-timeout", "2"]);
    let timeout = Duration::from_secs(2);
    let quiet = {
        let mut quiet = connect(server.addr);
        quiet.write_all(b"ping\n").unwrap();
        assert_eq!(read_line(&mut quiet).unwrap(), b"PONG\n");
        quiet
    };
    let dribblers: Vec<_> = [
        (
            server.addr,
            &b"set k vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\n"[..],
            &b"ERROR request timed out\n"[..],
        ),
        (
            memcached,
            b"set k 0 0 40\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n",
            b"CLIENT_ERROR request timed out\r\n",
        ),
    ]
    .into_iter()
    .map(|(addr, bytes, farewell)| {
        let mut stream = connect(addr);
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        std::thread::spawn(move || (dribble(&mut stream, bytes, Duration::from_secs(8)), farewell))
    })
    .collect();
    for handle in dribblers {
        let (dribbled, farewell) = handle.join().unwrap();
        let closed = dribbled.closed_after.unwrap_or_else(|| panic!("never closed: {dribbled:?}"));
        eprintln!("dribbler closed after {closed:?}");
        assert!(
            closed >= timeout - Duration::from_millis(200) && closed < timeout + Duration::from_millis(1500)
        );
        assert_eq!(dribbled.reply, farewell);
    }
    assert!(
        server.wait_for_log("request not complete after", std::time::Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let mut quiet = quiet;
    quiet.write_all(b"get k\n").unwrap();
    assert_eq!(read_line(&mut quiet).unwrap(), b"NOT_FOUND\n", "the quiet connection stays; k was never set");
}

/// When the process runs out of descriptors anyway (here a limit below the reserve, with
/// refused clients that keep their side open so their sockets wait to be drained), accept
/// fails with EMFILE: every waiting client still reads the refusal (the spare descriptor,
/// or the drained refusals' freed ones: this EMFILE passes within 0.5 s; the unit test
/// `out_of_descriptors_the_spare_lets_a_waiting_client_read_the_refusal` checks the spare
/// alone), the log says so once rather than per failure, and the server serves again.
/// Before the fix the cap was not fitted to the limit: clients were admitted until the
/// descriptors ran out, then left without a reply.
#[test]
fn out_of_descriptors_every_waiting_client_still_reads_the_refusal() {
    let (_dir, db) = temp_db();
    let server = start_with_open_file_limit(&db, 40, 40, &[]);
    let mut held = connect(server.addr);
    held.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut held).unwrap(), b"PONG\n");
    let refused: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut stream = connect(server.addr);
            let _ = stream.write_all(b"ping\n");
            stream
        })
        .collect();
    for (i, mut stream) in refused.into_iter().enumerate() {
        let reply = read_line(&mut stream).unwrap_or_else(|e| panic!("client {i}: {e}\n{}", server.log()));
        assert_eq!(reply, LINE_REFUSAL, "client {i}");
    }
    let log = server.log();
    assert!(log.matches("accept failed").count() <= 1, "{log}");
    held.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut held).unwrap(), b"PONG\n");
}

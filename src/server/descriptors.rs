//! File descriptors: the open-file limit (`RLIMIT_NOFILE`) and the connection cap that fits
//! under it.
//!
//! Every connection holds exactly one descriptor, its socket. The rest of the server needs a
//! few more, some only now and then: standard input, output and error (the log), the
//! listeners, signal-hook's pipe, `database.txt`, its lock file and directory, compaction's
//! temporary file, the TLS certificate and key while they are read, a spare descriptor per
//! listener for refusing connections when the limit is reached anyway, and the refused
//! connections that are still being drained ([`super::refusal`]). [`RESERVED`] keeps room
//! for all of them, so a full house of connections never makes `compact`, a reload or a
//! refusal fail with "Too many open files".
//!
//! At start-up the soft limit is raised to the hard limit, as memcached and Redis do (the
//! common default soft limit of 1,024 is far below what one thread per connection can
//! serve), and `--max-connections` is lowered, with a warning, if the limit cannot hold it
//! plus the reserve.

use std::io;

use super::refusal;

/// Descriptors kept for everything but connections; see the module documentation.
pub const RESERVED: u64 = 32 + refusal::MAX_DRAINING as u64;

/// The highest soft limit asked for when the hard limit is unlimited (Linux refuses more
/// than `fs.nr_open`, 1,048,576 by default).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = if limit.rlim_max == libc::RLIM_INFINITY { UNLIMITED_TARGET } else { limit.rlim_max as u64 };
    if (limit.rlim_cur as u64) < target {
        let raised = libc::rlimit { rlim_cur: target as libc::rlim_t, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::info!("open-file limit raised from {} to {target}", limit.rlim_cur);
            return Ok(target);
        }
        log::warn!(
            "cannot raise the open-file limit from {} to {target}: {}",
            limit.rlim_cur,
            io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur as u64)
}

/// The connection cap to serve with: `requested` (`--max-connections`), lowered so that
/// connections plus [`RESERVED`] fit in `open_file_limit`.
pub fn fit_connections(requested: u64, open_file_limit: u64) -> u64 {
    let room = open_file_limit.saturating_sub(RESERVED).max(1);
    if requested <= room {
        return requested;
    }
    log::warn!(
        "--max-connections {requested} does not fit the open-file limit of {open_file_limit} \
         ({RESERVED} kept for the database, log, compaction, TLS and refusals): serving at most \
         {room} connections; raise the limit (ulimit -n, LimitNOFILE=) to serve more"
    );
    room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_limit_with_the_reserve() {
        assert_eq!(fit_connections(1024, 1 << 20), 1024);
        assert_eq!(fit_connections(1024, 1024), 1024 - RESERVED);
        assert_eq!(fit_connections(10, 1024), 10);
        assert_eq!(fit_connections(1024, 8), 1, "a tiny limit still serves one connection");
    }

    #[test]
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let limit = raise_open_file_limit().unwrap();
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur as u64, limit);
        assert!(now.rlim_cur == now.rlim_max || now.rlim_max == libc::RLIM_INFINITY);
    }
}

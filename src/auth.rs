//! Users, roles and password checks (`--users`).
//!
//! The users file has one user per line, `name:hash:role`, where `hash` is an Argon2id PHC
//! string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`, as printed by `kvserver hash-password`)
//! and `role` is `read`, `write` or `admin`. Blank lines and lines starting with `#` are
//! ignored. Passwords are never stored: only salted, memory-hard hashes, so a stolen users
//! file still costs an attacker one Argon2 computation per guess.
//!
//! Timing: argon2's verification compares the derived keys in constant time, and a login for
//! an unknown user is verified against a dummy hash made with the same parameters, so the
//! reply time does not reveal which users exist. Each verification takes tens of milliseconds
//! and about 19 MiB, so at most [`MAX_CONCURRENT_VERIFICATIONS`] run at once: a flood of
//! logins queues up instead of exhausting memory.
//!
//! Brute force: [`Access`] is one connection's login state. Each failure is logged (peer
//! address and user name, never the password), answered after a delay that doubles with every
//! failure, and the connection is closed after [`MAX_FAILURES`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parking_lot::{Condvar, Mutex};

/// What a user may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read keys, values and statistics.
    Read,
    /// Also store, change and delete keys.
    Write,
    /// Also commands that affect the whole database: flush, flush_all, compact.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

/// Failed logins after which a connection is closed.
pub const MAX_FAILURES: u32 = 3;

/// Delay before answering the first failed login; it doubles with each further failure.
const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(100);

/// Upper bound of that delay.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(2);

/// Password verifications running at once, across all connections.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 4;

/// Longest user name accepted in the users file and in a login.
pub const MAX_NAME_BYTES: usize = 64;

/// Hashes `password` with a fresh random salt and argon2's default parameters (Argon2id,
/// 19 MiB, 2 passes, 1 lane: OWASP's recommendation), as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks a user name for the users file: 1–64 bytes of letters, digits, `_ - . @`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("bad user name {name:?}: use 1-{MAX_NAME_BYTES} letters, digits, '_', '-', '.' or '@'"))
    }
}

struct User {
    /// The PHC string, checked at load time.
    hash: String,
    role: Role,
}

/// The users file, loaded once at start.
pub struct Users {
    users: HashMap<String, User>,
    /// Verified against when the user is unknown, so that an unknown name costs as much time
    /// as a wrong password.
    dummy_hash: String,
    /// Verifications running now (see [`MAX_CONCURRENT_VERIFICATIONS`]).
    running: Mutex<usize>,
    slot_freed: Condvar,
}

impl fmt::Debug for Users {
    /// Names and roles only: hashes are secrets too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.users.iter().map(|(name, user)| (name, user.role))).finish()
    }
}

impl Users {
    /// Reads and checks a users file. Errors name the file and line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        warn_if_readable_by_others(path);
        Users::parse(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Parses the text of a users file; errors start with the line number.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash, role) = match (line.find(':'), line.rfind(':')) {
                (Some(first), Some(last)) if first < last => {
                    (&line[..first], &line[first + 1..last], &line[last + 1..])
                }
                _ => return Err(format!("{number}: expected name:hash:role")),
            };
            validate_name(name).map_err(|e| format!("{number}: {e}"))?;
            check_hash(hash).map_err(|e| {
                format!(
                    "{number}: bad password hash for {name:?} ({e}); make one with `kvserver hash-password`"
                )
            })?;
            let role = Role::parse(role)
                .ok_or_else(|| format!("{number}: unknown role {role:?} (read, write or admin)"))?;
            if users.insert(name.to_string(), User { hash: hash.to_string(), role }).is_some() {
                return Err(format!("{number}: user {name:?} is listed twice"));
            }
        }
        if users.is_empty() {
            return Err("0: no users: nobody could log in".into());
        }
        Ok(Users {
            users,
            dummy_hash: hash_password(b"not the password of anyone")?,
            running: Mutex::new(0),
            slot_freed: Condvar::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The role of `name` if `password` is theirs. Takes the same time whether or not the
    /// user exists.
    pub fn verify(&self, name: &[u8], password: &[u8]) -> Option<Role> {
        let user = std::str::from_utf8(name).ok().and_then(|name| self.users.get(name));
        let hash = user.map_or(self.dummy_hash.as_str(), |user| user.hash.as_str());
        let matches = self.with_slot(|| {
            // Parsed at load time; a failure here only means "no".
            PasswordHash::new(hash)
                .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
        });
        match user {
            Some(user) if matches => Some(user.role),
            _ => None,
        }
    }

    /// Runs `f` once fewer than [`MAX_CONCURRENT_VERIFICATIONS`] others are running.
    fn with_slot<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut running = self.running.lock();
        while *running >= MAX_CONCURRENT_VERIFICATIONS {
            self.slot_freed.wait(&mut running);
        }
        *running += 1;
        drop(running);
        let result = f();
        *self.running.lock() -= 1;
        self.slot_freed.notify_one();
        result
    }
}

/// Accepts a complete Argon2 PHC string: algorithm, parameters, salt and hash.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!("{} is not an Argon2 hash", parsed.algorithm));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("salt or hash missing".into());
    }
    argon2::Params::try_from(&parsed).map_err(|e| e.to_string())?;
    Ok(())
}

/// A users file that others can read exposes the hashes to offline guessing: say so.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            log::warn!(
                "{} is readable by group or others (mode {:o}): its password hashes can be guessed \
                 offline; chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
}

/// The outcome of one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Accepted(Role),
    /// Refused; `close` once the connection has used up its attempts.
    Refused {
        close: bool,
    },
}

/// One connection's authentication state. Without a users file every connection starts as
/// `admin`, so the per-request check is one comparison and nothing else changes.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    role: Option<Role>,
    failures: u32,
    max_failures: u32,
    peer: Option<SocketAddr>,
}

impl Access {
    /// `auth_required`: a users file is in use.
    pub fn new(auth_required: bool, peer: Option<SocketAddr>) -> Access {
        let role = if auth_required { None } else { Some(Role::Admin) };
        Access { role, failures: 0, max_failures: MAX_FAILURES, peer }
    }

    /// Closes the connection after `max` failures instead of [`MAX_FAILURES`] (memcached's
    /// convention is to close after the first).
    pub fn with_max_failures(mut self, max: u32) -> Access {
        self.max_failures = max.max(1);
        self
    }

    /// The role of the logged-in user; None before a successful login.
    #[inline]
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    #[inline]
    pub fn allows(&self, needed: Role) -> bool {
        self.role.is_some_and(|role| role >= needed)
    }

    /// Checks a login. A failure is logged and delayed (the calling connection's thread
    /// sleeps); a failed login leaves an earlier successful one in place.
    pub fn login(&mut self, users: &Users, name: &[u8], password: &[u8]) -> Login {
        let peer = self.peer.map_or_else(|| "?".to_string(), |peer| peer.to_string());
        let shown = String::from_utf8_lossy(&name[..name.len().min(MAX_NAME_BYTES)]).into_owned();
        if let Some(role) = users.verify(name, password) {
            log::info!("{peer} logged in as {shown:?} ({role})");
            // Failures are not forgiven: a known account must not buy more guesses at others.
            self.role = Some(role);
            return Login::Accepted(role);
        }
        self.failures += 1;
        let close = self.failures >= self.max_failures;
        log::warn!(
            "failed login as {shown:?} from {peer} (attempt {} of {}{})",
            self.failures,
            self.max_failures,
            if close { ", closing the connection" } else { "" }
        );
        std::thread::sleep(failure_delay(self.failures));
        Login::Refused { close }
    }
}

/// How long to wait before answering the `failures`-th failed login.
fn failure_delay(failures: u32) -> Duration {
    FIRST_FAILURE_DELAY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_file(lines: &[(&str, &str, &str)]) -> String {
        lines
            .iter()
            .map(|(name, password, role)| {
                format!("{name}:{}:{role}\n", hash_password(password.as_bytes()).unwrap())
            })
            .collect()
    }

    #[test]
    fn verifies_passwords_and_roles() {
        let text = format!("# team\n\n{}", users_file(&[("ann", "pw a", "read"), ("bob", "pw b", "admin")]));
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.verify(b"ann", b"pw a"), Some(Role::Read));
        assert_eq!(users.verify(b"bob", b"pw b"), Some(Role::Admin));
        assert_eq!(users.verify(b"ann", b"pw b"), None);
        assert_eq!(users.verify(b"carl", b"pw a"), None);
        assert_eq!(users.verify(b"\xff", b""), None);
        assert!(!format!("{users:?}").contains("argon2"), "Debug shows no hash");
    }

    #[test]
    fn malformed_files_are_refused_with_the_line_number() {
        let good = users_file(&[("ann", "x", "read")]);
        let err = |text: &str| Users::parse(text).err().unwrap();
        assert!(err(&format!("{good}bob\n")).starts_with("2: expected name:hash:role"));
        assert!(err(&format!("{good}bob:$argon2id$junk:read\n")).starts_with("2: bad password hash"));
        assert!(err(&good.replace(":read", ":root")).starts_with("1: unknown role \"root\""));
        assert!(err(&format!("{good}{good}")).starts_with("2: user \"ann\" is listed twice"));
        assert!(err(&good.replace("ann", "a n")).starts_with("1: bad user name"));
        assert!(err("# nobody\n").contains("no users"));
    }

    #[test]
    fn roles_are_ordered_and_access_starts_locked_only_with_users() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        let open = Access::new(false, None);
        assert!(open.allows(Role::Admin));
        let locked = Access::new(true, None);
        assert_eq!(locked.role(), None);
        assert!(!locked.allows(Role::Read));
    }

    #[test]
    fn failures_are_delayed_more_and_more_then_close() {
        assert_eq!(failure_delay(1), Duration::from_millis(100));
        assert_eq!(failure_delay(2), Duration::from_millis(200));
        assert_eq!(failure_delay(3), Duration::from_millis(400));
        assert_eq!(failure_delay(40), MAX_FAILURE_DELAY);
        let users = Users::parse(&users_file(&[("ann", "right", "write")])).unwrap();
        let mut access = Access::new(true, None);
        assert_eq!(access.login(&users, b"ann", b"wrong"), Login::Refused { close: false });
        assert_eq!(access.login(&users, b"ann", b"right"), Login::Accepted(Role::Write));
        assert!(access.allows(Role::Write) && !access.allows(Role::Admin));
        for attempt in 2..=MAX_FAILURES {
            let close = attempt == MAX_FAILURES;
            assert_eq!(access.login(&users, b"zed", b"right"), Login::Refused { close });
        }
        assert_eq!(access.role(), Some(Role::Write), "a failed login keeps the earlier one");
    }
}

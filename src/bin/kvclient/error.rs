//! kvclient's errors and the exit code each one means.
//!
//! Exit codes: 0 success; 1 a missing key or file (`get`, `del`, `rm`, `stat`, …); 2 any
//! other error: cannot connect, an `ERROR` reply, a broken connection, a refused argument.

use std::fmt;
use std::io;

use textkv::client::ClientError;

#[derive(Debug)]
pub enum Error {
    /// From the server or the connection.
    Client(ClientError),
    /// A local file or terminal.
    Io(io::Error),
    /// kvclient refuses the request itself (a bad key, a non-empty directory, …): exit 2.
    Refused(String),
    /// What the command names does not exist: exit 1.
    NotFound(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotFound(_) => 1,
            _ => 2,
        }
    }

    /// Did the connection break (so the prompt should reconnect before the next command)?
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Client(ClientError::Io(_) | ClientError::Connect { .. }))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Client(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
            Error::Refused(reason) | Error::NotFound(reason) => f.write_str(reason),
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error::Client(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

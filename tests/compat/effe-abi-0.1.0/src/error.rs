//! Errors: [`Error`] is what authors return; [`EffeError`] is what crosses the boundary.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// The error an effe returns from any entry point.
///
/// It converts from every [`std::error::Error`], so `?` works on I/O, parse and client errors,
/// keeping the whole `source()` chain in the message. The host logs the message (to syslog for
/// `run`) together with the request id; it never shows it to the client.
///
/// # Examples
///
/// ```
/// fn parse(port: &str) -> Result<u16, effe_abi::Error> {
///     Ok(port.parse::<u16>()?)
/// }
/// assert_eq!(parse("x").unwrap_err().to_string(), "invalid digit found in string");
/// assert_eq!(effe_abi::Error::msg("no DSN").to_string(), "no DSN");
/// ```
pub struct Error {
    message: String,
}

impl Error {
    /// An error carrying `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message, as the host will log it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}

/// How an entry point failed.
///
/// Adding a variant is an ABI change (a new minor version of effe-abi).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The entry point returned an [`Error`].
    Failed,
    /// The entry point panicked; the SDK caught the panic inside the effe.
    Panicked,
}

impl ErrorKind {
    /// A lower-case word for logs: `failed` or `panicked`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Panicked => "panicked",
        }
    }
}

/// An entry point's failure as it crosses the boundary: owned by whoever receives it (the host),
/// freed through the allocator of the side that made it, as every `RString` is.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct EffeError {
    kind: ErrorKind,
    message: RString,
}

impl EffeError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<RString>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether the entry point returned an error or panicked.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error message, or the panic message for [`ErrorKind::Panicked`].
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Failed => f.write_str(&self.message),
            ErrorKind::Panicked => write!(f, "panicked: {}", self.message),
        }
    }
}

impl From<Error> for EffeError {
    fn from(err: Error) -> Self {
        EffeError::new(ErrorKind::Failed, err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_chain_is_kept() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect to db")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Error::from(Outer(std::io::Error::other("refused")));
        assert_eq!(err.message(), "connect to db: refused");
    }

    #[test]
    fn panicked_errors_say_so() {
        let err = EffeError::new(ErrorKind::Panicked, "boom");
        assert_eq!(err.to_string(), "panicked: boom");
        assert_eq!(EffeError::from(Error::msg("x")).to_string(), "x");
    }
}

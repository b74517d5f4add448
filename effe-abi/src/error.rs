//! Errors: [`Error`] is what authors return; [`EffeError`] is what crosses the boundary.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// The error an effe returns from any entry point.
///
/// It converts from every [`std::error::Error`], so `?` works on I/O, parse and client errors,
/// keeping the whole `source()` chain in the message. The host logs the message (to syslog for
/// `run`) together with the request id; it never shows it to the client, who gets `500`.
///
/// From `run`, an error may instead *be* the answer: [`with_status`](Error::with_status) (and
/// its shortcuts) gives the client that status with a public message, and is logged only if
/// it is a 5xx. [`retire`](Error::retire) also tells the host to stop the Context instead of
/// reusing it.
///
/// # Examples
///
/// ```
/// use effe_abi::Error;
///
/// fn parse(port: &str) -> Result<u16, Error> {
///     Ok(port.parse::<u16>()?)
/// }
/// assert_eq!(parse("x").unwrap_err().to_string(), "invalid digit found in string");
/// assert_eq!(Error::msg("no DSN").to_string(), "no DSN");
///
/// fn todo(id: &str) -> Result<u64, Error> {
///     id.parse().map_err(|_| Error::bad_request("the id is a number"))
/// }
/// assert_eq!(todo("x").unwrap_err().status(), Some(400));
/// ```
pub struct Error {
    message: String,
    /// The client's answer, when the error is one (`with_status`).
    status: Option<u16>,
    /// Headers of that answer.
    headers: Vec<(String, Vec<u8>)>,
    retire: bool,
}

impl Error {
    /// An error carrying `message`: logged, and the client gets `500`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            status: None,
            headers: Vec::new(),
            retire: false,
        }
    }

    /// An error the client sees: `status` (400–599; anything else is sent as 500) with
    /// `public` as the body (`text/plain` unless a [`header`](Error::header) says otherwise),
    /// replacing whatever `run` wrote before. 4xx errors are not logged (they are the
    /// client's); 5xx are, as run failures.
    ///
    /// ```
    /// # use effe_abi::Error;
    /// let e = Error::with_status(405, "use GET").header("allow", "GET");
    /// let json = Error::not_found(r#"{"error":"no such todo"}"#)
    ///     .header("content-type", "application/json");
    /// # assert_eq!(e.status(), Some(405));
    /// ```
    ///
    /// In a host older than effe-abi 0.1.2, what `run` wrote before cannot be replaced: if it
    /// wrote anything, the error is handled as a plain one.
    pub fn with_status(status: u16, public: impl fmt::Display) -> Self {
        let status = if (400..=599).contains(&status) {
            status
        } else {
            500
        };
        Self {
            message: public.to_string(),
            status: Some(status),
            headers: Vec::new(),
            retire: false,
        }
    }

    /// `400 Bad Request` with `public` as the body.
    pub fn bad_request(public: impl fmt::Display) -> Self {
        Self::with_status(400, public)
    }

    /// `404 Not Found` with `public` as the body.
    pub fn not_found(public: impl fmt::Display) -> Self {
        Self::with_status(404, public)
    }

    /// Adds a header to the answer of an error with a status (`allow` for a 405,
    /// `retry-after` for a 503, a `content-type` for the body); ignored on a plain error. An
    /// invalid name or value makes the error a plain one (500, logged).
    #[must_use]
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// The headers of the answer (see [`header`](Error::header)).
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// This error, and the Context it happened on is broken (a lost database connection): the
    /// host stops it when `run` returns, instead of reusing it, and the next request gets a
    /// fresh one from `start`. Needs a host built with effe-abi 0.1.2 or later; an older one
    /// reuses the Context.
    #[must_use]
    pub fn retire(mut self) -> Self {
        self.retire = true;
        self
    }

    /// The message: what the host logs, and for an error with a status the client's body.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status the client gets, for an error made by [`with_status`](Error::with_status).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Whether the Context is to be stopped ([`retire`](Error::retire)).
    pub fn retires(&self) -> bool {
        self.retire
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
        Self::msg(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{status} {:?}", self.message)?,
            None => fmt::Debug::fmt(&self.message, f)?,
        }
        if self.retire {
            f.write_str(" (retire)")?;
        }
        Ok(())
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
    fn statuses_outside_the_error_classes_are_500() {
        assert_eq!(Error::with_status(404, "x").status(), Some(404));
        assert_eq!(Error::with_status(200, "x").status(), Some(500));
        assert_eq!(Error::with_status(600, "x").status(), Some(500));
        assert_eq!(Error::msg("x").status(), None);
        let e = Error::not_found("gone").retire();
        assert!(e.retires());
        assert_eq!(format!("{e:?}"), "404 \"gone\" (retire)");
    }

    #[test]
    fn panicked_errors_say_so() {
        let err = EffeError::new(ErrorKind::Panicked, "boom");
        assert_eq!(err.to_string(), "panicked: boom");
        assert_eq!(EffeError::from(Error::msg("x")).to_string(), "x");
    }
}

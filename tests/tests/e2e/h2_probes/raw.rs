//! A raw HTTP/2 client for the frame-level probes: the preface, frames written and read exactly
//! as they are on the wire (RFC 9113 §4.1), and request fields HPACK-encoded as plain literals
//! (RFC 7541 §6.2.2, no Huffman, no dynamic table), so that a probe sends precisely the
//! malformed sequence it means to, which no HTTP/2 library would let it send.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

// Settings (RFC 9113 §6.5.2).
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// The largest frame payload a peer must accept before it says otherwise (RFC 9113 §4.2).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

// Error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The name RFC 9113 §7 gives an error code.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// One frame, as bytes on the wire: the 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len < 1 << 24)
        .expect("a frame length fits in 24 bits");
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&len.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

pub fn headers(stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    frame(HEADERS, flags, stream, &header_block(fields))
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn ping(opaque: u64) -> Vec<u8> {
    frame(PING, 0, 0, &opaque.to_be_bytes())
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK header block of literals without indexing, new names, no Huffman: the encoder
/// state stays empty, so the decoder's is never in question.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        string(&mut block, name.as_bytes());
        string(&mut block, value.as_bytes());
    }
    block
}

fn string(block: &mut Vec<u8>, s: &[u8]) {
    integer(block, 0x00, 7, s.len());
    block.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix after `high` (RFC 7541 §5.1).
fn integer(block: &mut Vec<u8>, high: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        block.push(high | value as u8);
        return;
    }
    block.push(high | max as u8);
    value -= max;
    while value >= 128 {
        block.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    block.push(value as u8);
}

/// A frame as read.
#[derive(Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What a GOAWAY frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    pub last: u32,
    pub code: u32,
    pub debug: String,
}

impl Frame {
    fn be32(&self, at: usize) -> Option<u32> {
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    pub fn goaway(&self) -> Option<GoAway> {
        if self.kind != GOAWAY {
            return None;
        }
        Some(GoAway {
            last: self.be32(0)? & 0x7fff_ffff,
            code: self.be32(4)?,
            debug: String::from_utf8_lossy(self.payload.get(8..)?).into_owned(),
        })
    }

    /// The error code of a RST_STREAM frame.
    pub fn reset(&self) -> Option<u32> {
        if self.kind != RST_STREAM {
            return None;
        }
        self.be32(0)
    }

    /// The `:status` of a response HEADERS frame, when it is the block's first field and
    /// encoded as h2 encodes a first status: indexed from the static table, or a literal with
    /// the static name and a (Huffman-coded) value.
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = self.payload.as_slice();
        // Dynamic table size updates come first (RFC 7541 §4.2).
        while block.first()? & 0xe0 == 0x20 {
            block = skip_integer(block, 5)?;
        }
        let first = *block.first()?;
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        if first & 0x80 != 0 {
            return STATIC
                .get(usize::from(first & 0x7f).checked_sub(8)?)
                .copied();
        }
        // Literal with incremental indexing, without indexing, never indexed; name index 8.
        if ![0x48, 0x08, 0x18].contains(&first) {
            return None;
        }
        let (&head, rest) = block[1..].split_first()?;
        let value = rest.get(..usize::from(head & 0x7f))?;
        let digits = if head & 0x80 != 0 {
            huffman_digits(value)?
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        digits.parse().ok()
    }
}

fn skip_integer(block: &[u8], n: u32) -> Option<&[u8]> {
    let max = (1u8 << n) - 1;
    let (&first, mut rest) = block.split_first()?;
    if first & max == max {
        while rest.first()? & 0x80 != 0 {
            rest = &rest[1..];
        }
        rest = &rest[1..];
    }
    Some(rest)
}

/// Decodes a Huffman-coded string of ASCII digits (RFC 7541 Appendix B: '0'-'2' are 5-bit
/// codes 0-2, '3'-'9' 6-bit codes 25-31); enough for a status code.
fn huffman_digits(coded: &[u8]) -> Option<String> {
    let bits: Vec<u8> = coded
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u8> {
        let chunk = bits.get(at..at + n)?;
        Some(chunk.iter().fold(0, |acc, bit| acc << 1 | bit))
    };
    let mut digits = String::new();
    let mut at = 0;
    // What is left at the end is padding: the most significant bits of EOS, all ones.
    while bits.len() - at >= 5 && bits[at..].contains(&0) {
        let five = take(at, 5)?;
        if five < 3 {
            digits.push(char::from(b'0' + five));
            at += 5;
            continue;
        }
        let six = take(at, 6)?;
        if !(25..=31).contains(&six) {
            return None;
        }
        digits.push(char::from(b'3' + six - 25));
        at += 6;
    }
    Some(digits)
}

fn kind_name(kind: u8) -> String {
    match kind {
        DATA => "DATA".into(),
        HEADERS => "HEADERS".into(),
        PRIORITY => "PRIORITY".into(),
        RST_STREAM => "RST_STREAM".into(),
        SETTINGS => "SETTINGS".into(),
        PUSH_PROMISE => "PUSH_PROMISE".into(),
        PING => "PING".into(),
        GOAWAY => "GOAWAY".into(),
        WINDOW_UPDATE => "WINDOW_UPDATE".into(),
        CONTINUATION => "CONTINUATION".into(),
        other => format!("type {other:#x}"),
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = kind_name(self.kind);
        if let Some(away) = self.goaway() {
            return write!(
                f,
                "GOAWAY(last={}, {}, {:?})",
                away.last,
                code_name(away.code),
                away.debug
            );
        }
        if let Some(code) = self.reset() {
            return write!(f, "RST_STREAM({}, {})", self.stream, code_name(code));
        }
        match self.kind {
            HEADERS => match self.status() {
                Some(status) => write!(f, "HEADERS({}, :status {status})", self.stream),
                None => write!(f, "HEADERS({})", self.stream),
            },
            DATA => write!(
                f,
                "DATA({}, {}B{})",
                self.stream,
                self.payload.len(),
                if self.flags & END_STREAM != 0 {
                    ", END_STREAM"
                } else {
                    ""
                }
            ),
            SETTINGS | PING if self.flags & ACK != 0 => write!(f, "{kind}(ACK)"),
            WINDOW_UPDATE => write!(
                f,
                "WINDOW_UPDATE({}, +{})",
                self.stream,
                self.be32(0).unwrap_or(0)
            ),
            _ => write!(f, "{kind}({})", self.stream),
        }
    }
}

/// What reading brought.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// End of stream, or an error (a reset, a TLS stream cut without close_notify).
    Closed,
    /// Nothing within the wait.
    Quiet,
}

/// Frames read from a byte stream.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the next frame begins in `buf` (consumed bytes are dropped now and then, not at
    /// every frame: a flood brings hundreds of thousands).
    at: usize,
    closed: bool,
}

impl FrameReader {
    fn parse(&mut self) -> Option<Frame> {
        let head = self.buf.get(self.at..self.at + 9)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let payload = self.buf.get(self.at + 9..self.at + 9 + len)?;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: payload.to_vec(),
        };
        self.at += 9 + len;
        Some(frame)
    }

    /// The next frame, unless the stream closes or nothing comes within `wait`.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R, wait: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.parse() {
                return Event::Frame(frame);
            }
            if self.closed {
                return Event::Closed;
            }
            self.buf.drain(..self.at);
            self.at = 0;
            match tokio::time::timeout_at(deadline, io.read_buf(&mut self.buf)).await {
                Err(_) => return Event::Quiet,
                Ok(Ok(0) | Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// How a read of several frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The frame looked for came.
    Matched,
    /// The peer closed the connection.
    Closed,
    /// Neither within the time allowed.
    TimedOut,
}

/// The frames a probe saw, a run of acknowledgements (or of RST_STREAM with one code) kept as
/// its first frame and a count, and how the reading ended.
pub struct Seen {
    runs: Vec<(Frame, usize)>,
    pub end: End,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            runs: Vec::new(),
            end: End::TimedOut,
        }
    }

    fn push(&mut self, frame: Frame) {
        if let Some((last, n)) = self.runs.last_mut() {
            let ack = matches!(frame.kind, PING | SETTINGS) && frame.flags & ACK != 0;
            let alike = (last.kind, last.flags) == (frame.kind, frame.flags);
            let same_reset = frame.reset().is_some() && last.reset() == frame.reset();
            if (ack && alike) || same_reset {
                *n += 1;
                return;
            }
        }
        self.runs.push((frame, 1));
    }

    /// Appends what a later read saw, and how it ended.
    pub fn extend(&mut self, later: Seen) {
        for (frame, n) in later.runs {
            self.push(frame);
            if let Some((_, count)) = self.runs.last_mut() {
                *count += n - 1;
            }
        }
        self.end = later.end;
    }

    /// The frames seen (the first of each run).
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.runs.iter().map(|(frame, _)| frame)
    }

    pub fn last(&self) -> Option<&Frame> {
        self.frames().last()
    }

    pub fn goaway(&self) -> Option<GoAway> {
        self.frames().find_map(Frame::goaway)
    }

    pub fn status_of(&self, stream: u32) -> Option<u16> {
        self.frames()
            .filter(|f| f.stream == stream)
            .find_map(Frame::status)
    }

    pub fn count(&self, pred: impl Fn(&Frame) -> bool) -> usize {
        self.runs
            .iter()
            .filter(|(f, _)| pred(f))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The frames in order (`PING(ACK) ×5000` for a run), and how reading ended.
impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (frame, n)) in self.runs.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            match n {
                1 => write!(f, "{sep}{frame:?}")?,
                n => write!(f, "{sep}{frame:?} ×{n}")?,
            }
        }
        let sep = if self.runs.is_empty() { "" } else { ", " };
        match self.end {
            End::Matched => Ok(()),
            End::Closed => write!(f, "{sep}closed"),
            End::TimedOut => write!(f, "{sep}(still open)"),
        }
    }
}

/// How a flood of frames written without reading went.
pub struct Flood {
    /// Frames the host took before it stopped reading (all of them if it never did).
    pub taken: usize,
    /// Whether the host stopped reading while its answers went unread.
    pub stalled: bool,
    /// What the host sent, read once it stopped reading (or the flood was all written).
    pub seen: Seen,
}

/// One client connection: anything that reads and writes bytes (TCP or TLS).
pub struct Conn<S> {
    io: S,
    reader: FrameReader,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends the preface and `our` SETTINGS, waits for the host's SETTINGS (the first frame it
    /// must send, RFC 9113 §3.4), acknowledges it, and waits for the host's acknowledgement.
    pub async fn handshake(io: S, our: &[(u16, u32)], wait: Duration) -> Conn<S> {
        let mut conn = Conn {
            io,
            reader: FrameReader::default(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(our));
        conn.send(&hello, wait).await.expect("send the preface");
        match conn.reader.next(&mut conn.io, wait).await {
            Event::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0 => {}
            other => panic!("the host did not open with its SETTINGS: {other:?}"),
        }
        conn.send(&frame(SETTINGS, ACK, 0, &[]), wait)
            .await
            .expect("acknowledge the host's SETTINGS");
        // From here on, every frame the host sends answers the probe (but for a connection
        // WINDOW_UPDATE, maybe, which hyper sends at once to widen the default window).
        let acked = conn
            .read_until(|f| f.kind == SETTINGS && f.flags & ACK != 0, wait)
            .await;
        assert_eq!(
            acked.end,
            End::Matched,
            "our SETTINGS not acknowledged: {acked}"
        );
        conn
    }

    /// Writes and flushes `bytes`; an error means the host closed (or stopped reading for
    /// `wait`).
    pub async fn send(&mut self, bytes: &[u8], wait: Duration) -> std::io::Result<()> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(wait, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Reads until `until` matches a frame (it is kept), the host closes, or `wait` passes.
    pub async fn read_until(&mut self, until: impl FnMut(&Frame) -> bool, wait: Duration) -> Seen {
        read_until(&mut self.reader, &mut self.io, until, wait).await
    }

    /// Reads until the host closes the connection (or `wait` passes).
    pub async fn read_to_close(&mut self, wait: Duration) -> Seen {
        self.read_until(|_| false, wait).await
    }

    /// Writes `flood` (frames of `len` bytes each) without reading what the host answers,
    /// until it is all written or the host takes nothing for `stall`; then finishes the frame
    /// in progress while reading, until `is_answer` has matched once per frame taken, the host
    /// closes, or `wait` passes.
    pub async fn flood(
        &mut self,
        flood: &[u8],
        len: usize,
        stall: Duration,
        is_answer: impl Fn(&Frame) -> bool,
        wait: Duration,
    ) -> Flood {
        let mut at = 0;
        let mut stalled = false;
        while at < flood.len() {
            // A write still pending when the timeout cancels it has taken nothing.
            match tokio::time::timeout(stall, self.io.write(&flood[at..])).await {
                Ok(Ok(n)) if n > 0 => at += n,
                Ok(_) => break,
                Err(_) => {
                    stalled = true;
                    break;
                }
            }
        }
        let taken = at.div_ceil(len);
        let (mut rd, mut wr) = tokio::io::split(&mut self.io);
        let rest = async {
            let end = (taken * len).min(flood.len());
            let _ = tokio::time::timeout(wait, wr.write_all(&flood[at..end])).await;
            let _ = tokio::time::timeout(wait, wr.flush()).await;
        };
        let mut answers = 0;
        let all_answered = |f: &Frame| {
            answers += usize::from(is_answer(f));
            answers == taken
        };
        let read = read_until(&mut self.reader, &mut rd, all_answered, wait);
        let ((), seen) = tokio::join!(rest, read);
        Flood {
            taken,
            stalled,
            seen,
        }
    }
}

async fn read_until<R: AsyncRead + Unpin>(
    reader: &mut FrameReader,
    io: &mut R,
    mut until: impl FnMut(&Frame) -> bool,
    wait: Duration,
) -> Seen {
    let deadline = Instant::now() + wait;
    let mut seen = Seen::new();
    // Bounded by the deadline; the cap only keeps a runaway host from filling memory.
    for _ in 0..10_000_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match reader.next(io, left).await {
            Event::Frame(f) => {
                let matched = until(&f);
                seen.push(f);
                if matched {
                    seen.end = End::Matched;
                    return seen;
                }
            }
            Event::Closed => {
                seen.end = End::Closed;
                return seen;
            }
            Event::Quiet => break,
        }
    }
    seen
}

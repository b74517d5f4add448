//! HTTP/2 probes that each expect one answer on a connection of their own: frames of the wrong
//! size, control frames out of place, stream identifiers and states a client must not use, and
//! malformed requests. Each case cites the section of RFC 9113 that names the answer.

use effe_tests::Proto;

use super::raw::*;
use super::{Target, Wire, WAIT};

on_both_wires!(frame_sizes, control_frames, stream_ids, malformed_requests);

/// What RFC 9113 requires of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A connection error: GOAWAY with this code, then the connection closed.
    GoAway(u32),
    /// A stream error: RST_STREAM with this code; the connection serves on.
    Reset(u32),
    /// A response with this status; the connection serves on.
    Status(u16),
}

/// How the host's answer differs from what RFC 9113 requires.
#[derive(Debug, Clone, Copy)]
enum Differs {
    /// A connection error with the stream error's code, which §5.4.1 allows: "an endpoint MAY
    /// choose to treat a stream error as a connection error".
    Escalated(&'static str),
    /// An answer RFC 9113 does not allow.
    Deviates(Answer, &'static str),
}

/// A probe that sends `frames` after the connection preface and expects `rfc` about `stream`.
struct Case {
    name: &'static str,
    /// Where RFC 9113 says so.
    section: &'static str,
    /// Frames to send (`stream` being the one the answer is about).
    frames: Vec<u8>,
    stream: u32,
    rfc: Answer,
    /// How the host's answer differs from `rfc`, if it does.
    differs: Option<Differs>,
    /// The client's SETTINGS.
    settings: &'static [(u16, u32)],
}

impl Case {
    fn new(name: &'static str, section: &'static str, frames: Vec<u8>, rfc: Answer) -> Case {
        Case {
            name,
            section,
            frames,
            stream: 1,
            rfc,
            differs: None,
            settings: &[],
        }
    }

    fn on(mut self, stream: u32) -> Case {
        self.stream = stream;
        self
    }

    /// The host answers `observed`, which RFC 9113 does not allow, because of `why`.
    fn deviates(mut self, observed: Answer, why: &'static str) -> Case {
        self.differs = Some(Differs::Deviates(observed, why));
        self
    }

    /// The host makes this stream error a connection error, with the same code.
    fn escalated(mut self, why: &'static str) -> Case {
        self.differs = Some(Differs::Escalated(why));
        self
    }

    /// What the host is expected to answer.
    fn expected(&self) -> Answer {
        match (self.differs, self.rfc) {
            (None, rfc) => rfc,
            (Some(Differs::Escalated(_)), Answer::Reset(code)) => Answer::GoAway(code),
            (Some(Differs::Escalated(_)), rfc) => rfc,
            (Some(Differs::Deviates(observed, _)), _) => observed,
        }
    }

    fn with_settings(mut self, settings: &'static [(u16, u32)]) -> Case {
        self.settings = settings;
        self
    }
}

/// Runs each case on a connection of its own, with a bystander served meanwhile and a normal
/// client served after each; reports every case that differs, not only the first.
async fn run_cases(t: &Target, cases: Vec<Case>) {
    let bystander = t.bystander(Proto::Http2);
    let mut wrong = Vec::new();
    for case in cases {
        if let Err(what) = run_case(t, &case).await {
            wrong.push(format!("{} ({}): {what}", case.name, case.section));
        }
        t.still_serves().await;
    }
    bystander.finish().await;
    assert!(wrong.is_empty(), "{:?}:\n{}", t.wire, wrong.join("\n"));
}

async fn run_case(t: &Target, case: &Case) -> Result<(), String> {
    let mut conn = t.raw(case.settings).await;
    // The host may close before it has read them all.
    let _ = conn.send(&case.frames, WAIT).await;
    let stream = case.stream;
    let answers = |f: &Frame| {
        f.kind == GOAWAY || (f.stream == stream && (f.kind == RST_STREAM || f.status().is_some()))
    };
    let mut seen = conn.read_until(answers, WAIT).await;
    let answer = seen.last().filter(|f| answers(f)).and_then(|f| {
        f.goaway()
            .map(|away| Answer::GoAway(away.code))
            .or(f.reset().map(Answer::Reset))
            .or(f.status().map(Answer::Status))
    });
    if let Some(Answer::GoAway(_)) = answer {
        seen.extend(conn.read_to_close(WAIT).await);
    }
    let differs = match case.differs {
        None => String::new(),
        Some(Differs::Escalated(why)) => format!(" — escalated (§5.4.1): {why}"),
        Some(Differs::Deviates(_, why)) => format!(" — DEVIATION: {why}"),
    };
    eprintln!(
        "{} ({}), {:?}: {seen}{differs}",
        case.name, case.section, t.wire
    );
    let expected = case.expected();
    if answer != Some(expected) {
        return Err(format!(
            "expected {:?} (RFC 9113 requires {:?}), saw {seen}",
            Show(expected),
            Show(case.rfc)
        ));
    }
    match expected {
        Answer::GoAway(_) if seen.end != End::Closed => Err(format!("not closed: {seen}")),
        Answer::GoAway(_) => Ok(()),
        Answer::Reset(_) | Answer::Status(_) => {
            // A stream error, or an answer: the connection serves its next stream.
            let next = (seen.frames().map(|f| f.stream).fold(stream, u32::max) + 2) | 1;
            let req = headers(next, END_STREAM | END_HEADERS, &t.request("GET", "/"));
            conn.send(&req, WAIT)
                .await
                .map_err(|e| format!("{e} after {seen}"))?;
            let after = conn
                .read_until(
                    |f| f.kind == GOAWAY || f.stream == next && f.kind == HEADERS,
                    WAIT,
                )
                .await;
            match after.status_of(next) {
                Some(200) => Ok(()),
                _ => Err(format!(
                    "the next stream was not served: {seen}, then {after}"
                )),
            }
        }
    }
}

/// An answer with error codes by name, for messages.
#[derive(PartialEq, Eq)]
struct Show(Answer);

impl std::fmt::Debug for Show {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Answer::GoAway(code) => write!(f, "GOAWAY({})", code_name(code)),
            Answer::Reset(code) => write!(f, "RST_STREAM({})", code_name(code)),
            Answer::Status(status) => write!(f, "status {status}"),
        }
    }
}

/// Frames longer than SETTINGS_MAX_FRAME_SIZE, and control frames of the wrong length.
async fn frame_sizes(wire: Wire) {
    let t = Target::spawn(wire, "echo", &[]);
    let get = headers(1, END_STREAM | END_HEADERS, &t.request("GET", "/"));
    let post = headers(1, END_HEADERS, &t.request("POST", "/"));
    let too_big = vec![0u8; DEFAULT_MAX_FRAME_SIZE + 1];
    let mut oversized_data = post.clone();
    oversized_data.extend(frame(DATA, END_STREAM, 1, &too_big));
    let cases = vec![
        Case::new(
            "DATA larger than SETTINGS_MAX_FRAME_SIZE",
            "§4.2",
            oversized_data,
            // §4.2: a stream error or a connection error, FRAME_SIZE_ERROR either way.
            Answer::GoAway(FRAME_SIZE_ERROR),
        ),
        Case::new(
            "HEADERS larger than SETTINGS_MAX_FRAME_SIZE",
            "§4.2",
            frame(HEADERS, END_STREAM | END_HEADERS, 1, &too_big),
            // §4.2: a frame carrying a field block: a connection error.
            Answer::GoAway(FRAME_SIZE_ERROR),
        ),
        Case::new(
            "PING of 9 octets",
            "§6.7",
            frame(PING, 0, 0, &[0; 9]),
            Answer::GoAway(FRAME_SIZE_ERROR),
        )
        .on(0)
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every PING decode error to PROTOCOL_ERROR",
        ),
        Case::new(
            "SETTINGS of 7 octets",
            "§6.5",
            frame(SETTINGS, 0, 0, &[0; 7]),
            Answer::GoAway(FRAME_SIZE_ERROR),
        )
        .on(0)
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every SETTINGS decode error to PROTOCOL_ERROR",
        ),
        Case::new(
            "SETTINGS ACK with a payload",
            "§6.5",
            frame(SETTINGS, ACK, 0, &[0; 6]),
            Answer::GoAway(FRAME_SIZE_ERROR),
        )
        .on(0)
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every SETTINGS decode error to PROTOCOL_ERROR",
        ),
        Case::new(
            "WINDOW_UPDATE of 5 octets",
            "§6.9",
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1, 0]),
            Answer::GoAway(FRAME_SIZE_ERROR),
        )
        .on(0)
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every WINDOW_UPDATE decode error to PROTOCOL_ERROR",
        ),
        Case::new(
            "RST_STREAM of 5 octets",
            "§6.4",
            {
                let mut bytes = get.clone();
                bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8, 0]));
                bytes
            },
            Answer::GoAway(FRAME_SIZE_ERROR),
        )
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every RST_STREAM decode error to PROTOCOL_ERROR",
        ),
        Case::new(
            "PRIORITY of 4 octets",
            "§6.3",
            frame(PRIORITY, 0, 1, &[0, 0, 0, 0]),
            // §6.3: a stream error.
            Answer::Reset(FRAME_SIZE_ERROR),
        )
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every PRIORITY decode error to a connection PROTOCOL_ERROR",
        ),
    ];
    run_cases(&t, cases).await;
}

/// Control frames where they may not be, settings out of range, flow-control windows past
/// 2^31-1, and what must be ignored (unknown frame types and settings).
async fn control_frames(wire: Wire) {
    let t = Target::spawn(wire, "echo", &[]);
    let get = |id| headers(id, END_STREAM | END_HEADERS, &t.request("GET", "/"));
    let post = |id| headers(id, END_HEADERS, &t.request("POST", "/"));
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let cases = vec![
        Case::new(
            "a frame of an unknown type (ignored)",
            "§4.1, §5.5",
            cat(&[frame(0xfa, 0xff, 0, b"extension"), get(1)]),
            Answer::Status(200),
        ),
        Case::new(
            "an unknown setting (ignored)",
            "§6.5.2",
            cat(&[settings(&[(0x99, 1)]), get(1)]),
            Answer::Status(200),
        ),
        Case::new(
            "SETTINGS on a stream",
            "§6.5",
            frame(SETTINGS, 0, 1, &[]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "PING on a stream",
            "§6.7",
            frame(PING, 0, 1, &[0; 8]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "GOAWAY on a stream",
            "§6.8",
            frame(GOAWAY, 0, 1, &[0; 8]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "PUSH_PROMISE from a client",
            "§8.4",
            cat(&[post(1), frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "SETTINGS_ENABLE_PUSH of 2",
            "§6.5.2",
            settings(&[(SETTINGS_ENABLE_PUSH, 2)]),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(0),
        Case::new(
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            "§6.5.2",
            settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)]),
            Answer::GoAway(FLOW_CONTROL_ERROR),
        )
        .on(0)
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 maps every SETTINGS decode error, value checks included, to PROTOCOL_ERROR",
        ),
        Case::new(
            "SETTINGS_MAX_FRAME_SIZE below 16384",
            "§6.5.2",
            settings(&[(SETTINGS_MAX_FRAME_SIZE, 16_383)]),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(0),
        Case::new(
            "WINDOW_UPDATE past 2^31-1 on the connection",
            "§6.9.1",
            window_update(0, 0x7fff_ffff),
            Answer::GoAway(FLOW_CONTROL_ERROR),
        )
        .on(0),
        Case::new(
            "WINDOW_UPDATE past 2^31-1 on a stream",
            "§6.9.1",
            cat(&[post(1), window_update(1, 0x7fff_ffff)]),
            Answer::Reset(FLOW_CONTROL_ERROR),
        ),
        Case::new(
            "CONTINUATION without HEADERS",
            "§6.10",
            frame(CONTINUATION, END_HEADERS, 1, &[]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "another frame inside a field block",
            "§4.3, §6.10",
            cat(&[
                frame(
                    HEADERS,
                    END_STREAM,
                    1,
                    &header_block(&t.request("GET", "/")),
                ),
                ping(1),
            ]),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
    ];
    run_cases(&t, cases).await;
}

/// Stream identifiers and states a client must not use.
async fn stream_ids(wire: Wire) {
    let t = Target::spawn(wire, "hello", &[]);
    let get = |id| headers(id, END_STREAM | END_HEADERS, &t.request("GET", "/"));
    let post = |id| headers(id, END_HEADERS, &t.request("POST", "/"));
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let cases = vec![
        Case::new(
            "HEADERS on an even (server-initiated) stream",
            "§5.1.1",
            get(2),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(2),
        Case::new(
            "HEADERS on a stream lower than one already opened",
            "§5.1.1",
            cat(&[get(5), get(3)]),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(3),
        Case::new(
            "HEADERS on stream 0",
            "§6.2",
            get(0),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(0),
        Case::new(
            "DATA on an idle stream",
            "§5.1 (idle), §6.1",
            frame(DATA, END_STREAM, 1, b"x"),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "WINDOW_UPDATE of 0 on the connection",
            "§6.9",
            window_update(0, 0),
            Answer::GoAway(PROTOCOL_ERROR),
        )
        .on(0),
        Case::new(
            "WINDOW_UPDATE of 0 on an open stream",
            "§6.9",
            cat(&[post(1), window_update(1, 0)]),
            Answer::Reset(PROTOCOL_ERROR),
        )
        .escalated("h2 checks the increment as it decodes the frame, for any stream"),
        Case::new(
            "RST_STREAM on an idle stream",
            "§6.4",
            rst_stream(1, CANCEL),
            Answer::GoAway(PROTOCOL_ERROR),
        ),
        Case::new(
            "a second HEADERS on a half-closed (remote) stream",
            "§5.1 (half-closed (remote))",
            // No window: the response stays unfinished, so the stream stays half-closed.
            cat(&[get(1), get(1)]),
            Answer::Reset(STREAM_CLOSED),
        )
        .with_settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)])
        .deviates(
            Answer::GoAway(PROTOCOL_ERROR),
            "h2 takes any HEADERS past a stream's request head for a protocol error of the \
             connection (STREAM_CLOSED is the code §5.1 asks for)",
        ),
    ];
    run_cases(&t, cases).await;
}

/// Requests that RFC 9113 §8.1.1 calls malformed: a stream error of type PROTOCOL_ERROR.
async fn malformed_requests(wire: Wire) {
    let t = Target::spawn(wire, "hello", &[]);
    let valid = t.request("GET", "/");
    let with = |extra: &[(&str, &str)]| {
        let mut fields = valid.clone();
        fields.extend_from_slice(extra);
        headers(1, END_STREAM | END_HEADERS, &fields)
    };
    let with_path = |path: &str| {
        let fields: Vec<_> = valid
            .iter()
            .map(|&(n, v)| if n == ":path" { (n, path) } else { (n, v) })
            .collect();
        headers(1, END_STREAM | END_HEADERS, &fields)
    };
    let without = |name: &str| {
        let fields: Vec<_> = valid.iter().copied().filter(|(n, _)| *n != name).collect();
        headers(1, END_STREAM | END_HEADERS, &fields)
    };
    let malformed = Answer::Reset(PROTOCOL_ERROR);
    // http's HeaderName and HeaderValue refuse the field as h2's HPACK decoder reads it, and the
    // block cannot be decoded past it (the HPACK state is the connection's).
    let hpack = "the field is refused mid-block by the HPACK decoder";
    let cases = vec![
        Case::new(
            "te: trailers (allowed)",
            "§8.2.2",
            with(&[("te", "trailers")]),
            Answer::Status(200),
        ),
        Case::new("missing :path", "§8.3.1", without(":path"), malformed),
        Case::new("missing :method", "§8.3.1", without(":method"), malformed),
        Case::new("missing :scheme", "§8.3.1", without(":scheme"), malformed),
        Case::new("empty :path", "§8.3.1", with_path(""), malformed),
        Case::new(
            "two :path",
            "§8.3.1",
            with(&[(":path", "/again")]),
            malformed,
        ),
        Case::new(
            "a pseudo-header after a regular field",
            "§8.3",
            {
                let mut fields = vec![("x-first", "1")];
                fields.extend(valid.iter().copied());
                headers(1, END_STREAM | END_HEADERS, &fields)
            },
            malformed,
        ),
        Case::new(
            "an undefined pseudo-header",
            "§8.3",
            with(&[(":foo", "bar")]),
            malformed,
        )
        .escalated(hpack),
        Case::new(
            "a response pseudo-header in a request",
            "§8.3",
            with(&[(":status", "200")]),
            malformed,
        ),
        Case::new(
            "an uppercase field name",
            "§8.2.1",
            with(&[("X-Upper", "1")]),
            malformed,
        )
        .escalated(hpack),
        Case::new(
            "connection: keep-alive",
            "§8.2.2",
            with(&[("connection", "keep-alive")]),
            malformed,
        ),
        Case::new(
            "keep-alive",
            "§8.2.2",
            with(&[("keep-alive", "timeout=5")]),
            malformed,
        ),
        Case::new(
            "proxy-connection",
            "§8.2.2",
            with(&[("proxy-connection", "keep-alive")]),
            malformed,
        ),
        Case::new(
            "transfer-encoding: chunked",
            "§8.2.2",
            with(&[("transfer-encoding", "chunked")]),
            malformed,
        ),
        Case::new(
            "upgrade: h2c",
            "§8.2.2",
            with(&[("upgrade", "h2c")]),
            malformed,
        ),
        Case::new("te: gzip", "§8.2.2", with(&[("te", "gzip")]), malformed),
        Case::new(
            "a field value with a line feed",
            "§8.2.1",
            with(&[("x-bad", "a\nb")]),
            malformed,
        )
        .escalated(hpack),
        Case::new(
            "a field value with a leading space",
            "§8.2.1",
            with(&[("x-bad", " a")]),
            malformed,
        )
        .deviates(
            Answer::Status(400),
            "the host's rules answer 400 (§8.1.1: a server MAY answer a malformed request \
             before closing its stream); h2 and hyper do not look",
        ),
        Case::new(
            "a field value with a trailing tab",
            "§8.2.1",
            with(&[("x-bad", "a\t")]),
            malformed,
        )
        .deviates(
            Answer::Status(400),
            "the host's rules answer 400 (§8.1.1: a server MAY answer a malformed request \
             before closing its stream); h2 and hyper do not look",
        ),
    ];
    run_cases(&t, cases).await;
}

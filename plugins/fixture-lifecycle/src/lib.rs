//! Test fixture (not published): an effe that misbehaves on demand and records what the host
//! does with it.
//!
//! - `EFFE_LIFECYCLE_LOG=FILE`: appends `init`, `start N`, `stop N` lines (one `write` each).
//! - `FIXTURE_INIT=error|panic`, `FIXTURE_START=error|panic`: make that entry point fail;
//!   `FIXTURE_START=error-after-N`: the first N Starts succeed, later ones fail.
//! - `FIXTURE_START_FAIL_FILE=PATH`: every Start fails while PATH exists (a test switches
//!   Starts off and on again while the host runs).
//! - `FIXTURE_INIT_HOLD=PORT`, `FIXTURE_START_HOLD=PORT`: that entry point connects to the test
//!   on 127.0.0.1:PORT, says what it is (`init`, `start N`) and blocks until the test writes a
//!   byte or closes: the test knows exactly when the call is in progress and ends it at will.
//! - `FIXTURE_STOP_MS=MS`: every Stop takes MS milliseconds (a slow database close).
//! - `run` by path: `/panic` panics, `/error` returns an error, `/error-after-write` writes a
//!   418 then returns an error, `/sleep?MS` records `sleep N MS` and sleeps MS milliseconds,
//!   `/hold?PORT` holds like the variables above (saying `ctx N`), `/big?BYTES` answers BYTES
//!   bytes of `x` (a response larger than the socket buffers), `/thread` answers the name
//!   of the thread Run is called on, `/set-header` appends `x-a: 1` then tries to replace it
//!   with `2` (`replaced`, or `kept: why`), `/deadline` answers the milliseconds left before
//!   the host's deadline (or `none`), `/status?N` writes `partial` then fails with status N
//!   (`fixture status N`), `/retire` fails and asks for its Context to be retired, `/log` logs
//!   one record at each level (`fixture log LEVEL in ctx N`); every other path answers `ctx N`
//!   with the serving Context's number. `init` logs `fixture init` at info.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use effe_abi::{Effe, Error, Request, ResponseWriter};

struct Fixture {
    log: Option<String>,
    fail_start: Option<String>,
    fail_start_file: Option<String>,
    started: AtomicUsize,
}

struct Ctx {
    n: usize,
}

fn record(log: &Option<String>, event: &str) -> Result<(), Error> {
    if let Some(path) = log {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(format!("{event}\n").as_bytes())?;
    }
    Ok(())
}

/// Tells the test on `port` that `who` is in progress, then blocks until it lets go.
fn hold(port: &str, who: &str) -> Result<(), Error> {
    let mut test = TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
    test.write_all(format!("{who}\n").as_bytes())?;
    let _ = test.read(&mut [0u8; 1])?;
    Ok(())
}

fn fail(how: Option<&str>, what: &str) -> Result<(), Error> {
    match how {
        Some("error") => Err(Error::msg(format!("fixture {what} error"))),
        Some("panic") => panic!("fixture {what} panic"),
        _ => Ok(()),
    }
}

impl Effe for Fixture {
    type Context = Ctx;

    fn init() -> Result<Self, Error> {
        let log = std::env::var("EFFE_LIFECYCLE_LOG").ok();
        record(&log, "init")?;
        if let Ok(port) = std::env::var("FIXTURE_INIT_HOLD") {
            hold(&port, "init")?;
        }
        fail(std::env::var("FIXTURE_INIT").ok().as_deref(), "init")?;
        effe_abi::log::info!("fixture init");
        Ok(Fixture {
            log,
            fail_start: std::env::var("FIXTURE_START").ok(),
            fail_start_file: std::env::var("FIXTURE_START_FAIL_FILE").ok(),
            started: AtomicUsize::new(0),
        })
    }

    fn start(&self) -> Result<Ctx, Error> {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(port) = std::env::var("FIXTURE_START_HOLD") {
            hold(&port, &format!("start {n}"))?;
        }
        if let Some(file) = &self.fail_start_file {
            if std::path::Path::new(file).exists() {
                fail(Some("error"), "start")?;
            }
        }
        match self
            .fail_start
            .as_deref()
            .and_then(|f| f.strip_prefix("error-after-"))
        {
            Some(ok) if n > ok.parse::<usize>()? => fail(Some("error"), "start")?,
            Some(_) => {}
            None => fail(self.fail_start.as_deref(), "start")?,
        }
        record(&self.log, &format!("start {n}"))?;
        Ok(Ctx { n })
    }

    fn run(
        &self,
        ctx: &mut Ctx,
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        match req.path() {
            "/panic" => panic!("fixture run panic in ctx {}", ctx.n),
            "/error" => return Err(Error::msg(format!("fixture run error in ctx {}", ctx.n))),
            "/error-after-write" => {
                resp.status(418)?.body("partial");
                return Err(Error::msg("fixture error after write"));
            }
            "/sleep" => {
                let ms: u64 = req.query().unwrap_or("0").parse()?;
                record(&self.log, &format!("sleep {} {ms}", ctx.n))?;
                std::thread::sleep(Duration::from_millis(ms));
            }
            "/big" => {
                let bytes: usize = req.query().unwrap_or("0").parse()?;
                resp.body(vec![b'x'; bytes]);
                return Ok(());
            }
            "/hold" => hold(req.query().unwrap_or(""), &format!("ctx {}", ctx.n))?,
            "/set-header" => {
                // `set_header` is newer than the baseline: an older host refuses it.
                resp.header("x-a", "1")?;
                match resp.set_header("x-a", "2") {
                    Ok(_) => resp.body("replaced"),
                    Err(e) => resp.body(format!("kept: {e}")),
                };
                return Ok(());
            }
            "/deadline" => {
                let left = req.time_left().map(|t| t.as_millis().to_string());
                resp.body(left.as_deref().unwrap_or("none"));
                return Ok(());
            }
            "/status" => {
                let status: u16 = req.query().unwrap_or("500").parse()?;
                resp.status(201)?.body("partial");
                return Err(Error::with_status(
                    status,
                    format!("fixture status {status}"),
                ));
            }
            "/retire" => return Err(Error::msg("fixture broken connection").retire()),
            "/log" => {
                for level in effe_abi::log::Level::iter() {
                    effe_abi::log::log!(level, "fixture log {level} in ctx {}", ctx.n);
                }
            }
            "/thread" => {
                // The OS's name: this library's own copy of std does not know the host's names.
                let name = std::fs::read_to_string("/proc/thread-self/comm")?;
                resp.body(name.trim_end());
                return Ok(());
            }
            _ => {}
        }
        resp.body(format!("ctx {}\n", ctx.n));
        Ok(())
    }

    fn stop(&self, ctx: Ctx) -> Result<(), Error> {
        if let Ok(ms) = std::env::var("FIXTURE_STOP_MS") {
            std::thread::sleep(Duration::from_millis(ms.parse()?));
        }
        record(&self.log, &format!("stop {}", ctx.n))
    }
}

effe_abi::export_effe!(Fixture);

//! Hundreds of slow clients at once (heads, bodies, readers), each cut off at its timeout,
//! while a well-behaved client is served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use effe_tests::{EventLog, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::{exchange, get_raw, Outcome};
use super::{fixture, join_all, raise_fd_limit, stop_and_check_pairs};

/// The header, body and write timeouts of the slow-client test.
const LIMIT: Duration = Duration::from_secs(2);
/// How late after its timeout the host may close a slow connection (timers, and 450
/// connections on two CPUs).
const SLACK: Duration = Duration::from_secs(3);
/// A slow client sends one byte this often.
const DRIP: Duration = Duration::from_millis(500);
/// Slow clients of each kind.
const SLOW_EACH: usize = 150;
/// The response a slow reader asks for and never reads: more than the host's socket can hold
/// (its send buffer grows up to the kernel's `tcp_wmem` maximum; the reader's receive buffer
/// is 4 KiB), so that the host's writes must wait for the reader.
fn big() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    let most: usize = wmem.split_whitespace().nth(2).unwrap().parse().unwrap();
    most + (1 << 20)
}

/// What the host did to a dripping client.
struct Dripped {
    /// What the host sent.
    got: Vec<u8>,
    /// Bytes of the drip written before the host closed.
    written: usize,
    /// When the last byte of the drip was written (just before).
    last_write: Instant,
    closed: Instant,
}

/// Writes `bytes` one every [`DRIP`], then nothing, until the host closes the connection;
/// an error if it is still open at `deadline`.
async fn drip(tcp: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<Dripped, String> {
    let mut tick = tokio::time::interval(DRIP);
    let (mut got, mut written, mut last_write) = (Vec::new(), 0, Instant::now());
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            read = tcp.read(&mut chunk) => match read {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                // Closed (or reset): the host is done with the connection.
                _ => break,
            },
            _ = tick.tick(), if written < bytes.len() => {
                // Before the write: the byte cannot have reached the host earlier, so a time
                // measured from here is never shorter than the host's.
                let now = Instant::now();
                if tcp.write_all(&bytes[written..written + 1]).await.is_err() {
                    break;
                }
                written += 1;
                last_write = now;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(format!("still open at the deadline ({written} bytes dripped)"));
            }
        }
    }
    Ok(Dripped {
        got,
        written,
        last_write,
        closed: Instant::now(),
    })
}

/// A client that sends its request head one byte per [`DRIP`]: the host closes it
/// `--header-read-timeout` after its first byte. Returns when it was closed, from its connect.
async fn slow_head(addr: SocketAddr) -> Result<Duration, String> {
    let connected = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // Longer than the drip can get through before the deadline: the head never ends.
    let head = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-slow: {}\r\n\r\n",
        "a".repeat(64)
    );
    let d = drip(&mut tcp, head.as_bytes(), connected + LIMIT + SLACK).await?;
    let after = d.closed - connected;
    if after < LIMIT {
        return Err(format!("closed after {after:?}, before its timeout"));
    }
    // hyper closes without a word, or says 408; nothing else.
    if !(d.got.is_empty() || d.got.starts_with(b"HTTP/1.1 408 ")) {
        return Err(format!("got {:?}", String::from_utf8_lossy(&d.got)));
    }
    Ok(after)
}

/// A client that sends a whole head declaring a 100-byte body, drips three bytes of it (well
/// within the body timeout between them), then stalls: 408, then the host closes, a body
/// timeout after the last byte. Returns that time.
async fn slow_body(addr: SocketAddr) -> Result<Duration, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let d = drip(&mut tcp, b"abc", Instant::now() + 3 * DRIP + LIMIT + SLACK).await?;
    if d.written < 3 {
        return Err(format!("closed during the drip, after {} bytes", d.written));
    }
    if !d.got.starts_with(b"HTTP/1.1 408 ") {
        return Err(format!("got {:?}", String::from_utf8_lossy(&d.got)));
    }
    let after = d.closed - d.last_write;
    if after < LIMIT {
        return Err(format!(
            "408 after {after:?} of silence, before its timeout"
        ));
    }
    if after > LIMIT + SLACK {
        return Err(format!("408 only after {after:?} of silence"));
    }
    Ok(after)
}

/// A client that asks for `big` bytes with a 4 KiB receive buffer and reads nothing for the
/// write timeout plus [`SLACK`] from the first byte of the answer, then reads what comes. A
/// host still writing then would send the whole answer (the client now reads): a cut answer
/// shows that it had given up by then. Returns the bytes it got.
async fn slow_reader(addr: SocketAddr, big: usize) -> Result<usize, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    let mut tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(get_raw(&format!("/big?{big}")).as_slice())
        .await
        .map_err(|e| e.to_string())?;
    // When the answer begins (its Run may have waited for a Context): a peek reads nothing.
    tokio::time::timeout(PATIENCE, tcp.peek(&mut [0u8; 1]))
        .await
        .map_err(|_| "no answer began".to_owned())?
        .map_err(|e| e.to_string())?;
    let began = Instant::now();
    // The client's whole behaviour: it reads nothing until then.
    tokio::time::sleep_until((began + LIMIT + SLACK).into()).await;
    let mut got = 0usize;
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let read_all = async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(n) if n > 0 => {
                    if head.len() < 16 {
                        head.extend_from_slice(&chunk[..n.min(16)]);
                    }
                    got += n;
                }
                _ => return,
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .map_err(|_| "never closed".to_owned())?;
    if !head.starts_with(b"HTTP/1.1 200 ") {
        return Err(format!("got {:?}", String::from_utf8_lossy(&head)));
    }
    if got >= big {
        return Err(format!(
            "the whole answer came ({got} bytes): nothing was cut"
        ));
    }
    Ok(got)
}

/// A well-behaved client: one request per new connection, in a loop, until `stop` (at most
/// `most` requests). Returns each request's latency, and what went wrong.
async fn normal_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    most: usize,
) -> (Vec<Duration>, Vec<String>) {
    let (mut latencies, mut wrong) = (Vec::new(), Vec::new());
    let request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    while !stop.load(Ordering::Relaxed) && latencies.len() < most {
        let began = Instant::now();
        let outcome = match TcpStream::connect(addr).await {
            Ok(mut tcp) => exchange(&mut tcp, request).await,
            Err(e) => Outcome::NotTaken(format!("connect: {e}")),
        };
        latencies.push(began.elapsed());
        match outcome {
            Outcome::Answered(a) if a.status == 200 => {}
            Outcome::Answered(a) => wrong.push(format!("status {}", a.status)),
            Outcome::NotTaken(why) | Outcome::Broken(why) => wrong.push(why),
        }
    }
    (latencies, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slow_clients_are_cut_off_at_their_timeouts_while_others_are_served() {
    raise_fd_limit(3 * SLOW_EACH as u64 + 512);
    let log = EventLog::new();
    let limit = format!("{}ms", LIMIT.as_millis());
    let host = fixture(&log)
        .args([
            "--header-read-timeout",
            &limit,
            "--body-read-timeout",
            &limit,
        ])
        .args(["--write-timeout", &limit])
        // Contexts enough that the slow readers' Runs hardly wait for one.
        .args(["--max-contexts", "64", "--queue-timeout", "30s"])
        .spawn();
    let (addr, big) = (host.addr, big());
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // On a thread and runtime of its own: what it measures is the host, not this test's
    // scheduling of the slow clients' tasks.
    let normal = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(normal_client(addr, stop, 50_000))
        })
    };
    let (mut heads, mut bodies, mut readers) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SLOW_EACH {
        heads.push(tokio::spawn(slow_head(addr)));
        bodies.push(tokio::spawn(slow_body(addr)));
        readers.push(tokio::spawn(slow_reader(addr, big)));
    }
    let heads = join_all(heads, PATIENCE).await;
    let bodies = join_all(bodies, PATIENCE).await;
    let readers = join_all(readers, PATIENCE).await;
    stop.store(true, Ordering::Relaxed);
    // Bounded: it stops at the flag, each request within PATIENCE.
    let (mut latencies, wrong) = normal.join().expect("the normal client panicked");
    let attack = began.elapsed();

    fn failed<T>(kind: &str, results: &[Result<T, String>]) -> Option<String> {
        let bad: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let first = &bad[..bad.len().min(3)];
        (!bad.is_empty()).then(|| format!("{} of {SLOW_EACH} {kind}, e.g. {first:?}", bad.len()))
    }
    let failures: Vec<String> = [
        failed("slow heads", &heads),
        failed("slow bodies", &bodies),
        failed("slow readers", &readers),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let slowest = |results: &[Result<Duration, String>]| {
        results.iter().filter_map(|r| r.clone().ok()).max().unwrap()
    };
    let got_most = readers.iter().filter_map(|r| r.clone().ok()).max().unwrap();
    let peak = std::fs::read_to_string(format!("/proc/{}/status", host.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap();
    latencies.sort_unstable();
    eprintln!(
        "slow clients: {SLOW_EACH} each; slowest head closed {:?} after connect, slowest 408 \
         {:?} after the last body byte, a slow reader got at most {got_most} of {big} bytes; \
         attack {attack:?}; host peak RSS {peak}",
        slowest(&heads),
        slowest(&bodies),
    );
    eprintln!(
        "normal client meanwhile: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );
    assert!(wrong.is_empty(), "the normal client: {wrong:?}");
    assert!(
        latencies.len() >= 100,
        "the normal client got only {} answers",
        latencies.len()
    );
    // Still up, and every Context that started was stopped.
    assert_eq!(host.get("/").await.status, 200);
    stop_and_check_pairs(host, &log);
}

/// The `p`-th percentile of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

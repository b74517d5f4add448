//! Out of file descriptors under load: the host serves its open connections, and waits
//! without spinning a CPU.

use std::time::{Duration, Instant};

use effe_tests::{HostCmd, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::{exchange, get_raw, Outcome};

/// CPU time (user + system) the process has used so far. /proc counts it in clock ticks;
/// USER_HZ is 100 on every Linux architecture (the kernel converts to it for user space).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which ends at the last ')': state is field 3, utime 14.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_under_load_the_host_serves_its_connections_and_does_not_spin() {
    let host = HostCmd::hello_short_of_descriptors(3);
    let mut served = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(host.addr).await.unwrap();
        match exchange(&mut tcp, &get_raw("/")).await {
            Outcome::Answered(a) => assert_eq!(a.status, 200),
            Outcome::NotTaken(why) | Outcome::Broken(why) => panic!("{why}"),
        }
        served.push(tcp);
    }
    // Load: clients keep arriving, and wait in the kernel's backlog.
    let close = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut waiting = Vec::new();
    for _ in 0..32 {
        let mut tcp = TcpStream::connect(host.addr).await.unwrap();
        tcp.write_all(close).await.unwrap();
        waiting.push(tcp);
    }
    host.wait_stderr(|s| s.contains("cannot accept connections"));
    // Over two seconds out of descriptors, an open connection is served (a request every
    // 50 ms), and the host uses a small part of one CPU: a host that retried its accepts at
    // once would use all of one.
    let pid = host.pid();
    let (cpu_before, began) = (cpu_time(pid), Instant::now());
    let mut requests = 0;
    while began.elapsed() < Duration::from_secs(2) {
        match exchange(&mut served[0], &get_raw("/")).await {
            Outcome::Answered(a) => assert_eq!(a.status, 200),
            Outcome::NotTaken(why) | Outcome::Broken(why) => panic!("{why}"),
        }
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cpu, window) = (cpu_time(pid) - cpu_before, began.elapsed());
    let still_out = !host.stderr().contains("accepting connections again");
    eprintln!(
        "out of descriptors: {requests} requests served on an open connection; the host used \
         {cpu:?} of CPU in {window:?}"
    );
    assert!(still_out, "the episode ended during the measurement");
    assert!(
        cpu < window / 4,
        "the host used {cpu:?} of CPU in {window:?} out of descriptors"
    );
    // Descriptors free up: the clients that waited are served, in turn (each answer closes
    // its connection, which frees a descriptor for the next).
    drop(served);
    for mut tcp in waiting {
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got))
            .await
            .expect("a waiting client was served once descriptors freed")
            .unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    }
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
}

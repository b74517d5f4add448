//! `effe-host --probe`: a health check for an image with no shell and no curl (Docker's
//! `HEALTHCHECK`): one GET to the admin listener, exit 0 on a 2xx and 1 otherwise.
//!
//! Blocking std I/O and a hand-written request: it runs once and exits, and a runtime or an
//! HTTP client would only add start-up time to every check.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::Listen;

/// Connecting, writing and reading each get this long: a check that hangs is a failed check.
const PATIENCE: Duration = Duration::from_secs(2);

/// Probes `target` (a path on the admin listener `admin_listen`, or an `http://` URL); says why
/// on stderr, in one line, when it fails.
pub fn run(target: &str, admin_listen: &str) -> ExitCode {
    match probe(target, admin_listen) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("effe-host: probe {target}: {why}");
            ExitCode::FAILURE
        }
    }
}

fn probe(target: &str, admin_listen: &str) -> Result<String, String> {
    let (addr, host, path) = resolve(target, admin_listen)?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(PATIENCE))
        .and_then(|()| tcp.set_write_timeout(Some(PATIENCE)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    // The admin answers are a few dozen bytes: the status line and the first line of the body
    // are all a check needs.
    let mut answer = Vec::with_capacity(1024);
    tcp.take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body.lines().next().unwrap_or(""));
    let line = format!("{status} {body}").trim_end().to_owned();
    if (200..300).contains(&status) {
        Ok(line)
    } else {
        Err(line)
    }
}

/// The address to connect to, the `host` to send, and the path.
fn resolve(target: &str, admin_listen: &str) -> Result<(SocketAddr, String, String), String> {
    if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        return Ok((addr, authority.to_owned(), path.to_owned()));
    }
    if !target.starts_with('/') {
        return Err("expected a path such as /readyz, or an http:// URL".to_owned());
    }
    if admin_listen.trim() == "off" {
        return Err("the admin listener is off (--admin-listen): give an http:// URL".to_owned());
    }
    let mut addr = Listen::parse(admin_listen)
        .and_then(|listen| listen.resolve())
        .map_err(|e| format!("--admin-listen: {e}"))?;
    // Listening everywhere: this container's own loopback reaches it.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok((addr, addr.to_string(), target.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_to_the_admin_listener_on_loopback() {
        let (addr, host, path) = resolve("/readyz", "0.0.0.0:9090").unwrap();
        assert_eq!(addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            (host.as_str(), path.as_str()),
            ("127.0.0.1:9090", "/readyz")
        );
        let (addr, _, _) = resolve("/livez", "[::]:9091").unwrap();
        assert_eq!(addr, "[::1]:9091".parse().unwrap());
        assert!(resolve("/readyz", "off").unwrap_err().contains("off"));
        assert!(resolve("readyz", "0.0.0.0:9090").is_err());
    }

    #[test]
    fn urls_name_their_own_address() {
        let (addr, host, path) = resolve("http://127.0.0.1:8081/livez", "off").unwrap();
        assert_eq!(addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!((host.as_str(), path.as_str()), ("127.0.0.1:8081", "/livez"));
        let (addr, _, path) = resolve("http://127.0.0.1", "off").unwrap();
        assert_eq!((addr.port(), path.as_str()), (80, "/"));
    }
}

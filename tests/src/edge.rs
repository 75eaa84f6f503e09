//! Clients that misbehave on purpose, and the receiver as a real process
//! (so that its file descriptors and memory are its own and its peak RSS is
//! what `/proc` says).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::TestEnv;
use crate::roles::{APP_SECRET, VERIFY_TOKEN, wait_success};

/// A request head for `POST /webhooks/whatsapp` with the given extra header
/// lines (each ending in `\r\n`), complete with the blank line.
pub fn post_head(extra: &str) -> String {
    format!("POST /webhooks/whatsapp HTTP/1.1\r\nhost: receiver\r\n{extra}\r\n")
}

/// A complete signed request, as bytes on the wire.
pub fn signed_request(body: &[u8], extra: &str) -> Vec<u8> {
    let head = post_head(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nx-hub-signature-256: {}\r\n{extra}",
        body.len(),
        crate::payloads::signature(body)
    ));
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Everything the server sends until it closes the connection, and whether
/// it did close it within `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&received).into_owned(), true);
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads one response head (up to the blank line) within `limit`.
pub async fn read_head(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + limit;
    while !received.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Ok(Ok(1)) => received.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends `first` at once, then `each` every `period` until the server closes
/// the connection or `limit` passes. Returns how long after it connected the
/// server closed it (`None`: still open at `limit`).
pub async fn trickle(
    addr: SocketAddr,
    first: Vec<u8>,
    each: &'static [u8],
    period: Duration,
    limit: Duration,
) -> Option<Duration> {
    let opened = Instant::now();
    let mut stream = connect(addr).await;
    if stream.write_all(&first).await.is_err() {
        return Some(opened.elapsed());
    }
    let mut ticks = tokio::time::interval_at(opened + period, period);
    let mut buffer = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => {} // a 408 on its way; the close follows
            },
            _ = ticks.tick() => {
                if opened.elapsed() >= limit {
                    return None;
                }
                if stream.write_all(each).await.is_err() {
                    return Some(opened.elapsed());
                }
            }
        }
    }
}

/// `wa-ingest receiver` as a child process with the test's namespace and
/// the default edge settings unless `extra` overrides them; `/metrics` on a
/// plain ops listener (WA_OPS_ADDR) so that reading it takes no slot of the
/// public listener.
pub struct ReceiverProcess {
    child: Child,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
}

impl ReceiverProcess {
    pub async fn start(binary: &str, env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary);
        command.arg("receiver");
        Self::spawn(command, env, extra).await
    }

    /// Like [`ReceiverProcess::start`], with `command` (which runs
    /// `wa-ingest receiver`, wrapped as the test needs) as the process.
    pub async fn spawn(mut command: Command, env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let addr = free_addr();
        let ops_addr = free_addr();
        let child = command
            .env("WA_NAMESPACE", env.namespace.as_str())
            .env("AMQP_URL", &env.amqp_url)
            .env("WA_APP_SECRET", APP_SECRET)
            .env("WA_VERIFY_TOKEN", VERIFY_TOKEN)
            .env("LISTEN_ADDR", addr.to_string())
            .env("WA_OPS_ADDR", ops_addr.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "error")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the wa-ingest binary");
        let process = Self {
            child,
            addr,
            ops_addr,
        };
        let url = format!("http://{ops_addr}/readyz");
        wait_success("the receiver to be ready", url, Duration::from_secs(20)).await;
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn metrics(&self) -> String {
        crate::scrape(self.ops_addr).await
    }

    /// Peak resident memory so far, in bytes (VmHWM of /proc/PID/status).
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("receiver running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in kB");
        kib * 1024
    }

    /// SIGTERM, then the exit status (a clean stop is a success).
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("receiver running").to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the receiver exits after SIGTERM")
            .expect("exit status")
    }
}

/// A port nothing listens on now.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::servers::free_port()))
}

//! The roles under test as child processes: `wa-ingest` (the production
//! binary, beside this one) for the roles, this binary for the bare handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

pub(crate) struct Role {
    child: Child,
    pub addr: SocketAddr,
}

impl Role {
    /// Starts `program <args>` with `env`, waits for `/readyz` on `addr`.
    pub(crate) async fn start(
        program: &Path,
        args: &[&str],
        env: &HashMap<&str, String>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let child = Command::new(program)
            .args(args)
            .envs(env)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} {}", program.display(), args.join(" ")))?;
        let role = Self { child, addr };
        role.wait_ready().await?;
        Ok(role)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.addr);
        for _ in 0..300 {
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{url} did not answer 200 within 15 s")
    }

    /// Peak resident memory so far, in bytes (VmHWM).
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        self.memory("VmHWM:")
    }

    /// Resident memory now, in bytes (VmRSS).
    pub(crate) fn rss(&self) -> Option<u64> {
        self.memory("VmRSS:")
    }

    fn memory(&self, field: &str) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// CPU time the process has used so far (user + system), the figure that
    /// holds on a busy machine where wall-clock rates do not.
    pub(crate) fn cpu(&self) -> Duration {
        self.child.id().and_then(cpu_time).unwrap_or_default()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// User + system time of a process from /proc/<pid>/stat, whose clock
/// ticks are USER_HZ (100 on every Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// CPU microseconds per unit of work.
pub(crate) fn micros_per(cpu: Duration, units: u64) -> f64 {
    if units == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / units as f64
}

/// The production binary whose roles are measured: `wa-ingest` beside this one.
pub(crate) fn wa_ingest_binary() -> anyhow::Result<PathBuf> {
    wa_core::executable::find_companion("wa-ingest").ok_or_else(|| {
        anyhow::anyhow!(wa_core::executable::missing_companion(
            "wa-ingest",
            "the bench"
        ))
    })
}

/// This binary, which serves the bare handler (`bench --serve-bare`).
pub(crate) fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find this executable")
}

/// A port nothing listens on now.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    // Below the kernel's ephemeral range (32768 and up by default): a port
    // the kernel hands out for `:0` can be taken by one of the bench's own
    // thousands of outgoing connections before the process binds it.
    const PORTS: std::ops::Range<u16> = 20000..32000;
    // Each call starts after the port the last call gave, so that two
    // calls before either port is bound do not give the same one (starting
    // one further per call did, when a port in use lay between them); the
    // process id (spread over the range) sets where runs side by side start.
    static NEXT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let span = u32::from(PORTS.end - PORTS.start);
    let mut next = NEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let first = next.unwrap_or_else(|| std::process::id().wrapping_mul(2_654_435_761) % span);
    for step in 0..span {
        let offset = (first + step) % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or_default();
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            *next = Some((offset + 1) % span);
            return Ok(listener.local_addr()?);
        }
    }
    anyhow::bail!(
        "no free port on 127.0.0.1 between {} and {}",
        PORTS.start,
        PORTS.end
    )
}

/// The HTTP ceiling: answers 200 to every POST after reading the body, and
/// nothing else (no signature, no JSON check, no broker).
pub(crate) async fn serve_bare(addr: SocketAddr) -> anyhow::Result<()> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/webhooks/whatsapp",
            post(|_body: axum::body::Bytes| async { "ok" }),
        )
        .route("/readyz", get(|| async { "ready" }))
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(wa_core::shutdown::on_signal().cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::free_addr;

    #[test]
    fn free_addresses_asked_back_to_back_differ_and_lie_below_the_ephemeral_range() {
        let addresses: Vec<_> = (0..50).map(|_| free_addr().expect("a free port")).collect();
        for address in &addresses {
            assert!((20000..32000).contains(&address.port()), "{address}");
        }
        let distinct: std::collections::HashSet<_> = addresses.iter().collect();
        assert_eq!(distinct.len(), addresses.len(), "{addresses:?}");
    }

    #[test]
    fn a_port_in_use_after_the_last_one_given_does_not_make_the_next_two_the_same() {
        let given = free_addr().expect("a free port");
        // Taken here, or by someone else already: either way in use.
        let _in_use = std::net::TcpListener::bind(("127.0.0.1", given.port() + 1));
        let (next, after) = (free_addr().expect("a port"), free_addr().expect("a port"));
        assert_ne!(next, after);
    }
}

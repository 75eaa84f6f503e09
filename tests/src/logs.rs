//! The log lines of the roles a test runs in-process, captured as JSON.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Every log line written since [`capture`], one JSON object each.
#[derive(Clone, Default)]
pub struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.bytes.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes
            .lock()
            .expect("log buffer")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's log subscriber, in the roles' JSON format, writing
/// into memory. Each test runs in a process of its own (nextest), so the
/// capture sees that test's roles only. Call it before `TestEnv::new`.
pub fn capture() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,lapin=warn,sqlx=warn",
        ))
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("no other log subscriber in this test process");
    captured
}

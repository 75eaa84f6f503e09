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

/// The lines at level ERROR in a `wa-ingest` process's JSON log output
/// (`LOG_FORMAT=json`), for tests that run the binary and read its output.
pub fn error_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|entry| entry["level"] == "ERROR")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_lines_are_the_json_lines_at_level_error() {
        let output = concat!(
            r#"{"level":"INFO","message":"worker drained"}"#,
            "\n",
            r#"{"timestamp":"t","level":"ERROR","message":"Connection error"}"#,
            "\n",
            "not JSON: ERROR\n",
        );
        assert_eq!(
            super::error_lines(output),
            [r#"{"timestamp":"t","level":"ERROR","message":"Connection error"}"#]
        );
    }
}

//! `wa-ingest bench soak`, briefly: the receiver, two workers, the relay and
//! a downstream consumer as real processes; the run passes only when every
//! event was stored once and published once in order, and the backlogs
//! drained. (Its rates and latencies are printed, never asserted.)

use std::process::Stdio;
use std::time::Duration;

use wa_e2e::env::{AMQP_URL, POSTGRES_URL, REDIS_URL};

#[tokio::test]
async fn a_short_soak_loses_and_doubles_nothing_and_drains() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wa-ingest"))
        .args([
            "bench",
            "soak",
            "--duration",
            "12s",
            "--interval",
            "4s",
            "--rate",
            "40",
            "--contacts",
            "20",
            "--drain-timeout",
            "90s",
        ])
        .env("AMQP_URL", AMQP_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("DATABASE_URL", format!("{POSTGRES_URL}/postgres"))
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the soak ends")
        .expect("run the wa-ingest binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    println!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{}", output.status);
    assert!(stdout.contains("soak passed: 0 lost, 0 doubled, backlogs 0"));
    assert!(stdout.contains(": 0 lost, 0 more than sent"), "{stdout}");
}

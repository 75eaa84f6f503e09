//! The tools binary on its own: its commands parse, and the bench, which
//! measures the production binary, refuses to start without it.

use std::path::Path;
use std::process::Command;

const TOOLS: &str = env!("CARGO_BIN_EXE_wa-ingest-tools");

#[test]
fn loadgen_and_bench_answer_help() {
    for command in [
        &["loadgen", "send", "--help"][..],
        &["loadgen", "check", "--help"],
        &["bench", "--help"],
    ] {
        let output = Command::new(TOOLS)
            .args(command)
            .output()
            .expect("run wa-ingest-tools");
        assert!(output.status.success(), "{command:?}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: wa-ingest"));
    }
}

#[test]
fn the_bench_names_the_missing_wa_ingest_before_touching_a_server() {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tools-alone");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("create the folder");
    let alone = folder.join("wa-ingest-tools");
    if std::fs::hard_link(TOOLS, &alone).is_err() {
        std::fs::copy(TOOLS, &alone).expect("copy wa-ingest-tools");
    }
    let output = Command::new(&alone)
        .arg("bench")
        // Nothing listens there: the check must come before any connection.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("LOG_FORMAT", "pretty")
        .output()
        .expect("run wa-ingest-tools bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the bench needs wa-ingest beside this executable"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cargo build --release --locked -p wa-ingest"),
        "{stderr}"
    );
}

//! The bounded fuzz run of the test suite: 20,000 inputs per target with a
//! fixed seed (a new failure is then the code's, not the dice's). The long
//! runs are `scripts/fuzz`.

use std::process::Command;

#[test]
fn twenty_thousand_inputs_per_target_break_nothing() {
    let out = std::env::temp_dir().join(format!("wa-fuzz-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_wa-fuzz"))
        .args([
            "--inputs",
            "20000",
            "--seed",
            "20261101",
            "--time-limit",
            "10s",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run wa-fuzz");
    let _ = std::fs::remove_dir_all(&out);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "{report}");
    for target in ["payload", "signature"] {
        assert!(
            report.contains(&format!("{target}: 20000 inputs")),
            "{report}"
        );
    }
}

//! `wa-ingest loadgen|bench`: the tools are the separate binary
//! wa-ingest-tools, which `wa-ingest` runs from its own folder with every
//! argument untouched, or refuses with an error that says what to build.

use std::path::{Path, PathBuf};
use std::process::Output;

/// A folder of its own holding a copy of the real `wa-ingest` binary (a hard
/// link: the same file system as the target folder).
fn install_wa_ingest(test: &str) -> PathBuf {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tools-{test}"));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("create the install folder");
    let binary = folder.join("wa-ingest");
    let original = env!("CARGO_BIN_EXE_wa-ingest");
    if std::fs::hard_link(original, &binary).is_err() {
        std::fs::copy(original, &binary).expect("copy wa-ingest");
    }
    folder
}

fn wa_ingest(folder: &Path, args: &[&str]) -> Output {
    std::process::Command::new(folder.join("wa-ingest"))
        .args(args)
        .env_remove("LOG_FORMAT")
        .output()
        .expect("run wa-ingest")
}

#[test]
fn loadgen_and_bench_run_wa_ingest_tools_beside_the_binary_with_every_argument() {
    let folder = install_wa_ingest("present");
    // A stand-in for wa-ingest-tools that reports what it was given.
    let stand_in = folder.join("wa-ingest-tools");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\necho \"args=$* LOG_FORMAT=$LOG_FORMAT\"\nexit 7\n",
    )
    .expect("write the stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755))
        .expect("make the stand-in executable");

    let output = wa_ingest(
        &folder,
        &[
            "--log-format",
            "pretty",
            "loadgen",
            "send",
            "--payloads",
            "5",
            "--help",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(7),
        "the tool's exit code is the user's"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "args=loadgen send --payloads 5 --help LOG_FORMAT=pretty"
    );

    let output = wa_ingest(&folder, &["bench", "--duration", "1s"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "args=bench --duration 1s LOG_FORMAT=json"
    );
}

#[test]
fn without_wa_ingest_tools_the_error_names_the_binary_and_how_to_build_it() {
    let folder = install_wa_ingest("missing");
    let output = wa_ingest(&folder, &["loadgen", "send"]);
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`wa-ingest loadgen` needs wa-ingest-tools"),
        "{stderr}"
    );
    assert!(stderr.contains(&folder.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("cargo build --release --locked -p wa-ingest-tools"),
        "{stderr}"
    );
}

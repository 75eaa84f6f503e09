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

/// The crates a package links into its binary (`cargo tree -e normal`),
/// by name, from the workspace's own lock file.
fn linked_crates(package: &str) -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args(["tree", "--locked", "--offline", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}", "-p", package])
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_production_binary_links_no_tool_and_wa_core_no_backend_client() {
    let production = linked_crates("wa-ingest");
    for tool in ["reqwest", "hdrhistogram", "wa-loadgen", "wa-bench"] {
        assert!(
            !production.iter().any(|name| name == tool),
            "wa-ingest links {tool}"
        );
    }
    let core = linked_crates("wa-core");
    for backend in ["lapin", "sqlx", "redis"] {
        assert!(
            !core.iter().any(|name| name == backend),
            "wa-core links {backend}"
        );
    }
}

/// `wa-ingest loadgen <args>` with the test's database, as a user runs it
/// (the tools binary beside `wa-ingest`, as the workspace builds it).
async fn loadgen(env: &wa_e2e::TestEnv, args: &[&str]) -> Output {
    env.process(env!("CARGO_BIN_EXE_wa-ingest"), &["loadgen"])
        .args(args)
        .env("WA_APP_SECRET", wa_e2e::roles::APP_SECRET)
        .env("LOG_FORMAT", "json")
        .output()
        .await
        .expect("run wa-ingest loadgen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_check_waits_for_the_workers_when_asked_and_not_otherwise() {
    use std::time::Duration;
    use wa_e2e::{Receiver, TestEnv, Worker};

    let env = TestEnv::new().await;
    let receiver = Receiver::start(&env, &env.amqp_url, &[]).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("check-{}", env.namespace));
    std::fs::create_dir_all(&dir).expect("events folder");
    let events = dir.join("events.txt");
    let events = events.to_str().expect("a UTF-8 path");
    let url = receiver.url("/webhooks/whatsapp");
    let sent = loadgen(
        &env,
        &[
            "send",
            "--url",
            &url,
            "--payloads",
            "40",
            "--duplicates",
            "2",
            "--events-out",
            events,
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");

    // No worker yet: without --wait the check counts once and fails.
    let at_once = loadgen(&env, &["check", "--events", events]).await;
    assert!(!at_once.status.success(), "{at_once:?}");
    assert!(
        String::from_utf8_lossy(&at_once.stdout).contains(" 0 stored, "),
        "{at_once:?}"
    );

    // With --wait it looks again until a worker, started later, has stored all.
    let check_waiting = ["check", "--events", events, "--wait", "60s"];
    let waiting = loadgen(&env, &check_waiting);
    let late_worker = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Worker::start(&env, &[]).await
    };
    let (waited, worker) = tokio::join!(waiting, late_worker);
    let stdout = String::from_utf8_lossy(&waited.stdout);
    assert!(waited.status.success(), "{waited:?}");
    assert!(stdout.contains(" stored, 0 missing"), "{stdout}");
    worker.stop().await;
    receiver.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

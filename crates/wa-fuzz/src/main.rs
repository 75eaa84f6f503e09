//! `wa-fuzz`: fuzzes the webhook parser and the signature check on the
//! stable toolchain, by mutating the real fixture corpus
//! (`crates/wa-payload/tests/fixtures`). Inputs are reproducible from the
//! seed and their number.
//!
//! The command supervises a child process that runs the inputs: a panic or
//! an allocation past the bound kills the child, an input that runs past the
//! time bound is killed by the supervisor; either way the input is written
//! to the output folder and the command exits non-zero.
//!
//! ```sh
//! scripts/fuzz 1000000                    # 10^6 inputs per target, release build
//! wa-fuzz --seed 7 --target payload --only 1234   # replay one input
//! ```

mod mutate;
mod targets;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use cap::Cap;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::targets::Target;

/// Counts every allocation; each input may allocate at most
/// `alloc_bound(len)` on top of what was live before it, past which the
/// allocation fails and the process aborts.
#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// 64 MiB plus 256 bytes per input byte: the parser builds a `serde_json`
/// tree and copies items into events, which stays within a small multiple
/// of the input; anything past this grows with something other than the input.
fn alloc_bound(len: usize) -> usize {
    64 * 1024 * 1024 + len.saturating_mul(256)
}

#[derive(Debug, Parser)]
#[command(
    name = "wa-fuzz",
    about = "Fuzz the webhook parser and the signature check"
)]
struct Args {
    /// Inputs per target.
    #[arg(long, default_value_t = 20_000)]
    inputs: u64,
    /// Seed of the run (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// One target (default: all).
    #[arg(long, value_enum)]
    target: Option<Target>,
    /// Runs only this input number (with --seed and --target): a replay.
    #[arg(long, requires_all = ["seed", "target"])]
    only: Option<u64>,
    /// Longest one input may run.
    #[arg(long, default_value = "5s", value_parser = wa_core::config::parse_duration)]
    time_limit: Duration,
    /// The corpus: a folder of JSON bodies.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../wa-payload/tests/fixtures"))]
    corpus: PathBuf,
    /// Where failing inputs are written.
    #[arg(long, default_value = "target/fuzz-failures")]
    out: PathBuf,
    /// Internal: run the inputs, reporting progress to this file.
    #[arg(long, hide = true)]
    progress: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.progress {
        Some(progress) => run_inputs(&args, progress),
        None => supervise(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wa-fuzz: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_corpus(folder: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut corpus = Vec::new();
    let entries = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read the corpus {}", folder.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            corpus.push(std::fs::read(&path)?);
        }
    }
    anyhow::ensure!(!corpus.is_empty(), "no *.json in {}", folder.display());
    corpus.sort();
    Ok(corpus)
}

/// The generator of one input: the same (seed, target, index) gives the
/// same input on any run.
fn input_rng(seed: u64, target: Target, index: u64) -> StdRng {
    let target = target as u64 + 1;
    StdRng::seed_from_u64(
        seed ^ target.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

fn targets(args: &Args) -> Vec<Target> {
    args.target.map_or(Target::ALL.to_vec(), |t| vec![t])
}

/// Progress record: target, input index.
const PROGRESS_LEN: usize = 16;

/// The child: runs the inputs, writing which one runs before it runs.
fn run_inputs(args: &Args, progress: &Path) -> anyhow::Result<()> {
    let seed = args.seed.context("the child needs the seed")?;
    let corpus = load_corpus(&args.corpus)?;
    let progress = File::options().write(true).open(progress)?;
    for target in targets(args) {
        let indices = match args.only {
            Some(only) => only..only + 1,
            None => 0..args.inputs,
        };
        let (mut slowest, mut slowest_index, mut largest) = (Duration::ZERO, 0, 0usize);
        let started = Instant::now();
        for index in indices {
            let mut record = [0u8; PROGRESS_LEN];
            record[..8].copy_from_slice(&(target as u64).to_le_bytes());
            record[8..].copy_from_slice(&index.to_le_bytes());
            progress.write_at(&record, 0)?;

            let input = target.input(&corpus, &mut input_rng(seed, target, index));
            largest = largest.max(input.len());
            let _ = ALLOCATOR.set_limit(ALLOCATOR.allocated() + alloc_bound(input.len()));
            let began = Instant::now();
            let outcome = target.run(&input);
            let took = began.elapsed();
            let _ = ALLOCATOR.set_limit(usize::MAX);
            if let Err(broken) = outcome {
                anyhow::bail!("{} input {index}: {broken}", target.name());
            }
            if took > slowest {
                (slowest, slowest_index) = (took, index);
            }
            if took > args.time_limit {
                anyhow::bail!("{} input {index} took {took:?}", target.name());
            }
        }
        println!(
            "{}: {} inputs in {:.1?}, no failure; slowest input {slowest_index} took {slowest:?}, \
             largest {largest} bytes, peak heap {:.1} MiB",
            target.name(),
            args.only.map_or(args.inputs, |_| 1),
            started.elapsed(),
            ALLOCATOR.max_allocated() as f64 / (1024.0 * 1024.0),
        );
    }
    Ok(())
}

/// The parent: runs the child, kills it when one input takes too long, and
/// saves the input of any failure.
fn supervise(args: &Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("wa-fuzz seed {seed}");
    std::fs::create_dir_all(&args.out)?;
    let progress_path = args.out.join(format!("progress-{}", std::process::id()));
    File::create(&progress_path)?.set_len(PROGRESS_LEN as u64)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--inputs")
        .arg(args.inputs.to_string())
        .arg("--time-limit")
        .arg(format!("{}ms", args.time_limit.as_millis()))
        .arg("--corpus")
        .arg(&args.corpus)
        .arg("--out")
        .arg(&args.out)
        .arg("--progress")
        .arg(&progress_path);
    if let Some(target) = args.target {
        command.arg("--target").arg(target.name());
    }
    if let Some(only) = args.only {
        command.arg("--only").arg(only.to_string());
    }
    let mut child = command.spawn().context("cannot start the fuzzing child")?;
    let mut last = read_progress(&progress_path)?;
    let mut since = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = read_progress(&progress_path)?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > args.time_limit + Duration::from_secs(1) {
            child.kill()?;
            let _ = child.wait();
            break None;
        }
    };
    let failure = match status {
        Some(status) if status.success() => None,
        Some(status) => Some(format!("the child failed ({status})")),
        None => Some(format!("an input hung for more than {:?}", args.time_limit)),
    };
    let _ = std::fs::remove_file(&progress_path);
    let Some(failure) = failure else {
        return Ok(());
    };
    let (target, index) = last;
    let target = Target::ALL
        .into_iter()
        .find(|t| *t as u64 == target)
        .context("progress names no target")?;
    let corpus = load_corpus(&args.corpus)?;
    let input = target.input(&corpus, &mut input_rng(seed, target, index));
    let saved = args
        .out
        .join(format!("{}-seed{seed}-input{index}.bin", target.name()));
    std::fs::write(&saved, &input)?;
    anyhow::bail!(
        "{failure} at {} input {index} (saved to {}); replay: wa-fuzz --seed {seed} --target {} --only {index}",
        target.name(),
        saved.display(),
        target.name(),
    )
}

fn read_progress(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut record = [0u8; PROGRESS_LEN];
    File::open(path)?.read_exact(&mut record)?;
    let target = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
    let index = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
    Ok((target, index))
}

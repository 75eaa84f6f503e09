//! Support for the HTTP delivery tests: local webhook receivers with a
//! scripted answer, the deliverer in-process or as the real binary, events
//! released straight into the outbox (as a relay would), and signature
//! checks by the reference Python package `standardwebhooks`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TestEnv;
use crate::roles::{Running, start_role};

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Hook {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub event: Value,
    /// Since the receiver started.
    pub at: Duration,
    /// When the request arrived (before any scripted delay).
    pub arrived: Instant,
    /// When the answer went (after it).
    pub answered: Instant,
    pub status: u16,
}

impl Hook {
    pub fn conversation(&self) -> &str {
        self.event["ordering_key"].as_str().unwrap_or("")
    }

    pub fn sequence(&self) -> i64 {
        self.event["sequence"].as_i64().unwrap_or(-1)
    }

    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What a receiver answers: status, an optional Retry-After, after a delay.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

impl Reply {
    pub const OK: Reply = Reply::status(200);

    pub const fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// Decides the answer from the time since start and the requests so far.
pub type Script = Arc<dyn Fn(Duration, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    started: Instant,
    hooks: Arc<Mutex<Vec<Hook>>>,
    requests: Arc<Mutex<usize>>,
    script: Script,
}

/// A webhook receiver on 127.0.0.1, port 0.
pub struct HookReceiver {
    pub addr: SocketAddr,
    hooks: Arc<Mutex<Vec<Hook>>>,
    task: JoinHandle<()>,
}

impl HookReceiver {
    pub async fn start(script: impl Fn(Duration, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = ReceiverState {
            started: Instant::now(),
            hooks: Arc::default(),
            requests: Arc::default(),
            script: Arc::new(script),
        };
        let hooks = state.hooks.clone();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hooks, task }
    }

    /// Answers 200 at once.
    pub async fn ok() -> Self {
        Self::start(|_, _| Reply::OK).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().expect("hooks").clone()
    }

    /// Waits until receivers `a` and `b` accepted `want` distinct events.
    pub async fn both_accepted(
        what: &str,
        a: &HookReceiver,
        b: &HookReceiver,
        want: (usize, usize),
    ) {
        crate::eventually(what, Duration::from_secs(30), || async {
            match (a.accepted_ids(), b.accepted_ids()) {
                got if got == want => Ok(()),
                got => Err(format!("{got:?} of {want:?}")),
            }
        })
        .await;
    }

    /// Distinct webhook-ids answered with a 2xx.
    pub fn accepted_ids(&self) -> usize {
        let hooks = self.hooks();
        let ids: std::collections::HashSet<&str> = hooks
            .iter()
            .filter(|h| h.accepted())
            .map(|h| h.webhook_id.as_str())
            .collect();
        ids.len()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let arrived = Instant::now();
    let at = state.started.elapsed();
    let index = {
        let mut requests = state.requests.lock().expect("count");
        *requests += 1;
        *requests - 1
    };
    let reply = (state.script)(at, index);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    state.hooks.lock().expect("hooks").push(Hook {
        webhook_id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        at,
        arrived,
        answered: Instant::now(),
        status: reply.status,
    });
    let status = StatusCode::from_u16(reply.status).expect("status");
    match reply.retry_after {
        Some(seconds) => (status, [("retry-after", seconds.to_string())]).into_response(),
        None => status.into_response(),
    }
}

/// The options of a test deliverer: the test's database, short polls and
/// retries (loopback is allowed by [`Deliverer::start`] only), then `extra`,
/// which replaces a default of the same name.
pub fn deliverer_args(env: &TestEnv, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--database-url", env.database_url.as_str()),
        ("--poll-interval", "50ms"),
        ("--retry-schedule", "1s,2s,4s"),
        ("--db-acquire-timeout", "2s"),
    ];
    defaults
        .iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [*flag, *value])
        .chain(extra.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// A deliverer in this process.
pub struct Deliverer {
    pub ops_addr: SocketAddr,
    running: Running,
}

impl Deliverer {
    /// A deliverer that may reach 127.0.0.0/8 (the test receivers);
    /// `extra` options come after the defaults, so they win.
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let mut args = vec!["--allow", "127.0.0.0/8"];
        args.extend(extra);
        Self::start_guarded(env, &args).await
    }

    /// A deliverer with the default SSRF guard: public addresses only.
    pub async fn start_guarded(env: &TestEnv, extra: &[&str]) -> Self {
        let args = deliverer_args(env, extra);
        let (ops_addr, running) = start_role(args, &[], wa_deliver::run).await;
        Self { ops_addr, running }
    }

    pub async fn metrics(&self) -> String {
        crate::scrape(self.ops_addr).await
    }

    pub async fn stop(self) {
        self.running.stop("deliverer").await;
    }
}

/// An endpoint as a test adds it: its id and secret.
pub struct TestEndpoint {
    pub id: i64,
    pub secret: String,
}

/// Adds an endpoint through the library the CLI uses.
pub async fn add_endpoint(
    env: &TestEnv,
    url: &str,
    events: &[&str],
    phone_number_ids: &[&str],
) -> TestEndpoint {
    let secret = wa_deliver::sign::SigningSecret::generate().to_whsec();
    let id = wa_deliver::store::add(
        &env.db,
        &wa_deliver::store::NewEndpoint {
            url: url.to_owned(),
            description: String::new(),
            secret: secret.clone(),
            event_types: events.iter().map(|e| (*e).to_owned()).collect(),
            phone_number_ids: phone_number_ids.iter().map(|p| (*p).to_owned()).collect(),
            rate_limit: None,
            max_in_flight: 8,
        },
    )
    .await
    .expect("add endpoint");
    TestEndpoint { id, secret }
}

/// An event to release as a relay would.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: &'static str,
    pub conversation: String,
    pub sequence: i64,
    pub phone_number_id: &'static str,
}

/// Writes `events` into the outbox and marks them released in one
/// statement, as the relay's commit does: the fan-out trigger runs.
pub async fn release(db: &sqlx::PgPool, events: &[Event]) {
    let released: Vec<wa_store::seed::ReleasedEvent> = events
        .iter()
        .map(|e| wa_store::seed::ReleasedEvent {
            event_id: e.id.clone(),
            event_type: e.kind.to_owned(),
            contact_key: e.conversation.clone(),
            sequence: e.sequence,
            payload: json!({
                "id": e.id, "type": e.kind, "ordering_key": e.conversation,
                "phone_number_id": e.phone_number_id, "data": { "n": e.sequence },
            }),
        })
        .collect();
    wa_store::seed::release(db, &released)
        .await
        .expect("release events into the outbox");
}

/// `per_conversation` events in each of `conversations` conversations,
/// numbered from `first` (1-based sequences), interleaved across conversations.
pub fn events(tag: &str, conversations: usize, first: i64, per_conversation: i64) -> Vec<Event> {
    let mut events = Vec::new();
    for sequence in first..first + per_conversation {
        for c in 0..conversations {
            events.push(Event {
                id: format!("msg:{tag}.c{c}.s{sequence}"),
                kind: "message.created",
                conversation: format!("{tag}-contact-{c}"),
                sequence,
                phone_number_id: crate::payloads::PHONE_NUMBER_ID,
            });
        }
    }
    events
}

/// Checks, per conversation, that first deliveries came in sequence order
/// with no gap, that a repeat only ever repeats the latest one (the crash
/// case), and that the body's id is the webhook-id. Returns the repeats.
pub fn assert_in_order_per_conversation(hooks: &[Hook], what: &str) -> usize {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut repeats = 0;
    let mut first_seen: HashMap<String, Vec<u8>> = HashMap::new();
    for hook in hooks.iter().filter(|h| h.accepted()) {
        assert_eq!(
            hook.event["id"].as_str(),
            Some(hook.webhook_id.as_str()),
            "{what}: body id is the webhook-id"
        );
        if let Some(body) = first_seen.get(&hook.webhook_id) {
            assert_eq!(
                body, &hook.body,
                "{what}: a repeat of {} carries the same body",
                hook.webhook_id
            );
        } else {
            first_seen.insert(hook.webhook_id.clone(), hook.body.clone());
        }
        let sequence = hook.sequence();
        let previous = last.entry(hook.conversation().to_owned()).or_insert(0);
        if sequence == *previous {
            repeats += 1;
        } else {
            assert!(
                sequence > *previous,
                "{what}: {} (sequence {sequence}) after sequence {previous} in {}",
                hook.webhook_id,
                hook.conversation()
            );
            *previous = sequence;
        }
    }
    repeats
}

/// The reference implementation's verdict on each `(secret, hook)`: true
/// when `standardwebhooks.Webhook(secret).verify(body, headers)` accepts it.
pub fn verify_with_reference(checks: &[(&str, &Hook)]) -> Vec<bool> {
    let python = reference_python();
    let input: Vec<Value> = checks
        .iter()
        .map(|(secret, hook)| {
            json!({
                "secret": secret,
                "body": String::from_utf8_lossy(&hook.body),
                "headers": {
                    "webhook-id": hook.webhook_id,
                    "webhook-timestamp": hook.timestamp,
                    "webhook-signature": hook.signature,
                },
            })
        })
        .collect();
    let file = std::env::temp_dir().join(format!("wa-verify-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, serde_json::to_vec(&input).expect("JSON")).expect("write checks");
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
verdicts = []
for check in json.load(open(sys.argv[1])):
    try:
        Webhook(check["secret"]).verify(check["body"], check["headers"])
        verdicts.append(True)
    except Exception:
        verdicts.append(False)
print(json.dumps(verdicts))
"#;
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run the reference verifier");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the reference verifier failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("verdicts")
}

/// A Python with `standardwebhooks` from PyPI, in a venv under target/
/// made once (by whichever test gets there first: built aside, then renamed).
fn reference_python() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let venv = target.join("standardwebhooks-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        return python;
    }
    let building = target.join(format!("standardwebhooks-venv.{}", std::process::id()));
    let run = |program: &Path, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed (python3 with venv and pip, and PyPI, are needed): {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let building_str = building.to_str().expect("UTF-8 path");
    run(Path::new("python3"), &["-m", "venv", building_str]);
    run(
        &building.join("bin/pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "standardwebhooks",
        ],
    );
    // A venv's scripts name its path: rename only onto nothing, else use the
    // one another test made.
    if std::fs::rename(&building, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    if python.exists() {
        python
    } else {
        building.join("bin/python")
    }
}

//! Routes, the session and CSRF checks, the audit log and the safe headers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use maud::Markup;
use serde::Deserialize;
use wa_core::telemetry::error_chain;
use wa_dlq::{Filter, Pace, ReplayNote, counted};
use wa_store::{StoreError, answered};

use crate::Console;
use crate::auth::{LoginError, SESSION_COOKIE, Session, same, session_cookie};
use crate::views::{self, FilterForm};
use crate::{conversation, overview, subscribers};

type Shared = Arc<Console>;

const STYLESHEET: &str = include_str!("../assets/console.css");

/// Forms are small: a token, a filter, a CSRF token.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Every page is its own origin's only: no scripts at all, styles from the
/// console itself, never framed, never cached, never a referrer elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn router(console: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/static/console.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(overview_page))
        .route("/dlq", get(dlq_list))
        .route("/dlq/replay", post(replay_filtered))
        .route("/dlq/purge", post(purge))
        .route("/dlq/{id}", get(dlq_detail))
        .route("/dlq/{id}/replay", post(replay_one))
        .route("/dlq/{id}/payload", post(show_payload))
        .route(
            "/conversation",
            get(conversation_page).post(reveal_conversation),
        )
        .route("/subscribers", get(subscribers_page))
        .route("/subscribers/{id}", get(subscriber_page))
        .route("/subscribers/{id}/disable", post(disable_subscriber))
        .route("/subscribers/{id}/enable", post(enable_subscriber))
        .route("/subscribers/{id}/replay", post(replay_subscriber))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(from_fn(guard))
        .with_state(console)
}

/// Safe headers on every answer; actions from another origin refused
/// before any handler runs (the CSRF token is checked as well).
async fn guard(request: Request, next: Next) -> Response {
    let cross_site = request.method() != Method::GET
        && request.method() != Method::HEAD
        && !same_origin(request.headers());
    let mut response = if cross_site {
        (StatusCode::FORBIDDEN, "cross-origin request refused").into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on its
        // own forms, which the origin check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A browser names the page a form was sent from: it must be this console.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority == host)
}

/// Why a request gets no page.
pub(crate) enum Refusal {
    SignIn { page: bool },
    Csrf,
    NotFound(String),
    Unavailable(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            // A browser asking for a page is sent to sign in; anything else is told no.
            Refusal::SignIn { page: true } => Redirect::to("/login").into_response(),
            Refusal::SignIn { page: false } => {
                (StatusCode::UNAUTHORIZED, "sign in first").into_response()
            }
            Refusal::Csrf => (
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            )
                .into_response(),
            Refusal::NotFound(what) => (StatusCode::NOT_FOUND, what).into_response(),
            Refusal::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        }
    }
}

/// The operator behind a request, from the session cookie.
pub(crate) struct Operator {
    session: Session,
    client: SocketAddr,
}

impl FromRequestParts<Shared> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, console: &Shared) -> Result<Self, Refusal> {
        let page = parts.method == Method::GET;
        let session = session_cookie(&parts.headers)
            .and_then(|id| console.auth.session(&id))
            .ok_or(Refusal::SignIn { page })?;
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        Ok(Self { session, client })
    }
}

/// A form that changes something: it carries the session's CSRF token.
pub(crate) trait ActionForm {
    fn csrf(&self) -> &str;
}

/// The action forms: each has a `csrf` field.
macro_rules! action_forms {
    ($($form:ty),*) => {$(
        impl ActionForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}
action_forms!(CsrfOnly, ReplayForm, PurgeForm, RevealForm, EndpointForm);

/// An action: a signed-in operator and a form with the right CSRF token.
pub(crate) struct Action<T> {
    operator: Operator,
    form: T,
}

impl<T> FromRequest<Shared> for Action<T>
where
    T: ActionForm + serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, console: &Shared) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let operator = Operator::from_request_parts(&mut parts, console)
            .await
            .map_err(IntoResponse::into_response)?;
        let request = Request::from_parts(parts, body);
        let refused = |operator: &Operator, what: &str| {
            audit(operator, "refused", what);
            Refusal::Csrf.into_response()
        };
        let Ok(Form(form)) = Form::<T>::from_request(request, console).await else {
            return Err(refused(&operator, "a form without a CSRF token"));
        };
        if !same(form.csrf().as_bytes(), operator.session.csrf.as_bytes()) {
            return Err(refused(&operator, "a wrong CSRF token"));
        }
        Ok(Self { operator, form })
    }
}

/// One line per action: who (operator, session, address), what, and how it went.
fn audit(operator: &Operator, action: &str, what: &str) {
    tracing::info!(
        target: "wa_console::audit",
        operator = %operator.session.operator,
        session = %operator.session.tag,
        client = %operator.client,
        action,
        what,
        "console action"
    );
}

fn page(markup: Markup) -> Html<String> {
    Html(markup.into_string())
}

/// Ready while connected to RabbitMQ (PostgreSQL trouble shows on the pages).
async fn ready(State(console): State<Shared>) -> Response {
    match console.broker.check_connected() {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

async fn login_page() -> Html<String> {
    page(views::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(console): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    match console.auth.login(&form.token, client.ip()) {
        Ok((id, session)) => {
            let operator = Operator { session, client };
            audit(&operator, "login", "signed in");
            let cookie = format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                console.auth_ttl_seconds(),
                if console.secure_cookie {
                    "; Secure"
                } else {
                    ""
                }
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(error) => {
            tracing::warn!(target: "wa_console::audit", %client, action = "login", what = ?error, "console login refused");
            let (status, message) = match error {
                LoginError::Refused => (StatusCode::UNAUTHORIZED, "That token is not valid."),
                LoginError::TooMany => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed sign-ins: wait a minute.",
                ),
            };
            (status, page(views::login(Some(message)))).into_response()
        }
    }
}

impl Console {
    fn auth_ttl_seconds(&self) -> u64 {
        self.auth.ttl().as_secs()
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn logout(
    State(console): State<Shared>,
    headers: HeaderMap,
    action: Action<CsrfOnly>,
) -> Response {
    audit(&action.operator, "logout", "signed out");
    if let Some(id) = session_cookie(&headers) {
        console.auth.logout(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The DLQ's depth now, from a passive declare (cheap: no message is read).
async fn dlq_depth(console: &Console) -> Option<u32> {
    overview::queue_depths(&console.broker)
        .await
        .ok()?
        .into_iter()
        .find(|q| q.label == "dlq")?
        .messages
}

async fn overview_page(State(console): State<Shared>, operator: Operator) -> Html<String> {
    // In a task of its own: a transaction dropped halfway (the browser gone)
    // could go back to the pool open. Bounded, as every read of the
    // console's: a frozen server would hold the task and its connection
    // for good.
    let db = console.db.clone();
    let stored = tokio::spawn(async move {
        let stored = answered(overview::stored(&db)).await;
        (stored, answered(subscribers::total_backlog(&db)).await)
    });
    let queues = overview::queue_depths(&console.broker).await;
    let (stored, delivery_backlog) = stored.await.unwrap_or_else(|e| {
        let failed = || StoreError::from(sqlx::Error::Protocol(format!("the count failed: {e}")));
        (Err(failed()), Err(failed()))
    });
    let depth = queues
        .as_ref()
        .ok()
        .and_then(|q| q.iter().find(|q| q.label == "dlq"))
        .and_then(|q| q.messages);
    let index = console.dlq.get(depth).await;
    let (scrape, rates) = {
        let rates = console.rates.read().unwrap_or_else(|e| e.into_inner());
        (rates.last.clone(), rates.per_second)
    };
    let data = views::OverviewData {
        queues: queues.as_deref().map_err(String::as_str),
        stored: stored.as_ref().map_err(|e| error_chain(e)),
        delivery_backlog: delivery_backlog.map_err(|e| error_chain(&e)),
        scrape: scrape.as_ref(),
        rates,
        scrape_configured: console.scrape_configured,
        errors: index
            .as_ref()
            .map(|index| (overview::errors_by_class(index), index.as_ref()))
            .map_err(|e| error_chain(e.as_ref())),
    };
    page(views::overview(
        &operator.session,
        console.refresh.as_secs().max(1),
        data,
    ))
}

#[derive(Deserialize, Default)]
struct DlqQuery {
    #[serde(flatten)]
    filter: FilterForm,
    #[serde(default)]
    page: usize,
}

impl DlqQuery {
    fn query_string(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.filter.fields())
            .finish()
    }
}

async fn dlq_list(
    State(console): State<Shared>,
    operator: Operator,
    Query(query): Query<DlqQuery>,
) -> Result<Html<String>, Refusal> {
    let depth = dlq_depth(&console).await;
    let index = console.dlq.get(depth).await.map_err(|e| {
        Refusal::Unavailable(format!("cannot read the DLQ: {}", error_chain(e.as_ref())))
    })?;
    let (filter, filter_error) = match views::filter_of(&query.filter) {
        Ok(filter) => (filter, None),
        Err(error) => (Filter::default(), Some(error)),
    };
    // Newest first: the queue holds them oldest first.
    let matching = index
        .snapshot
        .entries
        .iter()
        .rev()
        .filter(|entry| filter.matches(entry))
        .collect();
    Ok(page(views::dlq_list(
        &operator.session,
        views::DlqListData {
            index: &index,
            matching,
            page: query.page,
            form: &query.filter,
            filter_error,
            query: query.query_string(),
        },
    )))
}

async fn dlq_detail(
    State(console): State<Shared>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Html<String>, Refusal> {
    let entry = find_entry(&console, &id).await?;
    Ok(page(views::dlq_detail(
        &operator.session,
        views::Detail {
            entry: &entry,
            revealed: None,
        },
    )))
}

/// The entry from the last read of the DLQ, or from a new read when the
/// last one does not have it.
async fn find_entry(console: &Console, id: &str) -> Result<wa_dlq::DlqEntry, Refusal> {
    let unavailable = |e: anyhow::Error| {
        Refusal::Unavailable(format!("cannot read the DLQ: {}", error_chain(e.as_ref())))
    };
    let index = console.dlq.get(None).await.map_err(unavailable)?;
    if let Some(entry) = index.snapshot.entries.iter().find(|e| e.id == id) {
        return Ok(entry.clone());
    }
    let index = console.dlq.fresh().await.map_err(unavailable)?;
    index
        .snapshot
        .entries
        .iter()
        .find(|e| e.id == id)
        .cloned()
        .ok_or_else(|| Refusal::NotFound(format!("no message {id} in the DLQ")))
}

async fn show_payload(
    State(console): State<Shared>,
    Path(id): Path<String>,
    action: Action<CsrfOnly>,
) -> Result<Html<String>, Refusal> {
    audit(&action.operator, "dlq.show_payload", &id);
    let inspection = spawned(wa_dlq_inspect(console.clone(), id.clone()))
        .await
        .map_err(Refusal::Unavailable)?
        .ok_or_else(|| Refusal::NotFound(format!("no message {id} in the DLQ")))?;
    Ok(page(views::dlq_detail(
        &action.operator.session,
        views::Detail {
            entry: &inspection.entry,
            revealed: Some(&inspection),
        },
    )))
}

async fn wa_dlq_inspect(console: Shared, id: String) -> Result<Option<wa_dlq::Inspection>, String> {
    wa_dlq::inspect(&console.broker, &id, console.scan_limit)
        .await
        .map_err(|e| error_chain(e.as_ref()))
}

/// Runs an action to its end even if the browser goes away: a replay cut
/// in the middle would hold DLQ messages until the connection closes.
async fn spawned<T: Send + 'static>(
    work: impl Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    tokio::spawn(work)
        .await
        .map_err(|e| format!("the action failed: {e}"))?
}

fn log_note(note: ReplayNote<'_>) {
    match note {
        ReplayNote::Failed(entry, error) => {
            tracing::warn!(id = %entry.id, %error, "console replay: not replayed");
        }
        ReplayNote::Progress {
            replayed,
            per_second,
        } => {
            tracing::info!(replayed, per_second, "console replay progress");
        }
        ReplayNote::WouldReplay(_) => {}
    }
}

async fn replay(
    console: Shared,
    filter: Filter,
    pace: Pace,
) -> Result<wa_dlq::ReplaySummary, String> {
    let summary = wa_dlq::replay(&console.broker, &filter, pace, console.scan_limit, log_note)
        .await
        .map_err(|e| error_chain(e.as_ref()))?;
    if !pace.dry_run {
        // So that the next page shows what the replay did.
        let _ = console.dlq.fresh().await;
    }
    Ok(summary)
}

async fn replay_one(
    State(console): State<Shared>,
    Path(id): Path<String>,
    action: Action<CsrfOnly>,
) -> Html<String> {
    let filter = Filter {
        ids: vec![id.clone()],
        ..Filter::default()
    };
    let pace = Pace {
        limit: Some(1),
        ..Pace::default()
    };
    let result = spawned(replay(console, filter, pace)).await;
    let (message, ok) = match &result {
        Ok(s) if s.replayed == 1 => (
            format!(
                "Replayed {id}; {} message(s) remain in the DLQ.",
                s.remaining
            ),
            true,
        ),
        Ok(s) if s.matched == 0 => (format!("{id} is no longer in the DLQ."), false),
        Ok(s) => (
            format!(
                "{id} could not be replayed ({} failed); it stays in the DLQ.",
                s.failed
            ),
            false,
        ),
        Err(error) => (format!("Replay failed: {error}"), false),
    };
    audit(
        &action.operator,
        "dlq.replay_one",
        &format!("{id}: {message}"),
    );
    page(views::outcome(
        &action.operator.session,
        "Replay",
        &message,
        ok,
    ))
}

#[derive(Deserialize)]
struct ReplayForm {
    csrf: String,
    #[serde(flatten)]
    filter: FilterForm,
    #[serde(default)]
    confirm: String,
    /// The dry run's count: the confirmed replay takes no more than that.
    #[serde(default)]
    expected: Option<usize>,
}

async fn replay_filtered(
    State(console): State<Shared>,
    action: Action<ReplayForm>,
) -> Html<String> {
    let form = &action.form;
    let session = &action.operator.session;
    let filter = match views::filter_of(&form.filter) {
        Ok(filter) => filter,
        Err(error) => return page(views::outcome(session, "Replay", &error, false)),
    };
    let described = describe(&form.filter);
    if form.confirm != "yes" {
        let pace = Pace {
            dry_run: true,
            ..Pace::default()
        };
        let scan_limit = console.scan_limit;
        return match spawned(replay(console, filter, pace)).await {
            Ok(summary) => page(views::confirm(
                session,
                views::Confirm {
                    title: "Replay the filtered set",
                    message: format!(
                        "Dry run: {} message(s) match ({described}) and would be replayed, of {} in the DLQ.{}",
                        counted(summary.matched, summary.truncated),
                        summary.remaining,
                        stopped_at(summary.truncated, scan_limit),
                    ),
                    action: "/dlq/replay",
                    fields: form
                        .filter
                        .fields()
                        .into_iter()
                        .map(|(name, value)| (name, value.to_owned()))
                        .chain([("expected", summary.matched.to_string())])
                        .collect(),
                    button: "Replay them",
                    danger: false,
                },
            )),
            Err(error) => page(views::outcome(session, "Replay", &error, false)),
        };
    }
    let pace = Pace {
        limit: Some(form.expected.unwrap_or(0)),
        ..Pace::default()
    };
    let result = spawned(replay(console, filter, pace)).await;
    let (message, ok) = match &result {
        Ok(s) => (
            format!(
                "Replayed {} message(s) ({described}); {} failed; {} remain in the DLQ.",
                s.replayed, s.failed, s.remaining
            ),
            s.failed == 0,
        ),
        Err(error) => (format!("Replay failed: {error}"), false),
    };
    audit(&action.operator, "dlq.replay_filtered", &message);
    page(views::outcome(session, "Replay", &message, ok))
}

/// What a dry run that stopped at the scan limit adds to its count.
fn stopped_at(truncated: bool, scan_limit: usize) -> String {
    if truncated {
        format!(
            " The look stopped after holding {scan_limit} messages (WA_DLQ_SCAN_LIMIT) or {} MiB: confirming acts on the ones counted; run it again for the rest.",
            wa_dlq::MAX_SCAN_BYTES >> 20
        )
    } else {
        String::new()
    }
}

fn describe(form: &FilterForm) -> String {
    let parts: Vec<String> = [
        ("class", form.class.as_str()),
        ("error contains", &form.error),
        ("since", &form.since),
        ("phone number id", &form.phone_number_id),
    ]
    .iter()
    .filter(|(_, v)| !v.trim().is_empty())
    .map(|(k, v)| format!("{k} {v}"))
    .collect();
    if parts.is_empty() {
        "no filter: every message".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Deserialize)]
struct PurgeForm {
    csrf: String,
    #[serde(default)]
    older_than: String,
    #[serde(default)]
    confirm: String,
    /// The cutoff the dry run counted with, so the purge deletes that set.
    #[serde(default)]
    cutoff: String,
    /// The dry run's count: the confirmed purge deletes no more than that.
    #[serde(default)]
    expected: Option<usize>,
}

async fn purge(State(console): State<Shared>, action: Action<PurgeForm>) -> Html<String> {
    let form = &action.form;
    let session = &action.operator.session;
    let cutoff: Result<DateTime<Utc>, String> = if form.confirm == "yes" {
        DateTime::parse_from_rfc3339(&form.cutoff)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| "the confirmation lost its cutoff: start again".into())
    } else {
        wa_core::config::parse_duration(form.older_than.trim())
            .map_err(|e| format!("older than: {e}"))
            .and_then(|age| chrono::Duration::from_std(age).map_err(|e| e.to_string()))
            .map(|age| Utc::now() - age)
    };
    let cutoff = match cutoff {
        Ok(cutoff) => cutoff,
        Err(error) => return page(views::outcome(session, "Purge", &error, false)),
    };
    let dry_run = form.confirm != "yes";
    // Without the dry run's count, a confirmed purge deletes nothing.
    let limit = (!dry_run).then(|| form.expected.unwrap_or(0));
    let scan_limit = console.scan_limit;
    let run = {
        let console = console.clone();
        async move {
            let summary = wa_dlq::purge(
                &console.broker,
                Some(cutoff),
                dry_run,
                limit,
                console.scan_limit,
            )
            .await
            .map_err(|e| error_chain(e.as_ref()))?;
            if !dry_run {
                let _ = console.dlq.fresh().await;
            }
            Ok(summary)
        }
    };
    let result = spawned(run).await;
    let cutoff_text = cutoff.format("%Y-%m-%d %H:%M:%S UTC");
    match (result, dry_run) {
        (Ok(summary), true) => page(views::confirm(
            session,
            views::Confirm {
                title: "Purge old messages",
                message: format!(
                    "Dry run: {} message(s) last failed before {cutoff_text} and would be deleted for good, of {} in the DLQ.{}",
                    counted(summary.purged, summary.truncated),
                    summary.remaining,
                    stopped_at(summary.truncated, scan_limit),
                ),
                action: "/dlq/purge",
                fields: vec![
                    ("cutoff", cutoff.to_rfc3339()),
                    ("expected", summary.purged.to_string()),
                ],
                button: "Delete them for good",
                danger: true,
            },
        )),
        (Ok(summary), false) => {
            let message = format!(
                "Purged {} message(s) that last failed before {cutoff_text}; {} remain in the DLQ.",
                summary.purged, summary.remaining
            );
            audit(&action.operator, "dlq.purge", &message);
            page(views::outcome(session, "Purge", &message, true))
        }
        (Err(error), _) => {
            audit(&action.operator, "dlq.purge", &format!("failed: {error}"));
            page(views::outcome(
                session,
                "Purge",
                &format!("Purge failed: {error}"),
                false,
            ))
        }
    }
}

#[derive(Deserialize, Default)]
struct ConversationQuery {
    #[serde(default)]
    who: String,
}

async fn conversation_page(
    State(console): State<Shared>,
    operator: Operator,
    Query(query): Query<ConversationQuery>,
) -> Html<String> {
    show_conversation(&console, &operator, &query.who, false).await
}

#[derive(Deserialize)]
struct RevealForm {
    csrf: String,
    who: String,
}

async fn reveal_conversation(
    State(console): State<Shared>,
    action: Action<RevealForm>,
) -> Html<String> {
    audit(&action.operator, "conversation.reveal", &action.form.who);
    show_conversation(&console, &action.operator, &action.form.who, true).await
}

async fn show_conversation(
    console: &Console,
    operator: &Operator,
    who: &str,
    reveal: bool,
) -> Html<String> {
    let session = &operator.session;
    if who.trim().is_empty() {
        return page(views::conversation(session, who, None, false, None));
    }
    let loaded = async {
        match answered(conversation::find(&console.db, who)).await? {
            Some(subject) => answered(conversation::load(&console.db, subject, reveal))
                .await
                .map(Some),
            None => Ok(None),
        }
    }
    .await;
    match loaded {
        Ok(Some(found)) => page(views::conversation(
            session,
            who,
            Some(&found),
            reveal,
            None,
        )),
        Ok(None) => page(views::conversation(
            session,
            who,
            None,
            false,
            Some("No contact or group by that id has anything stored."),
        )),
        Err(error) => page(views::conversation(
            session,
            who,
            None,
            false,
            Some(&format!("PostgreSQL: {}", error_chain(&error))),
        )),
    }
}

fn database_error(error: StoreError) -> Refusal {
    Refusal::Unavailable(format!("PostgreSQL: {}", error_chain(&error)))
}

async fn subscribers_page(
    State(console): State<Shared>,
    operator: Operator,
) -> Result<Html<String>, Refusal> {
    let db = console.db.clone();
    let listed = tokio::spawn(async move { answered(subscribers::list(&db)).await })
        .await
        .map_err(|e| Refusal::Unavailable(format!("the read failed: {e}")))?
        .map_err(database_error)?;
    Ok(page(views::subscribers(&operator.session, &listed)))
}

async fn subscriber_page(
    State(console): State<Shared>,
    operator: Operator,
    Path(id): Path<i64>,
) -> Result<Html<String>, Refusal> {
    let subscriber = answered(subscribers::one(&console.db, id))
        .await
        .map_err(database_error)?
        .ok_or_else(|| Refusal::NotFound(format!("no endpoint {id}")))?;
    Ok(page(views::subscriber(&operator.session, &subscriber)))
}

/// The outcome of an endpoint action, audited, with a way back to the endpoint.
fn subscriber_outcome(
    operator: &Operator,
    id: i64,
    action: &str,
    result: Result<String, String>,
) -> Html<String> {
    let (message, ok) = match result {
        Ok(message) => (message, true),
        Err(message) => (message, false),
    };
    audit(operator, action, &format!("endpoint {id}: {message}"));
    page(views::subscriber_outcome(
        &operator.session,
        id,
        &message,
        ok,
    ))
}

fn changed(id: i64, done: Result<bool, StoreError>, what: &str) -> Result<String, String> {
    match done {
        Ok(true) => Ok(format!("Endpoint {id} {what}.")),
        Ok(false) => Err(format!("No endpoint {id}.")),
        Err(error) => Err(format!("PostgreSQL: {}", error_chain(&error))),
    }
}

/// The forms of an endpoint's page: disable (with a reason), enable, replay
/// (since when); each posts only its own field.
#[derive(Deserialize)]
struct EndpointForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since: String,
}

async fn disable_subscriber(
    State(console): State<Shared>,
    Path(id): Path<i64>,
    action: Action<EndpointForm>,
) -> Html<String> {
    let reason = match action.form.reason.trim() {
        "" => format!(
            "disabled by {} in the console",
            action.operator.session.operator
        ),
        reason => reason.to_owned(),
    };
    let done = answered(wa_deliver::store::disable(&console.db, id, &reason)).await;
    let result = changed(
        id,
        done,
        &format!("disabled ({reason}); its deliveries wait until it is enabled"),
    );
    subscriber_outcome(&action.operator, id, "subscribers.disable", result)
}

async fn enable_subscriber(
    State(console): State<Shared>,
    Path(id): Path<i64>,
    action: Action<CsrfOnly>,
) -> Html<String> {
    let done = answered(wa_deliver::store::enable(&console.db, id)).await;
    let result = changed(id, done, "enabled; what waits for it is due now");
    subscriber_outcome(&action.operator, id, "subscribers.enable", result)
}

async fn replay_subscriber(
    State(console): State<Shared>,
    Path(id): Path<i64>,
    action: Action<EndpointForm>,
) -> Html<String> {
    let result = match wa_deliver::cli::parse_since(action.form.since.trim()) {
        Err(error) => Err(format!("since: {error}")),
        Ok(since) => {
            let db = console.db.clone();
            // To its end even if the browser goes away: one statement, but
            // the audit line must match what happened.
            let replay = spawned(async move {
                wa_deliver::store::replay(&db, id, since)
                    .await
                    .map_err(|e| format!("PostgreSQL: {}", error_chain(&e)))
            })
            .await;
            replay.map(|queued| {
                format!(
                    "Queued {queued} delivered event(s) since {} for endpoint {id} again.",
                    since.format("%Y-%m-%d %H:%M:%S UTC")
                )
            })
        }
    };
    subscriber_outcome(&action.operator, id, "subscribers.replay", result)
}

#[cfg(test)]
mod tests {
    use axum::http::{Request as HttpRequest, Uri};

    use super::*;

    #[test]
    fn the_list_query_reads_the_filter_and_the_page_and_writes_the_filter_back() {
        let uri: Uri = "/dlq?class=transient&error=dead+lock&page=3"
            .parse()
            .unwrap();
        let Query(query) = Query::<DlqQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(query.filter.class, "transient");
        assert_eq!(query.filter.error, "dead lock");
        assert_eq!(query.filter.since, "");
        assert_eq!(query.page, 3);
        assert_eq!(
            query.query_string(),
            "class=transient&error=dead+lock&since=&phone_number_id="
        );
        let Query(empty) = Query::<DlqQuery>::try_from_uri(&"/dlq".parse().unwrap()).unwrap();
        assert_eq!((empty.filter.class.as_str(), empty.page), ("", 0));
    }

    #[tokio::test]
    async fn the_replay_form_reads_the_filter_beside_its_own_fields() {
        let body = "csrf=t0k&class=permanent&phone_number_id=555&confirm=yes&expected=7";
        let request = HttpRequest::post("/dlq/replay")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body))
            .unwrap();
        let Form(form) = Form::<ReplayForm>::from_request(request, &())
            .await
            .unwrap();
        assert_eq!(form.csrf, "t0k");
        assert_eq!(form.filter.class, "permanent");
        assert_eq!(form.filter.phone_number_id, "555");
        assert_eq!(form.filter.error, "");
        assert_eq!((form.confirm.as_str(), form.expected), ("yes", Some(7)));
        assert_eq!(
            describe(&form.filter),
            "class permanent, phone number id 555"
        );
    }
}

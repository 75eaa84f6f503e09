//! The pages, as compile-time-checked maud templates. Nothing here reads
//! message text or payloads unless the handler was asked to reveal them.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use wa_dlq::{DlqEntry, Filter, one_line};

use crate::auth::Session;
use crate::conversation::{Conversation, Subject};
use crate::dlq_index::Indexed;
use crate::overview::{ClassErrors, QueueDepth, Stored};
use crate::scrape::{Counters, Scrape};
use crate::subscribers::{RECENT_ATTEMPTS, Subscriber, succeeded};
use wa_deliver::store::{Attempt, Endpoint};

/// DLQ rows per page.
pub(crate) const PAGE_SIZE: usize = 50;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Dlq,
    Conversation,
    Subscribers,
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "—".into())
}

pub(crate) fn layout(
    title: &str,
    nav: Nav,
    session: Option<&Session>,
    refresh: Option<u64>,
    body: Markup,
) -> Markup {
    let link = |target: Nav, href: &str, text: &str| {
        html! { a href=(href) class=[(nav == target).then_some("current")] { (text) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · wa-ingest console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    strong { "wa-ingest" }
                    @if let Some(session) = session {
                        (link(Nav::Overview, "/", "Overview"))
                        (link(Nav::Dlq, "/dlq", "DLQ"))
                        (link(Nav::Conversation, "/conversation", "Conversations"))
                        (link(Nav::Subscribers, "/subscribers", "Subscribers"))
                        span.who {
                            "signed in as " strong #operator { (session.operator) } " "
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button.secondary type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        Nav::Overview,
        None,
        None,
        html! {
            section.card.login {
                h1 { "Operator console" }
                @if let Some(error) = error { p.alert #login-error { (error) } }
                form method="post" action="/login" {
                    label { "Access token (WA_CONSOLE_TOKEN)"
                        input #token type="password" name="token" autocomplete="current-password" required;
                    }
                    button #sign-in type="submit" { "Sign in" }
                }
            }
        },
    )
}

fn stat(id: &str, label: &str, value: String) -> Markup {
    html! { div.stat { div.n id=(id) { (value) } div.l { (label) } } }
}

fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}/s")
    } else {
        format!("{value:.1}/s")
    }
}

pub(crate) struct OverviewData<'a> {
    pub(crate) queues: Result<&'a [QueueDepth], &'a str>,
    pub(crate) stored: Result<&'a Stored, String>,
    /// Deliveries waiting for the HTTP subscribers.
    pub(crate) delivery_backlog: Result<i64, String>,
    pub(crate) scrape: Option<&'a Scrape>,
    pub(crate) rates: Option<Counters>,
    pub(crate) scrape_configured: bool,
    pub(crate) errors: Result<(Vec<ClassErrors>, &'a Indexed), String>,
}

pub(crate) fn overview(session: &Session, refresh: u64, data: OverviewData<'_>) -> Markup {
    let body = html! {
        h1 { "Overview " span.muted { "· " (Utc::now().format("%H:%M:%S")) " UTC, every " (refresh) " s" } }
        section.card {
            h2 { "Rates" }
            @match (&data.rates, data.scrape_configured) {
                (Some(r), _) => {
                    div.stats {
                        (stat("rate-received", "received (webhooks)", rate(r.received)))
                        (stat("rate-stored", "stored (events)", rate(r.stored)))
                        (stat("rate-duplicates", "duplicates", rate(r.duplicates)))
                        (stat("rate-released", "released downstream", rate(r.released)))
                        (stat("rate-dead-lettered", "dead-lettered", rate(r.dead_lettered)))
                    }
                }
                (None, true) => { p.muted { "Measuring: rates appear after the second scrape." } }
                (None, false) => { p.muted { "No metrics endpoints configured (WA_CONSOLE_SCRAPE): rates, duplicates and pauses come from the roles' /metrics." } }
            }
            @if let Some(scrape) = data.scrape {
                p.muted {
                    (scrape.reached) " role(s) scraped"
                    @if !scrape.failed.is_empty() {
                        span.warn { "; not reached: "
                            @for (target, why) in &scrape.failed { code { (target) } " (" (why) ") " }
                        }
                    }
                }
            }
        }
        div.grid {
            section.card {
                h2 { "Paused workers" }
                @match data.scrape {
                    Some(scrape) if !scrape.paused.is_empty() => {
                        table #paused { tr { th { "worker" } th { "dependency" } th { "reason" } }
                            @for pause in &scrape.paused {
                                tr.bad { td { code { (pause.target) } } td { (pause.dependency) } td { (pause.reason) } }
                            }
                        }
                    }
                    Some(_) => { p.ok #paused { "None: every worker scraped is running." } }
                    None => { p.muted #paused { "Unknown (no metrics endpoints configured)." } }
                }
            }
            section.card {
                h2 { "Stored (PostgreSQL)" }
                @match &data.stored {
                    Ok(stored) => {
                        div.stats {
                            (stat("count-messages", "messages", count(stored.messages)))
                            (stat("count-statuses", "statuses", count(stored.statuses)))
                            (stat("count-group-events", "group events", count(stored.group_events)))
                            (stat("count-contacts", "contacts", count(stored.contacts)))
                            (stat("outbox-backlog", "outbox backlog", stored.outbox_backlog.to_string()))
                            (stat("released-recently", "released, last 5 min", stored.released_recently.to_string()))
                        }
                        @if let Some(age) = stored.outbox_oldest_seconds {
                            p.muted { "oldest unreleased event: " (format!("{age:.1}")) " s" }
                        }
                        @match &data.delivery_backlog {
                            Ok(backlog) => p.muted { a href="/subscribers" { "delivery backlog (HTTP subscribers)" } ": " span #delivery-backlog { (backlog) } }
                            Err(error) => p.alert { "delivery backlog: " (error) }
                        }
                    }
                    Err(error) => { p.alert { "PostgreSQL: " (error) } }
                }
            }
        }
        section.card {
            h2 { "Queues (RabbitMQ)" }
            @match data.queues {
                Ok(queues) => {
                    div.table-wrap { table #queues {
                        tr { th { "queue" } th.num { "ready" } th.num { "consumers" } }
                        @for queue in queues {
                            tr {
                                td { code { (queue.name) } }
                                td.num id={ "depth-" (queue.label) } { (queue.messages.map_or("missing".into(), |n| n.to_string())) }
                                td.num { (queue.consumers.map_or("—".into(), |n| n.to_string())) }
                            }
                        }
                    } }
                }
                Err(error) => { p.alert { "RabbitMQ: " (error) } }
            }
        }
        section.card {
            h2 { "Last errors by class (DLQ)" }
            @match &data.errors {
                Ok((classes, index)) if classes.is_empty() => {
                    p.ok #errors { "The DLQ is empty." } (read_note(index))
                }
                Ok((classes, index)) => {
                    div.table-wrap { table #errors {
                        tr { th { "class" } th.num { "messages" } th { "latest error" } th { "at" } }
                        @for class in classes {
                            tr {
                                td { a href={ "/dlq?class=" (class.class) } { (class.class) } }
                                td.num { (class.count) }
                                td { (one_line(&class.latest_error, 140)) }
                                td { (time(class.latest_at)) }
                            }
                        }
                    } }
                    (read_note(index))
                }
                Err(error) => { p.alert { "DLQ: " (error) } }
            }
        }
    };
    layout(
        "Overview",
        Nav::Overview,
        Some(session),
        Some(refresh),
        body,
    )
}

fn count(count: crate::overview::Count) -> String {
    if count.exact {
        count.value.to_string()
    } else {
        format!("≈{}", count.value)
    }
}

fn read_note(index: &Indexed) -> Markup {
    html! {
        p.muted.read-note {
            "DLQ read at " (index.read_at.format("%H:%M:%S")) " UTC in " (index.took.as_millis()) " ms"
            @if index.snapshot.truncated { span.warn { " (only the first " (index.snapshot.entries.len()) " messages: WA_DLQ_SCAN_LIMIT)" } }
        }
    }
}

/// The DLQ filter as the list's query string and the replay form carry it;
/// every field may be missing or empty (no condition).
#[derive(Deserialize, Default)]
pub(crate) struct FilterForm {
    #[serde(default)]
    pub(crate) class: String,
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) phone_number_id: String,
}

impl FilterForm {
    /// Each field with its form name, in the order the forms show them.
    pub(crate) fn fields(&self) -> [(&'static str, &str); 4] {
        [
            ("class", &self.class),
            ("error", &self.error),
            ("since", &self.since),
            ("phone_number_id", &self.phone_number_id),
        ]
    }
}

fn filter_fields(form: &FilterForm) -> Markup {
    html! {
        @for (name, value) in form.fields() {
            input type="hidden" name=(name) value=(value);
        }
    }
}

pub(crate) struct DlqListData<'a> {
    pub(crate) index: &'a Indexed,
    pub(crate) matching: Vec<&'a DlqEntry>,
    pub(crate) page: usize,
    pub(crate) form: &'a FilterForm,
    pub(crate) filter_error: Option<String>,
    pub(crate) query: String,
}

pub(crate) fn dlq_list(session: &Session, data: DlqListData<'_>) -> Markup {
    let total = data.matching.len();
    let start = data.page * PAGE_SIZE;
    let rows = data.matching.iter().skip(start).take(PAGE_SIZE);
    let classes = ["", "transient", "permanent", "unknown"];
    let body = html! {
        h1 { "Dead-letter queue" }
        section.card {
            form.filters method="get" action="/dlq" {
                label { "class" select #class name="class" {
                    @for class in classes {
                        option value=(class) selected[class == data.form.class] { (if class.is_empty() { "any" } else { class }) }
                    }
                } }
                label { "error contains" input #error type="text" name="error" value=(data.form.error); }
                label { "since (2h or RFC 3339)" input #since type="text" name="since" value=(data.form.since) placeholder="24h"; }
                label { "phone number id" input #phone_number_id type="text" name="phone_number_id" value=(data.form.phone_number_id); }
                button #apply type="submit" { "Filter" }
            }
            @if let Some(error) = &data.filter_error { p.alert { (error) } }
            p.muted { span #match-count { (total) } " of " span #dlq-size { (data.index.snapshot.entries.len()) } " message(s) match." }
            (read_note(data.index))
        }
        section.card {
            div.table-wrap { table #dlq {
                tr { th { "id" } th { "class" } th { "error" } th.num { "attempts" } th { "last failure" } th.num { "events" } th { "phone number ids" } }
                @for entry in rows {
                    tr {
                        td { a.mono href={ "/dlq/" (entry.id) } { (entry.id.get(..12).unwrap_or(&entry.id)) "…" } }
                        td { span.badge { (entry.class) } }
                        td { (one_line(&entry.error, 100)) }
                        td.num { (entry.attempts) }
                        td { (time(entry.last_failure_at.or(entry.first_failure_at))) }
                        td.num { (entry.events.len()) }
                        td { code { (entry.phone_number_ids.join(", ")) } }
                    }
                }
            } }
            div.pager {
                @if data.page > 0 { a href={ "/dlq?" (data.query) "&page=" (data.page - 1) } { "← newer" } }
                @if start + PAGE_SIZE < total { a href={ "/dlq?" (data.query) "&page=" (data.page + 1) } { "older →" } }
            }
        }
        section.card {
            h2 { "Actions" }
            div.actions {
                form method="post" action="/dlq/replay" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    (filter_fields(data.form))
                    button #replay-filtered type="submit" { "Replay the filtered set…" }
                }
                form method="post" action="/dlq/purge" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label { "purge older than" input #older_than type="text" name="older_than" value="168h" required; }
                    button.danger #purge type="submit" { "Purge…" }
                }
            }
            p.muted { "Both show a dry-run count first and act only when confirmed." }
        }
    };
    layout("DLQ", Nav::Dlq, Some(session), None, body)
}

pub(crate) struct Detail<'a> {
    pub(crate) entry: &'a DlqEntry,
    /// Headers and body, when the operator asked for them.
    pub(crate) revealed: Option<&'a wa_dlq::Inspection>,
}

pub(crate) fn dlq_detail(session: &Session, detail: Detail<'_>) -> Markup {
    let entry = detail.entry;
    let field = |name: &str, value: String| html! { tr { th { (name) } td { (value) } } };
    let body = html! {
        h1 { "DLQ message " code { (entry.id.get(..16).unwrap_or(&entry.id)) "…" } }
        section.card {
            div.table-wrap { table #detail {
                (field("id (SHA-256 of the body)", entry.id.clone()))
                (field("x-wa-error-class", entry.class.clone()))
                (field("x-wa-error", entry.error.clone()))
                (field("x-wa-attempts", entry.attempts.to_string()))
                (field("x-wa-first-failure-at", time(entry.first_failure_at)))
                (field("x-wa-last-failure-at", time(entry.last_failure_at)))
                (field("x-wa-dead-lettered-by", entry.dead_lettered_by.clone().unwrap_or_default()))
                (field("x-wa-original-exchange", entry.original_exchange.clone().unwrap_or_default()))
                (field("x-wa-original-routing-key", entry.original_routing_key.clone().unwrap_or_default()))
                (field("received", time(entry.received_at)))
                (field("replayed", time(entry.replayed_at)))
                (field("bytes", entry.bytes.to_string()))
            } }
        }
        section.card {
            h2 { "Events inside (" (entry.events.len()) ")" }
            @if entry.events.is_empty() { p.muted { "The body does not parse as a WhatsApp webhook." } }
            @else {
                div.table-wrap { table #events {
                    tr { th { "kind" } th { "key" } th { "phone number id" } th { "time" } }
                    @for event in &entry.events {
                        tr { td { (event.kind) } td { code { (event.key) } } td { code { (event.phone_number_id.clone().unwrap_or_default()) } } td { (time(event.timestamp)) } }
                    }
                } }
            }
        }
        section.card {
            h2 { "Actions" }
            div.actions {
                form method="post" action={ "/dlq/" (entry.id) "/replay" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button #replay-one type="submit" { "Replay this message" }
                }
                @if detail.revealed.is_none() {
                    form method="post" action={ "/dlq/" (entry.id) "/payload" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button.secondary #show-payload type="submit" { "Show all headers and the payload (personal data)" }
                    }
                }
            }
        }
        @if let Some(inspection) = detail.revealed {
            section.card #payload-section {
                h2 { "AMQP headers (less the signature)" }
                div.table-wrap { table {
                    tr { th { "content-type" } td { (inspection.content_type.clone().unwrap_or_default()) } }
                    @for (key, value) in &inspection.headers { tr { th { code { (key) } } td { code { (value) } } } }
                } }
                h2 { "Payload" }
                pre #payload { (pretty_body(&inspection.body)) }
            }
        }
    };
    layout("DLQ message", Nav::Dlq, Some(session), None, body)
}

fn pretty_body(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// A confirmation step: what a dry run found, and the button that acts.
pub(crate) struct Confirm<'a> {
    pub(crate) title: &'a str,
    pub(crate) message: String,
    pub(crate) action: &'a str,
    pub(crate) fields: Vec<(&'a str, String)>,
    pub(crate) button: &'a str,
    pub(crate) danger: bool,
}

pub(crate) fn confirm(session: &Session, confirm: Confirm<'_>) -> Markup {
    let body = html! {
        h1 { (confirm.title) }
        section.card {
            p #dry-run { (confirm.message) }
            div.actions {
                form method="post" action=(confirm.action) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="confirm" value="yes";
                    @for (name, value) in &confirm.fields { input type="hidden" name=(name) value=(value); }
                    button #confirm type="submit" class=[confirm.danger.then_some("danger")] { (confirm.button) }
                }
                a href="/dlq" { "Cancel" }
            }
        }
    };
    layout(confirm.title, Nav::Dlq, Some(session), None, body)
}

pub(crate) fn outcome(session: &Session, title: &str, message: &str, ok: bool) -> Markup {
    outcome_in(
        session,
        Nav::Dlq,
        title,
        message,
        ok,
        html! { a href="/dlq" { "Back to the DLQ" } },
    )
}

fn outcome_in(
    session: &Session,
    nav: Nav,
    title: &str,
    message: &str,
    ok: bool,
    back: Markup,
) -> Markup {
    let body = html! {
        h1 { (title) }
        div #outcome class=(if ok { "notice" } else { "alert" }) { (message) }
        p { (back) " · " a href="/" { "Overview" } }
    };
    layout(title, nav, Some(session), None, body)
}

pub(crate) fn subscriber_outcome(session: &Session, id: i64, message: &str, ok: bool) -> Markup {
    let back = html! { a #back href={ "/subscribers/" (id) } { "Back to endpoint " (id) } " · " a href="/subscribers" { "Subscribers" } };
    outcome_in(session, Nav::Subscribers, "Subscriber", message, ok, back)
}

/// The endpoint's address without what could be a credential (user
/// information, query, fragment), and whether something was left out.
fn shown_url(url: &str) -> (String, bool) {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let hidden = parsed.query().is_some()
                || parsed.fragment().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some();
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            (parsed.to_string(), hidden)
        }
        Err(_) => ("(not a URL)".into(), true),
    }
}

fn url_note(url: &str) -> Markup {
    html! { @if shown_url(url).1 { " " span.muted { "(query or credentials hidden)" } } }
}

fn state(endpoint: &Endpoint) -> Markup {
    html! {
        @if !endpoint.enabled {
            span.badge.bad { "disabled" }
            " " (endpoint.disabled_reason.clone().unwrap_or_default()) " (" (time(endpoint.disabled_at)) ")"
        } @else if endpoint.paused_until.is_some_and(|t| t > Utc::now()) {
            span.badge.warn { "paused" } " until " (time(endpoint.paused_until))
        } @else if endpoint.failing_since.is_some() {
            span.badge.warn { "failing" } " since " (time(endpoint.failing_since))
        } @else {
            span.badge.ok { "enabled" }
        }
    }
}

fn filter_text(endpoint: &Endpoint) -> String {
    if endpoint.phone_number_ids.is_empty() {
        "every business number".into()
    } else {
        format!("numbers {}", endpoint.phone_number_ids.join(", "))
    }
}

fn success_rate(subscriber: &Subscriber) -> String {
    subscriber
        .success_rate()
        .map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0))
}

fn attempt_error(attempt: &Attempt) -> String {
    match (attempt.status_code, &attempt.error) {
        (_, Some(error)) => one_line(error, 140),
        (Some(code), None) => format!("HTTP {code}"),
        (None, None) => "—".into(),
    }
}

pub(crate) fn subscribers(session: &Session, subscribers: &[Subscriber]) -> Markup {
    let body = html! {
        h1 { "Subscribers " span.muted { "· HTTP endpoints (wa-ingest deliver)" } }
        section.card {
            @if subscribers.is_empty() {
                p.muted #subscribers { "No endpoints: add one with " code { "wa-ingest endpoints add" } "." }
            } @else {
                div.table-wrap { table #subscribers {
                    tr { th { "id" } th { "URL" } th { "state" } th { "event types" } th { "filter" }
                        th.num { "success (last " (RECENT_ATTEMPTS) ")" } th.num { "backlog" } th { "last error" } }
                    @for subscriber in subscribers {
                        @let endpoint = &subscriber.status.endpoint;
                        tr id={ "endpoint-" (endpoint.id) } class=[(!endpoint.enabled).then_some("bad")] {
                            td { a href={ "/subscribers/" (endpoint.id) } { (endpoint.id) } }
                            td { a.mono href={ "/subscribers/" (endpoint.id) } { (shown_url(&endpoint.url).0) } (url_note(&endpoint.url)) }
                            td id={ "state-" (endpoint.id) } { (state(endpoint)) }
                            td { (endpoint.event_types.join(", ")) }
                            td { (filter_text(endpoint)) }
                            td.num { (success_rate(subscriber)) }
                            td.num id={ "backlog-" (endpoint.id) } { (subscriber.status.backlog) }
                            td { @match subscriber.last_error() {
                                Some(attempt) => { (attempt_error(attempt)) br; span.muted { (time(Some(attempt.attempted_at))) } }
                                None => { "—" }
                            } }
                        }
                    }
                } }
            }
            p.muted { "Success rate and last error from each endpoint's last " (RECENT_ATTEMPTS) " attempts; backlog = deliveries not yet acknowledged with a 2xx." }
        }
    };
    layout("Subscribers", Nav::Subscribers, Some(session), None, body)
}

pub(crate) fn subscriber(session: &Session, subscriber: &Subscriber) -> Markup {
    let status = &subscriber.status;
    let endpoint = &status.endpoint;
    let field = |name: &str, value: Markup| html! { tr { th { (name) } td { (value) } } };
    let action = |verb: &str| format!("/subscribers/{}/{verb}", endpoint.id);
    let body = html! {
        h1 { "Endpoint " (endpoint.id) }
        section.card {
            div.table-wrap { table #endpoint {
                (field("URL", html! { code { (shown_url(&endpoint.url).0) } (url_note(&endpoint.url)) }))
                (field("description", html! { (endpoint.description) }))
                (field("state", html! { span #state { (state(endpoint)) } }))
                (field("event types", html! { (endpoint.event_types.join(", ")) }))
                (field("filter", html! { (filter_text(endpoint)) }))
                (field("rate limit", html! { (endpoint.rate_limit.map_or("none".into(), |r| format!("{r}/s"))) " · at most " (endpoint.max_in_flight) " in flight" }))
                (field("success rate", html! { (success_rate(subscriber)) " of the last " (subscriber.attempts.len()) " attempt(s)" }))
                (field("backlog", html! { span #backlog { (status.backlog) } " deliveries in " (status.waiting_conversations) " conversation(s)" }))
                (field("delivered", html! { (status.delivered) }))
            } }
        }
        section.card {
            h2 { "Actions" }
            div.actions {
                @if endpoint.enabled {
                    form method="post" action=(action("disable")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label { "reason" input #reason type="text" name="reason" placeholder="receiver down"; }
                        button.danger #disable type="submit" { "Disable" }
                    }
                } @else {
                    form method="post" action=(action("enable")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button #enable type="submit" { "Enable" }
                    }
                }
                form method="post" action=(action("replay")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label { "replay delivered since (2h or RFC 3339)" input #since type="text" name="since" value="1h" required; }
                    button #replay type="submit" { "Replay" }
                }
            }
            p.muted { "Disabled, its deliveries wait (new events keep queueing); enabled again, they are due at once. A replay sends again, in order and with the same webhook-id, every event delivered since then." }
        }
        section.card {
            h2 { "Recent attempts" }
            div.table-wrap { table #attempts {
                tr { th { "at" } th { "event" } th.num { "status" } th.num { "latency" } th { "error" } th { "next attempt" } }
                @for attempt in &subscriber.attempts {
                    tr class=[(!succeeded(attempt)).then_some("bad")] {
                        td { (time(Some(attempt.attempted_at))) }
                        td { code { (attempt.event_id) } }
                        td.num { (attempt.status_code.map_or("—".into(), |c| c.to_string())) }
                        td.num { (format!("{:.0} ms", attempt.latency_ms)) }
                        td { (attempt.error.as_deref().map_or(String::new(), |e| one_line(e, 140))) }
                        td { (time(attempt.next_attempt_at)) }
                    }
                }
            } }
            @if subscriber.attempts.is_empty() { p.muted { "No attempts yet." } }
        }
    };
    layout("Subscriber", Nav::Subscribers, Some(session), None, body)
}

pub(crate) fn conversation(
    session: &Session,
    who: &str,
    found: Option<&Conversation>,
    revealed: bool,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Conversation" }
        section.card {
            form.filters method="get" action="/conversation" {
                label { "phone number, BSUID, contact key, or group:ID"
                    input #who type="text" name="who" value=(who) required;
                }
                button #look-up type="submit" { "Look up" }
            }
            @if let Some(error) = error { p.alert { (error) } }
        }
        @if let Some(conversation) = found {
            section.card {
                @match &conversation.subject {
                    Subject::Contact { key, wa_id, user_id, keys } => {
                        h2 { "Contact " code { (key) } }
                        p.muted { "phone number: " code { (wa_id.clone().unwrap_or_default()) }
                            " · BSUID: " code { (user_id.clone().unwrap_or_default()) }
                            @if keys.len() > 1 { " · merged records: " (keys.len() - 1) } }
                    }
                    Subject::Group { id } => { h2 { "Group " code { (id) } } }
                }
                p.muted { span #message-count { (conversation.messages.len()) } " message(s), "
                    span #status-count { (conversation.statuses.len()) } " status update(s) stored (newest "
                    (crate::conversation::MAX_MESSAGES) " messages at most)." }
                @if !revealed && !conversation.messages.is_empty() {
                    form method="post" action="/conversation" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="who" value=(who);
                        button.secondary #reveal type="submit" { "Reveal message text (personal data)" }
                    }
                }
            }
            section.card {
                h2 { "Messages" }
                div.table-wrap { table #messages {
                    tr { th { "time (Meta)" } th { "stored" } th { "direction" } th { "type" } th { "wamid" } th { "business number" } th { "latest status" } th { "text" } }
                    @for message in &conversation.messages {
                        tr {
                            td { (time(message.meta_timestamp)) }
                            td { (time(Some(message.stored_at))) }
                            td { (message.direction) }
                            td { (message.message_type) }
                            td { code { (message.wamid) } }
                            td { code { (message.phone_number_id.clone().unwrap_or_default()) } }
                            td { (message.latest_status.clone().unwrap_or_else(|| "—".into())) }
                            td.text {
                                @if revealed { (message.text.clone().unwrap_or_default()) }
                                @else { span.muted { "hidden" } }
                            }
                        }
                    }
                } }
            }
            section.card {
                h2 { "Status timeline" }
                div.table-wrap { table #statuses {
                    tr { th { "time (Meta)" } th { "stored" } th { "wamid" } th { "status" } th { "participant" } }
                    @for status in &conversation.statuses {
                        tr {
                            td { (time(status.meta_timestamp)) }
                            td { (time(Some(status.stored_at))) }
                            td { code { (status.wamid) } }
                            td { (status.status) }
                            td { code { (status.participant) } }
                        }
                    }
                } }
            }
        }
    };
    layout("Conversation", Nav::Conversation, Some(session), None, body)
}

pub(crate) fn filter_of(form: &FilterForm) -> Result<Filter, String> {
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    Ok(Filter {
        ids: Vec::new(),
        class: some(&form.class),
        error: some(&form.error),
        since: some(&form.since)
            .map(|s| wa_dlq::parse_since(&s))
            .transpose()
            .map_err(|e| format!("since: {e}"))?,
        phone_number_id: some(&form.phone_number_id),
    })
}

//! `wa-ingest endpoints ...`: manage the HTTP endpoints events are delivered to.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wa_store::DatabaseArgs;

use crate::config::AllowArgs;
use crate::guard::GuardError;
use crate::sign::SigningSecret;
use crate::store::{self, EndpointChanges, NewEndpoint};

#[derive(Debug, clap::Args)]
pub struct EndpointsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub command: EndpointsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EndpointsCommand {
    /// Add an endpoint; prints its id (and the secret, when generated).
    Add(AddArgs),
    /// Every endpoint with its backlog.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One endpoint with its backlog.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint's URL, subscriptions or limits.
    Update(UpdateArgs),
    /// Stop delivering to an endpoint; its events keep queueing.
    Disable {
        id: i64,
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Resume an endpoint: what waits for it goes at once.
    Enable { id: i64 },
    /// Sign with a new secret (and the previous one, until --finish).
    RotateSecret {
        id: i64,
        /// The new secret (whsec_<base64>); generated and printed if not given.
        #[arg(long, hide_env_values = true)]
        secret: Option<String>,
        /// End a rotation: sign with the newest secret only.
        #[arg(long, conflicts_with = "secret")]
        finish: bool,
    },
    /// Delete an endpoint with its deliveries and attempts.
    Remove {
        id: i64,
        /// Required: removing drops every event still waiting for it.
        #[arg(long)]
        yes: bool,
    },
    /// The latest attempts: status, latency, error, next attempt.
    Attempts {
        id: i64,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send again every event delivered to the endpoint since a time.
    Replay {
        id: i64,
        /// An RFC 3339 time (2026-11-29T10:00:00Z) or a duration ago (90m, 2h).
        #[arg(long, value_parser = parse_since)]
        since: DateTime<Utc>,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[arg(long)]
    pub url: String,
    /// whsec_<base64>; generated when not given.
    #[arg(long, hide_env_values = true)]
    pub secret: Option<String>,
    /// Event types (comma-separated, `group.*` for all group events); all when not given.
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<String>,
    /// Only events of these phone numbers (comma-separated or repeated); all when not given.
    #[arg(long = "phone-number-id", value_delimiter = ',')]
    pub phone_number_ids: Vec<String>,
    /// Requests per second, across all deliverers.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Conversations sent to at once, across all deliverers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub max_in_flight: i32,
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub allow: AllowArgs,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    pub id: i64,
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub events: Option<Vec<String>>,
    #[arg(long = "phone-number-id", value_delimiter = ',')]
    pub phone_number_ids: Option<Vec<String>>,
    /// Deliver every event type again.
    #[arg(long, conflicts_with = "events")]
    pub all_events: bool,
    /// Deliver the events of every phone number again.
    #[arg(long, conflicts_with = "phone_number_ids")]
    pub all_numbers: bool,
    #[arg(long)]
    pub rate_limit: Option<u32>,
    #[arg(long, conflicts_with = "rate_limit")]
    pub no_rate_limit: bool,
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub max_in_flight: Option<i32>,
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub allow: AllowArgs,
}

/// An RFC 3339 time, or a duration back from now (`2h`).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = wa_core::config::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as 2h"))?;
    Ok(Utc::now() - ago)
}

/// Event types wa-ingest emits; `group.*` matches every group one.
const EVENT_TYPES: &[&str] = &[
    "message.created",
    "message.status",
    "group.*",
    "group.participants_updated",
    "group.lifecycle",
    "group.settings_updated",
    "group.status_updated",
    "group.updated",
];

fn check_events(events: &[String]) -> anyhow::Result<()> {
    for event in events {
        if !EVENT_TYPES.contains(&event.as_str()) && !event.ends_with(".*") {
            bail!(
                "unknown event type {event:?}; known: {}",
                EVENT_TYPES.join(", ")
            );
        }
    }
    Ok(())
}

/// An http(s) URL whose host is not refused by the SSRF guard now (the
/// deliverer checks again at every connection: DNS answers change).
async fn check_url(url: &str, allow: &AllowArgs) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{url:?}: only http and https endpoints are supported");
    }
    let host = parsed
        .host_str()
        .with_context(|| format!("{url:?} has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    match allow.guard().resolve(host, port).await {
        Ok(_) => Ok(()),
        Err(error @ GuardError::Refused { .. }) => Err(error.into()),
        Err(error @ GuardError::Unresolved { .. }) => {
            eprintln!("warning: {error}; saved anyway, checked again at every delivery");
            Ok(())
        }
    }
}

pub async fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    let pool = args.database.pool()?;
    let result = command(&pool, args.command).await;
    pool.close().await;
    result
}

/// A subscription list as shown: empty means everything.
fn all_or_listed(items: &[String]) -> String {
    if items.is_empty() {
        "all".to_owned()
    } else {
        items.join(",")
    }
}

fn found(found: bool, id: i64) -> anyhow::Result<()> {
    if found {
        Ok(())
    } else {
        bail!("no endpoint {id}")
    }
}

async fn command(pool: &PgPool, command: EndpointsCommand) -> anyhow::Result<()> {
    const SCHEMA: &str = "endpoint storage failed (has `wa-ingest migrate` run?)";
    match command {
        EndpointsCommand::Add(add) => {
            check_url(&add.url, &add.allow).await?;
            check_events(&add.events)?;
            let (secret, generated) = match &add.secret {
                Some(text) => (SigningSecret::parse(text).context("--secret")?, false),
                None => (SigningSecret::generate(), true),
            };
            let id = store::add(
                pool,
                &NewEndpoint {
                    url: add.url,
                    description: add.description,
                    secret: secret.to_whsec(),
                    event_types: add.events,
                    phone_number_ids: add.phone_number_ids,
                    rate_limit: add.rate_limit.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
                    max_in_flight: add.max_in_flight,
                },
            )
            .await
            .context(SCHEMA)?;
            println!("{id}");
            if generated {
                println!("{}", secret.to_whsec());
            }
        }
        EndpointsCommand::List { json } => {
            let endpoints = store::list(pool).await.context(SCHEMA)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&endpoints)?);
            } else {
                println!(
                    "{:>5}  {:<8}  {:>8}  {:<24}  URL",
                    "ID", "STATE", "BACKLOG", "EVENTS"
                );
                for e in &endpoints {
                    let state = if e.endpoint.enabled {
                        "enabled"
                    } else {
                        "disabled"
                    };
                    let events = all_or_listed(&e.endpoint.event_types);
                    println!(
                        "{:>5}  {:<8}  {:>8}  {:<24}  {}",
                        e.endpoint.id, state, e.backlog, events, e.endpoint.url
                    );
                }
            }
        }
        EndpointsCommand::Show { id, json } => {
            let status = store::status(pool, id).await.context(SCHEMA)?;
            let Some(status) = status else {
                bail!("no endpoint {id}")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let e = &status.endpoint;
                println!("id:               {}", e.id);
                println!("url:              {}", e.url);
                println!("description:      {}", e.description);
                println!("enabled:          {}", e.enabled);
                if let Some(reason) = &e.disabled_reason {
                    println!("disabled because: {reason}");
                }
                println!("events:           {}", all_or_listed(&e.event_types));
                println!("phone numbers:    {}", all_or_listed(&e.phone_number_ids));
                println!(
                    "rate limit:       {}",
                    e.rate_limit.map_or("none".to_owned(), |r| format!("{r}/s"))
                );
                println!("max in flight:    {}", e.max_in_flight);
                println!(
                    "secrets:          {} (newest first; shown only when made)",
                    e.secrets.len()
                );
                println!(
                    "failing since:    {}",
                    e.failing_since.map_or("-".to_owned(), |t| t.to_rfc3339())
                );
                println!(
                    "paused until:     {}",
                    e.paused_until.map_or("-".to_owned(), |t| t.to_rfc3339())
                );
                println!(
                    "backlog:          {} in {} conversations",
                    status.backlog, status.waiting_conversations
                );
                println!("delivered:        {}", status.delivered);
            }
        }
        EndpointsCommand::Update(update) => {
            if let Some(url) = &update.url {
                check_url(url, &update.allow).await?;
            }
            if let Some(events) = &update.events {
                check_events(events)?;
            }
            let changes = EndpointChanges {
                url: update.url,
                description: update.description,
                event_types: if update.all_events {
                    Some(Vec::new())
                } else {
                    update.events
                },
                phone_number_ids: if update.all_numbers {
                    Some(Vec::new())
                } else {
                    update.phone_number_ids
                },
                rate_limit: match (update.rate_limit, update.no_rate_limit) {
                    (_, true) => Some(None),
                    (Some(rate), false) => Some(Some(i32::try_from(rate).unwrap_or(i32::MAX))),
                    (None, false) => None,
                },
                max_in_flight: update.max_in_flight,
            };
            found(
                store::update(pool, update.id, &changes)
                    .await
                    .context(SCHEMA)?,
                update.id,
            )?;
        }
        EndpointsCommand::Disable { id, reason } => {
            found(store::disable(pool, id, &reason).await.context(SCHEMA)?, id)?;
        }
        EndpointsCommand::Enable { id } => {
            found(store::enable(pool, id).await.context(SCHEMA)?, id)?
        }
        EndpointsCommand::RotateSecret { id, secret, finish } => {
            if finish {
                return found(store::finish_rotation(pool, id).await.context(SCHEMA)?, id);
            }
            let (secret, generated) = match secret {
                Some(text) => (SigningSecret::parse(&text).context("--secret")?, false),
                None => (SigningSecret::generate(), true),
            };
            found(
                store::rotate_secret(pool, id, &secret.to_whsec())
                    .await
                    .context(SCHEMA)?,
                id,
            )?;
            if generated {
                println!("{}", secret.to_whsec());
            }
        }
        EndpointsCommand::Remove { id, yes } => {
            if !yes {
                bail!("removing endpoint {id} drops every event waiting for it: add --yes");
            }
            found(store::remove(pool, id).await.context(SCHEMA)?, id)?;
        }
        EndpointsCommand::Attempts { id, limit, json } => {
            let attempts = store::attempts(pool, id, limit.clamp(1, 10_000))
                .await
                .context(SCHEMA)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&attempts)?);
            } else {
                println!(
                    "{:<25}  {:>6}  {:>9}  {:<40}  {:<25}  ERROR",
                    "TIME", "STATUS", "LATENCY", "EVENT", "NEXT ATTEMPT"
                );
                for a in &attempts {
                    println!(
                        "{:<25}  {:>6}  {:>7.1}ms  {:<40}  {:<25}  {}",
                        a.attempted_at.to_rfc3339(),
                        a.status_code.map_or("-".to_owned(), |c| c.to_string()),
                        a.latency_ms,
                        a.event_id,
                        a.next_attempt_at.map_or("-".to_owned(), |t| t.to_rfc3339()),
                        a.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        EndpointsCommand::Replay { id, since } => {
            if store::get(pool, id).await.context(SCHEMA)?.is_none() {
                bail!("no endpoint {id}");
            }
            let queued = store::replay(pool, id, since).await.context(SCHEMA)?;
            println!("{queued}");
        }
    }
    Ok(())
}

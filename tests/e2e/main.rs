//! End-to-end tests against real PostgreSQL, Redis and RabbitMQ. Each test
//! has its own namespace and database, so they run in parallel and beside a
//! live deployment. Run them with `scripts/test` (or `cargo nextest run`).

mod attack;
mod backends_tls;
mod clusters;
mod console;
mod contacts;
mod contention;
mod corpus;
mod deliver;
mod edge;
mod events;
mod failover;
mod failure;
mod groups;
mod migration;
mod operations;
mod partition;
mod pipeline;
mod receiver;
mod soak;
mod systemic;
mod tls;
mod tools;
mod worker;

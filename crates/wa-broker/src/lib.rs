//! RabbitMQ for every wa-ingest role: the supervised link (one connection,
//! reconnected with backoff), the exchanges and queues of a namespace,
//! confirmed publishing, the headers wa-ingest writes, and the options that
//! reach the broker (`AMQP_URL`, ...).

mod args;
pub mod headers;
mod link;
mod publish;
pub mod tls;
mod topology;

pub use args::{AmqpArgs, BrokerArgs};
pub use link::{Broker, BrokerConfig, Session};
pub use publish::{Outgoing, PublishError, Unconfirmed};
pub use topology::{INBOUND_DELIVERY_LIMIT, Topology, event_shard};

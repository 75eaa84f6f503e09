//! Confirmed publishing: a publish succeeds only when the broker has taken
//! responsibility for the message.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};

use crate::Broker;

/// Where a message goes and what it carries.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(std::time::Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was unroutable: {0}")]
    Returned(String),
    #[error("publish failed")]
    Amqp(#[from] lapin::Error),
}

impl Broker {
    /// Publishes persistent and mandatory, and waits for the confirm. A nack,
    /// a returned (unroutable) message, a missing confirm or no connection is
    /// an error: the caller must not treat the message as enqueued.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        let channel = session.publisher();
        let timeout = self.inner.config.confirm_timeout;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // lapin can hang on a publish when the broker goes away: bound it.
        let confirmed = tokio::time::timeout(timeout, async {
            channel
                .basic_publish(
                    message.exchange.into(),
                    message.routing_key.into(),
                    options,
                    message.body,
                    message.properties.with_delivery_mode(2),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
            Ok(Err(error)) => {
                // A closed channel cannot be used again: rebuild the session.
                if !channel.status().connected() {
                    session.mark_broken();
                }
                Err(PublishError::Amqp(error))
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                Err(PublishError::Returned(returned.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                // Every publisher channel is put in confirm mode; this means it was not.
                session.mark_broken();
                Err(PublishError::Nacked)
            }
        }
    }
}

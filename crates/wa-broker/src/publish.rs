//! Confirmed publishing: a publish succeeds only when the broker has taken
//! responsibility for the message.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use crate::{Broker, Session};

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

/// A message handed to the broker whose confirm has not been awaited yet.
/// Messages sent on one lane are routed in the order they were sent.
#[must_use = "a message is enqueued only once its confirm has arrived"]
pub struct Unconfirmed {
    confirm: PublisherConfirm,
    session: Arc<Session>,
    channel: usize,
    timeout: Duration,
}

impl Broker {
    /// Publishes persistent and mandatory, and waits for the confirm. A nack,
    /// a returned (unroutable) message, a missing confirm or no connection is
    /// an error: the caller must not treat the message as enqueued.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        let channel = session.next_publisher();
        let timeout = self.inner.config.confirm_timeout;
        // One deadline over the send and the confirm: one timer per message.
        let published = tokio::time::timeout(timeout, async {
            let confirm = send_unbounded(&session, channel, message).await?;
            confirmation(&session, channel, confirm.await)
        })
        .await;
        published.unwrap_or(Err(PublishError::ConfirmTimeout(timeout)))
    }

    /// Sends on the channel of `lane` without waiting for the confirm, so
    /// that many messages can be in flight; await [`Unconfirmed::confirmed`]
    /// before treating any of them as enqueued. One lane's messages keep
    /// their order (AMQP orders per channel).
    pub async fn send(
        &self,
        lane: u64,
        message: Outgoing<'_>,
    ) -> Result<Unconfirmed, PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        let channel = usize::try_from(lane % session.publishers.len() as u64).unwrap_or(0);
        send_on(session, channel, self.inner.config.confirm_timeout, message).await
    }

    /// Publisher channels: lanes beyond this many share channels.
    pub fn publish_channels(&self) -> usize {
        self.inner.config.publish_channels.max(1)
    }
}

async fn send_on(
    session: Arc<Session>,
    channel: usize,
    timeout: Duration,
    message: Outgoing<'_>,
) -> Result<Unconfirmed, PublishError> {
    // lapin can hang on a publish when the broker goes away: bound it.
    match tokio::time::timeout(timeout, send_unbounded(&session, channel, message)).await {
        Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
        Ok(Err(error)) => Err(error),
        Ok(Ok(confirm)) => Ok(Unconfirmed {
            confirm,
            session,
            channel,
            timeout,
        }),
    }
}

/// Hands the message to the channel, persistent and mandatory; the caller
/// bounds the wait.
async fn send_unbounded(
    session: &Session,
    channel: usize,
    message: Outgoing<'_>,
) -> Result<PublisherConfirm, PublishError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    session.publishers[channel]
        .basic_publish(
            message.exchange.into(),
            message.routing_key.into(),
            options,
            message.body,
            message.properties.with_delivery_mode(2),
        )
        .await
        .map_err(|error| channel_failed(session, channel, error))
}

/// A closed channel cannot be used again: rebuild the session.
fn channel_failed(session: &Session, channel: usize, error: lapin::Error) -> PublishError {
    if !session.publishers[channel].status().connected() {
        session.mark_broken();
    }
    PublishError::Amqp(error)
}

impl Unconfirmed {
    /// Waits for the broker's confirm (bounded by the confirm timeout).
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let Self {
            confirm,
            session,
            channel,
            timeout,
        } = self;
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
            Ok(confirm) => confirmation(&session, channel, confirm),
        }
    }
}

/// What the broker's answer on `channel` means for the message: only a
/// plain ack enqueued it.
fn confirmation(
    session: &Session,
    channel: usize,
    confirm: Result<Confirmation, lapin::Error>,
) -> Result<(), PublishError> {
    match confirm {
        Err(error) => Err(channel_failed(session, channel, error)),
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => {
            Err(PublishError::Returned(returned.reply_text.to_string()))
        }
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
        Ok(Confirmation::NotRequested) => {
            // Every publisher channel is put in confirm mode; this means it was not.
            session.mark_broken();
            Err(PublishError::Nacked)
        }
    }
}

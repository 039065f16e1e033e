//! [`Store::key_state_changes`](crate::Store::key_state_changes) on PostgreSQL: one dedicated
//! `LISTEN`ing connection per subscription, kept up by a task of its own.
//!
//! Every committed key-state change, new binding and policy change sends a `NOTIFY` naming its
//! tenant inside its transaction ([`KEY_STATE_CHANNEL`], [`TENANT_POLICY_CHANNEL`]), and every
//! shred that destroyed DEKs one on [`DEK_SHRED_CHANNEL`]. The task
//! connects (bounded by [`CONNECT_TIMEOUT`]), subscribes to the three channels, yields
//! [`StoreChange::Subscribed`] and then one event per notification; when the connection fails it
//! reconnects after a pause that starts at [`FIRST_BACKOFF`] and doubles up to [`MAX_BACKOFF`]
//! (reset by a successful connection). Notifications sent while it is disconnected are lost,
//! which is why every (re)connection is announced: the consumer reconciles then. The task ends
//! when the stream is dropped.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{DEK_SHRED_CHANNEL, KEY_STATE_CHANNEL, TENANT_POLICY_CHANNEL};
use crate::{StoreChange, StoreChanges, TenantId};

/// First pause before reconnecting the listener.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on opening the listening connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events buffered between the listener task and the consumer: when it is full the task waits
/// (PostgreSQL queues further notifications on the connection meanwhile).
const BUFFER: usize = 64;

/// Starts the listener task for the database of `options`, its connection named
/// `application_name`, and returns its stream.
pub(super) fn subscribe(options: &PgConnectOptions, application_name: &str) -> StoreChanges {
    let options = options.clone().application_name(application_name);
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(listen_until_dropped(
        options,
        application_name.to_owned(),
        sender,
    ));
    Box::pin(ReceiverStream::new(receiver))
}

/// The listener task: (re)connects with backoff until `sender`'s stream is dropped.
async fn listen_until_dropped(
    options: PgConnectOptions,
    name: String,
    sender: mpsc::Sender<StoreChange>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let connected = tokio::select! {
            () = sender.closed() => return,
            connected = listen(&options) => connected,
        };
        match connected {
            Ok(mut listener) => {
                backoff = FIRST_BACKOFF;
                // Changes committed while nobody listened were never delivered: the consumer
                // reconciles on this event, before the notifications queued behind it.
                if sender.send(StoreChange::Subscribed).await.is_err() {
                    return;
                }
                loop {
                    let received = tokio::select! {
                        () = sender.closed() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => {
                            let change = decode(notification.channel(), notification.payload());
                            if sender.send(change).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!(listener = %name, "the key-state listener lost its connection; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(listener = %name, error = %e, "the key-state listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, retry_in = ?backoff, "cannot listen for key-state changes");
            }
        }
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A fresh dedicated connection, subscribed to [`KEY_STATE_CHANNEL`],
/// [`TENANT_POLICY_CHANNEL`] and [`DEK_SHRED_CHANNEL`].
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all([KEY_STATE_CHANNEL, TENANT_POLICY_CHANNEL, DEK_SHRED_CHANNEL])
        .await?;
    Ok(listener)
}

/// The event of one notification: its channel says what changed, its payload names the tenant.
fn decode(channel: &str, payload: &str) -> StoreChange {
    match TenantId::try_from(payload) {
        Ok(tenant) if channel == TENANT_POLICY_CHANNEL => StoreChange::Policy(tenant),
        Ok(tenant) if channel == DEK_SHRED_CHANNEL => StoreChange::Shredded(tenant),
        Ok(tenant) => StoreChange::KeyState(tenant),
        Err(e) => StoreChange::Unreadable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "unit tests")]
    use super::*;

    #[test]
    fn notifications_decode_by_channel_and_payload() {
        let tenant = TenantId::try_from("acme").unwrap();
        assert_eq!(
            decode(KEY_STATE_CHANNEL, "acme"),
            StoreChange::KeyState(tenant.clone())
        );
        assert_eq!(
            decode(TENANT_POLICY_CHANNEL, "acme"),
            StoreChange::Policy(tenant.clone())
        );
        assert_eq!(
            decode(DEK_SHRED_CHANNEL, "acme"),
            StoreChange::Shredded(tenant)
        );
        assert!(matches!(
            decode(KEY_STATE_CHANNEL, ""),
            StoreChange::Unreadable(_)
        ));
        assert!(matches!(
            decode(TENANT_POLICY_CHANNEL, "a\0b"),
            StoreChange::Unreadable(_)
        ));
    }
}

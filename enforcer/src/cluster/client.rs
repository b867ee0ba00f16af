//! The sync client: connect (mTLS or loopback dev mode), Hello, apply, Ack/Nack, reconnect.

use std::convert::Infallible;
use std::hash::BuildHasher;
use std::time::Duration;

use bulkhead_proto::security::{Security, SecurityError, dev_connect_check};
use bulkhead_proto::wire::controller_message::Msg;
use bulkhead_proto::wire::policy_sync_client::PolicySyncClient;
use bulkhead_proto::wire::{ControllerMessage, EnforcerMessage};
use bulkhead_proto::{ControllerMsg, EnforcerMsg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use super::{Enforce, Held};

/// Where and how to reach the controller.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://host:port` (TLS) or `http://127.0.0.1:port` (dev mode).
    pub url: String,
    /// This node's name.
    pub node_name: String,
    /// mTLS files, or dev mode.
    pub security: Security,
    /// The name the controller's certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
    /// Reconnect delays.
    pub backoff: Backoff,
}

/// Exponential, capped, jittered reconnect delays: attempt `n` waits a uniformly random time in
/// `[d/2, d]`, `d = min(initial * 2^n, max)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
        half + Duration::from_nanos(random % nanos.saturating_add(1))
    }
}

/// Why the client cannot run at all (as opposed to a lost connection, which it retries).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS files, or dev mode with a non-loopback controller.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The URL or TLS settings.
    #[error("controller endpoint {url}: {source}")]
    Endpoint {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

fn endpoint(config: &ClientConfig) -> Result<Endpoint, ClientError> {
    let err = |source| ClientError::Endpoint {
        url: config.url.clone(),
        source,
    };
    let ep = Endpoint::from_shared(config.url.clone())
        .map_err(err)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let host = ep.uri().host().unwrap_or_default().to_owned();
    match &config.security {
        Security::DevPlaintext => {
            dev_connect_check(&host)?;
            Ok(ep)
        }
        Security::Tls(files) => {
            let name = config.server_name.clone().unwrap_or(host);
            ep.tls_config(files.client_config(&name)?).map_err(err)
        }
    }
}

/// Checks the configuration without connecting: the URL, the TLS files, dev mode's loopback rule.
pub fn check(config: &ClientConfig) -> Result<(), ClientError> {
    endpoint(config).map(drop)
}

/// Connects once (TLS handshake included).
pub async fn connect(config: &ClientConfig) -> Result<PolicySyncClient<Channel>, ClientError> {
    let channel = endpoint(config)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: config.url.clone(),
            source,
        })?;
    Ok(PolicySyncClient::new(channel))
}

/// Runs the sync forever, starting from `held` (e.g. `Held::default()`); returns only when the
/// configuration cannot work. The last enforced state stays in force across reconnects.
pub async fn run(
    config: &ClientConfig,
    mut held: Held,
    enforce: &mut dyn Enforce,
) -> Result<Infallible, ClientError> {
    check(config)?;
    let mut attempt = 0u32;
    loop {
        let result = session(config, &mut held, enforce, &mut attempt).await;
        enforce.connection(false);
        match result {
            Ok(()) => tracing::info!(node = %config.node_name, "controller closed the sync stream"),
            Err(e) => tracing::warn!(node = %config.node_name, error = %e, "sync connection lost"),
        }
        let delay = config.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One connection: Hello, then messages until the stream ends.
async fn session(
    config: &ClientConfig,
    held: &mut Held,
    enforce: &mut dyn Enforce,
    attempt: &mut u32,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = connect(config).await?;
    let (tx, rx) = mpsc::channel(16);
    let hello = EnforcerMsg::Hello {
        node_name: config.node_name.clone(),
        held_epoch: held.epoch,
        held_revision: held.revision,
    };
    tx.send(EnforcerMessage::from(&hello)).await?;
    let mut inbound: Streaming<ControllerMessage> =
        client.sync(ReceiverStream::new(rx)).await?.into_inner();
    enforce.connection(true);
    while let Some(msg) = inbound.message().await? {
        let revision = match &msg.msg {
            Some(Msg::Snapshot(s)) => s.revision,
            Some(Msg::Delta(d)) => d.revision,
            None => 0,
        };
        let reply = match step(held, enforce, &msg) {
            Ok(()) => {
                *attempt = 0;
                EnforcerMsg::Ack { revision }
            }
            Err(error) => {
                tracing::warn!(node = %config.node_name, revision, %error, "rejected a sync message");
                EnforcerMsg::Nack { revision, error }
            }
        };
        tx.send(EnforcerMessage::from(&reply)).await?;
    }
    Ok(())
}

/// Converts, applies and enforces one message; on error `held` is unchanged.
fn step(held: &mut Held, enforce: &mut dyn Enforce, msg: &ControllerMessage) -> Result<(), String> {
    let msg = ControllerMsg::try_from(msg).map_err(|e| e.to_string())?;
    let mut next = held.clone();
    let how = next.apply(msg).map_err(|e| e.to_string())?;
    enforce.enforce(&next, how)?;
    *held = next;
    Ok(())
}

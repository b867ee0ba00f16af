//! The tonic `PolicySync` service over a [`SyncHub`], and [`serve`].

use std::future::Future;

use bulkhead_proto::security::{Security, SecurityError, dev_bind_check};
use bulkhead_proto::wire::controller_message::Msg;
use bulkhead_proto::wire::policy_sync_server::{PolicySync, PolicySyncServer};
use bulkhead_proto::wire::{ControllerMessage, EnforcerMessage};
use bulkhead_proto::{EnforcerMsg, Problem, WireError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::SyncHub;
use super::hub::Catchup;

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS material, or the dev mode's loopback rule.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The listener's address.
    #[error("listener address: {0}")]
    Listener(#[source] std::io::Error),
    /// The gRPC server.
    #[error("sync server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the hub on `listener` until `shutdown` resolves: mutual TLS, or plaintext in dev mode
/// (only on a loopback address).
pub async fn serve(
    hub: SyncHub,
    listener: TcpListener,
    security: &Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut server = Server::builder();
    match security {
        Security::Tls(files) => server = server.tls_config(files.server_config()?)?,
        Security::DevPlaintext => {
            dev_bind_check(listener.local_addr().map_err(ServeError::Listener)?)?;
        }
    }
    server
        .add_service(PolicySyncServer::new(hub))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}

type Out = mpsc::Sender<Result<ControllerMessage, Status>>;

fn standby() -> Status {
    Status::unavailable("this controller is a standby, not the leader")
}

fn invalid(e: &WireError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl PolicySync for SyncHub {
    type SyncStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<EnforcerMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        if !self.serving() {
            return Err(standby());
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::cancelled("stream closed before Hello"))?;
        let (node, epoch, held) = match EnforcerMsg::try_from(&first) {
            Ok(EnforcerMsg::Hello {
                node_name,
                held_epoch,
                held_revision,
            }) => (node_name, held_epoch, held_revision),
            Ok(_) => {
                let e = WireError {
                    message: "EnforcerMessage",
                    field: "msg".into(),
                    problem: Problem::Unexpected("Hello first"),
                };
                return Err(invalid(&e));
            }
            Err(e) => return Err(invalid(&e)),
        };
        let (tx, rx) = mpsc::channel(16);
        let hub = self.clone();
        tokio::spawn(async move {
            let _connected = Connected::new(&hub, &node);
            if let Err(status) = Stream::new(hub, node.clone(), tx.clone())
                .run(inbound, epoch, held)
                .await
            {
                tracing::info!(node = %node, error = %status.message(), "sync stream ended");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Counts an open stream in [`SyncHub::connected`] while it lives.
struct Connected {
    hub: SyncHub,
    node: String,
}

impl Connected {
    fn new(hub: &SyncHub, node: &str) -> Self {
        *hub.lock().connected.entry(node.to_owned()).or_default() += 1;
        Connected {
            hub: hub.clone(),
            node: node.to_owned(),
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut hub = self.hub.lock();
        if let Some(n) = hub.connected.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                hub.connected.remove(&self.node);
            }
        }
    }
}

/// One enforcer's stream.
struct Stream {
    hub: SyncHub,
    node: String,
    out: Out,
    /// The last revision sent on this stream.
    sent: u64,
    /// The revision of the last snapshot sent (a rejected snapshot is not resent).
    snapshot: u64,
}

impl Stream {
    fn new(hub: SyncHub, node: String, out: Out) -> Self {
        Stream {
            hub,
            node,
            out,
            sent: 0,
            snapshot: 0,
        }
    }

    async fn run(
        mut self,
        mut inbound: Streaming<EnforcerMessage>,
        epoch: u64,
        held: u64,
    ) -> Result<(), Status> {
        let (mut changes, mut serving, catchup) = {
            let mut hub = self.hub.lock();
            let serving = hub.serving.subscribe();
            let changes = hub.node_entry(&self.node).notify.subscribe();
            // A revision of another epoch, or one this epoch has not reached, means nothing.
            if epoch == hub.epoch && held <= hub.revision {
                self.sent = held;
            }
            let catchup = hub.catchup(&self.node, hub.epoch, self.sent);
            (changes, serving, catchup)
        };
        if !*serving.borrow_and_update() {
            return Err(standby());
        }
        self.send(catchup).await?;
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    self.receive(&msg).await?;
                }
                _ = serving.changed() => {
                    if !*serving.borrow_and_update() {
                        return Err(standby());
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let catchup = {
                        let hub = self.hub.lock();
                        hub.catchup(&self.node, hub.epoch, self.sent)
                    };
                    self.send(catchup).await?;
                }
            }
        }
    }

    async fn receive(&mut self, msg: &EnforcerMessage) -> Result<(), Status> {
        match EnforcerMsg::try_from(msg).map_err(|e| invalid(&e))? {
            EnforcerMsg::Hello { .. } => Err(invalid(&WireError {
                message: "EnforcerMessage",
                field: "msg".into(),
                problem: Problem::Unexpected("Ack or Nack after Hello"),
            })),
            EnforcerMsg::Ack { revision } => {
                if revision == 0 || revision > self.sent {
                    return Err(invalid(&WireError {
                        message: "Ack",
                        field: "revision".into(),
                        problem: Problem::Revision {
                            got: revision,
                            expected: format!("1..={} (sent on this stream)", self.sent),
                        },
                    }));
                }
                let mut hub = self.hub.lock();
                let acked = hub.acked.entry(self.node.clone()).or_default();
                *acked = (*acked).max(revision);
                if hub
                    .rejected
                    .get(&self.node)
                    .is_some_and(|(r, _)| *r < revision)
                {
                    hub.rejected.remove(&self.node);
                }
                Ok(())
            }
            EnforcerMsg::Nack { revision, error } => {
                tracing::warn!(node = %self.node, revision, %error, "enforcer rejected a revision");
                self.hub
                    .lock()
                    .rejected
                    .insert(self.node.clone(), (revision, error));
                if revision <= self.snapshot {
                    // A rejected snapshot waits for the next revision; a rejected message sent
                    // before the last snapshot is superseded by it.
                    return Ok(());
                }
                let catchup = {
                    let hub = self.hub.lock();
                    hub.catchup(&self.node, hub.epoch, 0)
                };
                self.send(catchup).await
            }
        }
    }

    async fn send(&mut self, catchup: Catchup) -> Result<(), Status> {
        let msgs: Vec<ControllerMessage> = match catchup {
            Catchup::Nothing => return Ok(()),
            Catchup::Deltas(deltas) => {
                if let Some(last) = deltas.last() {
                    self.sent = last.revision;
                }
                deltas
                    .iter()
                    .map(|d| ControllerMessage {
                        msg: Some(Msg::Delta(d.as_ref().into())),
                    })
                    .collect()
            }
            Catchup::Snapshot(s) => {
                self.sent = s.revision;
                self.snapshot = s.revision;
                vec![ControllerMessage {
                    msg: Some(Msg::Snapshot(s.as_ref().into())),
                }]
            }
        };
        for m in msgs {
            self.out
                .send(Ok(m))
                .await
                .map_err(|_| Status::cancelled("enforcer went away"))?;
        }
        Ok(())
    }
}

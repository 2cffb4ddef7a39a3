//! The submitting side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::wire::{self, Answer, Wire};
use crate::{
    js, ClusterError, ClusterSettings, Infra, HEADER_KERNEL, HEADER_OBJECT, HEADER_REQUEST,
};

/// A kernel whose inputs and outputs can travel ([`Wire`]): every [`gpubridge::Kernel`] whose
/// types implement it, among the built-ins `kernels::Sum` (`Vec<f32>` -> `f32`) and
/// `kernels::VectorAdd` (`VectorPair` -> `Vec<f32>`).
pub trait ClusterKernel {
    /// The kernel id (`kernels/sum`).
    const ID: &'static str;
    /// One item of a batch.
    type Input: Wire + Send + Sync + 'static;
    /// One output.
    type Output: Wire + Send + 'static;
}

impl<K> ClusterKernel for K
where
    K: gpubridge::Kernel,
    K::Input: Wire,
    K::Output: Wire,
{
    const ID: &'static str = <K as gpubridge::Kernel>::ID;
    type Input = <K as gpubridge::Kernel>::Input;
    type Output = <K as gpubridge::Kernel>::Output;
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Bytes>>>>;

/// Submits batches to the cluster's workers and awaits their answers.
pub struct ClusterClient {
    infra: Infra,
    settings: ClusterSettings,
    timeout: Duration,
    waiters: Waiters,
    prefix: String,
    counter: AtomicU64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterClient {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Removes a request's waiter however the wait ends.
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.lock().remove(self.id);
    }
}

/// Whether `id` can be a request id: a key of the results bucket and part of an object name.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

impl ClusterClient {
    /// Connects to the NATS server at `url` (creating the stream and buckets if missing) and
    /// starts watching the results bucket. Answers are awaited 30 s by default
    /// ([`ClusterClient::with_timeout`]).
    ///
    /// # Errors
    /// [`ClusterError::Connect`], [`ClusterError::JetStream`].
    pub async fn connect(url: &str, settings: ClusterSettings) -> Result<Self, ClusterError> {
        let client = crate::connect(url).await?;
        let infra = Infra::open(client, &settings).await?;
        let waiters: Waiters = Arc::default();
        let mut watch = infra
            .results
            .watch_all()
            .await
            .map_err(js("watching the results bucket"))?;
        let w = Arc::clone(&waiters);
        let watcher = tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                match entry {
                    Ok(e) if e.operation == jetstream::kv::Operation::Put => {
                        if let Some(tx) = w.lock().remove(&e.key) {
                            let _ = tx.send(e.value);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("watching the results bucket: {e}"),
                }
            }
        });
        Ok(Self {
            infra,
            settings,
            timeout: Duration::from_secs(30),
            waiters,
            prefix: nuid::next().to_string(),
            counter: AtomicU64::new(0),
            watcher,
        })
    }

    /// How long [`ClusterClient::submit`] waits for an answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A fresh request id, unique across clients (a NUID and a counter).
    pub fn new_request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }

    /// Runs `items` on kernel `K` on some worker, under a fresh request id.
    ///
    /// # Errors
    /// As [`ClusterClient::submit_with_id`].
    pub async fn submit<K: ClusterKernel>(
        &self,
        items: &[K::Input],
    ) -> Result<Vec<K::Output>, ClusterError> {
        let id = self.new_request_id();
        self.submit_with_id::<K>(&id, items).await
    }

    /// Runs `items` on kernel `K` on some worker under request id `id`. Submitting the same id
    /// again (a retry after a lost connection) returns the first answer: it is never computed
    /// twice for the caller.
    ///
    /// # Errors
    /// [`ClusterError::InvalidRequestId`], [`ClusterError::Timeout`] when no answer came within
    /// the client's timeout, [`ClusterError::Remote`] when the worker failed the batch,
    /// [`ClusterError::JetStream`] and [`ClusterError::Wire`].
    pub async fn submit_with_id<K: ClusterKernel>(
        &self,
        id: &str,
        items: &[K::Input],
    ) -> Result<Vec<K::Output>, ClusterError> {
        if !valid_id(id) {
            return Err(ClusterError::InvalidRequestId(id.to_owned()));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id.to_owned(), tx);
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            id,
        };
        let payload = wire::encode(items);
        let mut publish = Publish::build()
            .message_id(id)
            .header(HEADER_REQUEST, id)
            .header(HEADER_KERNEL, K::ID);
        if payload.len() > self.settings.inline_limit {
            let name = format!("request-{id}");
            crate::write_object(&self.infra.objects, &name, &payload).await?;
            publish = publish
                .header(HEADER_OBJECT, name.as_str())
                .payload(Bytes::new());
        } else {
            publish = publish.payload(Bytes::from(payload));
        }
        let ack = self
            .infra
            .js
            .send_publish(self.settings.subject(K::ID), publish)
            .await
            .map_err(js("publishing a request"))?
            .await
            .map_err(js("awaiting the stream's acknowledgement"))?;
        // A duplicate may have been answered before the watch saw it.
        let early = if ack.duplicate {
            self.stored_answer(id).await?
        } else {
            None
        };
        let value = match early {
            Some(v) => v,
            None => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(v)) => v,
                // The watch may have missed it (a reconnect): read the bucket once.
                _ => self
                    .stored_answer(id)
                    .await?
                    .ok_or_else(|| ClusterError::Timeout {
                        id: id.to_owned(),
                        timeout: self.timeout,
                    })?,
            },
        };
        match wire::read_answer(&value)? {
            Answer::Inline(body) => Ok(wire::decode(body)?),
            Answer::Object(name) => {
                let body = crate::read_object(&self.infra.objects, &name).await?;
                Ok(wire::decode(&body)?)
            }
            Answer::Error(message) => Err(ClusterError::Remote {
                id: id.to_owned(),
                message,
            }),
        }
    }

    async fn stored_answer(&self, id: &str) -> Result<Option<Bytes>, ClusterError> {
        self.infra
            .results
            .get(id)
            .await
            .map_err(js("reading an answer"))
    }

    /// What to monitor: requests waiting and in flight, redeliveries, answers written, workers.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`].
    pub async fn stats(&self) -> Result<ClusterStats, ClusterError> {
        let mut stream = self.infra.stream.clone();
        let queued = stream
            .info()
            .await
            .map_err(js("reading the work stream"))?
            .state
            .messages;
        let (pending, ack_pending, redelivered, deliveries) =
            match stream.consumer_info(&self.settings.consumer).await {
                Ok(info) => (
                    info.num_pending,
                    info.num_ack_pending as u64,
                    info.num_redelivered as u64,
                    info.delivered.consumer_sequence,
                ),
                // No worker has created the consumer yet.
                Err(_) => (queued, 0, 0, 0),
            };
        let mut results = self
            .infra
            .js
            .get_stream(format!("KV_{}", self.settings.results_bucket))
            .await
            .map_err(js("reading the results bucket"))?;
        let answers_written = results
            .info()
            .await
            .map_err(js("reading the results bucket"))?
            .state
            .last_sequence;
        let mut workers = 0;
        if let Ok(mut keys) = self.infra.workers.keys().await {
            while let Some(Ok(_)) = keys.next().await {
                workers += 1;
            }
        }
        Ok(ClusterStats {
            queued,
            pending,
            ack_pending,
            redelivered,
            deliveries,
            answers_written,
            workers,
        })
    }
}

/// A snapshot of the cluster's queues ([`ClusterClient::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// Requests in the work stream (not yet acknowledged).
    pub queued: u64,
    /// Requests not yet delivered to any worker (the consumer's pending count).
    pub pending: u64,
    /// Requests delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Requests delivered more than once and not yet acknowledged (a worker died or was too
    /// slow): a gauge, back to zero once they are answered.
    pub redelivered: u64,
    /// Deliveries since the consumer was created, redeliveries included: above the number of
    /// requests ever sent, some were delivered again.
    pub deliveries: u64,
    /// Answers ever written to the results bucket (its stream's last sequence): writes are
    /// create-only, so at most one per request id.
    pub answers_written: u64,
    /// Workers announced in the last minute.
    pub workers: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids() {
        assert!(super::valid_id("abcXYZ09-_="));
        assert!(!super::valid_id(""));
        assert!(!super::valid_id("a.b"));
        assert!(!super::valid_id("a b"));
        assert!(!super::valid_id(&"x".repeat(201)));
    }
}

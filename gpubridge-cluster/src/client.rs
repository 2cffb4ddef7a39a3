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
use crate::worker::Announcement;
use crate::{
    js, Capability, ClusterError, ClusterSettings, Infra, HEADER_CAPABILITY, HEADER_KERNEL,
    HEADER_OBJECT, HEADER_REQUEST,
};

/// The longest one listing of the workers' bucket may take before it is started again.
const LISTING_ATTEMPT: Duration = Duration::from_secs(1);

/// The longest listing the workers' bucket may take in all.
const LISTING_TIMEOUT: Duration = Duration::from_secs(10);

/// A kernel whose inputs and outputs can travel ([`Wire`]): every [`gpubridge::Kernel`] whose
/// types implement it, among them every built-in: `kernels::Sum` (`Vec<f32>` -> `f32`),
/// `kernels::VectorAdd` (`VectorPair` -> `Vec<f32>`), `kernels::Saxpy` (`SaxpyInput` ->
/// `Vec<f32>`), `kernels::MatMul` (`MatMulInput` -> `Matrix`) and
/// `kernels::ConnectedComponents` (`Graph` -> `Vec<u32>`).
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

/// A request being configured ([`ClusterClient::request`]): what it requires of its worker and
/// its request id; [`Submit::send`] publishes it and awaits the answer.
#[must_use = "a request does nothing until it is sent"]
pub struct Submit<'a, K: ClusterKernel> {
    client: &'a ClusterClient,
    items: &'a [K::Input],
    capability: Capability,
    id: Option<String>,
    hints: RemoteHints,
}

/// What of a request's [`gpubridge::ExecutionHints`] travels to the worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteHints {
    priority: Option<gpubridge::Priority>,
    tenant: Option<String>,
}

impl<K: ClusterKernel> Submit<'_, K> {
    /// Only a worker satisfying `capability` may run it (default [`Capability::Any`]). A request
    /// that no running worker serves waits in the stream for one (until the stream's
    /// `retention`); the client's timeout reports it as [`ClusterError::Timeout`].
    pub fn requires(mut self, capability: Capability) -> Self {
        self.capability = capability;
        self
    }

    /// Runs it at `priority` on the worker's bridge (its device slots and batcher queues serve
    /// high before normal before low). Which worker takes a request is still the order of the
    /// stream.
    pub fn priority(mut self, priority: gpubridge::Priority) -> Self {
        self.hints.priority = Some(priority);
        self
    }

    /// Charges it to `tenant` on the worker's bridge: the worker's `[tenants]` limits apply, and
    /// a request over them is answered [`ClusterError::Remote`] with the quota error. The worker
    /// trusts the name as sent: only trusted services should reach the work stream. A name that
    /// cannot travel in a header is refused by [`Submit::send`] with
    /// [`ClusterError::InvalidTenant`].
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.hints.tenant = Some(tenant.into());
        self
    }

    /// Sends it under request id `id` instead of a fresh one: submitting the same id again (a
    /// retry after a lost connection or a timeout) returns the first answer, never a second
    /// computation.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Publishes the request on its capability's subject and awaits the answer.
    ///
    /// # Errors
    /// [`ClusterError::InvalidRequestId`], [`ClusterError::InvalidKernelId`],
    /// [`ClusterError::InvalidTenant`],
    /// [`ClusterError::Timeout`] when no answer came within the client's timeout (no worker
    /// serving the kernel and capability is running, or they are all busy),
    /// [`ClusterError::Remote`] when the worker failed the batch, [`ClusterError::JetStream`]
    /// and [`ClusterError::Wire`].
    pub async fn send(self) -> Result<Vec<K::Output>, ClusterError> {
        let id = match self.id {
            Some(id) => id,
            None => self.client.new_request_id(),
        };
        self.client
            .send::<K>(&id, self.capability, self.items, &self.hints)
            .await
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

    /// Runs `items` on kernel `K` on some worker ([`Capability::Any`]), under a fresh request id.
    ///
    /// # Errors
    /// As [`Submit::send`].
    pub async fn submit<K: ClusterKernel>(
        &self,
        items: &[K::Input],
    ) -> Result<Vec<K::Output>, ClusterError> {
        self.request::<K>(items).send().await
    }

    /// Runs `items` on kernel `K` on some worker ([`Capability::Any`]) under request id `id`.
    /// Submitting the same id again (a retry after a lost connection) returns the first answer:
    /// it is never computed twice for the caller.
    ///
    /// # Errors
    /// As [`Submit::send`].
    pub async fn submit_with_id<K: ClusterKernel>(
        &self,
        id: &str,
        items: &[K::Input],
    ) -> Result<Vec<K::Output>, ClusterError> {
        self.request::<K>(items).id(id).send().await
    }

    /// A request of `items` on kernel `K` to configure ([`Submit::requires`], [`Submit::id`])
    /// and send.
    ///
    /// ```no_run
    /// # use gpubridge_cluster::{ClusterClient, ClusterError};
    /// # async fn f(client: &ClusterClient) -> Result<(), ClusterError> {
    /// use gpubridge_cluster::Capability;
    /// use gpubridge_core::kernels::Sum;
    /// let sums = client
    ///     .request::<Sum>(&[vec![1.0, 2.0]])
    ///     .requires(Capability::Gpu)
    ///     .send()
    ///     .await?;
    /// # let _ = sums; Ok(()) }
    /// ```
    pub fn request<'a, K: ClusterKernel>(&'a self, items: &'a [K::Input]) -> Submit<'a, K> {
        Submit {
            client: self,
            items,
            capability: Capability::Any,
            id: None,
            hints: RemoteHints::default(),
        }
    }

    async fn send<K: ClusterKernel>(
        &self,
        id: &str,
        capability: Capability,
        items: &[K::Input],
        hints: &RemoteHints,
    ) -> Result<Vec<K::Output>, ClusterError> {
        if !valid_id(id) {
            return Err(ClusterError::InvalidRequestId(id.to_owned()));
        }
        if !crate::valid_kernel_id(K::ID) {
            return Err(ClusterError::InvalidKernelId(K::ID.to_owned()));
        }
        if let Some(tenant) = hints.tenant.as_deref().filter(|t| !crate::valid_tenant(t)) {
            return Err(ClusterError::InvalidTenant(tenant.to_owned()));
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
            .header(HEADER_KERNEL, K::ID)
            .header(HEADER_CAPABILITY, capability.name());
        if let Some(p) = hints.priority {
            publish = publish.header(crate::HEADER_PRIORITY, p.name());
        }
        if let Some(tenant) = &hints.tenant {
            publish = publish.header(crate::HEADER_TENANT, tenant.as_str());
        }
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
            .send_publish(self.settings.subject(capability, K::ID), publish)
            .await
            .map_err(js("publishing a request"))?
            .await
            .map_err(js("awaiting the stream's acknowledgement"))?;
        // Wake idle workers serving it (they also sweep every `fetch_wait`: a lost doorbell
        // only delays the request).
        if let Err(e) = self
            .infra
            .js
            .client()
            .publish(self.settings.doorbell(capability, K::ID), Bytes::new())
            .await
        {
            tracing::debug!(request = %id, "ringing the workers: {e}");
        }
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
                        kernel: K::ID.to_owned(),
                        capability,
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

    /// What to monitor: requests waiting and in flight, redeliveries, answers written, workers;
    /// the consumers' counts summed over every (capability, kernel) ([`ClusterClient::queues`]
    /// per consumer).
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
        let queues = self.queues().await?;
        let ack_pending = queues.iter().map(|q| q.ack_pending).sum::<u64>();
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
        let workers = self.worker_keys().await.map_or(0, |k| k.len() as u64);
        Ok(ClusterStats {
            queued,
            // In a work-queue stream every message is either delivered and unacknowledged or
            // not yet delivered, whether or not some consumer serves its subject.
            pending: queued.saturating_sub(ack_pending),
            ack_pending,
            redelivered: queues.iter().map(|q| q.redelivered).sum(),
            deliveries: queues.iter().map(|q| q.deliveries).sum(),
            answers_written,
            workers,
        })
    }

    /// One entry per workers' consumer on the work stream (one per (capability, kernel) some
    /// worker has served), ordered by consumer name: where the backlog is, kernel by kernel.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`].
    pub async fn queues(&self) -> Result<Vec<QueueStats>, ClusterError> {
        let prefix = format!("{}-", self.settings.consumer_prefix);
        let subject_prefix = format!("{}.", self.settings.subject_prefix);
        let mut consumers = self.infra.stream.consumers();
        let mut out = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(js("listing the workers' consumers"))?;
            if !info.name.starts_with(&prefix) {
                continue;
            }
            // The route from the filter subject: `<prefix>.<capability>.<kernel with dots>`.
            let route = info
                .config
                .filter_subject
                .strip_prefix(&subject_prefix)
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(cap, kernel)| Some((cap.parse().ok()?, kernel.replace('.', "/"))));
            let Some((capability, kernel)) = route else {
                continue;
            };
            out.push(QueueStats {
                consumer: info.name.clone(),
                capability,
                kernel,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
                deliveries: info.delivered.consumer_sequence,
            });
        }
        out.sort_by(|a, b| a.consumer.cmp(&b.consumer));
        Ok(out)
    }

    /// The keys of the workers' bucket. async-nats lists them through an ordered consumer that
    /// ends only when the server says the listing is complete, and while workers write and delete
    /// their entries a listing can stall for minutes (a three-worker test saw a `stats` call stall
    /// about five). A listing is given [`LISTING_ATTEMPT`] and started again, until
    /// [`LISTING_TIMEOUT`] has passed.
    async fn worker_keys(&self) -> Result<Vec<String>, ClusterError> {
        let list = || async {
            let mut keys = self
                .infra
                .workers
                .keys()
                .await
                .map_err(js("listing the workers"))?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                out.push(key.map_err(js("listing the workers"))?);
            }
            Ok(out)
        };
        let started = std::time::Instant::now();
        while started.elapsed() < LISTING_TIMEOUT {
            if let Ok(listed) = tokio::time::timeout(LISTING_ATTEMPT, list()).await {
                return listed;
            }
        }
        Err(ClusterError::JetStream {
            what: "listing the workers",
            message: format!("no complete listing within {LISTING_TIMEOUT:?}"),
        })
    }

    /// The workers announced in the last minute, ordered by name.
    ///
    /// # Errors
    /// [`ClusterError::JetStream`]; an entry that is not an announcement is skipped.
    pub async fn workers(&self) -> Result<Vec<Announcement>, ClusterError> {
        let mut out = Vec::new();
        for key in self.worker_keys().await? {
            let Some(value) = self
                .infra
                .workers
                .get(&key)
                .await
                .map_err(js("reading a worker's announcement"))?
            else {
                continue; // gone since the listing
            };
            match serde_json::from_slice::<Announcement>(&value) {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(worker = %key, "unreadable announcement: {e}"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A snapshot of the cluster's queues ([`ClusterClient::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStats {
    /// Requests in the work stream (not yet acknowledged).
    pub queued: u64,
    /// Requests not yet delivered to any worker, those that no running worker serves included.
    pub pending: u64,
    /// Requests delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Requests delivered more than once and not yet acknowledged (a worker died or was too
    /// slow): a gauge, back to zero once they are answered.
    pub redelivered: u64,
    /// Deliveries since the consumers were created, redeliveries included: above the number of
    /// requests ever sent, some were delivered again.
    pub deliveries: u64,
    /// Answers ever written to the results bucket (its stream's last sequence): writes are
    /// create-only, so at most one per request id.
    pub answers_written: u64,
    /// Workers announced in the last minute.
    pub workers: u64,
}

/// One workers' consumer ([`ClusterClient::queues`]): the requests for one kernel under one
/// capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The durable consumer's name ([`ClusterSettings::consumer_name`]).
    pub consumer: String,
    /// The capability it serves.
    pub capability: Capability,
    /// The kernel id it serves.
    pub kernel: String,
    /// Requests not yet delivered: growing means too few workers serve this kernel.
    pub pending: u64,
    /// Requests delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Requests delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Deliveries since the consumer was created, redeliveries included.
    pub deliveries: u64,
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

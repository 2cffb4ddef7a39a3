//! The executing side.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures::StreamExt;
use gpubridge::{ExecutionHints, GpuBridge};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::ClusterKernel;
use crate::wire::{self, ANSWER_ERROR, ANSWER_OBJECT, ANSWER_OK};
use crate::{
    js, ClusterError, ClusterSettings, Infra, ANNOUNCE_SUBJECT, HEADER_KERNEL, HEADER_OBJECT,
    HEADER_REQUEST,
};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// NATS server URL (`nats://127.0.0.1:4222`).
    pub nats_url: String,
    /// This worker's name in announcements (letters, digits, `-`, `_`).
    pub name: String,
    /// Batches running at once at most; the worker fetches only as many requests as it has free
    /// slots.
    pub max_in_flight: usize,
    /// Interval of progress acknowledgements during a batch; keep it below `ack_wait`.
    pub progress_interval: Duration,
    /// How long one fetch waits for requests.
    pub fetch_wait: Duration,
    /// A pause before each batch, zero by default: for tests and demonstrations of redelivery
    /// (a worker killed while it holds requests).
    pub hold: Duration,
    /// Stream, consumer and bucket settings.
    pub settings: ClusterSettings,
}

impl WorkerConfig {
    /// Defaults for a worker on `nats_url`: 4 batches at once, progress every 5 s (or a third of
    /// `ack_wait` if shorter).
    pub fn new(nats_url: impl Into<String>, settings: ClusterSettings) -> Self {
        let progress_interval = (settings.ack_wait / 3)
            .min(Duration::from_secs(5))
            .max(Duration::from_millis(100));
        Self {
            nats_url: nats_url.into(),
            name: format!("worker-{}", nuid::next()),
            max_in_flight: 4,
            progress_interval,
            fetch_wait: Duration::from_secs(1),
            hold: Duration::ZERO,
            settings,
        }
    }
}

/// What a worker announces.
#[derive(Debug, Clone, Serialize)]
pub struct Announcement {
    /// The worker's name.
    pub name: String,
    /// Kernel ids it serves.
    pub kernels: Vec<String>,
    /// Its devices (`id name`).
    pub devices: Vec<String>,
    /// Backends in its fallback order.
    pub backends: Vec<String>,
    /// Its `max_in_flight`.
    pub max_in_flight: usize,
}

type Handler = Arc<
    dyn Fn(GpuBridge, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// Pulls batch requests from the work stream and runs them on a local [`GpuBridge`].
pub struct Worker {
    bridge: GpuBridge,
    config: WorkerConfig,
    handlers: BTreeMap<&'static str, Handler>,
}

struct Shared {
    bridge: GpuBridge,
    infra: Infra,
    handlers: BTreeMap<&'static str, Handler>,
    progress: Duration,
    hold: Duration,
    inline_limit: usize,
}

impl Worker {
    /// A worker serving the built-in `kernels/sum` and `kernels/vector/add` on `bridge`.
    pub fn new(bridge: GpuBridge, config: WorkerConfig) -> Self {
        let mut w = Self {
            bridge,
            config,
            handlers: BTreeMap::new(),
        };
        w.serve::<gpubridge::kernels::Sum>();
        w.serve::<gpubridge::kernels::VectorAdd>();
        w
    }

    /// Also serves kernel `K` (registered on the bridge).
    pub fn serve<K: ClusterKernel>(&mut self) -> &mut Self {
        let handler: Handler = Arc::new(|bridge: GpuBridge, bytes: Vec<u8>| {
            Box::pin(async move {
                let items = wire::decode::<K::Input>(&bytes).map_err(|e| e.to_string())?;
                let batch = bridge
                    .batch_by_id::<K::Input, K::Output>(K::ID)
                    .map_err(|e| e.to_string())?;
                let result = batch
                    .execute(items, ExecutionHints::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(wire::encode(&result.outputs))
            })
        });
        self.handlers.insert(K::ID, handler);
        self
    }

    /// What this worker announces.
    pub fn announcement(&self) -> Announcement {
        Announcement {
            name: self.config.name.clone(),
            kernels: self.handlers.keys().map(|k| (*k).to_owned()).collect(),
            devices: self
                .bridge
                .devices()
                .iter()
                .map(|d| format!("{} {}", d.id, d.name))
                .collect(),
            backends: self
                .bridge
                .backends()
                .iter()
                .map(|b| b.to_string())
                .collect(),
            max_in_flight: self.config.max_in_flight,
        }
    }

    /// Connects, announces itself and serves requests until `shutdown` completes, then waits
    /// for the batches in flight to be answered.
    ///
    /// # Errors
    /// [`ClusterError::Connect`] and [`ClusterError::JetStream`] while starting; once serving,
    /// failures are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ClusterError> {
        let announcement = self.announcement();
        let client = crate::connect(&self.config.nats_url).await?;
        let infra = Infra::open(client.clone(), &self.config.settings).await?;
        let s = &self.config.settings;
        let consumer: jetstream::consumer::Consumer<pull::Config> = infra
            .stream
            .get_or_create_consumer(
                &s.consumer,
                pull::Config {
                    durable_name: Some(s.consumer.clone()),
                    filter_subject: format!("{}.>", s.subject_prefix),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: s.ack_wait,
                    max_deliver: s.max_deliver,
                    backoff: s.backoff.clone(),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(js("creating the workers' consumer"))?;
        let json = serde_json::to_vec(&announcement).unwrap_or_default();
        let key = announcement.name.clone();
        infra
            .workers
            .put(&key, Bytes::from(json.clone()))
            .await
            .map_err(js("announcing the worker"))?;
        client
            .publish(ANNOUNCE_SUBJECT, Bytes::from(json.clone()))
            .await
            .map_err(js("announcing the worker"))?;
        let heartbeat = {
            let workers = infra.workers.clone();
            let key = key.clone();
            let json = Bytes::from(json);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(15));
                loop {
                    tick.tick().await;
                    if let Err(e) = workers.put(&key, json.clone()).await {
                        tracing::warn!("announcing the worker: {e}");
                    }
                }
            })
        };
        tracing::info!(worker = %key, "serving {:?}", announcement.kernels);

        let max = self.config.max_in_flight.max(1);
        let slots = Arc::new(Semaphore::new(max));
        let shared = Arc::new(Shared {
            bridge: self.bridge,
            infra,
            handlers: self.handlers,
            progress: self.config.progress_interval,
            hold: self.config.hold,
            inline_limit: s.inline_limit,
        });
        let fetch_wait = self.config.fetch_wait;
        tokio::pin!(shutdown);
        'serve: loop {
            let first = tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(p);
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(fetch_wait)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("fetching requests: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    _ = &mut shutdown => break 'serve,
                };
                let Some(message) = next else { break };
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("fetching requests: {e}");
                        break;
                    }
                };
                let Some(permit) = permits.pop() else {
                    // More than asked for: hand it back for another worker.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    handle(&shared, message).await;
                    drop(permit);
                });
            }
        }
        // Drain: every slot back means every batch in flight answered.
        let _ = slots.acquire_many(max as u32).await;
        heartbeat.abort();
        let _ = shared.infra.workers.delete(&key).await;
        let _ = client.flush().await;
        Ok(())
    }
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// Runs one request and acknowledges it once its answer is stored.
async fn handle(shared: &Shared, message: jetstream::Message) {
    let Some(id) = header(&message, HEADER_REQUEST).map(str::to_owned) else {
        tracing::warn!(subject = %message.subject, "a request without an id: dropped");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    // A redelivery of a request already answered (its worker died before acknowledging).
    if let Ok(Some(_)) = shared.infra.results.get(&id).await {
        let _ = message.ack().await;
        return;
    }
    let kernel = header(&message, HEADER_KERNEL)
        .unwrap_or_default()
        .to_owned();
    let object = header(&message, HEADER_OBJECT).map(str::to_owned);
    let work = async {
        let object = object.as_ref();
        let Some(handler) = shared.handlers.get(kernel.as_str()) else {
            return Err(format!("kernel {kernel:?} is not served by this worker"));
        };
        let bytes = match object {
            Some(name) => crate::read_object(&shared.infra.objects, name)
                .await
                .map_err(|e| e.to_string())?,
            None => message.payload.to_vec(),
        };
        if !shared.hold.is_zero() {
            tokio::time::sleep(shared.hold).await;
        }
        handler(shared.bridge.clone(), bytes).await
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.progress,
        shared.progress,
    );
    let outcome = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(request = %id, "progress acknowledgement: {e}");
                }
            }
        }
    };
    let answer = match outcome {
        Ok(body) if body.len() > shared.inline_limit => {
            let name = format!("answer-{id}");
            match crate::write_object(&shared.infra.objects, &name, &body).await {
                Ok(()) => wire::answer(ANSWER_OBJECT, name.as_bytes()),
                Err(e) => {
                    tracing::warn!(request = %id, "storing an answer: {e}");
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
            }
        }
        Ok(body) => wire::answer(ANSWER_OK, &body),
        Err(why) => {
            tracing::warn!(request = %id, kernel = %kernel, "failed: {why}");
            wire::answer(ANSWER_ERROR, why.as_bytes())
        }
    };
    match shared.infra.results.create(&id, Bytes::from(answer)).await {
        Ok(_) => {}
        // Another delivery answered first; its answer stands.
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => {
            tracing::warn!(request = %id, "storing an answer: {e}");
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        }
    }
    if let Err(e) = message.double_ack().await {
        // The answer is stored: a redelivery only finds it and acknowledges.
        tracing::warn!(request = %id, "acknowledging: {e}");
    }
    if let Some(name) = object.as_deref() {
        let _ = shared.infra.objects.delete(name).await;
    }
}

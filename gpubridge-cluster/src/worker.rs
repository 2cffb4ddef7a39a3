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
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::client::ClusterKernel;
use crate::wire::{self, ANSWER_ERROR, ANSWER_OBJECT, ANSWER_OK};
use crate::{
    js, Capability, ClusterError, ClusterSettings, Infra, ANNOUNCE_SUBJECT, HEADER_KERNEL,
    HEADER_OBJECT, HEADER_REQUEST,
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
    /// How long an idle worker waits for a doorbell (a client saying it sent a request the
    /// worker serves) before it sweeps its consumers anyway: the longest an idle worker takes to
    /// see a redelivered request or one whose doorbell was lost.
    pub fetch_wait: Duration,
    /// Serve only these kernel ids (`None`: every kernel this worker has a handler for and its
    /// bridge has registered). An id it cannot serve fails [`Worker::run`] with
    /// [`ClusterError::KernelNotServed`].
    pub kernels: Option<Vec<String>>,
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
            kernels: None,
            hold: Duration::ZERO,
            settings,
        }
    }
}

/// What a worker announces (JSON, in the workers bucket under its name and on
/// [`crate::ANNOUNCE_SUBJECT`]; [`crate::ClusterClient::workers`] reads them back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Announcement {
    /// The worker's name.
    pub name: String,
    /// Kernel ids it serves.
    pub kernels: Vec<String>,
    /// Capabilities it serves (those its backends satisfy).
    pub capabilities: Vec<Capability>,
    /// The subjects it pulls from: every (capability, kernel) it serves.
    pub subjects: Vec<String>,
    /// Its devices (`id name`).
    pub devices: Vec<String>,
    /// Its first backend: where a request requiring [`Capability::Any`] runs first.
    pub backend: String,
    /// Backends in its fallback order.
    pub backends: Vec<String>,
    /// Its `max_in_flight`.
    pub max_in_flight: usize,
}

type Handler = Arc<
    dyn Fn(
            GpuBridge,
            Vec<u8>,
            ExecutionHints,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// One (capability, kernel) a worker serves, and its consumer.
struct Route {
    capability: Capability,
    kernel: &'static str,
    /// The batch's hints: pinned to the backend the capability names.
    hints: ExecutionHints,
}

/// Pulls batch requests from the work stream and runs them on a local [`GpuBridge`]: from one
/// durable consumer per (capability, kernel) it serves ([`ClusterSettings::consumer_name`]),
/// shared with every other worker serving the same.
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
    /// A worker serving the built-in kernels (`kernels/sum`, `kernels/vector/add`,
    /// `kernels/blas/saxpy`, `kernels/matrix/multiply`, `kernels/graph/connected_components`) on
    /// `bridge`: those of them its bridge has registered; [`WorkerConfig::kernels`] restricts
    /// them further.
    pub fn new(bridge: GpuBridge, config: WorkerConfig) -> Self {
        let mut w = Self {
            bridge,
            config,
            handlers: BTreeMap::new(),
        };
        w.serve::<gpubridge::kernels::Sum>();
        w.serve::<gpubridge::kernels::VectorAdd>();
        w.serve::<gpubridge::kernels::Saxpy>();
        w.serve::<gpubridge::kernels::MatMul>();
        w.serve::<gpubridge::kernels::ConnectedComponents>();
        w
    }

    /// Also serves kernel `K`, if the bridge has registered it.
    pub fn serve<K: ClusterKernel>(&mut self) -> &mut Self {
        let handler: Handler = Arc::new(|bridge: GpuBridge, bytes: Vec<u8>, hints| {
            Box::pin(async move {
                let items = wire::decode::<K::Input>(&bytes).map_err(|e| e.to_string())?;
                let batch = bridge
                    .batch_by_id::<K::Input, K::Output>(K::ID)
                    .map_err(|e| e.to_string())?;
                let result = batch
                    .execute(items, hints)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(wire::encode(&result.outputs))
            })
        });
        self.handlers.insert(K::ID, handler);
        self
    }

    /// The kernel ids it serves: those with a handler that the bridge has registered and that
    /// can travel ([`ClusterSettings::subject`]), restricted to [`WorkerConfig::kernels`].
    ///
    /// # Errors
    /// [`ClusterError::KernelNotServed`] for a restriction naming another kernel,
    /// [`ClusterError::NothingToServe`] when none is left.
    pub fn kernels(&self) -> Result<Vec<&'static str>, ClusterError> {
        let catalog = self.bridge.catalog();
        let servable: Vec<&'static str> = self
            .handlers
            .keys()
            .copied()
            .filter(|id| catalog.descriptor(id).is_some() && crate::valid_kernel_id(id))
            .collect();
        let kernels = match &self.config.kernels {
            None => servable,
            Some(wanted) => {
                if let Some(missing) = wanted.iter().find(|w| !servable.contains(&w.as_str())) {
                    return Err(ClusterError::KernelNotServed {
                        kernel: missing.clone(),
                        served: servable.iter().map(|k| (*k).to_owned()).collect(),
                    });
                }
                servable
                    .into_iter()
                    .filter(|k| wanted.iter().any(|w| w == k))
                    .collect()
            }
        };
        if kernels.is_empty() {
            return Err(ClusterError::NothingToServe(self.config.name.clone()));
        }
        Ok(kernels)
    }

    /// The capabilities it serves: those its bridge's backends satisfy
    /// ([`Capability::served_by`]).
    pub fn capabilities(&self) -> Vec<Capability> {
        Capability::served_by(&self.bridge.backends())
    }

    /// Every (capability, kernel) it serves.
    fn routes(&self) -> Result<Vec<Route>, ClusterError> {
        let kernels = self.kernels()?;
        let backends = self.bridge.backends();
        let capabilities = self.capabilities();
        if capabilities.is_empty() {
            return Err(ClusterError::NothingToServe(self.config.name.clone()));
        }
        let mut routes = Vec::new();
        for &kernel in &kernels {
            for &capability in &capabilities {
                let mut hints = ExecutionHints::default();
                if let Some(kind) = capability.pinned_backend(&backends) {
                    hints = hints.on_backend(kind);
                }
                routes.push(Route {
                    capability,
                    kernel,
                    hints,
                });
            }
        }
        Ok(routes)
    }

    /// What this worker announces.
    ///
    /// # Errors
    /// As [`Worker::kernels`].
    pub fn announcement(&self) -> Result<Announcement, ClusterError> {
        let routes = self.routes()?;
        let backends: Vec<String> = self
            .bridge
            .backends()
            .iter()
            .map(|b| b.to_string())
            .collect();
        Ok(Announcement {
            name: self.config.name.clone(),
            kernels: self.kernels()?.iter().map(|k| (*k).to_owned()).collect(),
            capabilities: self.capabilities(),
            subjects: routes
                .iter()
                .map(|r| self.config.settings.subject(r.capability, r.kernel))
                .collect(),
            devices: self
                .bridge
                .devices()
                .iter()
                .map(|d| format!("{} {}", d.id, d.name))
                .collect(),
            backend: backends.first().cloned().unwrap_or_default(),
            backends,
            max_in_flight: self.config.max_in_flight,
        })
    }

    /// Connects, binds (creating where missing) the consumer of every (capability, kernel) it
    /// serves, announces itself and serves requests until `shutdown` completes, then waits for
    /// the batches in flight to be answered.
    ///
    /// It fetches only as many requests as it has free slots, taking its consumers in turn
    /// without waiting on any, starting one consumer further each round so that a busy kernel
    /// never starves another. When none had anything it waits for a doorbell (a client
    /// announcing a request it serves) or [`WorkerConfig::fetch_wait`], whichever comes first.
    ///
    /// # Errors
    /// [`ClusterError::KernelNotServed`] and [`ClusterError::NothingToServe`] (nothing to serve),
    /// [`ClusterError::OverlappingConsumer`] (another consumer on the stream would take its
    /// requests), [`ClusterError::Connect`] and [`ClusterError::JetStream`] while starting; once
    /// serving, failures are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ClusterError> {
        let announcement = self.announcement()?;
        let routes = self.routes()?;
        let client = crate::connect(&self.config.nats_url).await?;
        let infra = Infra::open(client.clone(), &self.config.settings).await?;
        let s = &self.config.settings;
        // A consumer filtering more than one (capability, kernel) would take requests from under
        // the workers' consumers (a work-queue stream gives each message to one consumer).
        let mut existing = infra.stream.consumers();
        while let Some(info) = existing.next().await {
            let info = info.map_err(js("listing the work stream's consumers"))?;
            let filter = &info.config.filter_subject;
            for route in &routes {
                let subject = s.subject(route.capability, route.kernel);
                if *filter != subject && crate::filter_matches(filter, &subject) {
                    return Err(ClusterError::OverlappingConsumer {
                        consumer: info.name.clone(),
                        filter: filter.clone(),
                        subject,
                    });
                }
            }
        }
        let mut consumers: Vec<jetstream::consumer::Consumer<pull::Config>> = Vec::new();
        for route in &routes {
            let name = s.consumer_name(route.capability, route.kernel);
            let consumer = infra
                .stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: s.subject(route.capability, route.kernel),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: s.ack_wait,
                        max_deliver: s.max_deliver,
                        backoff: s.backoff.clone(),
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(js("creating a workers' consumer"))?;
            consumers.push(consumer);
        }
        let json = serde_json::to_vec(&announcement).map_err(js("encoding the announcement"))?;
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
        tracing::info!(worker = %key, "serving {:?}", announcement.subjects);

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
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let n = consumers.len();
        let fetch_wait = self.config.fetch_wait;
        let stall = fetch_wait + ROUND_STALL;
        // Doorbells of every (capability, kernel) served wake an idle worker; a notification
        // that comes while it fetches is kept, so none is lost between a round and the wait.
        let ring = Arc::new(Notify::new());
        let mut doorbells = Vec::with_capacity(n);
        for route in routes.iter() {
            let mut sub = client
                .subscribe(s.doorbell(route.capability, route.kernel))
                .await
                .map_err(js("subscribing to the doorbells"))?;
            let ring = Arc::clone(&ring);
            doorbells.push(tokio::spawn(async move {
                while sub.next().await.is_some() {
                    ring.notify_one();
                }
            }));
        }
        // The doorbells' subscriptions are in place before the first round.
        client
            .flush()
            .await
            .map_err(js("subscribing to the doorbells"))?;
        // The consumer the next round starts at.
        let mut next = 0usize;
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
            // A round: each consumer in turn, without waiting, for the slots still free;
            // starting one further each time, so a busy kernel never starves another.
            let start = next;
            next = (next + 1) % n;
            let mut got = 0;
            for k in 0..n {
                if permits.is_empty() {
                    break;
                }
                let i = (start + k) % n;
                // A fetch that does not wait still ends only when the server says so (its
                // messages, then "no messages"); async-nats puts no timer on it, and an expiry
                // would change what the server does with it (with nats-server 2.9.10 the tests'
                // requests then went unanswered). A server silent for `stall` (a lost status, a
                // reconnect) is given up on: the round goes on, and anything delivered to the
                // abandoned fetch comes back after `ack_wait`.
                match consumers[i]
                    .fetch()
                    .max_messages(permits.len())
                    .messages()
                    .await
                {
                    Ok(mut batch) => loop {
                        let Ok(next) = tokio::time::timeout(stall, batch.next()).await else {
                            tracing::warn!(
                                "fetching requests: the server did not end a fetch within \
                                     {stall:?}; going on"
                            );
                            break;
                        };
                        let Some(message) = next else { break };
                        match message {
                            Ok(m) => {
                                got += 1;
                                dispatch(&shared, &routes[i], m, &mut permits).await;
                            }
                            Err(e) => {
                                tracing::warn!("fetching requests: {e}");
                                break;
                            }
                        }
                    },
                    Err(e) => tracing::warn!("fetching requests: {e}"),
                }
            }
            if got > 0 {
                continue;
            }
            // Nothing waiting: no pull request stays open (none holds a slot or a message
            // while other consumers have work); wait for a doorbell or the next sweep.
            drop(permits);
            tokio::select! {
                _ = ring.notified() => {}
                _ = tokio::time::sleep(fetch_wait) => {}
                _ = &mut shutdown => break 'serve,
            }
        }
        for d in doorbells {
            d.abort();
        }
        // Drain: every slot back means every batch in flight answered.
        let _ = slots.acquire_many(max as u32).await;
        heartbeat.abort();
        let _ = shared.infra.workers.delete(&key).await;
        let _ = client.flush().await;
        Ok(())
    }
}

/// How long past its expiry a fetch may stay silent before the worker gives up on it.
const ROUND_STALL: Duration = Duration::from_secs(1);

/// Runs `message` on a slot of `permits`, or hands it back when there is none left.
async fn dispatch(
    shared: &Arc<Shared>,
    route: &Arc<Route>,
    message: jetstream::Message,
    permits: &mut Vec<OwnedSemaphorePermit>,
) {
    let Some(permit) = permits.pop() else {
        // More than asked for: hand it back for another worker.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let shared = Arc::clone(shared);
    let route = Arc::clone(route);
    tokio::spawn(async move {
        handle(&shared, &route, message).await;
        drop(permit);
    });
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// The hints a request runs with: the route's (its backend), the priority and tenant its headers
/// carry, and its request id as the correlation id of the worker's spans and audit events.
fn request_hints(
    message: &jetstream::Message,
    route: &ExecutionHints,
    id: &str,
) -> Result<ExecutionHints, String> {
    let mut hints = route.clone().correlation_id(id);
    if let Some(v) = header(message, crate::HEADER_PRIORITY) {
        hints.priority = v
            .parse()
            .map_err(|e| format!("invalid {} header: {e}", crate::HEADER_PRIORITY))?;
    }
    if let Some(tenant) = header(message, crate::HEADER_TENANT) {
        if !crate::valid_tenant(tenant) {
            return Err(format!(
                "invalid {} header {tenant:?}",
                crate::HEADER_TENANT
            ));
        }
        hints.tenant = Some(tenant.to_owned());
    }
    Ok(hints)
}

/// Runs one request and acknowledges it once its answer is stored.
async fn handle(shared: &Shared, route: &Route, message: jetstream::Message) {
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
    // The consumer's kernel; the header must agree with the subject it came on.
    let kernel = route.kernel;
    let object = header(&message, HEADER_OBJECT).map(str::to_owned);
    let work = async {
        let object = object.as_ref();
        let named = header(&message, HEADER_KERNEL).unwrap_or_default();
        if named != kernel {
            return Err(format!(
                "request names kernel {named:?} but came on {}'s subject",
                kernel
            ));
        }
        let Some(handler) = shared.handlers.get(kernel) else {
            return Err(format!("kernel {kernel:?} is not served by this worker"));
        };
        let bytes = match object {
            Some(name) => crate::read_object(&shared.infra.objects, name)
                .await
                .map_err(|e| e.to_string())?,
            None => message.payload.to_vec(),
        };
        let hints = request_hints(&message, &route.hints, &id)?;
        if !shared.hold.is_zero() {
            tokio::time::sleep(shared.hold).await;
        }
        handler(shared.bridge.clone(), bytes, hints).await
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
            tracing::warn!(
                request = %id,
                kernel = %kernel,
                capability = %route.capability,
                "failed: {why}"
            );
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

//! gpubridge beyond one machine: [`Worker`]s pull batch requests from a NATS JetStream work queue
//! and run them on their local [`gpubridge::GpuBridge`]; a [`ClusterClient`] submits batches and
//! awaits their answers.
//!
//! # How a request travels
//! 1. The client encodes the batch ([`wire`]) and publishes it on
//!    `gpubridge.work.<capability>.<kernel id with dots>` ([`ClusterSettings::subject`]:
//!    `kernels/sum` needing any worker -> `gpubridge.work.any.kernels.sum`, needing wgpu ->
//!    `gpubridge.work.wgpu.kernels.sum`; [`Capability`]) with `Nats-Msg-Id` set to the request
//!    id, so that a repeated publish inside the stream's duplicate window is dropped. A batch
//!    larger than [`ClusterSettings::inline_limit`] is put in the object store first and the
//!    message carries only its name.
//! 2. The stream (`GPUBRIDGE_WORK`) keeps work-queue retention: a message leaves it when a worker
//!    acknowledges it. There is one durable pull consumer per (capability, kernel)
//!    ([`ClusterSettings::consumer_name`]: `gpubridge-workers-any-kernels__sum`), filtering
//!    exactly that subject and shared by every worker that serves it: a worker binds only the
//!    consumers of kernels it serves and capabilities its backends satisfy, so it never pulls a
//!    request it cannot run. A request no live worker serves waits in the stream until one starts.
//!    Workers ask for only as many messages as they have free slots (`max_in_flight`), taking
//!    their consumers in turn. An idle worker holds no pull request open: the client rings an
//!    empty core-NATS doorbell on `gpubridge.ready.<capability>.<kernel>`
//!    ([`ClusterSettings::doorbell`]) after each request, and workers also sweep their consumers
//!    every [`WorkerConfig::fetch_wait`].
//! 3. A worker runs the batch (pinned to the backend the capability names, or on its fallback
//!    chain for `any`), writes the answer to the results key-value bucket under the request id
//!    with a create-only write (the first answer wins: a redelivered request can never give the
//!    caller a second, different answer), then acknowledges. During a long batch it sends
//!    progress acknowledgements every [`WorkerConfig::progress_interval`]. A worker that dies
//!    leaves its messages unacknowledged; after `ack_wait` the server delivers them to another.
//! 4. The client watches the results bucket and reads the answer under its request id.
//!
//! Workers announce themselves ([`Announcement`]: name, kernels, capabilities, devices, backends,
//! capacity) in the `GPUBRIDGE_WORKERS` bucket and on `gpubridge.workers.announce`.

#![warn(missing_docs)]

// The core library under the facade's name: the types are the facade's own re-exports.
extern crate gpubridge_core as gpubridge;

mod capability;
mod client;
pub mod wire;
mod worker;

use std::fmt::Display;
use std::time::Duration;

use async_nats::jetstream;

pub use capability::{Capability, ParseCapabilityError};
pub use client::{ClusterClient, ClusterKernel, ClusterStats, QueueStats, Submit};
pub use worker::{Announcement, Worker, WorkerConfig};

/// Header carrying the request id (also sent as `Nats-Msg-Id`).
pub const HEADER_REQUEST: &str = "Gpubridge-Request";
/// Header carrying the kernel id.
pub const HEADER_KERNEL: &str = "Gpubridge-Kernel";
/// Header carrying the capability the request requires (also the subject's token after the
/// prefix).
pub const HEADER_CAPABILITY: &str = "Gpubridge-Capability";
/// Header carrying the object-store name of a batch sent by reference.
pub const HEADER_OBJECT: &str = "Gpubridge-Object";
/// Header carrying the request's priority on the worker's bridge (`low`, `normal`, `high`;
/// absent: normal).
pub const HEADER_PRIORITY: &str = "Gpubridge-Priority";
/// Header carrying the tenant the worker's bridge charges the request to (absent: none).
pub const HEADER_TENANT: &str = "Gpubridge-Tenant";

/// Whether `tenant` can travel in a header: 1 to 256 bytes, no control characters (a CR or LF
/// would end the header and start another).
pub(crate) fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty() && tenant.len() <= 256 && !tenant.chars().any(char::is_control)
}

/// Subject on which workers announce themselves.
pub const ANNOUNCE_SUBJECT: &str = "gpubridge.workers.announce";

/// Errors of the cluster client and worker.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server could not be reached.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// A JetStream operation (stream, consumer, bucket, publish) failed.
    #[error("{what}: {message}")]
    JetStream {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        message: String,
    },
    /// Malformed bytes in a request or an answer.
    #[error("malformed payload: {0}")]
    Wire(#[from] wire::WireError),
    /// No answer came in time. The request stays in the work stream (until `retention`): a
    /// worker that serves its kernel and capability answers it when one is running, and
    /// submitting the same request id again awaits that answer.
    #[error(
        "request {id} ({kernel}, requires {capability}): no answer within {timeout:?} \
         (is a worker serving {capability} {kernel} running?)"
    )]
    Timeout {
        /// The request id.
        id: String,
        /// The kernel id.
        kernel: String,
        /// What the request requires.
        capability: Capability,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The worker answered with an error (invalid input, a kernel failure on every backend).
    #[error("request {id} failed on a worker: {message}")]
    Remote {
        /// The request id.
        id: String,
        /// The worker's error message.
        message: String,
    },
    /// A request id that is not a valid key (letters, digits, `-`, `_`, `=`; at most 200 bytes).
    #[error("invalid request id {0:?}: use letters, digits, '-', '_' or '=' (at most 200 bytes)")]
    InvalidRequestId(String),
    /// A tenant name that cannot travel in a header: empty, longer than 256 bytes, or holding a
    /// control character.
    #[error("invalid tenant {0:?}: use 1 to 256 bytes without control characters")]
    InvalidTenant(String),
    /// A kernel id that cannot be part of a subject: use `/`-separated non-empty segments of
    /// letters, digits, `-` and `_`.
    #[error(
        "kernel id {0:?} cannot travel: use '/'-separated non-empty segments of letters, digits, \
         '-' and '_'"
    )]
    InvalidKernelId(String),
    /// A worker was asked to serve a kernel it has no handler for, or that its bridge has not
    /// registered.
    #[error("this worker cannot serve kernel {kernel:?} (it serves {served:?})")]
    KernelNotServed {
        /// The kernel asked for.
        kernel: String,
        /// The kernels it can serve.
        served: Vec<String>,
    },
    /// A worker with nothing to serve: no kernel left after the restriction, or no backend.
    #[error("worker {0} has no kernel or no capability to serve")]
    NothingToServe(String),
    /// Another consumer on the work stream takes requests a worker's consumer would (a
    /// work-queue stream gives each message to one consumer): such as the single
    /// `gpubridge-workers` consumer, filtering the whole prefix, of releases before subjects
    /// per capability. Delete it (`nats consumer rm`) once its requests are answered.
    #[error(
        "consumer {consumer:?} on the work stream filters {filter:?}, overlapping this worker's \
         {subject:?}: delete it (nats consumer rm) once the requests it holds are answered"
    )]
    OverlappingConsumer {
        /// The other consumer.
        consumer: String,
        /// Its filter subject (empty: the whole stream).
        filter: String,
        /// The worker's subject it overlaps.
        subject: String,
    },
    /// The local bridge failed.
    #[error(transparent)]
    Bridge(#[from] gpubridge::Error),
    /// Reading a payload from the object store failed.
    #[error("reading object {name}: {source}")]
    Object {
        /// The object's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// `map_err` helper for the many error types of async-nats.
pub(crate) fn js<E: Display>(what: &'static str) -> impl FnOnce(E) -> ClusterError {
    move |e| ClusterError::JetStream {
        what,
        message: e.to_string(),
    }
}

/// Names and limits shared by workers and clients; both sides create what is missing.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The work-queue stream.
    pub stream: String,
    /// Subject prefix of requests; the capability and the kernel id (with `/` replaced by `.`)
    /// follow ([`ClusterSettings::subject`]).
    pub subject_prefix: String,
    /// Subject prefix of doorbells: after a request is stored, the client publishes an empty
    /// core-NATS message on `<doorbell_prefix>.<capability>.<kernel>` so that idle workers
    /// serving it fetch at once instead of at their next sweep. Outside the work stream's
    /// subjects.
    pub doorbell_prefix: String,
    /// Prefix of the workers' durable pull consumers, one per (capability, kernel)
    /// ([`ClusterSettings::consumer_name`]).
    pub consumer_prefix: String,
    /// Key-value bucket of answers, keyed by request id.
    pub results_bucket: String,
    /// Object store of payloads sent by reference.
    pub objects_bucket: String,
    /// Key-value bucket of worker announcements.
    pub workers_bucket: String,
    /// How long a delivered request may stay unacknowledged (progress acknowledgements extend
    /// it) before the server delivers it to another worker.
    pub ack_wait: Duration,
    /// Deliveries of one request at most.
    pub max_deliver: i64,
    /// Redelivery delays (empty: `ack_wait` each time); must be shorter than `max_deliver`.
    pub backoff: Vec<Duration>,
    /// Batches and answers larger than this travel through the object store.
    pub inline_limit: usize,
    /// How long answers, requests and payloads are kept.
    pub retention: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the stream.
    pub duplicate_window: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            stream: "GPUBRIDGE_WORK".to_owned(),
            subject_prefix: "gpubridge.work".to_owned(),
            doorbell_prefix: "gpubridge.ready".to_owned(),
            consumer_prefix: "gpubridge-workers".to_owned(),
            results_bucket: "GPUBRIDGE_RESULTS".to_owned(),
            objects_bucket: "GPUBRIDGE_PAYLOADS".to_owned(),
            workers_bucket: "GPUBRIDGE_WORKERS".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: Vec::new(),
            inline_limit: 512 * 1024,
            retention: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl ClusterSettings {
    /// The subject of kernel `kernel_id`'s requests that require `capability`:
    /// `<subject_prefix>.<capability>.<kernel id with '/' as '.'>`.
    ///
    /// ```
    /// use gpubridge_cluster::{Capability, ClusterSettings};
    /// let s = ClusterSettings::default();
    /// assert_eq!(
    ///     s.subject(Capability::Wgpu, "kernels/vector/add"),
    ///     "gpubridge.work.wgpu.kernels.vector.add"
    /// );
    /// ```
    pub fn subject(&self, capability: Capability, kernel_id: &str) -> String {
        format!(
            "{}.{capability}.{}",
            self.subject_prefix,
            kernel_id.replace('/', ".")
        )
    }

    /// The doorbell subject of kernel `kernel_id`'s requests that require `capability`:
    /// `<doorbell_prefix>.<capability>.<kernel id with '/' as '.'>`.
    pub fn doorbell(&self, capability: Capability, kernel_id: &str) -> String {
        format!(
            "{}.{capability}.{}",
            self.doorbell_prefix,
            kernel_id.replace('/', ".")
        )
    }

    /// The durable consumer every worker serving kernel `kernel_id` under `capability` shares:
    /// `<consumer_prefix>-<capability>-<kernel id>`, the kernel id written with `/` as `__` and
    /// `_` as `_u` (consumer names may hold neither `.` nor `/`; the encoding keeps distinct ids
    /// distinct).
    ///
    /// ```
    /// use gpubridge_cluster::{Capability, ClusterSettings};
    /// let s = ClusterSettings::default();
    /// assert_eq!(
    ///     s.consumer_name(Capability::Any, "kernels/sum"),
    ///     "gpubridge-workers-any-kernels__sum"
    /// );
    /// ```
    pub fn consumer_name(&self, capability: Capability, kernel_id: &str) -> String {
        let mut name = format!("{}-{capability}-", self.consumer_prefix);
        for c in kernel_id.chars() {
            match c {
                '/' => name.push_str("__"),
                '_' => name.push_str("_u"),
                c => name.push(c),
            }
        }
        name
    }
}

/// Whether a consumer filtering `filter` (empty: everything) would take messages on `subject`
/// (no wildcards).
pub(crate) fn filter_matches(filter: &str, subject: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether `id` can be part of a subject and a consumer name: `/`-separated non-empty segments
/// of ASCII letters, digits, `-` and `_`.
pub(crate) fn valid_kernel_id(id: &str) -> bool {
    id.split('/').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

/// The JetStream objects both sides use.
pub(crate) struct Infra {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: jetstream::stream::Stream,
    pub(crate) results: jetstream::kv::Store,
    pub(crate) objects: jetstream::object_store::ObjectStore,
    pub(crate) workers: jetstream::kv::Store,
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<jetstream::kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The stream `create_key_value` would make, created directly: `create_key_value` first
    // queries the account, whose reply from servers before 2.10 (Debian's 2.9) this client
    // cannot parse.
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => js
            .get_key_value(name)
            .await
            .map_err(crate::js("opening a key-value bucket")),
        // Another process may have created it in the meantime.
        Err(e) => js
            .get_key_value(name)
            .await
            .map_err(|_| crate::js("creating a key-value bucket")(e)),
    }
}

impl Infra {
    pub(crate) async fn open(
        client: async_nats::Client,
        s: &ClusterSettings,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: s.stream.clone(),
                subjects: vec![format!("{}.>", s.subject_prefix)],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                max_age: s.retention,
                duplicate_window: s.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(crate::js("opening the work stream"))?;
        let results = bucket(&js, &s.results_bucket, s.retention).await?;
        let workers = bucket(&js, &s.workers_bucket, Duration::from_secs(60)).await?;
        let objects = match js.get_object_store(&s.objects_bucket).await {
            Ok(o) => o,
            Err(_) => {
                let config = jetstream::object_store::Config {
                    bucket: s.objects_bucket.clone(),
                    max_age: s.retention,
                    ..Default::default()
                };
                match js.create_object_store(config).await {
                    Ok(o) => o,
                    Err(e) => js
                        .get_object_store(&s.objects_bucket)
                        .await
                        .map_err(|_| crate::js("creating the object store")(e))?,
                }
            }
        };
        Ok(Self {
            js,
            stream,
            results,
            objects,
            workers,
        })
    }
}

pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, ClusterError> {
    async_nats::connect(url)
        .await
        .map_err(|source| ClusterError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Reads a whole object.
pub(crate) async fn read_object(
    objects: &jetstream::object_store::ObjectStore,
    name: &str,
) -> Result<Vec<u8>, ClusterError> {
    use tokio::io::AsyncReadExt;
    let mut object = objects.get(name).await.map_err(js("opening an object"))?;
    let mut out = Vec::new();
    object
        .read_to_end(&mut out)
        .await
        .map_err(|source| ClusterError::Object {
            name: name.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Writes a whole object.
pub(crate) async fn write_object(
    objects: &jetstream::object_store::ObjectStore,
    name: &str,
    bytes: &[u8],
) -> Result<(), ClusterError> {
    let mut reader = bytes;
    objects
        .put(name, &mut reader)
        .await
        .map_err(js("writing an object"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_consumer_names() {
        let s = ClusterSettings::default();
        assert_eq!(
            s.subject(Capability::Any, "kernels/sum"),
            "gpubridge.work.any.kernels.sum"
        );
        assert_eq!(
            s.subject(Capability::Cuda, "kernels/vector/add"),
            "gpubridge.work.cuda.kernels.vector.add"
        );
        assert_eq!(
            s.consumer_name(Capability::Gpu, "kernels/vector/add"),
            "gpubridge-workers-gpu-kernels__vector__add"
        );
        // Distinct ids, distinct names.
        assert_ne!(
            s.consumer_name(Capability::Any, "a/b"),
            s.consumer_name(Capability::Any, "a__b")
        );
        assert_ne!(
            s.consumer_name(Capability::Any, "a_/b"),
            s.consumer_name(Capability::Any, "a/_b")
        );
        assert!(filter_matches("", "gpubridge.work.any.kernels.sum"));
        assert!(filter_matches(
            "gpubridge.work.>",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(filter_matches(
            "gpubridge.work.*.kernels.sum",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(filter_matches(
            "gpubridge.work.any.kernels.sum",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(!filter_matches(
            "gpubridge.work.cpu.kernels.sum",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(!filter_matches(
            "gpubridge.work.any.kernels",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(!filter_matches(
            "gpubridge.work.any.kernels.sum.x",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(!filter_matches(
            "gpubridge.work.any.kernels.sum.>",
            "gpubridge.work.any.kernels.sum"
        ));
        assert!(valid_kernel_id("kernels/vector/add"));
        for p in gpubridge::Priority::ALL {
            assert_eq!(p.name().parse::<gpubridge::Priority>(), Ok(p));
        }
        assert!("urgent".parse::<gpubridge::Priority>().is_err());
        assert!(valid_tenant("acme-eu_1"));
        assert!(valid_tenant("Ünïcode tenant"));
        for bad in [
            "",
            "x\r\nGpubridge-Object: y",
            "a\nb",
            "tab\there",
            &"t".repeat(257),
        ] {
            assert!(!valid_tenant(bad), "{bad:?}");
        }
        assert!("".parse::<gpubridge::Priority>().is_err());
        assert!(valid_kernel_id("my_kernel-2"));
        for bad in ["", "a//b", "/a", "a/", "a.b", "a*", "a>", "a b"] {
            assert!(!valid_kernel_id(bad), "{bad:?}");
        }
    }
}

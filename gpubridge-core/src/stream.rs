//! The stream grain: a sender and a receiver of one kernel's items, batched underneath.
//!
//! [`GpuBridge::stream`] starts a stream (the original's `StartProcessingAsync`): items sent on
//! its [`StreamSender`] go through the kernel's dynamic batcher, so they share batches with each
//! other and with every other caller's single requests, and their outputs come out of its
//! [`StreamReceiver`] in the order the items were sent. At most `capacity` items are in flight
//! (sent and not yet received): [`StreamSender::send`] waits for room, which is the stream's
//! backpressure, so a fast producer cannot outrun the device or a slow consumer. Dropping or
//! [closing](StreamSender::close) the sender stops the stream (`StopProcessingAsync`): the
//! receiver yields what is still in flight, then `None`. Dropping the receiver cancels what
//! is in flight and makes further sends fail with [`Error::Cancelled`].
//!
//! ```no_run
//! use futures::StreamExt;
//! use gpubridge_core::{kernels::Sum, ExecutionHints, GpuBridge};
//! # async fn demo(bridge: GpuBridge) -> gpubridge_core::Result<()> {
//! let (tx, mut rx) = bridge.stream::<Sum>(ExecutionHints::default(), 1024)?;
//! let producer = tokio::spawn(async move {
//!     for i in 0..10_000 {
//!         tx.send(vec![i as f32; 100]).await?;
//!     }
//!     Ok::<_, gpubridge_core::Error>(())
//! });
//! let mut n = 0;
//! while let Some(sum) = rx.next().await {
//!     assert_eq!(sum?, n as f32 * 100.0);
//!     n += 1;
//! }
//! producer.await.expect("the producer panicked")?;
//! # Ok(()) }
//! ```

use std::future::Future as _;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::batcher::SingleResult;
use crate::bridge::GpuBridge;
use crate::error::{Error, Result};
use crate::hints::ExecutionHints;
use crate::kernel::Kernel;
use crate::tenants::TenantGuard;

/// One item in flight: its place in the stream (a permit) and where its answer comes.
struct InFlight<O> {
    _permit: OwnedSemaphorePermit,
    /// The tenant's hold on its allowances, given back with the item's output.
    _tenant: Option<TenantGuard>,
    answer: oneshot::Receiver<Result<SingleResult<O>>>,
}

struct Shared {
    /// Set when the receiver is gone: sends fail from then on.
    receiver_gone: AtomicBool,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// The sending half of a stream of kernel `K`'s items (see the [module documentation]
/// (crate::stream)). Clone it to send from several tasks: items from one sender keep their
/// order; items from different senders interleave in the order their sends completed.
pub struct StreamSender<K: Kernel> {
    bridge: GpuBridge,
    hints: ExecutionHints,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<InFlight<K::Output>>,
    _kernel: PhantomData<fn() -> K>,
}

impl<K: Kernel> Clone for StreamSender<K> {
    fn clone(&self) -> Self {
        Self {
            bridge: self.bridge.clone(),
            hints: self.hints.clone(),
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            _kernel: PhantomData,
        }
    }
}

/// The receiving half of a stream: the outputs in the order their items were sent. It is a
/// [`futures::Stream`]; [`StreamReceiver::recv`] is the same without the trait.
pub struct StreamReceiver<K: Kernel> {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<InFlight<K::Output>>,
    current: Option<InFlight<K::Output>>,
}

impl GpuBridge {
    /// Starts a stream of kernel `K`'s items with at most `capacity` items in flight: see the
    /// [module documentation](crate::stream). `hints` apply to every item (placement, priority,
    /// a per-item timeout, `persistent` for resident mode).
    ///
    /// # Errors
    /// [`Error::UnknownKernel`] or [`Error::KernelTypeMismatch`]; [`Error::InvalidInput`] when
    /// `capacity` is zero.
    pub fn stream<K: Kernel>(
        &self,
        hints: ExecutionHints,
        capacity: usize,
    ) -> Result<(StreamSender<K>, StreamReceiver<K>)> {
        if capacity == 0 {
            return Err(Error::InvalidInput {
                kernel: K::ID.to_owned(),
                index: None,
                reason: "a stream needs room for at least one item in flight".to_owned(),
            });
        }
        // Resolve the kernel (and start its batcher) now, so that a bad id fails here.
        self.single_queue::<K>()?;
        let shared = Arc::new(Shared {
            receiver_gone: AtomicBool::new(false),
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            StreamSender {
                bridge: self.clone(),
                hints,
                shared: shared.clone(),
                tx,
                _kernel: PhantomData,
            },
            StreamReceiver {
                shared,
                rx,
                current: None,
            },
        ))
    }
}

impl<K: Kernel> StreamSender<K> {
    /// Sends one item, waiting while `capacity` items are in flight.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad item (it is not in the stream; the stream goes on);
    /// [`Error::Cancelled`] once the receiver is gone or the bridge is shutting down;
    /// [`Error::QueueFull`] when the kernel's batcher queue, shared with other callers, is full.
    pub async fn send(&self, input: K::Input) -> Result<()> {
        let gone = || Error::Cancelled {
            reason: "the stream's receiver is gone".to_owned(),
        };
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(gone());
        }
        let permit = self
            .shared
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        self.enqueue(permit, input)
    }

    /// Sends one item if there is room now.
    ///
    /// # Errors
    /// As [`StreamSender::send`], and [`Error::QueueFull`] (naming the stream's capacity) when
    /// `capacity` items are in flight.
    pub fn try_send(&self, input: K::Input) -> Result<()> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(Error::Cancelled {
                reason: "the stream's receiver is gone".to_owned(),
            });
        }
        let permit =
            self.shared
                .room
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::QueueFull {
                    kernel: K::ID.to_owned(),
                    capacity: self.shared.capacity,
                })?;
        self.enqueue(permit, input)
    }

    fn enqueue(&self, permit: OwnedSemaphorePermit, input: K::Input) -> Result<()> {
        let (answer, tenant) = self.bridge.submit_single::<K>(input, self.hints.clone())?;
        self.tx
            .send(InFlight {
                _permit: permit,
                _tenant: tenant,
                answer,
            })
            .map_err(|_| Error::Cancelled {
                reason: "the stream's receiver is gone".to_owned(),
            })
    }

    /// Items in flight: sent and not yet received.
    pub fn in_flight(&self) -> usize {
        self.shared.capacity - self.shared.room.available_permits()
    }

    /// Stops the stream from this sender: once every clone is closed or dropped, the receiver
    /// yields what is still in flight, then `None`.
    pub fn close(self) {}
}

impl<K: Kernel> StreamReceiver<K> {
    /// The next output, in send order; `None` once every sender is gone and nothing is in
    /// flight. An item's error (its batch failed, its timeout passed) comes in its place, and
    /// the stream goes on.
    pub async fn recv(&mut self) -> Option<Result<K::Output>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<K::Output>>> {
        loop {
            if let Some(item) = &mut self.current {
                let answer = match Pin::new(&mut item.answer).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(a) => a,
                };
                // The permit goes with the item: room for the next send.
                self.current = None;
                return Poll::Ready(Some(match answer {
                    Ok(Ok(single)) => Ok(single.output),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::Cancelled {
                        reason: "the batcher stopped".to_owned(),
                    }),
                }));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => self.current = Some(item),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Stops the stream from this end: sends fail with [`Error::Cancelled`] from now on, and
    /// the items in flight are cancelled (those already in a running batch still run).
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.room.close();
        self.rx.close();
    }
}

impl<K: Kernel> Drop for StreamReceiver<K> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<K: Kernel> futures::Stream for StreamReceiver<K> {
    type Item = Result<K::Output>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_item(cx)
    }
}

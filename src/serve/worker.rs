//! The engine thread: one [`Batch`] of `--parallel` slots that every
//! request shares (continuous batching: a request starts as soon as a slot
//! is free, and each decode step advances every request in flight).
//!
//! Requests wait in a bounded queue. Each one carries an unbounded channel
//! for its events, so a slow reader never blocks the decode loop, and a
//! [`CancelHandle`] its HTTP side cancels when the client goes away: the
//! slot stops within one decode step and takes the next request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::mpsc::UnboundedSender;

use reckon::engine::{BatchConfig, Engine, Job, Sample};
use reckon::error::ReckonError;
use reckon::events::{CancelHandle, Event, SolveResult};

use super::api::{ApiError, Solve};

/// What a request hears from the engine.
#[derive(Debug)]
pub enum Msg {
    /// A streamed event.
    Event(Event),
    /// The end: the result, or why it failed.
    Done(Result<SolveResult, ReckonError>),
}

/// A request on its way to a slot.
pub struct Request {
    /// What to solve.
    pub solve: Solve,
    /// Where its events go.
    pub events: UnboundedSender<Msg>,
    /// Cancelled when the client goes away.
    pub cancel: CancelHandle,
}

/// Counters the HTTP side reads (`/health`).
#[derive(Debug, Default)]
pub struct Load {
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Slots with a request.
    pub busy: AtomicUsize,
    /// Requests served since start.
    pub served: AtomicUsize,
}

/// The handle the HTTP side submits through.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::SyncSender<Request>,
    /// Live counters.
    pub load: Arc<Load>,
    /// Slots in the batch.
    pub slots: u32,
    /// Context cells per slot.
    pub slot_context: u32,
}

impl Worker {
    /// Start the engine thread with a batch of `config.slots` sequences and a
    /// queue of at most `max_queue` waiting requests. Fails (before any
    /// request) if the batch does not fit the context.
    pub fn start(engine: Engine, config: BatchConfig, max_queue: usize) -> Result<Self, ReckonError> {
        // The queue is bounded by `Load::queued` (checked in `submit`); the
        // channel itself only needs room for that many.
        let (tx, rx) = mpsc::sync_channel::<Request>(max_queue.max(1));
        let load = Arc::new(Load::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_load = load.clone();
        std::thread::Builder::new()
            .name("reckon-engine".into())
            .spawn(move || run(engine, config, rx, thread_load, ready_tx))
            .map_err(|e| ReckonError::io("starting the engine thread", e))?;
        let slot_context = ready_rx.recv().map_err(|_| ReckonError::Internal("the engine thread ended while starting".into()))??;
        Ok(Worker { tx, load, slots: config.slots, slot_context })
    }

    /// Queue a request, or refuse it: 503 when the queue is full or the
    /// engine is gone.
    pub fn submit(&self, request: Request, max_queue: usize) -> Result<(), ApiError> {
        let waiting = self.load.queued.fetch_add(1, Ordering::SeqCst);
        if waiting >= max_queue {
            self.load.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                503,
                "server_error",
                Some("queue_full"),
                format!("all {} slots are busy and {max_queue} requests are waiting; try again shortly", self.slots),
            ));
        }
        self.tx.try_send(request).map_err(|e| {
            self.load.queued.fetch_sub(1, Ordering::SeqCst);
            match e {
                mpsc::TrySendError::Full(_) => ApiError::new(503, "server_error", Some("queue_full"), "the queue is full; try again shortly"),
                mpsc::TrySendError::Disconnected(_) => ApiError::new(503, "server_error", Some("engine_stopped"), "the engine has stopped"),
            }
        })
    }
}

fn run(
    engine: Engine,
    config: BatchConfig,
    rx: mpsc::Receiver<Request>,
    load: Arc<Load>,
    ready: mpsc::Sender<Result<u32, ReckonError>>,
) {
    let mut batch = match engine.batch(config) {
        Ok(b) => {
            let _ = ready.send(Ok(b.config().slot_context));
            b
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut routes: std::collections::HashMap<u64, UnboundedSender<Msg>> = Default::default();
    let mut next_tag = 0u64;
    loop {
        // Fill free slots; block for the next request only when idle.
        while batch.free_slots() > 0 {
            let request = if batch.is_idle() {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return, // the server is gone
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            };
            load.queued.fetch_sub(1, Ordering::SeqCst);
            if request.cancel.is_cancelled() || request.events.is_closed() {
                continue; // the client left while it waited
            }
            let tag = next_tag;
            next_tag += 1;
            let events = request.events.clone();
            let listener = move |e: &Event| events.send(Msg::Event(e.clone())).is_ok();
            let sample = Sample { tag, seed: None, listener: Box::new(listener), cancel: Some(request.cancel.clone()) };
            let job = Job { question: request.solve.question, options: request.solve.options, samples: vec![sample] };
            match batch.submit(job) {
                Ok(()) => {
                    load.busy.fetch_add(1, Ordering::SeqCst);
                    routes.insert(tag, request.events);
                }
                Err(e) => {
                    let _ = request.events.send(Msg::Done(Err(e)));
                }
            }
        }
        if batch.is_idle() {
            continue;
        }
        for finished in batch.step() {
            load.busy.fetch_sub(1, Ordering::SeqCst);
            load.served.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = routes.remove(&finished.tag) {
                let _ = tx.send(Msg::Done(finished.result));
            }
        }
    }
}

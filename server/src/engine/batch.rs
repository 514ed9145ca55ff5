//! The per-office queue behind Reserve (group commit). Each office with Reserves in flight has
//! one worker task: it takes what is queued (up to the batch size) and decides it in one
//! transaction, so concurrent Reserves of one office never fight over its row lock. A worker
//! idle for [`IDLE_EXIT`] ends; the next Reserve starts a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::reserve::Job;
use super::{Engine, EngineError, EngineResult};

/// Default for the most Reserves decided in one transaction (`--reserve-batch-size`).
pub const DEFAULT_MAX_BATCH: usize = 128;
/// Most Reserves waiting per office; a caller past it waits for room (back-pressure), bounded
/// by its own deadline.
pub const QUEUE_CAPACITY: usize = 4096;
/// How long an office's worker waits for work before it ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);
/// How long an office's worker waits before it tries again to fold the Reserve journal after a
/// fold failed.
pub const FOLD_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The offices' queues.
pub struct Batcher {
    queues: Mutex<HashMap<String, mpsc::Sender<Job>>>,
    /// Most Reserves decided in one transaction.
    max_batch: usize,
    /// The engine the workers run on (set once the engine is in its `Arc`).
    engine: Mutex<Weak<Engine>>,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(DEFAULT_MAX_BATCH)
    }
}

impl Batcher {
    /// Queues that decide at most `max_batch` Reserves per transaction (at least 1).
    pub fn new(max_batch: usize) -> Self {
        Batcher {
            queues: Mutex::new(HashMap::new()),
            max_batch: max_batch.max(1),
            engine: Mutex::new(Weak::new()),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Job>>> {
        // Only whole inserts and removes happen under this lock: a poisoned map is still sound.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the workers reach the engine; called once the engine is shared.
    pub fn attach(&self, engine: &Arc<Engine>) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(engine);
    }

    /// Queues a Reserve for its office, starting the office's worker if none runs.
    pub(crate) async fn submit(&self, engine: &Engine, mut job: Job) -> EngineResult<()> {
        let Some(shared) = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
        else {
            // No shared engine (not attached): decide this Reserve alone, inline. Boxed: a
            // batch's future is kilobytes, and every Reserve's future would carry room for it
            // (and copy it when the call's future is boxed) although a server never comes here.
            let office = job.cmd.office_id.clone();
            Box::pin(async {
                let decided = engine.run_batch(&office, vec![job], TopUp::none()).await;
                engine.answer_batch(decided).await;
            })
            .await;
            return Ok(());
        };
        // At most two tries: the first may hit a worker that just ended.
        for _ in 0..2 {
            let sender = {
                let mut queues = self.queues();
                queues
                    .entry(job.cmd.office_id.clone())
                    .or_insert_with(|| spawn_worker(&shared, job.cmd.office_id.clone()))
                    .clone()
            };
            match sender.send(job).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(returned)) => {
                    job = returned;
                    let mut queues = self.queues();
                    if queues
                        .get(&job.cmd.office_id)
                        .is_some_and(|s| s.same_channel(&sender))
                    {
                        queues.remove(&job.cmd.office_id);
                    }
                }
            }
        }
        Err(EngineError::Internal(
            "no reservation worker accepted the request".into(),
        ))
    }
}

fn spawn_worker(engine: &Arc<Engine>, office_id: String) -> mpsc::Sender<Job> {
    let (sender, mut receiver) = mpsc::channel::<Job>(QUEUE_CAPACITY);
    let engine = Arc::clone(engine);
    let own = sender.clone();
    tokio::spawn(async move {
        loop {
            // While the Reserve journal (SQLite) holds rows, a pause of this office's Reserves
            // is the time to fold them into their tables, a chunk at a time, so that Reserves
            // arriving meanwhile wait for one chunk at most.
            let journal_pending = engine.store.journal_has_rows();
            let pause = engine.store.journal_fold_after_pause();
            let wait = if journal_pending { pause } else { IDLE_EXIT };
            let first = match tokio::time::timeout(wait, receiver.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(_) if journal_pending => {
                    // Chunk after chunk while no Reserve of this office waits; the write gate
                    // is fair, so another office's batch goes between two chunks.
                    loop {
                        match engine.store.fold_journal_chunk().await {
                            Ok(true) => break,
                            Ok(false) if receiver.is_empty() => {}
                            Ok(false) => break,
                            Err(err) => {
                                // Locked by another program, or a row that cannot be folded
                                // (the error names it): try again later, not in a tight loop.
                                tracing::warn!(error = %err, "cannot fold the Reserve journal now; reads fold it before they read");
                                tokio::time::sleep(FOLD_RETRY_AFTER).await;
                                break;
                            }
                        }
                    }
                    continue;
                }
                Err(_) => {
                    // Idle: leave, unless work arrived while we decided to.
                    let leaving = {
                        let mut queues = engine.batcher.queues();
                        let idle = receiver.is_empty();
                        if idle && queues.get(&office_id).is_some_and(|s| s.same_channel(&own)) {
                            queues.remove(&office_id);
                        }
                        idle
                    };
                    if leaving {
                        receiver.close();
                        // Anything that slipped in before the close is still answered.
                        let mut rest = Vec::new();
                        drain_into(&mut receiver, &mut rest, usize::MAX);
                        if !rest.is_empty() {
                            let decided = engine.run_batch(&office_id, rest, TopUp::none()).await;
                            engine.answer_batch(decided).await;
                        }
                        break;
                    }
                    continue;
                }
            };
            // While the last batch's fsync runs, the next one grows (see `store::durability`).
            engine.store.settled().await;
            // The fsync that just ended handed out the answers it made durable, and their
            // calls are ready to run; the batch below holds this thread for a few hundred
            // microseconds. Let what is ready run first (without this yield the ratio to
            // Health/Check was lower, or no higher, in every comparison: BENCHMARKS.md).
            tokio::task::yield_now().await;
            let mut top_up = TopUp::from(&mut receiver, engine.batcher.max_batch);
            let mut jobs = vec![first];
            top_up.take(&mut jobs);
            // Reserves that arrive while the batch waits for its office's row lock join it once
            // the lock is held (the same `TopUp`, again).
            let decided = engine.run_batch(&office_id, jobs, top_up).await;
            // Answered once durable, while this worker decides the next batch.
            engine.answer_when_durable(decided);
        }
    });
    sender
}

/// Where a batch takes more of its office's queued Reserves once it holds the office's row lock,
/// up to the batch size. On PostgreSQL a batch can wait milliseconds for the lock while another
/// replica's batch holds it; whatever was queued meanwhile is decided in this transaction, not
/// one lock turn later, so the lock's turns carry more Reserves each.
pub(crate) struct TopUp<'a> {
    receiver: Option<&'a mut mpsc::Receiver<Job>>,
    max_batch: usize,
}

impl<'a> TopUp<'a> {
    /// No queue to take from (a batch of fixed jobs).
    pub(crate) fn none() -> TopUp<'static> {
        TopUp {
            receiver: None,
            max_batch: 0,
        }
    }

    /// The office's queue, for batches of at most `max_batch`.
    fn from(receiver: &'a mut mpsc::Receiver<Job>, max_batch: usize) -> TopUp<'a> {
        TopUp {
            receiver: Some(receiver),
            max_batch,
        }
    }

    /// Adds what is queued to `jobs`, up to the batch size; how many were added.
    pub(crate) fn take(&mut self, jobs: &mut Vec<Job>) -> usize {
        let Some(receiver) = self.receiver.as_deref_mut() else {
            return 0;
        };
        let before = jobs.len();
        drain_into(receiver, jobs, self.max_batch.saturating_sub(before));
        jobs.len() - before
    }
}

/// Moves up to `max` queued Reserves into `jobs`, which grows once for what is queued (a batch
/// is kilobytes: growing it a push at a time reallocated it four or five times).
fn drain_into(receiver: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max: usize) {
    jobs.reserve(receiver.len().min(max));
    for _ in 0..max {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

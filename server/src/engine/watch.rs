//! Live quota snapshots for WatchQuota.
//!
//! One `tokio::sync::watch` channel per watched service point holds only the LATEST snapshot, so
//! a slow watcher skips to the newest one and the server never buffers without bound. A change
//! marks the office's channels dirty; one refresher task per channel re-reads the snapshot, at
//! most once per refresh interval (`--watch-refresh-ms`, [`DEFAULT_REFRESH_MS`]), so a burst of
//! Reserves costs a handful of reads, not one per Reserve per watcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_proto::v1::QuotaSnapshot;
use tokio::sync::{Notify, watch};

use super::{Engine, EngineError, EngineResult};

/// Default shortest time, in milliseconds, between two refreshes of one channel
/// (`--watch-refresh-ms`): a change after a quiet moment goes out at once, and under a burst a
/// watcher gets at most five snapshots a second, often enough for a counter screen or a queue
/// board. At 20 ms, 1,000 watchers of one office took about 48,000 stream messages a second from
/// the same two cores as the Reserves (BENCHMARKS.md).
pub const DEFAULT_REFRESH_MS: u64 = 200;

type Key = (String, String);
/// The channels, by office and then by service point: a change of an office finds its own
/// channels without looking at any other office's.
type Channels = HashMap<String, HashMap<String, Channel>>;

struct Channel {
    sender: watch::Sender<Option<QuotaSnapshot>>,
    dirty: Arc<Notify>,
}

/// The watched service points and their latest snapshots.
pub struct WatchHub {
    channels: Mutex<Channels>,
    /// Most watched streams at once over all service points (each costs a receiver and, per
    /// service point, one task).
    max_watchers: usize,
    /// Shortest time between two refreshes of one channel.
    refresh: Duration,
}

impl WatchHub {
    /// An empty hub.
    pub fn new(max_watchers: usize, refresh: Duration) -> Self {
        WatchHub {
            channels: Mutex::new(HashMap::new()),
            max_watchers,
            refresh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watchers connected now.
    pub fn watcher_count(&self) -> usize {
        count(&self.lock())
    }

    /// Marks every watched service point of `office_id` as changed.
    pub fn office_changed(&self, office_id: &str) {
        if let Some(points) = self.lock().get(office_id) {
            for channel in points.values() {
                channel.dirty.notify_one();
            }
        }
    }

    /// Marks everything as changed (after a reconnect to the notification channel).
    pub fn all_changed(&self) {
        for channel in self.lock().values().flat_map(HashMap::values) {
            channel.dirty.notify_one();
        }
    }
}

fn count(channels: &Channels) -> usize {
    channels
        .values()
        .flat_map(HashMap::values)
        .map(|c| c.sender.receiver_count())
        .sum()
}

/// How long a watcher refused for the limit is told to wait before it tries again.
pub const WATCHERS_FULL_RETRY: Duration = Duration::from_secs(5);

impl Engine {
    /// Subscribes to a service point's snapshots; the receiver holds the current one at once.
    pub async fn watch_quota(
        self: &Arc<Self>,
        office_id: &str,
        service_point_id: &str,
    ) -> EngineResult<watch::Receiver<Option<QuotaSnapshot>>> {
        let key = (office_id.to_string(), service_point_id.to_string());
        // Refused before any read: a watcher refused at the limit (clients retry every few
        // seconds, thousands at once after a replica restarts) costs no database read. A
        // watcher of a point already watched still reads: its read fails, and its client goes
        // to another replica, when this one's database is out of reach, instead of joining a
        // channel whose refresher cannot read.
        if count(&self.hub.lock()) >= self.hub.max_watchers {
            return Err(self.watchers_full());
        }
        // The first snapshot also proves that the office and service point exist.
        let first = self.get_quota(office_id, service_point_id).await?;
        // Counted and subscribed under one lock, so that concurrent calls cannot pass the limit.
        let mut channels = self.hub.lock();
        if count(&channels) >= self.hub.max_watchers {
            return Err(self.watchers_full());
        }
        let points = channels.entry(key.0.clone()).or_default();
        if let Some(channel) = points.get(&key.1) {
            return Ok(channel.sender.subscribe());
        }
        let (sender, receiver) = watch::channel(Some(first));
        let dirty = Arc::new(Notify::new());
        points.insert(
            key.1.clone(),
            Channel {
                sender: sender.clone(),
                dirty: dirty.clone(),
            },
        );
        drop(channels);
        // A change committed between the first read and the channel's insert found no channel
        // to tell: one more read once the refresher runs covers it.
        dirty.notify_one();
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.refresh_loop(key, sender, dirty).await });
        Ok(receiver)
    }

    /// TOO_MANY_WATCHERS: this server serves its most quota watchers.
    fn watchers_full(&self) -> EngineError {
        EngineError::Exhausted {
            reason: "TOO_MANY_WATCHERS",
            message: format!(
                "this server already serves {} quota watchers; try another replica or later",
                self.hub.max_watchers
            ),
            indonesian: format!(
                "server ini sudah melayani {} pemantau kuota; coba replika lain atau nanti",
                self.hub.max_watchers
            ),
            retry_after: WATCHERS_FULL_RETRY,
        }
    }

    async fn refresh_loop(
        self: Arc<Self>,
        key: Key,
        sender: watch::Sender<Option<QuotaSnapshot>>,
        dirty: Arc<Notify>,
    ) {
        // Reads failed in a row (the database out of reach): logged once, tried again less
        // and less often, up to [`MAX_FAILED_REFRESH_PAUSE`] apart.
        let mut failures: u32 = 0;
        loop {
            // Some figures change with time alone, with no write to tell the hub: the day at
            // local midnight, the non-priority room at the release time, the waiting count as
            // queue reports expire. The snapshot is read again at the next of those moments.
            let due = sender.borrow().as_ref().map(|s| self.next_timed_change(s));
            let timed = async move {
                match due {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = dirty.notified() => {}
                _ = timed => {}
                _ = sender.closed() => {
                    // The last watcher left. A new one may have subscribed since (through the
                    // map, under its lock): then this channel still needs its refresher.
                    let mut channels = self.hub.lock();
                    if sender.receiver_count() > 0 {
                        continue;
                    }
                    if let Some(points) = channels.get_mut(&key.0)
                        && points
                            .get(&key.1)
                            .is_some_and(|c| c.sender.same_channel(&sender))
                    {
                        points.remove(&key.1);
                        if points.is_empty() {
                            channels.remove(&key.0);
                        }
                    }
                    return;
                }
            }
            let mut pause = self.hub.refresh;
            match self.get_quota(&key.0, &key.1).await {
                Ok(snapshot) => {
                    if failures > 0 {
                        tracing::info!(office = %key.0, service_point = %key.1, failures, "a watched quota is read again");
                        failures = 0;
                    }
                    // Sent only when a figure changed (a read that finds the same figures, its
                    // time apart, tells watchers nothing); only a send waits out the interval.
                    let mut snapshot = snapshot;
                    let changed = sender.send_if_modified(|current| {
                        if let Some(c) = current.as_mut()
                            && same_figures(c, &mut snapshot)
                        {
                            // Kept read as of now, without telling watchers: a time boundary
                            // that passed with no change in figures (a priority release on a
                            // closed point) is then behind it, not due again and again.
                            c.as_of = snapshot.as_of.take();
                            return false;
                        }
                        *current = Some(snapshot);
                        true
                    });
                    if !changed {
                        continue;
                    }
                }
                Err(err) => {
                    if failures == 0 {
                        tracing::warn!(office = %key.0, service_point = %key.1, error = %err, "cannot refresh a watched quota; trying again, less often while it fails");
                    }
                    failures = failures.saturating_add(1);
                    pause = failed_refresh_pause(self.hub.refresh, failures);
                    // Not lost: read again after the pause below.
                    dirty.notify_one();
                }
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// How long until `snapshot`'s figures change with time alone: the next of its local
    /// midnight, its priority release time (when after the snapshot was read), and, while
    /// counters report a queue, the moment a report may expire. A moment that passed since the
    /// snapshot was read (during the pause after a send) is due at once. At least
    /// [`MIN_TIMED_REFRESH`], at most [`MAX_TIMED_REFRESH`] (so a clock that moved is caught up
    /// within that).
    fn next_timed_change(&self, snapshot: &QuotaSnapshot) -> Duration {
        let now = self.clock.now_ms();
        let ms = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
        };
        let read_at = ms(&snapshot.as_of).unwrap_or(now).min(now);
        let mut next = [
            ms(&snapshot.next_reset_at),
            ms(&snapshot.priority_release_at),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > read_at)
        .map(|t| t.saturating_sub(now).max(0))
        .min()
        .unwrap_or(i64::MAX);
        if snapshot.waiting > 0 {
            next = next.min(super::QUEUE_REPORT_TTL_MS / 4);
        }
        Duration::from_millis(next.clamp(
            MIN_TIMED_REFRESH.as_millis() as i64,
            MAX_TIMED_REFRESH.as_millis() as i64,
        ) as u64)
    }
}

/// Whether two snapshots show the same figures (their read times apart). Compared with their
/// `as_of` set aside for the moment, so neither is copied.
fn same_figures(a: &mut QuotaSnapshot, b: &mut QuotaSnapshot) -> bool {
    let (a_read, b_read) = (a.as_of.take(), b.as_of.take());
    let same = a == b;
    (a.as_of, b.as_of) = (a_read, b_read);
    same
}

/// The longest pause between two reads of a watched quota while they fail.
const MAX_FAILED_REFRESH_PAUSE: Duration = Duration::from_secs(5);

/// The pause after the `failures`-th read in a row that failed: the refresh interval, doubled
/// with each failure, at most [`MAX_FAILED_REFRESH_PAUSE`] (or the interval, if longer).
fn failed_refresh_pause(refresh: Duration, failures: u32) -> Duration {
    let doubled = refresh.saturating_mul(1 << failures.min(10));
    doubled.min(MAX_FAILED_REFRESH_PAUSE.max(refresh))
}

/// The shortest wait [`Engine::next_timed_change`] gives (a moment just past midnight).
const MIN_TIMED_REFRESH: Duration = Duration::from_millis(200);
/// The longest wait [`Engine::next_timed_change`] gives.
const MAX_TIMED_REFRESH: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_that_fail_are_tried_again_less_and_less_often_up_to_a_bound() {
        let refresh = Duration::from_millis(200);
        let pauses: Vec<u128> = (1..=6)
            .map(|n| failed_refresh_pause(refresh, n).as_millis())
            .collect();
        assert_eq!(pauses, [400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(
            failed_refresh_pause(refresh, u32::MAX),
            MAX_FAILED_REFRESH_PAUSE
        );
        // An interval longer than the bound stays the interval.
        let slow = Duration::from_secs(10);
        assert_eq!(failed_refresh_pause(slow, 3), slow);
    }
}

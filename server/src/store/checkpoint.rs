//! SQLite's background checkpoint: copying the WAL into the database file beside the writer,
//! so that it happens neither inside a Reserve batch's COMMIT nor all at once.
//!
//! A PASSIVE checkpoint never waits for the writer, but a busy writer appends while it copies.
//! Such a checkpoint is never complete, and SQLite then neither fsyncs the database file nor lets
//! the WAL start again from its beginning. The WAL grew to the writer's automatic-checkpoint
//! bound (`WRITER_AUTOCHECKPOINT_PAGES`, 64 MiB), where one COMMIT checkpointed inline and had to
//! fsync every database page the background checkpoints had written since the last complete one:
//! 10-25 ms every third of a second at 64 Reserves in flight, which was the Reserve tail
//! (BENCHMARKS.md).
//!
//! So each tick:
//! 1. copies the bulk on a reader connection and fsyncs the database file itself (through the
//!    store's one handle on it, [`DatabaseFile`]), a few rounds while the writer goes on (each
//!    round has only what was committed during the one before);
//! 2. copies the last few frames on the hot path's connection with the write gate held
//!    ([`super::direct::Direct::checkpoint`]). Nothing is committed meanwhile, so the checkpoint
//!    is complete, SQLite fsyncs the few pages it wrote, and the next write transaction restarts
//!    the WAL. The gate is held for that short pass only.
//!
//! Between two ticks, one copy round (step 1 alone) runs every [`COPY_INTERVAL`]. The database
//! file's writeback then comes in small pieces: with rounds only at each tick, the first round's
//! fsync of the database file wrote about 16 MiB at 20,000 Reserves a second and took up to 15 ms
//! (p90 8.6 ms), and the group fsync of the WAL queued behind it, which was a source of the
//! Reserve tail. With the rounds between ticks, that fsync took at most 8.6 ms (p90 4.6 ms), and
//! the Reserve p99 fell by about 0.8 ms (BENCHMARKS.md).
//!
//! Safety is SQLite's own: every pass is an ordinary PASSIVE checkpoint (the WAL is fsynced
//! before frames are copied, the database file after a complete checkpoint), and the extra fsync
//! of the database file in step 1 only makes earlier pages durable sooner.

use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;

use super::direct::Direct;
use super::durability::DatabaseFile;
use super::rows::Columns;

/// How often the whole checkpoint runs, the gated pass that lets the WAL start again included.
/// At 100 ms and 20,000 Reserves a second, the WAL grows to about 20 MiB between two.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How often a single copy round runs between two whole checkpoints.
pub const COPY_INTERVAL: Duration = Duration::from_millis(20);
/// Most rounds beside the writer before the gated pass.
const ROUNDS: usize = 4;
/// A round that copied at most this many frames (4 KiB each) ends the rounds: the gated pass
/// then has about as many or fewer to copy.
const GATED_FRAMES: i64 = 128;

/// What a PASSIVE checkpoint reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalState {
    /// Another checkpoint was running: this one did nothing.
    pub busy: bool,
    /// Frames in the WAL when it began.
    pub frames: i64,
    /// Of those, the frames that are in the database file.
    pub copied: i64,
}

/// The checkpoint both connections run: the reader pool's rounds and the hot path's gated pass.
pub const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";

impl WalState {
    /// From the row [`PASSIVE`] returns, on either connection.
    pub fn from_row<R: Columns>(row: &R) -> Result<WalState, R::Error> {
        Ok(WalState {
            busy: row.flag("busy")?,
            frames: row.int("log")?,
            copied: row.int("checkpointed")?,
        })
    }
}

/// Runs the checkpoint until the reader pool closes: a copy round every [`COPY_INTERVAL`], and
/// the whole tick (rounds, then the gated pass) every [`INTERVAL`].
pub fn spawn(reader: AnyPool, direct: Arc<Direct>, database: DatabaseFile) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COPY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = WalState::default();
        let mut last_full = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if reader.is_closed() {
                break;
            }
            let done = if last_full.elapsed() >= INTERVAL {
                last_full = tokio::time::Instant::now();
                checkpoint(&reader, &direct, &database, &mut last).await
            } else {
                round(&reader, &database, &mut last).await.map(|_| ())
            };
            if let Err(err) = done {
                if reader.is_closed() {
                    break;
                }
                tracing::warn!(error = %err, "background WAL checkpoint failed; the writer's automatic checkpoint still bounds the WAL");
            }
        }
    });
}

async fn passive(reader: &AnyPool) -> Result<WalState, sqlx::Error> {
    let row = sqlx::query(PASSIVE).fetch_one(reader).await?;
    WalState::from_row(&row)
}

/// One round beside the writer: copies what was committed since the last pass and fsyncs the
/// database file. `last` is what the previous pass reported: a WAL that has not changed since
/// needs nothing. Returns the frames this round copied, or None when it did nothing (another
/// checkpoint ran, the WAL is empty or unchanged, or a reader's snapshot holds frames back).
async fn round(
    reader: &AnyPool,
    database: &DatabaseFile,
    last: &mut WalState,
) -> anyhow::Result<Option<i64>> {
    let now = passive(reader).await?;
    let before = std::mem::replace(last, now);
    if now.busy || now.frames <= 0 || now == before {
        return Ok(None);
    }
    if now.copied < now.frames {
        // A reader's snapshot holds frames back: the checkpoint cannot complete now.
        return Ok(None);
    }
    // What this round copied: the frames after the last pass's, or all of them when the WAL has
    // restarted since.
    let fresh = if now.frames >= before.frames {
        now.frames - before.frames
    } else {
        now.frames
    };
    database.sync().await?;
    Ok(Some(fresh))
}

/// One whole tick (see the module comment).
async fn checkpoint(
    reader: &AnyPool,
    direct: &Direct,
    database: &DatabaseFile,
    last: &mut WalState,
) -> anyhow::Result<()> {
    for _ in 0..ROUNDS {
        match round(reader, database, last).await? {
            None => return Ok(()),
            Some(fresh) if fresh <= GATED_FRAMES => break,
            Some(_) => {}
        }
    }
    if let Some(now) = direct.checkpoint().await? {
        *last = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{Store, StoreOptions};

    /// Under a busy writer (a commit every 2 ms, each longer than a PASSIVE checkpoint leaves
    /// alone), the WAL still starts again from its beginning: it stays near what is written
    /// between two checkpoints instead of growing to the writer's automatic-checkpoint bound
    /// (64 MiB), where a COMMIT would checkpoint it inline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_restarts_under_a_busy_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let store = Store::open(&StoreOptions::sqlite_for_tests(&path))
            .await
            .unwrap();
        let direct = store.direct().unwrap();
        direct
            .run(|tx| {
                tx.execute_batch(
                    "CREATE TABLE scratch (k BLOB NOT NULL, v BLOB NOT NULL); CREATE INDEX scratch_k ON scratch (k);",
                )?;
                Ok::<_, anyhow::Error>(((), true))
            })
            .await
            .unwrap();
        // Each commit: 40 rows of 1 KiB under random keys, so about 50 pages of 4 KiB; 800 of them
        // commit about 160 MiB, well past the writer's 64 MiB bound, however long they take.
        const COMMITS: u64 = 800;
        let wal = dir.path().join("b.db-wal");
        let started = Instant::now();
        let (mut commits, mut largest) = (0u64, 0u64);
        while commits < COMMITS {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "only {commits} commits in 300 s"
            );
            direct
                .run(|tx| {
                    let mut insert =
                        tx.prepare_cached("INSERT INTO scratch (k, v) VALUES (?1, ?2)")?;
                    for _ in 0..40 {
                        let key: [u8; 16] = rand::random();
                        insert.execute(rusqlite::params![key.as_slice(), vec![7u8; 1024]])?;
                    }
                    Ok::<_, anyhow::Error>(((), true))
                })
                .await
                .unwrap();
            commits += 1;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let written = commits * 50 * 4096;
        assert!(
            largest < 32 * 1024 * 1024,
            "the WAL grew to {largest} bytes while {written} bytes were committed"
        );
        store.close().await;
    }
}

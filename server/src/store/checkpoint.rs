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
use super::durability::{DatabaseFile, DiskError};
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
///
/// A pass that fails on the disk (an fsync of the database file, or SQLite's own I/O in the
/// checkpoint) is told to `wal_sync`: frames whose copy did not reach the disk may be
/// overwritten once the WAL starts again, and the kernel reports a writeback error once, so
/// the group fsync would not see it (`WalSync::note_failure`).
pub fn spawn(
    reader: AnyPool,
    direct: Arc<Direct>,
    database: DatabaseFile,
    wal_sync: Option<Arc<super::durability::WalSync>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COPY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = WalState::default();
        let mut gated = false;
        let mut last_full = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if reader.is_closed() {
                break;
            }
            let done = if last_full.elapsed() >= INTERVAL {
                last_full = tokio::time::Instant::now();
                checkpoint(&reader, &direct, &database, &mut last, &mut gated).await
            } else {
                round(&reader, &database, &mut last)
                    .await
                    .map(|round| gated &= round == Round::UpToDate)
            };
            if let Err(err) = done {
                // Whatever the failed pass left, the next tick must not take it for gated.
                gated = false;
                if reader.is_closed() {
                    break;
                }
                if is_disk_failure(&err)
                    && let Some(wal_sync) = &wal_sync
                {
                    wal_sync.note_failure("a WAL checkpoint's write or fsync", &err);
                } else {
                    tracing::warn!(error = %err, "background WAL checkpoint failed; the writer's automatic checkpoint still bounds the WAL");
                }
            }
        }
    });
}

/// Whether a checkpoint pass failed on the disk: its own fsync of the database file failed
/// ([`DiskError`]), or SQLite's SQLITE_IOERR (primary code 10, any extended code) on either
/// connection. Busy or locked databases are not, nor errors before anything reached the disk:
/// an fsync the stopping runtime never ran, or sqlx failing to open a pool connection (its
/// `Error::Io`: no thread for the connection, too many open files).
fn is_disk_failure(err: &anyhow::Error) -> bool {
    const SQLITE_IOERR: i32 = 10;
    // SQLITE_IOERR_NOMEM: SQLite ran short of memory, which says nothing about the disk.
    const SQLITE_IOERR_NOMEM: i32 = SQLITE_IOERR | (12 << 8);
    let io_error = |code: i32| code & 0xff == SQLITE_IOERR && code != SQLITE_IOERR_NOMEM;
    err.chain().any(|cause| {
        if cause.is::<DiskError>() {
            return true;
        }
        if let Some(err) = cause.downcast_ref::<sqlx::Error>() {
            return match err {
                sqlx::Error::Database(db) => db
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(io_error),
                _ => false,
            };
        }
        if let Some(rusqlite::Error::SqliteFailure(failure, _)) =
            cause.downcast_ref::<rusqlite::Error>()
        {
            return io_error(failure.extended_code);
        }
        false
    })
}

async fn passive(reader: &AnyPool) -> Result<WalState, sqlx::Error> {
    let row = sqlx::query(PASSIVE).fetch_one(reader).await?;
    WalState::from_row(&row)
}

/// What one round beside the writer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing it could do: another checkpoint ran, the WAL is empty, or a reader's snapshot
    /// holds back frames that nothing has copied since the last pass.
    Skipped,
    /// Every frame was in the database file already: nothing was committed since the last pass.
    UpToDate,
    /// The WAL changed since the last pass: it copied what it could and fsynced the database
    /// file when that was anything. `left`: about what the gated pass would copy now (the
    /// frames committed since the last pass, which is about what was committed while this
    /// round ran, plus any it could not copy).
    Copied { left: i64 },
}

/// One round beside the writer: copies what was committed since the last pass and fsyncs the
/// database file. `last` is what the previous pass reported: a WAL that has not changed since
/// needs nothing copied.
async fn round(
    reader: &AnyPool,
    database: &DatabaseFile,
    last: &mut WalState,
) -> anyhow::Result<Round> {
    let now = passive(reader).await?;
    if now.busy {
        // Another checkpoint ran: its figures (-1) say nothing of the WAL.
        return Ok(Round::Skipped);
    }
    let before = std::mem::replace(last, now);
    if now.frames <= 0 {
        return Ok(Round::Skipped);
    }
    if now == before {
        return Ok(if now.copied == now.frames {
            Round::UpToDate
        } else {
            Round::Skipped
        });
    }
    // The frames committed and copied since the last pass, or all of them when the WAL has
    // restarted since (fewer frames, or fewer copied, than the last pass saw).
    let (fresh, copied) = if now.frames >= before.frames && now.copied >= before.copied {
        (now.frames - before.frames, now.copied - before.copied)
    } else {
        (now.frames, now.copied)
    };
    // Nothing new copied: a reader holds back what was committed, and there is nothing to sync.
    if copied > 0 {
        database.sync().await?;
    }
    Ok(Round::Copied {
        left: fresh + (now.frames - now.copied),
    })
}

/// One whole tick (see the module comment). `gated` says whether `last` is what the gated pass
/// reported, with nothing committed since.
async fn checkpoint(
    reader: &AnyPool,
    direct: &Direct,
    database: &DatabaseFile,
    last: &mut WalState,
    gated: &mut bool,
) -> anyhow::Result<()> {
    for _ in 0..ROUNDS {
        match round(reader, database, last).await? {
            Round::Skipped => {
                *gated = false;
                return Ok(());
            }
            // Everything is copied, but SQLite starts the WAL again only at a commit whose
            // transaction began after the checkpoint completed, and only if no reader holds a
            // snapshot in the WAL then. Such ticks used to skip their gated pass, and in some of
            // them the WAL did not start again: it grew on through the next interval (4,721 to
            // 11,007 frames in one logged case; BENCHMARKS.md). The gated pass is needed unless
            // it already ran on this very WAL.
            Round::UpToDate if *gated => return Ok(()),
            Round::UpToDate => break,
            // Frames it could not copy were 15-80 in the runs measured, about one batch's
            // commit: most likely one that was ending as the round began, its read lock still
            // held for a moment. The gated pass, with no write transaction open, copies them.
            // A reader that really holds them also holds back the gated pass, which then copies
            // nothing and costs a moment of the gate.
            Round::Copied { left } => {
                *gated = false;
                if left <= GATED_FRAMES {
                    break;
                }
            }
        }
    }
    if let Some(now) = direct.checkpoint().await?
        && !now.busy
    {
        *last = now;
        *gated = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Store, StoreOptions};
    use super::{DiskError, Round, WalState, checkpoint, is_disk_failure, round};

    #[test]
    fn a_checkpoint_that_failed_on_the_disk_is_told_apart_from_a_busy_one() {
        let sqlite = |code: i32| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: rusqlite::ErrorCode::Unknown,
                    extended_code: code,
                },
                None,
            )
        };
        // The database file's fsync, SQLite's SQLITE_IOERR_FSYNC (10 | 4 << 8) and
        // SQLITE_IOERR (10): the disk.
        assert!(is_disk_failure(&anyhow::Error::from(DiskError(
            std::io::Error::other("EIO")
        ))));
        assert!(is_disk_failure(&anyhow::Error::from(sqlite(10 | (4 << 8)))));
        assert!(is_disk_failure(
            &anyhow::Error::from(sqlite(10)).context("the gated pass")
        ));
        // SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_IOERR_NOMEM (10 | 12 << 8), a closed
        // pool: not the disk. Nor I/O errors that are no fsync's: sqlx could not open a pool
        // connection (no thread for it, too many open files: its `Error::Io`), and the server
        // used to exit with status 3.
        assert!(!is_disk_failure(&anyhow::Error::from(sqlite(
            10 | (12 << 8)
        ))));
        assert!(!is_disk_failure(&anyhow::Error::from(sqlx::Error::Io(
            std::io::Error::from_raw_os_error(24)
        ))));
        assert!(!is_disk_failure(&anyhow::Error::from(
            std::io::Error::from_raw_os_error(11)
        )));
        assert!(!is_disk_failure(&anyhow::Error::from(sqlite(5))));
        assert!(!is_disk_failure(&anyhow::Error::from(sqlite(6))));
        assert!(!is_disk_failure(&anyhow::Error::from(
            sqlx::Error::PoolClosed
        )));
    }

    /// The database file's fsync that the runtime never ran, because it was shutting down
    /// (a server stopping while a checkpoint round waited for its thread), says nothing about
    /// the disk: it used to be taken for a failed fsync, and a server stopping ended with exit
    /// status 3 and "a WAL checkpoint's write or fsync failed (task … was cancelled)".
    #[test]
    fn a_database_fsync_the_stopping_runtime_never_ran_is_not_a_disk_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        std::fs::write(&path, b"db").unwrap();
        let database = super::DatabaseFile::open(&path).unwrap();
        let err = super::super::durability::runtime_shut_down()
            .block_on(database.sync())
            .expect_err("no fsync ran");
        assert!(!is_disk_failure(&err), "{err:#}");
        // A real fsync still succeeds.
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(database.sync())
            .unwrap();
    }

    /// The WAL header's checkpoint sequence number: SQLite adds one each time the WAL starts
    /// again from its beginning (written with the first frame after).
    fn wal_restarts(wal: &std::path::Path) -> u32 {
        let header = std::fs::read(wal).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// A Reserve batch that began reading while a round copied the WAL commits after the frames
    /// it saw, so that commit does not start the WAL again. When the tick's next round then
    /// finds nothing new to copy, the gated pass must still run: without it the WAL went on
    /// growing until the next tick. With it, the next commit starts the WAL again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_with_nothing_left_to_copy_still_lets_the_wal_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let wal = dir.path().join("b.db-wal");
        let store = Store::open(&StoreOptions::sqlite_for_tests(&path))
            .await
            .unwrap();
        // The store's own checkpoint stops once its reader pool is closed: this test runs the
        // passes itself, on a pool of its own.
        store.reader.close().await;
        let reader = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let database = store._database_file.clone().unwrap();
        let direct = std::sync::Arc::clone(store.direct.as_ref().unwrap());
        let commit = |rows: usize| {
            move |tx: &rusqlite::Transaction<'_>| {
                for _ in 0..rows {
                    tx.execute(
                        "INSERT INTO scratch (k) VALUES (?1)",
                        [rand::random::<[u8; 16]>().as_slice()],
                    )?;
                }
                Ok::<_, anyhow::Error>(((), true))
            }
        };
        direct
            .run(|tx| {
                tx.execute_batch("CREATE TABLE scratch (k BLOB NOT NULL)")?;
                Ok::<_, anyhow::Error>(((), true))
            })
            .await
            .unwrap();
        for _ in 0..5 {
            direct.run(commit(50)).await.unwrap();
        }

        // A batch begins (its snapshot in the WAL) and waits inside its transaction.
        let (began, began_rx) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let batch = {
            let direct = std::sync::Arc::clone(&direct);
            let runtime = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                runtime.block_on(direct.run(|tx| {
                    tx.query_row("SELECT COUNT(*) FROM scratch", [], |r| r.get::<_, i64>(0))?;
                    began.send(()).unwrap();
                    go_rx.recv().unwrap();
                    commit(50)(tx)
                }))
            })
        };
        began_rx.recv().unwrap();
        let mut last = WalState::default();
        let mut gated = false;
        // A round copies everything committed before the batch began.
        let copied = round(&reader, &database, &mut last).await.unwrap();
        assert!(matches!(copied, Round::Copied { .. }), "{copied:?}");
        // The tick: its round finds nothing new, and (fixed) its gated pass waits for the batch.
        let tick = {
            let (reader, database, direct) = (
                reader.clone(),
                database.clone(),
                std::sync::Arc::clone(&direct),
            );
            tokio::spawn(async move {
                checkpoint(&reader, &direct, &database, &mut last, &mut gated).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !tick.is_finished(),
            "the tick ended without waiting for the gate (no gated pass)"
        );
        go.send(()).unwrap();
        batch.join().unwrap().unwrap().unwrap();
        tick.await.unwrap().unwrap();

        let restarts = wal_restarts(&wal);
        direct.run(commit(1)).await.unwrap();
        assert_eq!(
            wal_restarts(&wal),
            restarts + 1,
            "the first commit after the tick did not start the WAL again"
        );
        reader.close().await;
        store.close().await;
    }

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
        let (mut commits, mut largest) = (0u64, 0u64);
        let mut restarts_at_first = None;
        while commits < COMMITS {
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
            restarts_at_first.get_or_insert_with(|| wal_restarts(&wal));
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The writer's own bound alone would start the WAL again at most twice in 160 MiB, and
        // let it reach 64 MiB first. How far under that it stays depends on the disk (each
        // round waits for an fsync of the database file), so the bound here is loose.
        let written = commits * 50 * 4096;
        let restarts = wal_restarts(&wal) - restarts_at_first.unwrap_or_default();
        assert!(
            restarts >= 3,
            "the WAL started again {restarts} times while {written} bytes were committed"
        );
        assert!(
            largest < 48 * 1024 * 1024,
            "the WAL grew to {largest} bytes while {written} bytes were committed"
        );
        store.close().await;
    }
}

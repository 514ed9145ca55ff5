//! Group fsync of SQLite's write-ahead log: how `--sqlite-synchronous full` keeps its promise
//! (an acknowledged write survives a power loss) without paying an fsync inside the write lock.
//!
//! SQLite's own `synchronous = FULL` fsyncs the WAL inside every commit, while the one writer
//! connection is held: the next transaction cannot start until the disk has answered. Instead the
//! connections run with `synchronous = NORMAL` (a commit writes its WAL frames, no fsync) and the
//! engine calls [`WalSync::sync`] after each commit and before answering anyone. One fsync of the
//! WAL file covers every commit that finished before it began, so the writer goes on with the
//! next batch while the disk works, and commits that finish during one fsync share the next.
//!
//! Why this is as safe as FULL: a commit's frames are in the WAL (with their checksums) when
//! `COMMIT` returns; fsyncing the file makes them durable, exactly what FULL's fsync does. SQLite
//! overwrites WAL frames only after a checkpoint has copied them into the database, and in NORMAL
//! mode a checkpoint fsyncs the WAL before it starts and the database file after it ends, so no
//! frame a caller is waiting for can vanish unsynced. The WAL file is opened anew for each fsync,
//! so a WAL deleted and recreated (when every connection closed) is never missed; when there is
//! no WAL file at all its frames were checkpointed (and synced) into the database file, which is
//! then fsynced instead.
//!
//! A Reserve batch does not wait on a task: [`WalSync::after_sync`] hands its answers to the
//! syncer thread, which fsyncs for everything queued and answers at once when the fsync
//! returns. Waiting through a task added that task's turn on the busy tokio threads to every
//! fsync (486 µs on average at 64 Reserves in flight, against 330 µs from the thread).
//!
//! A Reserve batch that is ready while an fsync runs waits for it to end ([`WalSync::settled`])
//! before it is decided: its answers could not be given before the next fsync anyway, and the
//! Reserves that arrive meanwhile join it. Commits come in fewer, larger batches, and each
//! costs less (a page that several Reserves change is written to the WAL once per commit):
//! about a fifth less server CPU per Reserve at 64 calls in flight (BENCHMARKS.md).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The buckets of the fsync latency histogram: 100 µs up to about 3.3 s (a disk that stalls
/// for hundreds of milliseconds shows in the top buckets).
fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// The database file, opened once for the store's whole life, for the fsyncs the store does
/// itself ([`WalSync`] when there is no WAL, the background checkpoint).
///
/// The file must not be opened and closed again beside SQLite: closing any descriptor of a file
/// drops every POSIX advisory lock the process holds on it, SQLite's own locks included (SQLite's
/// "How To Corrupt An SQLite Database File", 2.2). A WAL file carries no such locks, so it may
/// be opened for each fsync.
#[derive(Debug, Clone)]
pub struct DatabaseFile(Arc<File>);

impl DatabaseFile {
    /// Opens the (existing) database file.
    pub fn open(path: &Path) -> std::io::Result<DatabaseFile> {
        Ok(DatabaseFile(Arc::new(File::open(path)?)))
    }

    /// fsyncs the database file on a blocking thread. Only the fsync's own failure is a
    /// [`DiskError`] in the error's chain; an fsync that never ran (the runtime shutting down
    /// refused its thread) says nothing about the disk (`checkpoint::is_disk_failure`).
    pub async fn sync(&self) -> anyhow::Result<()> {
        let file = Arc::clone(&self.0);
        Ok(tokio::task::spawn_blocking(move || file.sync_data().map_err(DiskError)).await??)
    }
}

/// Coalesces fsyncs of one SQLite database's WAL.
#[derive(Debug)]
pub struct WalSync {
    database: DatabaseFile,
    wal: PathBuf,
    /// Tickets handed out: one per commit that asked to be made durable.
    requested: AtomicU64,
    /// The highest ticket known durable; held while an fsync runs, so callers queue behind it.
    durable: tokio::sync::Mutex<u64>,
    /// fsyncs done (for tests and metrics).
    fsyncs: AtomicU64,
    /// How long each fsync took, as the commits waiting for it saw it (the metrics endpoint's
    /// `blangko_sqlite_wal_fsync_seconds`).
    latency: Histogram,
    /// Whether an fsync runs now.
    syncing: AtomicBool,
    /// Told when an fsync ends.
    ended: tokio::sync::Notify,
    /// An fsync failed. The kernel reports a writeback error once, so a later fsync may succeed
    /// although those pages never reached the disk: from then on no commit is called durable,
    /// until a restart lets SQLite recover from what the files hold.
    failed: AtomicBool,
    /// Whether a failure ends the process ([`WalSync::exiting_on_failure`]).
    exit_on_failure: bool,
    /// When this `WalSync` was made, and when (ms after that, 0: never) an fsync that did not
    /// run was last logged.
    created: Instant,
    never_ran_warned_ms: AtomicU64,
    /// Work waiting for the syncer thread ([`WalSync::after_sync`]); set once the `WalSync` is
    /// shared ([`WalSync::start_syncer`]).
    queue: std::sync::OnceLock<std::sync::mpsc::SyncSender<(u64, AfterSync)>>,
}

/// An fsync of the database file that failed (the checkpoint's): an error that says the disk
/// may have lost written pages. An fsync that never ran (the runtime refused its thread) is not
/// one: nothing was consumed of the kernel's report, and a later fsync covers the same pages.
#[derive(Debug)]
pub struct DiskError(pub std::io::Error);

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fsync failed: {}", self.0)
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Why the commits an fsync was to cover are not called durable.
#[derive(Debug)]
enum NotSynced {
    /// No fsync ran (the process was short of descriptors or memory to open the WAL, or the
    /// runtime refused the fsync its thread): nothing is known about the disk, and the next
    /// fsync covers them.
    NeverRan(std::io::Error),
    /// The fsync failed, or the WAL's name leads nowhere it can be synced: for good (see
    /// `WalSync::failed`).
    Failed(std::io::Error),
}

/// What runs once the commits before it are durable (`Ok`) or cannot be called durable (`Err`):
/// a Reserve batch's answers. It runs on the syncer thread, so it must be quick and never block.
pub type AfterSync = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// Most callbacks waiting for the syncer thread. Each office's Reserve worker has one or two
/// batches waiting at most (it waits for a running fsync before its next batch), so this is
/// reached only with thousands of offices busy at once; past it [`WalSync::after_sync`] hands
/// the callback back and the caller waits for an fsync on a task, as before.
pub const SYNCER_QUEUE: usize = 4096;

/// Marks an fsync as running for as long as it lives (also when the caller stops waiting).
struct Syncing<'a>(&'a WalSync);

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.0.syncing.store(false, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl WalSync {
    /// Syncs the WAL of the SQLite database at `path` (`<path>-wal`), or `database` (the same
    /// file, opened) when there is no WAL.
    pub fn new(path: &Path, database: DatabaseFile) -> WalSync {
        // SQLite names the WAL after the file a symbolic link leads to: `<link>-wal` never exists,
        // and every fsync would have fallen back to the database file, leaving the WAL's frames,
        // the acknowledged commits, unsynced.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            database,
            wal: PathBuf::from(wal),
            requested: AtomicU64::new(0),
            durable: tokio::sync::Mutex::new(0),
            fsyncs: AtomicU64::new(0),
            latency: fsync_histogram(),
            syncing: AtomicBool::new(false),
            ended: tokio::sync::Notify::new(),
            failed: AtomicBool::new(false),
            exit_on_failure: false,
            created: Instant::now(),
            never_ran_warned_ms: AtomicU64::new(0),
            queue: std::sync::OnceLock::new(),
        }
    }

    /// Makes a failure end the process at once (the server's store; tests of this module keep
    /// running to look at what follows).
    ///
    /// Why: after a failed fsync, of the WAL or of the database file during a checkpoint, the
    /// pages involved may never reach the disk, and the kernel reports that once. Carrying on
    /// lets the next checkpoint complete (its fsync now succeeds) and the next write start the
    /// WAL again from its beginning, over the frames of Reserves already acknowledged: the only
    /// durable copy of them. Stopping at once leaves the WAL as it is, and SQLite recovers from
    /// it at the next start (the service manager's restart), as PostgreSQL does after a failed
    /// fsync.
    pub fn exiting_on_failure(mut self) -> WalSync {
        self.exit_on_failure = true;
        self
    }

    /// Records that the database's files could not be made durable (the group fsync of the WAL,
    /// or a WAL checkpoint's own fsync or its copy into the database file, failed), for good: no
    /// commit is called durable any more, and the server's process ends (see
    /// [`WalSync::exiting_on_failure`]).
    pub fn note_failure(&self, what: &str, err: &dyn std::fmt::Display) {
        self.failed.store(true, Ordering::SeqCst);
        if self.exit_on_failure {
            let message = format!(
                "{what} failed ({err}): exiting now, before anything can overwrite what was made durable; SQLite recovers it from {} at the next start",
                self.wal.display()
            );
            // The log writes to stderr as it goes (app.rs), so the reason is out before the exit.
            tracing::error!(error = %err, wal = %self.wal.display(), "{message}");
            std::process::exit(EXIT_DURABILITY_LOST);
        }
        tracing::error!(error = %err, wal = %self.wal.display(), "{what} failed: no commit is called durable any more; restart the server (SQLite recovers from the files)");
    }

    /// Starts the syncer thread of a shared `WalSync`: it runs [`WalSync::after_sync`]'s
    /// callbacks, each after an fsync that covers its commit, until the `WalSync` is dropped.
    pub fn start_syncer(self: &Arc<Self>) -> std::io::Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(SYNCER_QUEUE);
        let wal = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("blangko-fsync".into())
            .spawn(move || syncer(&wal, &receiver))?;
        // Only the first call starts the queue; a second thread would find no work and end.
        let _ = self.queue.set(sender);
        Ok(())
    }

    /// Runs `done` once everything committed before this call is on disk (or with the error
    /// that says it cannot be), on the syncer thread, without a task waiting for it: it runs as
    /// soon as the fsync returns. A Reserve batch's answers go out this way: through a task
    /// (`sync`), they also waited for that task's turn on the busy tokio threads, and the next
    /// batch with them (BENCHMARKS.md). `Err(done)`: no syncer thread, or its queue is full;
    /// the caller waits with [`WalSync::sync`] instead.
    pub fn after_sync(&self, done: AfterSync) -> Result<(), AfterSync> {
        let Some(queue) = self.queue.get() else {
            return Err(done);
        };
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        queue.try_send((ticket, done)).map_err(|err| match err {
            std::sync::mpsc::TrySendError::Full((_, done))
            | std::sync::mpsc::TrySendError::Disconnected((_, done)) => done,
        })
    }

    /// One round of the syncer thread: makes every ticket up to `ticket` durable (an fsync,
    /// unless one that began after it has ended meanwhile). Blocks the calling thread.
    fn sync_blocking(&self, ticket: u64) -> std::io::Result<Option<Syncing<'_>>> {
        let mut durable = self.durable.blocking_lock();
        let Some(covered) = self.to_cover(*durable, ticket)? else {
            return Ok(None);
        };
        let running = self.begin_fsync();
        let began = Instant::now();
        let synced = fsync_wal(&self.wal, &self.database.0);
        self.fsync_ended(&mut durable, covered, began, synced)?;
        // Still "syncing" for `settled` until the callbacks have run (the guard's drop).
        Ok(Some(running))
    }

    /// With the `durable` lock held, before an fsync for `ticket`: the error of an earlier
    /// failed fsync, None when `ticket` is durable already (an fsync that began after its
    /// commit has ended), else the tickets the fsync about to begin covers: every ticket handed
    /// out so far belongs to a commit that already finished.
    fn to_cover(&self, durable: u64, ticket: u64) -> std::io::Result<Option<u64>> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(failed_before());
        }
        if durable >= ticket {
            return Ok(None);
        }
        Ok(Some(self.requested.load(Ordering::SeqCst)))
    }

    /// Marks an fsync as running, for [`WalSync::settled`], until the guard is dropped.
    fn begin_fsync(&self) -> Syncing<'_> {
        self.syncing.store(true, Ordering::SeqCst);
        Syncing(self)
    }

    /// With the `durable` lock held, after an fsync that began at `began`: records its latency
    /// and either the tickets it `covered` or its failure (for good, see `failed`).
    fn fsync_ended(
        &self,
        durable: &mut u64,
        covered: u64,
        began: Instant,
        synced: Result<(), NotSynced>,
    ) -> std::io::Result<()> {
        match synced {
            Ok(()) => {}
            // Nothing is known about the disk: no failure of it, and nothing called durable.
            Err(NotSynced::NeverRan(err)) => {
                let message = format!("the fsync of the database's WAL did not run: {err}");
                self.warn_never_ran(&message);
                return Err(std::io::Error::new(err.kind(), message));
            }
            Err(NotSynced::Failed(err)) => {
                self.latency.observe(began.elapsed().as_secs_f64());
                self.note_failure("the fsync of the database's WAL", &err);
                return Err(err);
            }
        }
        self.latency.observe(began.elapsed().as_secs_f64());
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        *durable = covered;
        Ok(())
    }

    /// Logs that an fsync did not run, once a minute at most (every write's answer says so
    /// meanwhile: UNAVAILABLE, retry with the same request id).
    fn warn_never_ran(&self, message: &str) {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.never_ran_warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= NEVER_RAN_WARNING_EVERY_MS;
        if due
            && self
                .never_ran_warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(wal = %self.wal.display(), "{message}; the writes waiting for it are answered UNAVAILABLE until an fsync can run (said once a minute)");
        }
    }

    /// Returns once everything committed before this call is on disk. Call it after COMMIT
    /// returned and before the caller is answered.
    ///
    /// The fsync runs on a task of its own, which the caller only waits for: a caller that
    /// stops waiting (a client's deadline drops its call) does not drop the fsync's result. A
    /// failure it missed would not be reported again by the kernel, and the next fsync, on a
    /// newly opened WAL, would call later commits durable.
    pub async fn sync(self: &Arc<Self>) -> std::io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let wal = Arc::clone(self);
        tokio::spawn(async move { wal.sync_ticket(ticket).await })
            .await
            .map_err(std::io::Error::other)?
    }

    /// [`WalSync::sync`] for a ticket taken.
    async fn sync_ticket(&self, ticket: u64) -> std::io::Result<()> {
        let mut durable = self.durable.lock().await;
        let Some(covered) = self.to_cover(*durable, ticket)? else {
            return Ok(());
        };
        let database = Arc::clone(&self.database.0);
        let wal = self.wal.clone();
        let running = self.begin_fsync();
        let began = Instant::now();
        let synced = tokio::task::spawn_blocking(move || fsync_wal(&wal, &database)).await;
        drop(running);
        // Cancelled: the runtime, shutting down, refused the fsync its thread, and no fsync ran.
        // A panic (none is known to be possible) is taken for a failure, to be safe.
        let synced = synced.unwrap_or_else(|join| {
            let cancelled = join.is_cancelled();
            let err = std::io::Error::other(join);
            Err(if cancelled {
                NotSynced::NeverRan(err)
            } else {
                NotSynced::Failed(err)
            })
        });
        self.fsync_ended(&mut durable, covered, began, synced)
    }

    /// Returns when no fsync is running (at once when none is), or after `at_most`.
    pub async fn settled(&self, at_most: Duration) {
        // Created before the check: `notify_waiters` reaches a `Notified` from its creation.
        let ended = self.ended.notified();
        if self.syncing.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(at_most, ended).await;
        }
    }

    /// How many fsyncs have been done.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// The fsync latency histogram (a clone shares it), for the metrics endpoint.
    pub fn latency(&self) -> Histogram {
        self.latency.clone()
    }
}

/// The server's exit status when its database's files could not be made durable.
pub const EXIT_DURABILITY_LOST: i32 = 3;

/// How often, at most, an fsync that did not run is logged.
const NEVER_RAN_WARNING_EVERY_MS: u64 = 60_000;

/// Most callbacks one round of the syncer thread takes: one fsync covers them all.
const SYNCER_ROUND: usize = 256;

/// The syncer thread: waits for callbacks, makes their commits durable with one fsync per round,
/// runs them, and ends when the `WalSync` is gone.
fn syncer(wal: &std::sync::Weak<WalSync>, queue: &std::sync::mpsc::Receiver<(u64, AfterSync)>) {
    while let Ok(first) = queue.recv() {
        let mut round = vec![first];
        while round.len() < SYNCER_ROUND {
            match queue.try_recv() {
                Ok(next) => round.push(next),
                Err(_) => break,
            }
        }
        let Some(wal) = wal.upgrade() else {
            for (_, done) in round {
                done(Err(std::io::Error::other("the database is closed")));
            }
            return;
        };
        let ticket = round.iter().map(|(t, _)| *t).max().unwrap_or(0);
        match wal.sync_blocking(ticket) {
            Ok(running) => {
                for (_, done) in round {
                    done(Ok(()));
                }
                drop(running);
            }
            Err(err) => {
                for (_, done) in round {
                    done(Err(std::io::Error::new(err.kind(), err.to_string())));
                }
            }
        }
    }
}

fn failed_before() -> std::io::Error {
    std::io::Error::other(
        "an earlier fsync of the database failed, so nothing since is known durable; restart the server",
    )
}

fn fsync_wal(wal: &Path, database: &File) -> Result<(), NotSynced> {
    let synced = match File::open(wal) {
        Ok(file) => file.sync_data(),
        // No WAL: its frames were checkpointed into the database file (see the module comment).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => database.sync_data(),
        // The process is short of something (descriptors, memory): the commits wait for the
        // next fsync that can run.
        Err(err) if is_shortage(&err) => return Err(NotSynced::NeverRan(err)),
        // The WAL's name leads nowhere it can be synced (a loop, no permission, an I/O error):
        // nothing committed since can be made durable.
        Err(err) => Err(err),
    };
    synced.map_err(NotSynced::Failed)
}

/// Whether opening a file failed for want of something the process may have again in a moment
/// (a descriptor, memory), not because of the file or the disk.
#[cfg(unix)]
fn is_shortage(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN)
    )
}

/// Elsewhere the error numbers differ: every failed open counts as a failure.
#[cfg(not(unix))]
fn is_shortage(_err: &std::io::Error) -> bool {
    false
}

/// A handle on a runtime whose blocking threads are shut down, as at the end of a server's (or
/// a test's) life: futures still run on it, `spawn_blocking` is refused (cancelled).
#[cfg(test)]
pub(crate) fn runtime_shut_down() -> tokio::runtime::Handle {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    drop(runtime);
    handle
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A database whose WAL cannot be opened (a symbolic link to itself), so that its fsync
    /// fails: the directory (kept alive), the WAL's path and the `WalSync`.
    #[cfg(unix)]
    fn failing_wal() -> (tempfile::TempDir, std::path::PathBuf, Arc<WalSync>) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"db").unwrap();
        let wal = dir.path().join("x.db-wal");
        std::os::unix::fs::symlink(&wal, &wal).unwrap();
        let sync = Arc::new(WalSync::new(&db, DatabaseFile::open(&db).unwrap()));
        (dir, wal, sync)
    }

    /// A database and its WAL, both plain files an fsync syncs: the directory (kept alive) and
    /// the `WalSync`.
    fn healthy_wal() -> (tempfile::TempDir, Arc<WalSync>) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"db").unwrap();
        std::fs::write(dir.path().join("x.db-wal"), b"wal").unwrap();
        let sync = Arc::new(WalSync::new(&db, DatabaseFile::open(&db).unwrap()));
        (dir, sync)
    }

    /// The WAL of [`failing_wal`] made a plain file again, which an fsync would sync.
    #[cfg(unix)]
    fn mend(wal: &Path) {
        std::fs::remove_file(wal).unwrap();
        std::fs::write(wal, b"wal").unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn after_a_failed_fsync_no_commit_is_called_durable_again() {
        let (_dir, wal, sync) = failing_wal();
        assert!(sync.sync().await.is_err());
        // The file is fine again, and an fsync would succeed: still no durable answer.
        mend(&wal);
        let err = sync.sync().await.expect_err("failed for good");
        assert!(err.to_string().contains("restart the server"), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_counts_even_when_its_caller_stopped_waiting() {
        let (_dir, wal, sync) = failing_wal();
        // The caller gives up (a client's deadline) while its fsync waits for a running one
        // (here: the lock held by the test): its fsync still runs once it may, and fails.
        let running = sync.durable.lock().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), sync.sync()).await;
        assert!(gave_up.is_err(), "the caller was to stop waiting");
        drop(running);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sync.failed.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the failed fsync was not recorded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A WAL that would sync now does not make later commits durable.
        mend(&wal);
        let err = sync.sync().await.expect_err("failed for good");
        assert!(err.to_string().contains("restart the server"), "{err}");
    }

    /// An fsync the runtime never ran, because it was shutting down, is no failure of the
    /// disk: a server that stops must not end with "the fsync of the database's WAL failed"
    /// and exit status 3, and nothing may be called durable either.
    #[test]
    fn an_fsync_that_never_ran_at_shutdown_is_not_a_failed_one() {
        let (_dir, sync) = healthy_wal();
        sync.requested.store(1, Ordering::SeqCst);

        let err = runtime_shut_down()
            .block_on(sync.sync_ticket(1))
            .expect_err("no fsync ran");
        assert!(err.to_string().contains("did not run"), "{err}");
        assert!(
            !sync.failed.load(Ordering::SeqCst),
            "taken for a disk failure"
        );
        assert_eq!(sync.fsyncs(), 0);
        assert_eq!(*sync.durable.blocking_lock(), 0, "called durable");

        // Later fsyncs, on a runtime that runs them, still work.
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(sync.sync())
            .unwrap();
        assert_eq!(sync.fsyncs(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_fsyncs_and_each_waits_for_one() {
        let (_dir, sync) = healthy_wal();

        // One caller alone: one fsync.
        sync.sync().await.unwrap();
        assert_eq!(sync.fsyncs(), 1);

        // 200 callers at once: every one returns only after an fsync, and they share them.
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let sync = Arc::clone(&sync);
                tokio::spawn(async move { sync.sync().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let fsyncs = sync.fsyncs();
        assert!(fsyncs >= 2, "each caller needs an fsync after its call");
        // The metric counts each fsync once, not each caller.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("wal_fsync_seconds", "fsyncs", sync.latency());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(&format!("wal_fsync_seconds_count {fsyncs}\n")),
            "{text}"
        );
        assert!(
            fsyncs < 201,
            "200 concurrent callers must share fsyncs, got {fsyncs}"
        );
        assert_eq!(*sync.durable.lock().await, 201, "every ticket is durable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settled_returns_at_once_when_idle_and_after_a_running_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"db").unwrap();
        let sync = Arc::new(WalSync::new(&db, DatabaseFile::open(&db).unwrap()));
        // Idle: no wait at all, even with a long bound.
        tokio::time::timeout(
            Duration::from_secs(5),
            sync.settled(Duration::from_secs(60)),
        )
        .await
        .expect("settled waits when no fsync runs");
        // While an fsync runs (its durable lock held by a caller in the middle of one), settled
        // waits for its end.
        let guard = sync.durable.lock().await;
        sync.syncing.store(true, Ordering::SeqCst);
        let waiter = {
            let sync = Arc::clone(&sync);
            tokio::spawn(async move { sync.settled(Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "settled returned while an fsync ran");
        drop(Syncing(&sync));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled returns when the fsync ends")
            .unwrap();
        assert!(!sync.syncing.load(Ordering::SeqCst));
    }

    /// Queues `n` callbacks and returns what each was told, in the order they ran.
    fn after_syncs(sync: &WalSync, n: usize) -> Vec<bool> {
        let (told, results) = std::sync::mpsc::channel();
        for _ in 0..n {
            let told = told.clone();
            let queued = sync.after_sync(Box::new(move |durable| {
                told.send(durable.is_ok()).unwrap();
            }));
            assert!(queued.is_ok(), "the syncer thread takes it");
        }
        (0..n)
            .map(|_| {
                results
                    .recv_timeout(Duration::from_secs(10))
                    .expect("every callback runs")
            })
            .collect()
    }

    #[test]
    fn the_syncer_thread_answers_after_an_fsync_shared_by_what_was_queued() {
        let (dir, sync) = healthy_wal();
        // Not started: the callback comes back, for the caller to wait on a task instead.
        assert!(sync.after_sync(Box::new(|_| {})).is_err());
        sync.start_syncer().unwrap();

        assert_eq!(after_syncs(&sync, 1), vec![true]);
        assert_eq!(sync.fsyncs(), 1, "one fsync before the one answer");
        assert!(after_syncs(&sync, 200).into_iter().all(|ok| ok));
        let fsyncs = sync.fsyncs();
        assert!(
            fsyncs >= 2,
            "each callback comes after an fsync that began after it"
        );
        assert!(
            fsyncs < 201,
            "200 queued callbacks share fsyncs, got {fsyncs}"
        );
        assert!(
            !sync.syncing.load(Ordering::SeqCst),
            "settled after the round"
        );

        // A failed fsync: the callbacks are told, and so is every one after (as `sync`).
        std::fs::remove_file(dir.path().join("x.db-wal")).unwrap();
        std::os::unix::fs::symlink("x.db-wal", dir.path().join("x.db-wal")).unwrap();
        assert_eq!(after_syncs(&sync, 3), vec![false; 3]);
        std::fs::remove_file(dir.path().join("x.db-wal")).unwrap();
        assert_eq!(
            after_syncs(&sync, 1),
            vec![false],
            "nothing is durable after a failure"
        );
    }

    #[tokio::test]
    async fn a_missing_wal_syncs_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, b"db").unwrap();
        let sync = Arc::new(WalSync::new(&db, DatabaseFile::open(&db).unwrap()));
        sync.sync().await.unwrap();
        assert_eq!(sync.fsyncs(), 1);
        // A WAL that cannot be opened (here: a symbolic link to itself) fails the sync, and the
        // error reaches the caller (who then fails the request).
        std::os::unix::fs::symlink("x.db-wal", dir.path().join("x.db-wal")).unwrap();
        assert!(sync.sync().await.is_err());
    }
}

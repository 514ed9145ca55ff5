//! The database: one SQL code path for embedded SQLite and PostgreSQL, through sqlx's `Any`
//! driver. The few places where the two engines differ are named by [`DatabaseKind`].
//!
//! Concurrency model, the reason the quota is exact:
//! - SQLite: one process owns the file (an exclusive lock file refuses a second server), and one
//!   write gate is held by every write transaction, whether it runs through sqlx's ONE writer
//!   connection or on the Reserve hot path's own connection ([`direct`]), so write transactions
//!   are serialized; readers use WAL. The background checkpoint's last pass of each tick holds
//!   the gate too, so that it completes and the WAL restarts ([`checkpoint`]).
//! - PostgreSQL: every mutating transaction first locks its office row (`SELECT ... FOR UPDATE`),
//!   so decisions about one office serialize across connections and replicas, while different
//!   offices proceed in parallel. The one-blank-per-NIK rule across offices is a unique index.

pub mod backup;
pub mod checkpoint;
pub mod direct;
pub mod durability;
pub mod journal;
pub mod rows;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection, Executor};

/// A write transaction: sqlx's, and on SQLite the write gate it holds until it ends (see
/// [`direct`]).
pub struct Tx {
    // Declared first, so dropped first: an unfinished transaction is rolled back before the
    // gate opens.
    inner: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.inner
    }
}

/// Embedded SQLite migrations (applied at start).
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// PostgreSQL migrations (applied at start; sqlx takes an advisory lock, so replicas starting
/// together apply them once).
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded SQLite file: one server process per file.
    Sqlite,
    /// PostgreSQL: any number of server replicas.
    Postgres,
}

impl DatabaseKind {
    /// The name GetServerInfo reports.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Sqlite => "sqlite",
            DatabaseKind::Postgres => "postgres",
        }
    }

    /// The suffix that locks the rows a decision reads (PostgreSQL). SQLite needs none: its
    /// single writer connection serializes write transactions.
    pub fn for_update(self) -> &'static str {
        match self {
            DatabaseKind::Sqlite => "",
            DatabaseKind::Postgres => " FOR UPDATE",
        }
    }
}

/// Default of `--db-lock-timeout-secs`: well under the request time-out, so that a call stuck
/// behind a lock is told to retry before its client gives up on it.
pub const DEFAULT_LOCK_TIMEOUT_SECS: u64 = 10;

/// PostgreSQL: how long a session may sit idle inside a transaction before the database ends
/// it. The server's own transactions never wait between statements; a session that does is a
/// replica cut off mid-transaction, still holding its office's row lock, which the database
/// then releases instead of keeping it until TCP notices (hours with the default keepalives).
pub const IDLE_IN_TRANSACTION_TIMEOUT_SECS: u64 = 60;

/// PostgreSQL: TCP keepalives of each session (seconds idle, seconds between probes, probes),
/// so that the database notices a replica that vanished without closing its connections.
pub const TCP_KEEPALIVES: (u32, u32, u32) = (30, 10, 3);

/// SQLite's `synchronous` setting: what an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    /// An acknowledged write survives a power loss: the WAL is fsynced after every commit and
    /// before anyone is answered (one fsync shared by the commits that finished before it, see
    /// [`durability`]).
    Full,
    /// fsync only at checkpoints: an acknowledged write survives a process crash (SIGKILL), but
    /// the last commits may be lost on a power loss or OS crash.
    Normal,
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite:PATH` or `postgres://...`.
    pub url: String,
    /// Most connections to PostgreSQL per replica (readers and writers together).
    pub max_connections: u32,
    /// How long a call may wait for a free connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL: how long a statement may wait for a lock (`lock_timeout`).
    pub lock_timeout: Duration,
    /// SQLite durability.
    pub sqlite_sync: SqliteSync,
    /// SQLite: the Reserve journal's bounds.
    pub journal: journal::Limits,
}

#[cfg(test)]
impl StoreOptions {
    /// The store's own tests: an SQLite file at `path`, synchronous FULL.
    pub(crate) fn sqlite_for_tests(path: &Path) -> StoreOptions {
        StoreOptions {
            url: format!("sqlite://{}", path.display()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(DEFAULT_LOCK_TIMEOUT_SECS),
            sqlite_sync: SqliteSync::Full,
            journal: journal::Limits::default(),
        }
    }
}

/// How much of a connection pool is in use.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Connections open (in use plus idle).
    pub size: u32,
    /// Connections idle.
    pub idle: usize,
    /// Most connections the pool may open.
    pub max: u32,
}

/// The open database.
pub struct Store {
    kind: DatabaseKind,
    /// Mutating transactions. SQLite: exactly one connection.
    writer: AnyPool,
    /// Reads (snapshots, listings). SQLite: several WAL readers.
    reader: AnyPool,
    /// Keeps the exclusive lock on the SQLite file for the life of the process.
    _lock: Option<std::fs::File>,
    /// The SQLite database file, for backups and the NIK key's default place.
    sqlite_path: Option<PathBuf>,
    /// SQLite with `--sqlite-synchronous full`: the group fsync every commit waits for.
    wal_sync: Option<Arc<durability::WalSync>>,
    /// SQLite: the Reserve hot path's own connection (see [`direct`]).
    direct: Option<Arc<direct::Direct>>,
    /// SQLite: read connections of their own for GetQuota (see [`direct::Reads`]).
    reads: Option<direct::Reads>,
    /// SQLite: the database file, open until the store is dropped (see
    /// [`durability::DatabaseFile`]). Last, so it is closed after the connections.
    _database_file: Option<durability::DatabaseFile>,
}

impl Store {
    /// Opens (creating and migrating if needed) the database named by `options.url`.
    pub async fn open(options: &StoreOptions) -> anyhow::Result<Store> {
        install_default_drivers();
        if let Some(path) = sqlite_path(&options.url) {
            Self::open_sqlite(&path, options).await
        } else if options.url.starts_with("postgres:") || options.url.starts_with("postgresql:") {
            Self::open_postgres(options).await
        } else {
            anyhow::bail!(
                "unsupported database URL (expected sqlite:PATH or postgres://...): {}",
                redact_url(&options.url)
            )
        }
    }

    async fn open_sqlite(path: &Path, options: &StoreOptions) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        let lock = lock_sqlite_file(path)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // Both settings run the connections with synchronous = NORMAL (no fsync inside COMMIT);
        // FULL adds the group fsync of the WAL that every commit waits for (see `durability`).
        // Checkpoints (copying the WAL into the database file, with two fsyncs) run in the
        // background (`checkpoint`), not inside a Reserve batch's COMMIT; the writer's own
        // automatic checkpoint stays as a bound on the WAL's size should the background one
        // fall behind.
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;"
        );
        let connect = |max: u32| {
            let pragmas = pragmas.clone();
            AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .after_connect(move |conn, _meta| {
                    let pragmas = pragmas.clone();
                    Box::pin(async move {
                        conn.execute(pragmas.as_str()).await?;
                        Ok(())
                    })
                })
                .connect(&url)
        };
        let writer = connect(1)
            .await
            .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
        SQLITE_MIGRATIONS
            .run(&writer)
            .await
            .context("cannot migrate the SQLite database")?;
        let reader = connect(4).await?;
        let database_file = durability::DatabaseFile::open(path)
            .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
        let wal_sync = match options.sqlite_sync {
            SqliteSync::Full => {
                let wal = Arc::new(
                    durability::WalSync::new(path, database_file.clone()).exiting_on_failure(),
                );
                wal.start_syncer()
                    .context("cannot start the thread that fsyncs the database")?;
                Some(wal)
            }
            SqliteSync::Normal => None,
        };
        let direct = direct::Direct::open(path, &pragmas, options.journal).with_context(|| {
            format!(
                "cannot open the SQLite database {} for the Reserve path",
                path.display()
            )
        })?;
        let direct = Arc::new(direct);
        // What a crash left in the Reserve journal goes into its tables before anything runs.
        if !direct.journal().is_empty() {
            let pending = direct.journal().pending();
            direct
                .fold(None)
                .await
                .context("cannot fold the Reserve journal left by the last run")?;
            tracing::info!(
                reservations = pending,
                "Reserve journal left by the last run folded into its tables"
            );
        }
        let reads = direct::Reads::new(path, &pragmas);
        checkpoint::spawn(
            reader.clone(),
            Arc::clone(&direct),
            database_file.clone(),
            wal_sync.clone(),
        );
        Ok(Store {
            kind: DatabaseKind::Sqlite,
            writer,
            reader,
            _lock: Some(lock),
            sqlite_path: Some(path.to_path_buf()),
            wal_sync,
            direct: Some(direct),
            reads: Some(reads),
            _database_file: Some(database_file),
        })
    }

    async fn open_postgres(options: &StoreOptions) -> anyhow::Result<Store> {
        let session = postgres_session_settings(options.lock_timeout);
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                let session = session.clone();
                Box::pin(async move {
                    for statement in session.iter() {
                        conn.execute(statement.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&options.url)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {}",
                    redact_url(&options.url)
                )
            })?;
        // On a connection without the lock time-out: another replica may hold the migrations'
        // advisory lock for as long as its migrations take. The connection is closed after.
        let mut migrating = pool
            .acquire()
            .await
            .context("cannot connect to PostgreSQL to migrate")?
            .detach();
        migrating.execute("SET lock_timeout = 0").await?;
        POSTGRES_MIGRATIONS
            .run(&mut migrating)
            .await
            .context("cannot migrate the PostgreSQL database")?;
        migrating.close().await?;
        Ok(Store {
            kind: DatabaseKind::Postgres,
            writer: pool.clone(),
            reader: pool,
            _lock: None,
            sqlite_path: None,
            wal_sync: None,
            direct: None,
            reads: None,
            _database_file: None,
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The SQLite file, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    /// Starts a write transaction. SQLite: the Reserve journal is folded first (most of it a
    /// chunk at a time, see [`fold_most`]; the rest with the write gate held, which the
    /// transaction keeps until it ends).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let gate = match &self.direct {
            Some(direct) => {
                fold_most(direct).await?;
                let gate = direct.gate().lock_owned().await;
                // Only Reserve batches work beside an unfolded journal (see `journal`).
                direct.fold_holding_gate(None)?;
                Some(gate)
            }
            None => None,
        };
        let inner = match self.kind {
            // IMMEDIATE takes the write lock at once rather than on the first write.
            DatabaseKind::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            DatabaseKind::Postgres => self.writer.begin().await?,
        };
        Ok(Tx { inner, _gate: gate })
    }

    /// A read-only transaction on the reader pool whose statements all see one moment, for reads
    /// made of several statements (a quota snapshot, a stock level). PostgreSQL: REPEATABLE READ,
    /// one snapshot for the whole transaction (READ COMMITTED would take one per statement).
    /// SQLite: a deferred transaction reads one snapshot of the WAL from its first read on.
    ///
    /// SQLite: its snapshot holds no unfolded journal row. The fold and the snapshot are taken
    /// with the write gate held throughout: a Reserve batch committed between them would show in
    /// the counts it keeps in place (an office's ledger head and stock, the quota rows) but not in
    /// the rows it left in the journal, and a verification would find the chain cut short of the
    /// head (a false "entry missing"), a report figures that do not add up. It takes the write
    /// gate for a moment, so it must not be called with a write transaction ([`Store::begin`])
    /// open on the same task.
    pub async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let Some(direct) = &self.direct else {
            return self.begin_read_without_fold().await;
        };
        fold_most(direct).await?;
        // A connection first, so the gate is never held waiting for the pool.
        let mut tx = self.reader.begin().await?;
        let _gate = direct.gate().lock_owned().await;
        direct.fold_holding_gate(None)?;
        // A deferred SQLite transaction takes its snapshot at its first read: this one.
        let unfolded = sqlx::query("SELECT 1 FROM reserve_journal LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if unfolded.is_some() {
            return Err(sqlx::Error::Protocol(
                "the Reserve journal holds rows just after it was folded, with the write gate held"
                    .into(),
            ));
        }
        Ok(tx)
    }

    /// [`Store::begin_read`] without folding the Reserve journal first: only for reads of the
    /// counts a Reserve batch keeps in place, never of the rows it may leave in the journal.
    ///
    /// A journal row holds a batch's ledger entries (all of kind RESERVE), reservations and
    /// stored answers (`journal::TABLES`); the same transaction updates in place the office's
    /// stock counts and ledger head, the quota rows and the day's count of IKD referrals. So
    /// offices, service points, quota rows, queue reports, and ledger entries of other kinds
    /// (the days of cover count COMMIT and SPOILED) are complete without a fold: what GetQuota,
    /// GetStock, ListStock and the metrics scrape read. Folding first made each of those calls
    /// during a burst hold the write gate for the whole fold, and every Reserve wait behind it
    /// (with a metrics scrape every second, Reserve's p99.9 was 394-524 ms: BENCHMARKS.md).
    pub async fn begin_read_without_fold(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.kind {
            DatabaseKind::Sqlite => self.reader.begin().await,
            DatabaseKind::Postgres => {
                self.reader
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
    }

    /// Makes every transaction committed so far durable (SQLite with `--sqlite-synchronous
    /// full`: the group fsync of the WAL; PostgreSQL's COMMIT is durable by itself; SQLite with
    /// `normal` promises only to survive a process crash). Call it after COMMIT, before answering.
    pub async fn sync(&self) -> Result<(), sqlx::Error> {
        match &self.wal_sync {
            Some(wal) => wal.sync().await.map_err(sqlx::Error::Io),
            None => Ok(()),
        }
    }

    /// Runs `done` once every transaction committed so far is durable, without a task waiting
    /// for it where it can: on SQLite with the group fsync, on the fsync's own thread right after
    /// the fsync that covers it (see [`durability::WalSync::after_sync`]), or on a task that
    /// waits for [`Store::sync`] when that thread has too much waiting; at once where COMMIT is
    /// as durable as it gets (PostgreSQL, `--sqlite-synchronous normal`). Call it within the
    /// tokio runtime.
    pub fn when_durable(&self, done: durability::AfterSync) {
        let Some(wal) = &self.wal_sync else {
            done(Ok(()));
            return;
        };
        if let Err(done) = wal.after_sync(done) {
            let wal = Arc::clone(wal);
            tokio::spawn(async move { done(wal.sync().await) });
        }
    }

    /// The latency histogram of the group fsync of SQLite's WAL (None on PostgreSQL and with
    /// `--sqlite-synchronous normal`, which make no such fsync).
    pub fn wal_fsync_latency(&self) -> Option<prometheus_client::metrics::histogram::Histogram> {
        self.wal_sync.as_deref().map(durability::WalSync::latency)
    }

    /// Returns when no group fsync is running (at once on PostgreSQL and with `normal`), so a
    /// Reserve batch ready meanwhile waits and grows instead of committing alone (see
    /// [`durability`]). Bounded by `SETTLE_AT_MOST`.
    pub async fn settled(&self) {
        if let Some(wal) = &self.wal_sync {
            wal.settled(SETTLE_AT_MOST).await;
        }
    }

    /// The pool for reads, once the Reserve journal (SQLite) is folded into its tables, so that
    /// the reads see every reservation, stored answer and ledger entry committed before.
    pub async fn reader(&self) -> Result<&AnyPool, sqlx::Error> {
        self.fold_journal().await?;
        Ok(&self.reader)
    }

    /// The pool for reads of what a Reserve batch keeps in place only, without folding the
    /// Reserve journal first (see [`Store::begin_read_without_fold`]). Also for the current state
    /// of a reservation a Reserve replayed (`Engine::refresh_replayed`): the batch that replayed
    /// it folded the journal first when the reservation was in it, and a row in the table is never
    /// older than the journal.
    pub fn reader_without_fold(&self) -> &AnyPool {
        &self.reader
    }

    /// The pool for reads of due holds at `now_ms` (the sweeper): the Reserve journal is folded
    /// first only when a hold in it may be due, so a sweep during a burst leaves it be.
    pub async fn reader_for_due_holds(&self, now_ms: i64) -> Result<&AnyPool, sqlx::Error> {
        if let Some(direct) = &self.direct
            && direct.journal().may_hold_due(now_ms)
        {
            direct.fold(None).await?;
        }
        Ok(&self.reader)
    }

    /// Folds the Reserve journal into its tables (SQLite; nothing to do on PostgreSQL or when it
    /// is empty).
    ///
    /// All but the last chunk are folded a chunk at a time, the write gate open between chunks
    /// ([`fold_most`]): a read or a write during a burst no longer holds every Reserve of the
    /// server back for the whole fold (about 15 ms per thousand reservations).
    pub async fn fold_journal(&self) -> Result<(), sqlx::Error> {
        match &self.direct {
            Some(direct) => {
                fold_most(direct).await?;
                direct.fold(None).await.map(drop)
            }
            None => Ok(()),
        }
    }

    /// Folds most of the Reserve journal, a chunk at a time with the write gate open between
    /// chunks, and leaves at most a chunk's worth (see [`fold_most`]; nothing to do on
    /// PostgreSQL).
    pub async fn fold_journal_most(&self) -> Result<(), sqlx::Error> {
        match &self.direct {
            Some(direct) => fold_most(direct).await,
            None => Ok(()),
        }
    }

    /// Folds one chunk of the Reserve journal, letting Reserves go between chunks; whether it
    /// is empty now (true on PostgreSQL).
    pub async fn fold_journal_chunk(&self) -> Result<bool, sqlx::Error> {
        match &self.direct {
            Some(direct) => direct.fold(Some(journal::FOLD_CHUNK)).await,
            None => Ok(true),
        }
    }

    /// How long an office's Reserves must pause before its worker folds a chunk of the Reserve
    /// journal.
    pub fn journal_fold_after_pause(&self) -> Duration {
        self.direct
            .as_ref()
            .map_or(Duration::MAX, |d| d.journal().limits().fold_after_pause)
    }

    /// Whether the Reserve journal holds rows to fold (never on PostgreSQL).
    pub fn journal_has_rows(&self) -> bool {
        self.direct
            .as_ref()
            .is_some_and(|d| !d.journal().is_empty())
    }

    /// SQLite: the Reserve hot path's connection (see [`direct`]). None on PostgreSQL.
    pub fn direct(&self) -> Option<&direct::Direct> {
        self.direct.as_deref()
    }

    /// SQLite: the read connections of GetQuota (see [`direct::Reads`]). None on PostgreSQL.
    pub fn reads(&self) -> Option<&direct::Reads> {
        self.reads.as_ref()
    }

    /// The connection pools and their use now (metrics): SQLite's writer and readers, or
    /// PostgreSQL's one shared pool.
    pub fn pool_stats(&self) -> Vec<(&'static str, PoolStats)> {
        let stats = |pool: &AnyPool| PoolStats {
            size: pool.size(),
            idle: pool.num_idle(),
            max: pool.options().get_max_connections(),
        };
        match self.kind {
            DatabaseKind::Sqlite => vec![
                ("writer", stats(&self.writer)),
                ("reader", stats(&self.reader)),
            ],
            DatabaseKind::Postgres => vec![("shared", stats(&self.writer))],
        }
    }

    /// `SELECT ... FOR UPDATE` suffix for this engine.
    pub fn for_update(&self) -> &'static str {
        self.kind.for_update()
    }

    /// Closes every connection (checkpointing SQLite's WAL).
    pub async fn close(&self) {
        if let Some(direct) = &self.direct {
            // A journal left here would be folded at the next start; folding it now leaves the
            // file whole for other programs (backups, sqlite3).
            if let Err(err) = direct.fold(None).await {
                tracing::warn!(error = %err, "cannot fold the Reserve journal before closing; the next start folds it");
            }
            // Waits for a batch still running on it (the connection's mutex).
            direct.close();
        }
        if let Some(reads) = &self.reads {
            reads.close();
        }
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Folds the Reserve journal down to at most [`journal::FOLD_BESIDE_RESERVES`] reservations'
/// worth, a chunk per transaction, the write gate open between chunks so that Reserve
/// batches go on; the caller folds the rest. Bounded: twice as many chunks as the journal held
/// when it began, plus one. A burst adds rows meanwhile, but fewer than a chunk's fold takes
/// off (a reservation folds in about 15 µs), so the bound is reached only when folding cannot
/// keep up, and then the caller folds the rest in one.
async fn fold_most(direct: &direct::Direct) -> Result<(), sqlx::Error> {
    let journal = direct.journal();
    let chunk = journal::FOLD_BESIDE_RESERVES;
    let rounds = (journal.weight() / chunk).saturating_mul(2) + 1;
    for _ in 0..rounds {
        if journal.weight() <= chunk {
            break;
        }
        direct.fold(Some(chunk)).await?;
    }
    Ok(())
}

/// WAL pages after which the writer checkpoints by itself (the background checkpointer normally
/// keeps the WAL far below: about 64 MiB of 4 KiB pages).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// The WAL file is truncated back to this size after a checkpoint resets it.
const WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest a Reserve batch waits for a running fsync before it is decided anyway (an fsync takes
/// about half a millisecond on a quiet disk; a stalled one must not hold Reserves back).
const SETTLE_AT_MOST: Duration = Duration::from_millis(20);

/// The file path of a `sqlite:` URL, if it is one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() {
        return None;
    }
    PathBuf::from_str(path).ok()
}

/// Takes the exclusive lock that keeps a second server process off the same SQLite file (two
/// writers in two processes would each believe they hold the day's quota).
fn lock_sqlite_file(path: &Path) -> anyhow::Result<std::fs::File> {
    use fs4::fs_std::FileExt;
    let lock_path = lock_path_for(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(file),
        Ok(false) => anyhow::bail!(
            "another blangko-server is already using {} (lock file {}); one SQLite file serves one server process — use PostgreSQL for several replicas",
            path.display(),
            lock_path.display()
        ),
        Err(err) => Err(err).with_context(|| format!("cannot lock {}", lock_path.display())),
    }
}

/// `blangko.db` → `blangko.db.lock`.
pub fn lock_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// What every PostgreSQL session of the server sets when it connects.
fn postgres_session_settings(lock_timeout: Duration) -> Arc<Vec<String>> {
    let (idle, interval, count) = TCP_KEEPALIVES;
    Arc::new(vec![
        // The Reserve batch reads rows as JSON (`rows::batch_reads`), where BYTEA comes in this
        // setting's format: hex, whatever the database's default says.
        "SET bytea_output = 'hex'".to_string(),
        format!("SET lock_timeout = {}", lock_timeout.as_millis()),
        format!(
            "SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION_TIMEOUT_SECS * 1000
        ),
        format!("SET tcp_keepalives_idle = {idle}"),
        format!("SET tcp_keepalives_interval = {interval}"),
        format!("SET tcp_keepalives_count = {count}"),
    ])
}

/// Whether a database error is a conflict that a fresh attempt of the same transaction resolves
/// (PostgreSQL: a unique violation by a concurrent transaction, a serialization failure or a
/// deadlock).
pub fn is_retryable(err: &sqlx::Error) -> bool {
    matches!(
        sqlx_state(err).as_deref(),
        Some("23505") | Some("40001") | Some("40P01")
    )
}

/// A transaction that lost a race it may win next time: a serialization failure or a deadlock
/// (PostgreSQL 40001, 40P01).
pub fn is_lost_race(err: &sqlx::Error) -> bool {
    matches!(sqlx_state(err).as_deref(), Some("40001") | Some("40P01"))
}

/// PostgreSQL failures that are over when the database is back or a stuck lock is released:
/// a connection failure (class 08), the server shutting down or restarting, a session ended by
/// an administrator or a failover (57P01–57P03), and a lock not granted within `lock_timeout`
/// (55P03). Not retried inside the engine (the database needs seconds), but the caller may
/// send the call again.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match sqlx_state(err).as_deref() {
        Some(code) => {
            code.len() == 5
                && (code.starts_with("08") || matches!(code, "55P03" | "57P01" | "57P02" | "57P03"))
        }
        None => false,
    }
}

/// The SQLSTATE (PostgreSQL) or result code (SQLite) of a database error.
fn sqlx_state(err: &sqlx::Error) -> Option<std::borrow::Cow<'_, str>> {
    match err {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:blangko.db"),
            Some(PathBuf::from("blangko.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_through_sqlx_holds_the_hot_paths_write_gate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreOptions::sqlite_for_tests(&dir.path().join("b.db")))
            .await
            .unwrap();
        let direct = store.direct().expect("SQLite has the hot-path connection");
        let gate = direct.gate();
        // Free: nobody writes yet (the background checkpoint takes it only for a moment).
        let free = |gate: std::sync::Arc<tokio::sync::Mutex<()>>| async move {
            tokio::time::timeout(Duration::from_secs(1), gate.lock_owned())
                .await
                .is_ok()
        };
        assert!(free(gate.clone()).await, "nobody writes yet");

        let tx = store.begin().await.unwrap();
        assert!(
            gate.try_lock().is_err(),
            "an open transaction holds the gate"
        );
        // The hot path waits for it instead of racing it for SQLite's lock.
        let store = std::sync::Arc::new(store);
        let waiting = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let direct = store.direct().unwrap();
                direct
                    .run(|tx| {
                        let n: i64 =
                            tx.query_row("SELECT COUNT(*) FROM offices", [], |r| r.get(0))?;
                        Ok::<_, anyhow::Error>((n, false))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the hot path ran beside an open transaction"
        );
        tx.commit().await.unwrap();
        let offices = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the hot path runs once the transaction has ended")
            .unwrap()
            .unwrap();
        assert_eq!(offices, Some(0));
        assert!(free(gate.clone()).await, "both have ended");

        // Another program holding the write lock: the hot path does not wait for it, it says so.
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let mut other = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let locked = tokio::time::timeout(
            Duration::from_secs(1),
            store
                .direct()
                .unwrap()
                .run(|_| Ok::<_, anyhow::Error>(((), true))),
        )
        .await
        .expect("the hot path does not wait for another program's lock")
        .unwrap();
        assert!(locked.is_none());
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        store.close().await;
    }

    #[test]
    fn passwords_never_reach_messages() {
        let shown = redact_url("postgres://blangko:s3cret@db:5432/blangko");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "postgres://blangko:***@db:5432/blangko");
    }
}

//! SQLite connections of the server's own (rusqlite), beside sqlx's: the Reserve hot path's
//! connection ([`Direct`]), on which a whole Reserve batch (its reads, its decisions and its
//! writes) runs on one thread, and a few read connections ([`Reads`]) for GetQuota.
//!
//! Why: through sqlx every statement, and every row it returns, is a message to and from the
//! connection's worker thread. A batch of 30 Reserves spent most of its time in those hops
//! (about 1 ms plus 137 µs per Reserve on the single writer's path, see BENCHMARKS.md), and the
//! single writer is what every Reserve of the server waits for. Here a statement is a function
//! call, prepared once and cached.
//!
//! Why the quota stays exact: one write gate (an async mutex) is held by every write transaction
//! of the process, on this connection ([`Direct::run`]) and through sqlx's one writer connection
//! ([`super::Store::begin`]), from before it begins until after it has committed or rolled back.
//! Write transactions stay serialized as before; SQLite's own write lock (`BEGIN IMMEDIATE`) is
//! the second line of defence.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{Connection, OpenFlags, Statement};

use super::checkpoint::{self, WalState};
use super::journal::{self, Change, Journal};
use super::rows::{self, Columns, Value, ValueRef};

/// Prepared statements kept per connection: the batch uses about twenty distinct ones.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// An error of a transaction on this connection, as sqlx's error type (which rusqlite's lacks
/// a conversion into).
struct StoreError(sqlx::Error);

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError(err)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError(to_sqlx(err))
    }
}

/// The hot path's own connection to the SQLite file, and the write gate.
pub struct Direct {
    /// None once closed. A std mutex: the gate already serializes its users, and it is never
    /// held across an `.await`.
    conn: Mutex<Option<Connection>>,
    /// Held by every write transaction of the process, on this connection or through sqlx
    /// ([`super::Store::begin`]), for its whole length.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The Reserve journal's state in memory (see [`journal`]); its table is changed on this
    /// connection only.
    journal: Journal,
}

impl Direct {
    /// Opens the database file (already created and migrated) with the pragmas the other
    /// connections run with.
    pub fn open(path: &Path, pragmas: &str, limits: journal::Limits) -> anyhow::Result<Direct> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(pragmas)?;
        // Never wait for SQLite's write lock here: inside the process the gate serializes the
        // writers, so a lock held by someone else (another program on the file) is the only
        // wait, and it would block the batch worker's thread. [`Direct::run`] says so instead,
        // and the batch takes the general path, which waits on sqlx's own thread.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let journal = Journal::new(limits);
        journal.load(&conn)?;
        Ok(Direct {
            conn: Mutex::new(Some(conn)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            journal,
        })
    }

    /// The Reserve journal's state.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The write gate, for the transactions through sqlx.
    pub fn gate(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.gate)
    }

    /// Runs `work` in one IMMEDIATE transaction on this connection, holding the write gate.
    /// `work` returns whether to commit: `Ok((value, true))` commits, `Ok((value, false))` rolls
    /// back (nothing was written), an error rolls back. `Ok(None)`: the database was locked by
    /// a connection outside the gate (another program), and `work` did not run.
    ///
    /// The work runs on the calling task's thread: a batch is a millisecond or two of CPU-bound
    /// work, and handing it to another thread (and waking the caller again) cost more than a
    /// third of that on two busy cores.
    pub async fn run<T, E, F>(&self, work: F) -> Result<Option<T>, E>
    where
        E: From<sqlx::Error> + From<rusqlite::Error>,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, bool), E>,
    {
        self.run_journaled(|tx, _, _| work(tx)).await
    }

    /// [`Direct::run`], with the Reserve journal: `work` records in the [`Change`] what it did
    /// to the journal table, and the journal's state in memory takes it on once the transaction
    /// has committed, before the write gate opens.
    pub async fn run_journaled<T, E, F>(&self, work: F) -> Result<Option<T>, E>
    where
        E: From<sqlx::Error> + From<rusqlite::Error>,
        F: FnOnce(&rusqlite::Transaction<'_>, &Journal, &mut Change) -> Result<(T, bool), E>,
    {
        self.run_journaled_then(work, |_| {}).await
    }

    /// [`Direct::run_journaled`], and `committed` runs on the value once the transaction has
    /// committed, before the write gate opens (never after a rollback or an error): what it
    /// records in memory is then in the same order as the commits.
    pub async fn run_journaled_then<T, E, F, C>(
        &self,
        work: F,
        committed: C,
    ) -> Result<Option<T>, E>
    where
        E: From<sqlx::Error> + From<rusqlite::Error>,
        F: FnOnce(&rusqlite::Transaction<'_>, &Journal, &mut Change) -> Result<(T, bool), E>,
        C: FnOnce(&mut T),
    {
        let _gate = self.gate.lock().await;
        self.run_holding_gate(work, committed)
    }

    /// The body of [`Direct::run_journaled_then`], for a caller that holds the write gate
    /// already.
    fn run_holding_gate<T, E, F, C>(&self, work: F, committed: C) -> Result<Option<T>, E>
    where
        E: From<sqlx::Error> + From<rusqlite::Error>,
        F: FnOnce(&rusqlite::Transaction<'_>, &Journal, &mut Change) -> Result<(T, bool), E>,
        C: FnOnce(&mut T),
    {
        // A panic inside `work` rolls its transaction back (Transaction's drop) before the
        // mutex is poisoned, so the connection is still sound.
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = guard.as_mut() else {
            return Err(E::from(sqlx::Error::PoolClosed));
        };
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                return Ok(None);
            }
            Err(err) => return Err(E::from(err)),
        };
        let mut change = Change::default();
        let (mut value, commit) = work(&tx, &self.journal, &mut change)?;
        if commit {
            tx.commit()?;
            self.journal.committed(change);
            committed(&mut value);
        } else {
            tx.rollback()?;
        }
        Ok(Some(value))
    }

    /// Folds the Reserve journal into its tables: all of it (`chunk` None), in one transaction,
    /// or one chunk of about `chunk` reservations. Takes the write gate. Returns whether the
    /// journal is empty now. The database locked by another program is an error (retryable):
    /// nothing was folded, and a transaction or read must not go on without it.
    pub async fn fold(&self, chunk: Option<u64>) -> Result<bool, sqlx::Error> {
        if self.journal.is_empty() {
            return Ok(true);
        }
        let _gate = self.gate.lock().await;
        self.fold_holding_gate(chunk)
    }

    /// [`Direct::fold`] for a caller that holds the write gate.
    ///
    /// A fold is milliseconds of work per chunk, and the whole journal after a long burst is a
    /// second or more: it runs off the runtime's thread ([`off_the_runtime`]). Inline, the tasks
    /// queued on that thread waited for it (a task just woken there cannot be taken by another
    /// thread), and a counter's listing during a burst held some Reserves for the whole fold:
    /// p99.9 350-632 ms (BENCHMARKS.md).
    pub(super) fn fold_holding_gate(&self, chunk: Option<u64>) -> Result<bool, sqlx::Error> {
        if self.journal.is_empty() {
            return Ok(true);
        }
        let started = std::time::Instant::now();
        let before = self.journal.pending();
        let emptied = off_the_runtime(|| {
            self.run_holding_gate(
                |tx, journal, change| {
                    journal.fold(tx, chunk, change)?;
                    Ok::<_, StoreError>((change.emptied(), true))
                },
                |_| {},
            )
        })
        .map_err(|StoreError(err)| err)?
        .ok_or(sqlx::Error::PoolTimedOut)?;
        tracing::debug!(
            folded = before.saturating_sub(self.journal.pending()),
            left = self.journal.pending(),
            ms = started.elapsed().as_millis() as u64,
            "Reserve journal folded"
        );
        Ok(emptied)
    }

    /// A PASSIVE checkpoint on this connection with the write gate held, so no commit lands
    /// while it runs and, when no reader holds older frames, it completes (see
    /// `store::checkpoint`). Runs on the calling task's thread, like [`Direct::run`]. None once
    /// the connection is closed.
    pub async fn checkpoint(&self) -> rusqlite::Result<Option<WalState>> {
        let _gate = self.gate.lock().await;
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = guard.as_ref() else {
            return Ok(None);
        };
        conn.query_row(checkpoint::PASSIVE, [], |row| WalState::from_row(row))
            .map(Some)
    }

    /// Closes the connection (later [`Direct::run`] calls fail with PoolClosed).
    pub fn close(&self) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(conn) = conn {
            close_connection(conn, "hot path");
        }
    }
}

/// Runs `work`, a blocking call of milliseconds or more, so that the other tasks of the tokio
/// thread that calls it go on: on a multi-threaded runtime the thread first hands its queue of
/// tasks to another (`block_in_place`); elsewhere (a current-thread runtime, or none) inline.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Most connections of [`Reads`]. A read runs on the calling thread and never across an
/// `.await`, so it needs a connection only while a thread runs it: the tokio workers (one per
/// core) and a few to spare. A read that finds none free goes through sqlx.
pub const MAX_READ_CONNECTIONS: usize = 4;

/// Connections of their own (rusqlite) for the busiest reads, GetQuota and WatchQuota's
/// refreshes: a read's few statements run in one read transaction, as function calls on the
/// calling thread. Through sqlx each statement, and each row it returns, is a message to a
/// connection's thread and back: about 100 µs of server CPU per GetQuota (BENCHMARKS.md).
///
/// They only read (`PRAGMA query_only`), and a read transaction holds no lock a writer waits
/// for in WAL mode. Opened when first needed, at most [`MAX_READ_CONNECTIONS`].
pub struct Reads {
    path: PathBuf,
    pragmas: String,
    /// The free connections; None once closed.
    idle: Mutex<Option<Vec<Connection>>>,
    /// Connections open, free or in use.
    open: AtomicUsize,
}

/// A connection of [`Reads`] in use; back to the free ones when dropped (closed instead once
/// the store is closed).
struct Lease<'r> {
    reads: &'r Reads,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut idle = self.reads.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.as_mut() {
            Some(free) => free.push(conn),
            None => {
                drop(idle);
                self.reads.open.fetch_sub(1, Ordering::SeqCst);
                close_connection(conn, "read");
            }
        }
    }
}

impl Reads {
    /// Read connections to the database file at `path` (already created and migrated), each
    /// opened with `pragmas` when first needed.
    pub fn new(path: &Path, pragmas: &str) -> Reads {
        Reads {
            path: path.to_path_buf(),
            pragmas: pragmas.to_string(),
            idle: Mutex::new(Some(Vec::new())),
            open: AtomicUsize::new(0),
        }
    }

    /// Runs `work` in one read transaction, so every statement sees the same committed state.
    /// `Ok(None)`: no connection is free, the store is closed, or the database is busy (a
    /// connection outside the process is recovering the WAL, say); `work` did not run, and the
    /// caller reads through sqlx, which waits on its own thread.
    pub fn read<T, E>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<Option<T>, E>
    where
        E: From<rusqlite::Error>,
    {
        let Some(mut lease) = self.lease()? else {
            return Ok(None);
        };
        let Some(conn) = lease.conn.as_mut() else {
            return Ok(None);
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        // The read transaction (its snapshot of the WAL) begins with the first read; begin it
        // here, so that a busy database is the caller's cue and not an error from `work`.
        match tx.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0)) {
            Ok(_) => {}
            Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                return Ok(None);
            }
            Err(err) => return Err(E::from(err)),
        }
        let value = work(&tx)?;
        // Nothing to keep: ending the read transaction releases its snapshot.
        tx.commit()?;
        Ok(Some(value))
    }

    /// A free connection, a new one while fewer than the most are open, or None.
    fn lease(&self) -> rusqlite::Result<Option<Lease<'_>>> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let Some(free) = idle.as_mut() else {
                return Ok(None);
            };
            if let Some(conn) = free.pop() {
                return Ok(Some(Lease {
                    reads: self,
                    conn: Some(conn),
                }));
            }
            let reserved = self
                .open
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < MAX_READ_CONNECTIONS).then_some(n + 1)
                })
                .is_ok();
            if !reserved {
                return Ok(None);
            }
        }
        // Opened outside the lock; the count above already holds its place.
        match self.open_connection() {
            Ok(conn) => Ok(Some(Lease {
                reads: self,
                conn: Some(conn),
            })),
            Err(err) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                Err(err)
            }
        }
    }

    fn open_connection(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(&self.pragmas)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        // Never wait here: the wait would hold a tokio worker thread; see [`Reads::read`].
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(conn)
    }

    /// Closes the free connections; those in use close when their read ends, and no read
    /// starts after this.
    pub fn close(&self) {
        let free = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        for conn in free {
            self.open.fetch_sub(1, Ordering::SeqCst);
            close_connection(conn, "read");
        }
    }

    /// Connections open now (free or in use).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn close_connection(conn: Connection, which: &str) {
    if let Err((_, err)) = conn.close() {
        tracing::warn!(error = %err, connection = which, "closing an SQLite connection failed");
    }
}

/// A statement parameter: a [`Value`], or one borrowed ([`ValueRef`]).
pub trait Param {
    /// The value, borrowed.
    fn param(&self) -> ValueRef<'_>;
}

impl Param for Value {
    fn param(&self) -> ValueRef<'_> {
        self.as_ref()
    }
}

impl Param for ValueRef<'_> {
    fn param(&self) -> ValueRef<'_> {
        *self
    }
}

fn bind<P: Param>(statement: &mut Statement<'_>, values: &[P]) -> rusqlite::Result<()> {
    for (i, value) in values.iter().enumerate() {
        match value.param() {
            ValueRef::Int(v) => statement.raw_bind_parameter(i + 1, v)?,
            ValueRef::Text(v) => statement.raw_bind_parameter(i + 1, v)?,
            ValueRef::Bytes(v) => statement.raw_bind_parameter(i + 1, v)?,
        }
    }
    Ok(())
}

/// Runs a write statement; returns the rows it changed.
pub fn execute(conn: &Connection, sql: &str, values: &[Value]) -> rusqlite::Result<usize> {
    Prepared::new(conn, sql)?.execute(values)
}

/// Runs a query and maps each row.
pub fn query<T>(
    conn: &Connection,
    sql: &str,
    values: &[Value],
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    Prepared::new(conn, sql)?.query(values, map)
}

/// Runs a query for at most one row.
pub fn query_optional<T>(
    conn: &Connection,
    sql: &str,
    values: &[Value],
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    Prepared::new(conn, sql)?.query_optional(values, map)
}

/// One cached statement run many times, for a batch's rows or its per-Reserve probes: looked up
/// in the connection's statement cache once (hashing the SQL text) instead of once per run.
pub struct Prepared<'c>(rusqlite::CachedStatement<'c>);

impl<'c> Prepared<'c> {
    /// The cached statement for `sql`.
    pub fn new(conn: &'c Connection, sql: &str) -> rusqlite::Result<Prepared<'c>> {
        Ok(Prepared(conn.prepare_cached(sql)?))
    }

    /// Runs it as a write with `values` bound to `?1..?n`; returns the rows it changed.
    pub fn execute<P: Param>(&mut self, values: &[P]) -> rusqlite::Result<usize> {
        bind(&mut self.0, values)?;
        self.0.raw_execute()
    }

    /// Runs it as a query with `values` bound, and maps each row.
    pub fn query<T, P: Param>(
        &mut self,
        values: &[P],
        mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        bind(&mut self.0, values)?;
        let mut rows = self.0.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    }

    /// Runs it as a query for at most one row.
    pub fn query_optional<T, P: Param>(
        &mut self,
        values: &[P],
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Option<T>> {
        bind(&mut self.0, values)?;
        let mut rows = self.0.raw_query();
        rows.next()?.map(map).transpose()
    }
}

/// The read statements shared with sqlx's path (`rows`), with numbered placeholders, written
/// once for every module that runs them here.
pub struct SharedSql {
    /// [`rows::OFFICE_BY_ID`].
    pub office: String,
    /// [`rows::SERVICE_POINT_BY_ID`].
    pub service_point: String,
    /// [`rows::QUOTA_DAY_BY_ID`].
    pub quota_day: String,
    /// [`rows::SERVICE_POINTS_OF_OFFICE`].
    pub service_points_of_office: String,
    /// [`rows::QUOTA_DAYS_OF_OFFICE`].
    pub quota_days_of_office: String,
    /// [`rows::OFFICE_USED_AND_WAITING`].
    pub office_used_and_waiting: String,
}

/// See [`SharedSql`].
pub static SHARED_SQL: LazyLock<SharedSql> = LazyLock::new(|| SharedSql {
    office: numbered(&rows::OFFICE_BY_ID),
    service_point: numbered(&rows::SERVICE_POINT_BY_ID),
    quota_day: numbered(&rows::QUOTA_DAY_BY_ID),
    service_points_of_office: numbered(&rows::SERVICE_POINTS_OF_OFFICE),
    quota_days_of_office: numbered(&rows::QUOTA_DAYS_OF_OFFICE),
    office_used_and_waiting: numbered(&rows::OFFICE_USED_AND_WAITING),
});

/// One office by id, as `rows::office` reads it through sqlx (without a lock).
pub fn office(conn: &Connection, office_id: &str) -> rusqlite::Result<Option<rows::OfficeRow>> {
    query_optional(conn, &SHARED_SQL.office, &[Value::text(office_id)], |r| {
        rows::OfficeRow::from_row(r)
    })
}

/// The statement text with sqlx's `$n` placeholders written as SQLite's numbered `?n`, so a
/// statement shared with the sqlx code path binds by number here too (`$n` would be a *named*
/// parameter to SQLite, numbered by first appearance).
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let placeholder = c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit());
        out.push(if placeholder { '?' } else { c });
    }
    out
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, column: &str) -> rusqlite::Result<String> {
        self.get(column)
    }
    fn int(&self, column: &str) -> rusqlite::Result<i64> {
        self.get(column)
    }
    fn bytes(&self, column: &str) -> rusqlite::Result<Vec<u8>> {
        self.get(column)
    }
}

/// An error of the hot path's connection, as a sqlx database error, so callers see one kind of
/// database failure whichever connection failed.
#[derive(Debug)]
pub struct DirectError {
    message: String,
    code: Option<String>,
    source: rusqlite::Error,
}

impl From<rusqlite::Error> for DirectError {
    fn from(source: rusqlite::Error) -> Self {
        let code = source.sqlite_error().map(|e| e.extended_code.to_string());
        DirectError {
            message: source.to_string(),
            code,
            source,
        }
    }
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for DirectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl sqlx::error::DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                match self.source.sqlite_error().map(|e| e.extended_code) {
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
                    | Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                        sqlx::error::ErrorKind::UniqueViolation
                    }
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK) => {
                        sqlx::error::ErrorKind::CheckViolation
                    }
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                        sqlx::error::ErrorKind::ForeignKeyViolation
                    }
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL) => {
                        sqlx::error::ErrorKind::NotNullViolation
                    }
                    _ => sqlx::error::ErrorKind::Other,
                }
            }
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

/// A rusqlite error as a sqlx one.
pub fn to_sqlx(err: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(DirectError::from(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with one table of `n` rows, in WAL mode, and the connection that wrote it.
    fn database(dir: &Path, n: i64) -> (PathBuf, Connection) {
        let path = dir.join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n BIGINT NOT NULL);")
            .unwrap();
        for i in 0..n {
            execute(&conn, "INSERT INTO t (n) VALUES (?1)", &[Value::Int(i)]).unwrap();
        }
        (path, conn)
    }

    fn count(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
        tx.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
    }

    /// What a caller keeps in memory after a commit (the Reserve batch's office rows) is kept
    /// in commit order: `committed` runs once the COMMIT is done and before the write gate
    /// opens, and never for a rolled-back or failed transaction.
    #[tokio::test]
    async fn what_runs_after_a_commit_runs_before_the_write_gate_opens_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path(), 0);
        writer
            .execute_batch(
                "CREATE TABLE reserve_journal (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, \
                 reservations BIGINT NOT NULL);",
            )
            .unwrap();
        let direct = Direct::open(
            &path,
            "PRAGMA journal_mode = WAL;",
            journal::Limits::default(),
        )
        .unwrap();
        let gate = direct.gate();
        let insert = |commit: bool| {
            move |tx: &rusqlite::Transaction<'_>, _: &Journal, _: &mut Change| {
                execute(tx, "INSERT INTO t (n) VALUES (1)", &[])?;
                Ok::<_, StoreError>((count(tx)?, commit))
            }
        };
        let mut seen = Vec::new();
        let value = direct
            .run_journaled_then(insert(true), |n| {
                let visible = writer
                    .query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .unwrap();
                seen.push((*n, visible, gate.try_lock().is_err()));
            })
            .await
            .map_err(|StoreError(e)| e)
            .unwrap();
        assert_eq!(value, Some(1));
        assert_eq!(
            seen,
            vec![(1, 1, true)],
            "(value, committed rows seen elsewhere, gate held)"
        );
        direct
            .run_journaled_then(insert(false), |_| panic!("ran after a rollback"))
            .await
            .map_err(|StoreError(e)| e)
            .unwrap();
        let failed = direct
            .run_journaled_then(
                |tx, _, _| {
                    execute(tx, "INSERT INTO missing (n) VALUES (1)", &[])?;
                    Ok::<_, StoreError>(((), true))
                },
                |_| panic!("ran after an error"),
            )
            .await;
        assert!(failed.is_err());
        assert!(gate.try_lock().is_ok(), "the gate opens after each");
    }

    /// `.cargo/config.toml` builds the bundled SQLite with SQLITE_DEFAULT_MEMSTATUS=0; a build
    /// that lost the setting (another config, a system SQLite) fails here, not in a benchmark.
    #[test]
    fn the_bundled_sqlite_keeps_no_memory_statistics() {
        let conn = Connection::open_in_memory().unwrap();
        let mut options = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = options
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "compile options: {options:?}"
        );
    }

    #[test]
    fn reads_see_what_was_committed_and_never_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path(), 3);
        let reads = Reads::new(&path, "PRAGMA busy_timeout = 5000;");
        assert_eq!(reads.read(count).unwrap(), Some(3));
        execute(&writer, "INSERT INTO t (n) VALUES (?1)", &[Value::Int(9)]).unwrap();
        assert_eq!(reads.read(count).unwrap(), Some(4));
        // One connection served both reads: it went back to the free ones after each.
        assert_eq!(reads.open_connections(), 1);

        let write = reads.read(|tx| tx.execute("DELETE FROM t", []));
        let err = write.unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        assert_eq!(reads.read(count).unwrap(), Some(4), "nothing was deleted");
    }

    #[test]
    fn a_prepared_statement_runs_again_with_each_row_values() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, conn) = database(dir.path(), 0);
        let mut insert = Prepared::new(&conn, "INSERT INTO t (n) VALUES (?1)").unwrap();
        for n in [7, 8, 9] {
            assert_eq!(insert.execute(&[Value::Int(n)]).unwrap(), 1);
        }
        let mut probe = Prepared::new(&conn, "SELECT n FROM t WHERE n = ?1").unwrap();
        let found: Vec<Option<i64>> = [9, 5, 7]
            .into_iter()
            .map(|n| {
                probe
                    .query_optional(&[Value::Int(n)], |r| r.get(0))
                    .unwrap()
            })
            .collect();
        // Each run sees its own values, not the first run's, and a miss does not stick.
        assert_eq!(found, vec![Some(9), None, Some(7)]);
        let total: i64 = conn
            .query_row("SELECT SUM(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 24);
    }

    #[test]
    fn reads_use_at_most_the_bounded_connections_and_none_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(dir.path(), 1);
        let reads = Reads::new(&path, "");

        // Reads nested inside one another each hold a connection: the one past the bound is
        // told to go elsewhere (None) instead of waiting or opening more.
        fn nested(reads: &Reads, depth: usize) -> rusqlite::Result<Option<usize>> {
            reads
                .read(|_| nested(reads, depth + 1))
                .map(|inner| match inner {
                    Some(deepest) => deepest,
                    None => Some(depth),
                })
        }
        assert_eq!(nested(&reads, 0).unwrap(), Some(MAX_READ_CONNECTIONS));
        assert_eq!(reads.open_connections(), MAX_READ_CONNECTIONS);

        // Closed while a read runs: that read ends normally, its connection closes after it,
        // and no read starts afterwards.
        let during = reads.read(|tx| {
            reads.close();
            count(tx)
        });
        assert_eq!(during.unwrap(), Some(1));
        assert_eq!(reads.open_connections(), 0);
        assert_eq!(reads.read(count).unwrap(), None);
    }

    #[test]
    fn shared_statements_bind_by_number() {
        assert_eq!(
            numbered("UPDATE t SET a = $1 WHERE b = $2 AND c = $12"),
            "UPDATE t SET a = ?1 WHERE b = ?2 AND c = ?12"
        );
        assert_eq!(numbered("SELECT '$x', $3"), "SELECT '$x', ?3");
    }

    #[test]
    fn rows_decode_and_errors_keep_their_kind() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT NOT NULL, b BLOB NOT NULL, CHECK (n >= 0));",
        )
        .unwrap();
        let row = [
            Value::Text("a".into()),
            Value::Int(7),
            Value::Bytes(vec![1, 2]),
        ];
        assert_eq!(
            execute(&conn, "INSERT INTO t (id, n, b) VALUES (?1, ?2, ?3)", &row).unwrap(),
            1
        );
        let got = query(
            &conn,
            "SELECT id, n, b FROM t WHERE n = ?1",
            &[Value::Int(7)],
            |r| Ok((r.text("id")?, r.int("n")?, r.bytes("b")?, r.flag("n")?)),
        )
        .unwrap();
        assert_eq!(got, vec![("a".to_string(), 7, vec![1, 2], true)]);
        assert!(
            query_optional(
                &conn,
                "SELECT id FROM t WHERE n = ?1",
                &[Value::Int(8)],
                |r| r.text("id")
            )
            .unwrap()
            .is_none()
        );

        let duplicate = execute(&conn, "INSERT INTO t (id, n, b) VALUES (?1, ?2, ?3)", &row)
            .map_err(to_sqlx)
            .unwrap_err();
        let sqlx::Error::Database(db) = &duplicate else {
            panic!("{duplicate:?}")
        };
        assert_eq!(db.kind(), sqlx::error::ErrorKind::UniqueViolation);
        assert!(db.message().contains("UNIQUE"), "{}", db.message());

        let negative = [
            Value::Text("b".into()),
            Value::Int(-1),
            Value::Bytes(Vec::new()),
        ];
        let broken = execute(
            &conn,
            "INSERT INTO t (id, n, b) VALUES (?1, ?2, ?3)",
            &negative,
        )
        .map_err(to_sqlx)
        .unwrap_err();
        let sqlx::Error::Database(db) = &broken else {
            panic!("{broken:?}")
        };
        assert_eq!(db.kind(), sqlx::error::ErrorKind::CheckViolation);
    }
}

//! `blangko-server backup`: a consistent online copy of a SQLite database, taken while a server
//! runs on it, plus the NIK key that makes the copy usable.
//!
//! The copy is SQLite's `VACUUM INTO` over a connection of its own: one read transaction, so the
//! copy is the database as of one instant (WAL mode: the server's writes go on meanwhile; readers
//! and the writer do not block each other). It does not take the server's lock file
//! (`<db>.lock`) and writes nothing to the source. A backup without the NIK key is useless for
//! the one-person-one-blank rule (stored NIK hashes could not be matched again), so the key file
//! is copied beside the backup as `<backup>.nikkey` with mode 0600 — where a server started on the
//! backup looks for it by default. The key is checked against the fingerprint the database
//! keeps of the key its NIKs were hashed with (`nik_key_check`): a backup with the wrong key
//! would look complete, yet a server started on it refuses to start (or, with
//! `--nik-key-changed`, no longer knows who holds a blank). PostgreSQL is refused with a pointer
//! to its own tools.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sqlx::{Connection, Row};

use super::sqlite_path;
use crate::nik_key::{NikKey, default_key_path};

/// How long the copy's connection waits for a lock the server holds briefly (e.g. a checkpoint).
const BUSY_TIMEOUT_MS: u32 = 5_000;

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The copy of the database.
    pub database: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Ledger entries in the copy (all offices).
    pub ledger_entries: i64,
    /// Offices in the copy.
    pub offices: i64,
    /// Where the NIK key went (copied beside the backup), or why it was not copied.
    pub key: KeyCopy,
    /// Working files that earlier backups to the same name left when they were killed or cut
    /// by a power loss (`NAME.partial-PID` of a process no longer running, untouched for
    /// [`STALE_PARTIAL_AFTER`]), removed.
    pub stale_removed: Vec<PathBuf>,
    /// Such files that could not be removed, and why (the backup itself went on).
    pub stale_left: Vec<String>,
}

/// What happened to the NIK key.
#[derive(Debug, Clone)]
pub enum KeyCopy {
    /// Copied to this file (mode 0600).
    Copied(PathBuf),
    /// The running servers take the key from the environment (BLANGKO_NIK_KEY): nothing to copy.
    InEnvironment,
}

/// Copies the SQLite database of `database_url` to `to` (which must not exist) and its NIK key
/// (`nik_key_file`, or the default `<db>.nikkey`) to `<to>.nikkey`.
pub async fn backup(
    database_url: &str,
    nik_key_file: Option<&Path>,
    key_in_environment: bool,
    to: &Path,
) -> anyhow::Result<BackupReport> {
    let Some(source) = sqlite_path(database_url) else {
        if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            bail!(
                "`backup` copies SQLite databases only. For PostgreSQL use its own tools: \
                 `pg_dump --format=custom --file=blangko.dump URL` (restore with `pg_restore --dbname=URL blangko.dump`) \
                 or `pg_basebackup` for a physical copy; keep the NIK key file (--nik-key-file) with the dump"
            );
        }
        bail!("unsupported database URL (expected sqlite:PATH): {database_url}");
    };
    if !source.is_file() {
        bail!("no SQLite database at {}", source.display());
    }
    let key_to = key_path_beside(to);
    for target in [to, key_to.as_path()] {
        if target.exists() {
            bail!(
                "{} already exists; a backup never overwrites a file (choose a new name)",
                target.display()
            );
        }
    }
    let key_from = nik_key_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_key_path(&source));
    if !key_in_environment && !key_from.is_file() {
        bail!(
            "the NIK key {} is missing; without it a backup cannot be used (give --nik-key-file)",
            key_from.display()
        );
    }
    // The key the copy goes with, read before anything is written: its fingerprint must be the
    // one the database keeps.
    let key = if key_in_environment {
        let hex = std::env::var("BLANGKO_NIK_KEY").unwrap_or_default();
        NikKey::from_hex(&hex).context("BLANGKO_NIK_KEY")?
    } else {
        NikKey::load_or_create(&key_from, false)?
    };
    let key_source = if key_in_environment {
        "BLANGKO_NIK_KEY".to_string()
    } else {
        key_from.display().to_string()
    };
    let key_check = KeyCheck {
        fingerprint: key.check_fingerprint(),
        source: &key_source,
    };

    // The copy is written under a name of its own and takes the backup's name only once it is
    // checked and durable: a backup killed, or cut by a power loss, half-way never leaves a
    // partial file under the name a rotation or an off-site job picks up. A copy that fails is
    // removed, so that a second attempt is not refused for a file that is no backup.
    let partial = partial_path(to);
    let _ = std::fs::remove_file(&partial);
    let copied = async {
        // The copy holds NIK hashes and masked NIKs: made here, new and readable by its owner
        // only, before SQLite fills it (SQLite would create it 0644, and a file someone else
        // made under that name first is refused, never written into).
        crate::nik_key::write_private(&partial, &[])
            .with_context(|| format!("cannot create the backup {}", partial.display()))?;
        let figures = copy_and_check(&source, &partial, &key_check).await?;
        // SQLite does not fsync what VACUUM INTO writes: make the copy durable first.
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync the backup {}", partial.display()))?;
        // The key first, so that a backup never stands without its key (a crash between the
        // two leaves only a key, and a second attempt under that name is refused, saying so).
        if !key_in_environment {
            copy_key(&key_from, &key_to)?;
        }
        if let Err(err) = name_new(&partial, to) {
            if !key_in_environment {
                let _ = std::fs::remove_file(&key_to);
            }
            return Err(err.context(format!("cannot name the backup {}", to.display())));
        }
        anyhow::Ok(figures)
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    let (ledger_entries, offices) = copied?;
    // The backup's and its key's directory entries, durable before saying the backup exists.
    crate::nik_key::sync_directory_of(to)?;
    // A backup killed half-way (or cut by a power loss) left its working copy, as large as the
    // database and holding its NIK hashes, under a name no later backup reuses (the PID is in
    // it): the next backup to the same name that succeeds removes it, once it is stale.
    let mut stale = Stale::default();
    stale.remove_partials_of(to);
    stale.remove_partials_of(&key_to);
    let bytes = std::fs::metadata(to)?.len();

    let key = if key_in_environment {
        KeyCopy::InEnvironment
    } else {
        KeyCopy::Copied(key_to)
    };
    Ok(BackupReport {
        database: to.to_path_buf(),
        bytes,
        ledger_entries,
        offices,
        key,
        stale_removed: stale.removed,
        stale_left: stale.left,
    })
}

/// How long a working file must have been left untouched before a later backup removes it:
/// a backup at work writes its copy all along (`/proc` shows only this PID namespace's
/// processes, and a backup in another container may write to the same directory).
pub const STALE_PARTIAL_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// What the clean-up of earlier backups' working files did.
#[derive(Debug, Default)]
struct Stale {
    removed: Vec<PathBuf>,
    left: Vec<String>,
}

impl Stale {
    /// Removes the working files `to.partial-PID` ([`partial_path`]) of backups whose process
    /// no longer runs and that nothing wrote to for [`STALE_PARTIAL_AFTER`]. A process that
    /// still runs may be a backup at work: its file is kept. Where no process list can be read
    /// (`/proc`, Linux), nothing is removed. A file that cannot be removed is noted, not fatal.
    fn remove_partials_of(&mut self, to: &Path) {
        let Some(name) = to.file_name() else {
            return;
        };
        let dir = crate::nik_key::directory_of(to);
        let proc = Path::new("/proc");
        if !proc.join("self").exists() {
            return;
        }
        let prefix = format!("{}.partial-", name.to_string_lossy());
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) => {
                self.left
                    .push(format!("cannot read {}: {err}", dir.display()));
                return;
            }
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || proc.join(pid.to_string()).exists() {
                continue;
            }
            let path = entry.path();
            let untouched = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age >= STALE_PARTIAL_AFTER);
            if !untouched {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(err) => self.left.push(format!(
                    "cannot remove {}, left by an interrupted backup: {err}",
                    path.display()
                )),
            }
        }
        removed.sort();
        self.removed.extend(removed);
    }
}

/// `backup.db` → `backup.db.nikkey`: where a server started on the backup looks for its key.
pub fn key_path_beside(backup: &Path) -> PathBuf {
    default_key_path(backup)
}

/// The NIK key a backup goes with: the fingerprint the copy's `nik_key_check` must hold, and
/// where the key came from (for the message when it does not).
struct KeyCheck<'a> {
    fingerprint: String,
    source: &'a str,
}

/// `VACUUM INTO` the copy over a read-only connection of its own, then SQLite's integrity check
/// of the copy and its NIK key fingerprint; returns its ledger entries and offices.
async fn copy_and_check(
    source: &Path,
    to: &Path,
    key: &KeyCheck<'_>,
) -> anyhow::Result<(i64, i64)> {
    // Read-only, no lock file: the running server keeps its exclusive lock and its writer.
    let url = format!("sqlite://{}?mode=ro", source.display());
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("cannot open {} for reading", source.display()))?;
    sqlx::query(&format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"))
        .execute(&mut conn)
        .await?;
    let target = to
        .to_str()
        .context("the backup path must be valid UTF-8")?
        .to_string();
    sqlx::query("VACUUM INTO $1")
        .bind(&target)
        .execute(&mut conn)
        .await
        .with_context(|| format!("cannot write the backup {}", to.display()))?;
    conn.close().await?;

    // Check the copy itself: SQLite's integrity check and what it holds.
    let mut copy = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{target}?mode=ro"))
        .await
        .with_context(|| format!("cannot open the backup {}", to.display()))?;
    let check: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await?
        .try_get(0)?;
    if check != "ok" {
        bail!(
            "the backup {} fails SQLite's integrity check: {check}",
            to.display()
        );
    }
    // No row: no server has started on this database yet, so no NIK was hashed with any key.
    let stored: Option<String> =
        sqlx::query_scalar("SELECT fingerprint FROM nik_key_check WHERE id = 1")
            .fetch_optional(&mut copy)
            .await?;
    if let Some(stored) = stored
        && stored != key.fingerprint
    {
        bail!(
            "the NIK key from {} is not the key this database's NIKs were hashed with (check {}…, \
             this key's {}…): a backup with it could not be used. Give the key the server runs \
             with (--nik-key-file, or BLANGKO_NIK_KEY); no backup was written",
            key.source,
            stored.chars().take(12).collect::<String>(),
            key.fingerprint.chars().take(12).collect::<String>()
        );
    }
    let ledger_entries: i64 = sqlx::query("SELECT COUNT(*) FROM ledger")
        .fetch_one(&mut copy)
        .await?
        .try_get(0)?;
    let offices: i64 = sqlx::query("SELECT COUNT(*) FROM offices")
        .fetch_one(&mut copy)
        .await?
        .try_get(0)?;
    copy.close().await?;
    Ok((ledger_entries, offices))
}

/// Copies the key to a new file readable by its owner only.
fn copy_key(from: &Path, to: &Path) -> anyhow::Result<()> {
    let key = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    // Written whole under a name of its own, then named: a crash never leaves an empty or
    // partial key under the name a restore looks for.
    let partial = partial_path(to);
    let _ = std::fs::remove_file(&partial);
    let written = crate::nik_key::write_private(&partial, &key)
        .and_then(|()| name_new(&partial, to))
        .with_context(|| format!("cannot write the key {}", to.display()));
    let _ = std::fs::remove_file(&partial);
    written
}

/// The name a file is written under before it takes the name `to`: `to.partial-PID`.
fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Gives the file `partial` the name `to`, never replacing a file of that name: a hard link
/// (which fails if `to` exists), or, on a file system without hard links (exFAT, SMB shares,
/// some FUSE mounts), a rename once `to` is found free.
fn name_new(partial: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::hard_link(partial, to) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} exists now; a backup never overwrites a file",
                to.display()
            )
        }
        Err(link) => {
            if std::fs::symlink_metadata(to).is_ok() {
                bail!(
                    "{} exists now; a backup never overwrites a file",
                    to.display()
                );
            }
            std::fs::rename(partial, to)
                .with_context(|| format!("cannot rename it into place (nor link it: {link})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_or_its_key_takes_a_new_name_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("b.db.partial-1");
        let to = dir.path().join("b.db");
        std::fs::write(&partial, b"copy").unwrap();
        name_new(&partial, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"copy");
        // A file under the name: refused, and left as it was. (The partial name is removed
        // after naming, as `backup` does: it is a second link to the same file.)
        std::fs::remove_file(&partial).unwrap();
        std::fs::write(&partial, b"another").unwrap();
        let err = name_new(&partial, &to).expect_err("the name is taken");
        assert!(err.to_string().contains("never overwrites"), "{err}");
        assert_eq!(std::fs::read(&to).unwrap(), b"copy");
        // The key: written whole under its name, with no partial file left beside it.
        let key_from = dir.path().join("live.nikkey");
        std::fs::write(&key_from, b"0123").unwrap();
        let key_to = dir.path().join("b.db.nikkey");
        copy_key(&key_from, &key_to).unwrap();
        assert_eq!(std::fs::read(&key_to).unwrap(), b"0123");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("b.db.nikkey."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(
            copy_key(&key_from, &key_to).is_err(),
            "a key is never replaced"
        );
    }
}

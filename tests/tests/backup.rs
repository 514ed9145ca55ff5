//! `blangko-server backup`: an online copy of a running server's SQLite database. Reserves and
//! commits keep flowing while the backup is taken; afterwards a server started on the copy
//! serves, its ledger verifies, its held and committed counts match its own reservations, and
//! the copied NIK key still recognises an applicant; the original server kept serving throughout
//! and lost nothing. The backup refuses a NIK key other than the database's, to overwrite a
//! file, and PostgreSQL.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use blangko_e2e::fixtures::{all_reservations, office_with_point, reserve_request, rid};
use blangko_e2e::{TestDatabase, TestServer, server_bin};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;

/// The backup is taken once the counters have reserved BACKUP_AFTER applicants; they go on until
/// AFTER_BACKUP more have been reserved once it is done (at most MAX_APPLICANTS in all), so the
/// backup is taken while they are at work (900 stays below the quota and the stock of 1,000).
const BACKUP_AFTER: u32 = 60;
const AFTER_BACKUP: u32 = 20;
const MAX_APPLICANTS: u32 = 900;
/// Pause between two applicants: the pace of busy counters.
const PACE: Duration = Duration::from_millis(25);

/// Runs `blangko-server ARGS` and gives (exit code, stdout, stderr).
async fn server_command(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    // Under the usual umask (022), whatever the test runner's: files the command leaves to
    // their defaults would be readable by everyone, and the test must see that.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(server_bin())
            .args(args)
            .env_remove("BLANGKO_NIK_KEY")
            .output(),
    )
    .await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

#[cfg(unix)]
fn mode_of(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// A fresh SQLite database served by a server process, with office 3275 and its service point
/// "main" (`quota` a day, `blanks` in stock): the database, its file and the server.
async fn served(
    quota: u32,
    blanks: u32,
) -> anyhow::Result<(Arc<TestDatabase>, std::path::PathBuf, TestServer)> {
    let db = TestDatabase::sqlite().await?;
    let source = db
        .sqlite_file()
        .ok_or_else(|| anyhow::anyhow!("not SQLite"))?;
    let server = TestServer::spawn_process_on(db.clone(), &[]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", quota, blanks).await?;
    Ok((db, source, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_is_consistent_and_serves_while_the_original_goes_on() -> anyhow::Result<()>
{
    let (db, source, server) = served(1000, 1000).await?;

    let backup_file = db.dir.path().join("backup").join("blangko-copy.db");
    std::fs::create_dir_all(backup_file.parent().unwrap_or(db.dir.path()))?;
    let backup_arg = backup_file.display().to_string();
    let database_arg = format!("sqlite:{}", source.display());
    let key_arg = db.nik_key_file.display().to_string();

    // Counters at work: every applicant reserved, every third card printed at once.
    let mut counter = server.counter_client().await?;
    let (going, mut started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut going = Some(going);
    let progress = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (work_progress, work_stop) = (Arc::clone(&progress), Arc::clone(&stop));
    let work = tokio::spawn(async move {
        let mut reserved = Vec::new();
        for n in 0..MAX_APPLICANTS {
            if work_stop.load(Ordering::SeqCst) {
                break;
            }
            let answer = counter
                .reserve(reserve_request("3275", "main", n))
                .await?
                .into_inner();
            let Some(Outcome::Reservation(r)) = answer.outcome else {
                anyhow::bail!("applicant {n} was not reserved");
            };
            if n % 3 == 0 {
                counter
                    .commit_reservation(CommitReservationRequest {
                        request_id: rid(),
                        reservation_id: r.reservation_id.clone(),
                    })
                    .await?;
            }
            reserved.push(r.reservation_id);
            work_progress.store(n + 1, Ordering::SeqCst);
            if n + 1 == BACKUP_AFTER
                && let Some(going) = going.take()
            {
                // Tell the test to take the backup now, and keep going.
                let _ = going.send(());
            }
            // The pace of busy counters, so the backup is taken while they are at work.
            tokio::time::sleep(PACE).await;
        }
        Ok(reserved)
    });

    // Once the counters are past BACKUP_AFTER applicants, back up while they go on.
    tokio::time::timeout(Duration::from_secs(60), &mut started_rx).await??;
    let mut counter = server.counter_client().await?;
    let (code, said, err) = server_command(&[
        "backup",
        "--database",
        &database_arg,
        "--nik-key-file",
        &key_arg,
        "--to",
        &backup_arg,
    ])
    .await?;
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains("backup written to"), "{said}");
    assert!(said.contains("NIK key copied to"), "{said}");
    // The counters go on for AFTER_BACKUP more applicants, then stop.
    let done_at = progress.load(Ordering::SeqCst);
    while progress.load(Ordering::SeqCst) < done_at + AFTER_BACKUP && !work.is_finished() {
        tokio::time::sleep(PACE).await;
    }
    stop.store(true, Ordering::SeqCst);
    let reserved = work.await??;
    let applicants = reserved.len() as u32;
    assert!(
        applicants >= done_at + AFTER_BACKUP,
        "the counters stopped at {applicants}, before {AFTER_BACKUP} more after the backup ({done_at})"
    );

    // The key beside the backup: the same key, readable by its owner only.
    let backup_key = db.dir.path().join("backup").join("blangko-copy.db.nikkey");
    assert_eq!(
        std::fs::read(&backup_key)?,
        std::fs::read(&db.nik_key_file)?
    );
    #[cfg(unix)]
    assert_eq!(mode_of(&backup_key)?, 0o600);
    // The copy holds NIK hashes and masked NIKs: readable by its owner only, like the key.
    #[cfg(unix)]
    assert_eq!(
        mode_of(&db.dir.path().join("backup").join("blangko-copy.db"))?,
        0o600
    );
    // Only the backup and its key are left: the copy's working file took the backup's name.
    assert_eq!(
        names_in(&db.dir.path().join("backup"))?,
        ["blangko-copy.db", "blangko-copy.db.nikkey"]
    );

    // The original kept serving and lost nothing.
    let original = all_reservations(&mut counter, "3275").await?;
    assert_eq!(original.len() as u32, applicants);
    counter
        .reserve(reserve_request("3275", "main", applicants))
        .await?;

    // A server on the copy (its own lock file, the copied key found by default: no
    // --nik-key-file, as an operator's restore).
    let copy_database = format!("sqlite:{backup_arg}");
    let copy =
        TestServer::spawn_process_with_default_key(db.clone(), &["--database", &copy_database])
            .await?;
    let mut copy_stock = copy.stock_client().await?;
    let mut copy_counter = copy.counter_client().await?;
    let verified = copy_stock
        .verify_ledger(VerifyLedgerRequest {
            office_id: "3275".into(),
            published_head_hash: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(verified.intact, "{verified:?}");

    // A snapshot of one instant: between the applicants seen before and all of them.
    let copied = all_reservations(&mut copy_counter, "3275").await?;
    let n = copied.len() as u32;
    assert!(
        // (done_at + 1: the one Reserve in flight when the backup ended may be in the copy.)
        (BACKUP_AFTER..=done_at + 1).contains(&n),
        "the backup holds {n} reservations"
    );
    let count = |state: ReservationState| copied.iter().filter(|r| r.state == state as i32).count();
    let held = count(ReservationState::Held) as u64;
    let committed = count(ReservationState::Committed) as u64;
    assert_eq!(held + committed, u64::from(n));
    let level = copy_stock
        .get_stock(GetStockRequest {
            office_id: "3275".into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default();
    assert_eq!(u64::from(level.held), held);
    assert_eq!(u64::from(level.on_hand), 1000 - committed);
    let quota = copy_counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default();
    assert_eq!(u64::from(quota.held), held);
    assert_eq!(u64::from(quota.committed), committed);

    // The copied key still recognises an applicant: the same NIK gets the same reservation.
    let again = copy_counter
        .reserve(reserve_request("3275", "main", 0))
        .await?
        .into_inner();
    match again.outcome {
        Some(Outcome::Reservation(r)) => {
            assert!(r.replayed, "{r:?}");
            assert_eq!(r.reservation_id, reserved[0]);
        }
        other => anyhow::bail!("expected the same reservation again, got {other:?}"),
    }

    // A key other than the database's: refused, and nothing is left under the backup's name
    // (nor a working file, nor a key beside it; the server on the copy has its files there too).
    let other_key = db.dir.path().join("other.nikkey");
    std::fs::write(&other_key, "ab".repeat(32))?;
    let wrong = db.dir.path().join("backup").join("wrong-key.db");
    let (code, said, err) = server_command(&[
        "backup",
        "--database",
        &database_arg,
        "--nik-key-file",
        &other_key.display().to_string(),
        "--to",
        &wrong.display().to_string(),
    ])
    .await?;
    assert_eq!(code, 1, "{said}{err}");
    assert!(
        err.contains("is not the key this database's NIKs were hashed with"),
        "{err}"
    );
    let left: Vec<String> = names_in(&db.dir.path().join("backup"))?
        .into_iter()
        .filter(|name| name.starts_with("wrong-key"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Never overwrites, and never PostgreSQL.
    let size_before = std::fs::metadata(&backup_file)?.len();
    let (code, _, err) = server_command(&[
        "backup",
        "--database",
        &database_arg,
        "--nik-key-file",
        &key_arg,
        "--to",
        &backup_arg,
    ])
    .await?;
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::metadata(&backup_file)?.len(), size_before);
    let (code, _, err) = server_command(&[
        "backup",
        "--database",
        "postgres://blangko@db.example/blangko",
        "--to",
        &db.dir.path().join("pg.db").display().to_string(),
    ])
    .await?;
    assert_eq!(code, 1);
    assert!(err.contains("pg_dump"), "{err}");
    Ok(())
}

/// A process id that no process has: one past the kernel's largest.
fn pid_of_no_process() -> anyhow::Result<u64> {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    Ok(max + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_copy_of_a_killed_backup_is_removed_by_the_next_one() -> anyhow::Result<()> {
    let (db, source, _server) = served(10, 100).await?;

    // A backup killed half-way under this name an hour ago: its working copy and its key's.
    let dir = db.dir.path().join("nightly");
    std::fs::create_dir_all(&dir)?;
    let gone = pid_of_no_process()?;
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let left = |name: String, bytes: &[u8]| -> anyhow::Result<()> {
        std::fs::write(dir.join(&name), bytes)?;
        std::fs::File::options()
            .write(true)
            .open(dir.join(&name))?
            .set_modified(an_hour_ago)?;
        Ok(())
    };
    left(format!("blangko.db.partial-{gone}"), b"half a copy")?;
    left(format!("blangko.db.nikkey.partial-{gone}"), b"half a key")?;
    // One whose process still runs (this test's): perhaps a backup at work, kept. One of a
    // process not seen here but written to a moment ago (a backup in another container's
    // process space, at work): kept. And files that only look alike: kept.
    let running = format!("blangko.db.partial-{}", std::process::id());
    left(running.clone(), b"a copy in progress")?;
    let fresh = format!("blangko.db.partial-{}", gone + 1);
    std::fs::write(dir.join(&fresh), b"a copy being written elsewhere")?;
    left("blangko.db.partial-notes".into(), b"someone's file")?;
    left(format!("other.db.partial-{gone}"), b"another name's")?;

    let (code, said, err) = server_command(&[
        "backup",
        "--database",
        &format!("sqlite:{}", source.display()),
        "--nik-key-file",
        &db.nik_key_file.display().to_string(),
        "--to",
        &dir.join("blangko.db").display().to_string(),
    ])
    .await?;
    assert_eq!(code, 0, "{said}{err}");
    assert!(
        said.contains(&format!(
            "blangko.db.partial-{gone}: the working copy of an earlier backup that was interrupted"
        )),
        "{said}"
    );
    assert_eq!(
        names_in(&dir)?,
        [
            "blangko.db".to_string(),
            "blangko.db.nikkey".to_string(),
            running,
            fresh,
            "blangko.db.partial-notes".to_string(),
            format!("other.db.partial-{gone}"),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    Ok(())
}

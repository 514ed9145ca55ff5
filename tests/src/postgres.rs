//! PostgreSQL for the tests: each test gets its own database, created and dropped here.
//!
//! Where: `BLANGKO_TEST_DATABASE_URL` (a server the user runs; the URL's user must be allowed to
//! create databases) or, when it is not set, a throwaway cluster started once per test binary
//! from the installed PostgreSQL binaries (the newest `/usr/lib/postgresql/*/bin`, the Debian and
//! Ubuntu layout).
//! PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user and is
//! run through `runuser`. It cannot bind port 0, so a free port is picked first. A watchdog stops
//! the cluster when the test process ends.
//!
//! Where no PostgreSQL is found, [`PgDatabase::create`] FAILS with a message saying how to get
//! one, unless `BLANGKO_SKIP_POSTGRES=1` (then [`backends`] leaves PostgreSQL out).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;
use sqlx::Connection;

use crate::Backend;

/// The backends the parameterized suites run against.
pub fn backends() -> Vec<Backend> {
    if skip_postgres() {
        eprintln!("BLANGKO_SKIP_POSTGRES=1: PostgreSQL runs skipped");
        vec![Backend::Sqlite]
    } else {
        vec![Backend::Sqlite, Backend::Postgres]
    }
}

/// Whether the user opted out of PostgreSQL. Never under CI (`CI=true`): there a skipped
/// PostgreSQL run would read as a pass, so the opt-out stops the test instead.
pub fn skip_postgres() -> bool {
    let skip = std::env::var("BLANGKO_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        !(skip && std::env::var("CI").is_ok_and(|v| v == "true")),
        "BLANGKO_SKIP_POSTGRES=1 with CI=true: CI must run the PostgreSQL tests"
    );
    skip
}

/// A database of its own for one test; dropped at the end.
pub struct PgDatabase {
    /// URL of the database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Creates a fresh database.
    pub async fn create() -> anyhow::Result<PgDatabase> {
        let admin_url = admin_url()?;
        let name = format!("blangko_test_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = replace_database(&admin_url, &name);
        Ok(PgDatabase {
            url,
            admin_url,
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any async context we can rely on: use a short-lived runtime on a
        // thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map(|j| j + 2).unwrap_or(0) => &base[..i],
        _ => base,
    };
    format!("{base}/{name}{query}")
}

/// The URL of the server's maintenance database: the user's, or the throwaway cluster's.
fn admin_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("BLANGKO_TEST_DATABASE_URL") {
        return Ok(url);
    }
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| start_cluster().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists() && p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
fn pg_command(bin: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn start_cluster() -> anyhow::Result<String> {
    let bin = find_bin_dir().context(
        "no PostgreSQL found: install it (Debian: apt-get install postgresql) or point \
BLANGKO_TEST_DATABASE_URL at a server (postgres://USER@HOST:PORT/postgres); \
to run without PostgreSQL set BLANGKO_SKIP_POSTGRES=1",
    )?;
    let dir = std::env::temp_dir().join(format!(
        "blangko-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let dir_s = dir.display().to_string();
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres", &dir_s])
            .status()?;
        anyhow::ensure!(status.success(), "chown of {dir_s} to postgres failed");
    }
    let out = pg_command(
        &bin.join("initdb"),
        &[
            "-D",
            &data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    .output()?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The port was free a moment ago; another test's server may take it first, so a failed
    // start is tried again on another port (at most three times).
    let log = dir.join("postgres.log").display().to_string();
    let mut tries = 0;
    let port = loop {
        tries += 1;
        let port = crate::free_port();
        let options = format!(
            "-p {port} -k {dir_s} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB"
        );
        let out = pg_command(
            &bin.join("pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .output()?;
        if out.status.success() {
            break port;
        }
        anyhow::ensure!(
            tries < 3,
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    // Stop the cluster and remove its files once this test process is gone.
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {dir_s}",
        pid = std::process::id(),
        stop = if is_root() {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                bin.join("pg_ctl").display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} -m immediate stop",
                bin.join("pg_ctl").display(),
                data.display()
            )
        }
    );
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start the cluster's watchdog")?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// Waits, for at most 10 s, until a session waits for a lock in a statement matching
/// `query_like` (a LIKE pattern over `pg_stat_activity.query`); false if none did by then.
pub async fn lock_waited(conn: &mut sqlx::AnyConnection, query_like: &str) -> anyhow::Result<bool> {
    use sqlx::Row;
    for _ in 0..200 {
        let n: i64 = sqlx::query(
            // This test's database only: the tests of one binary share a cluster, and another
            // test's wait must not count as this one's.
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1 AND datname = current_database()",
        )
        .bind(query_like)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        if n > 0 {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn a_test_database_replaces_only_the_database_name() {
        assert_eq!(
            replace_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h:1/postgres", "t2"),
            "postgres://u@h:1/t2"
        );
    }
}

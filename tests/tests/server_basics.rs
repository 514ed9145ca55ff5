//! The server a new user starts: health, reflection (v1 and v1alpha), server info, graceful
//! shutdown, the single-process lock on a SQLite file, and the operator's `--help`.

use std::time::Duration;

use blangko_e2e::fixtures::office_with_point;
use blangko_e2e::{TestDatabase, TestServer, server_bin};
use blangko_proto::v1::{GetServerInfoRequest, WatchQuotaRequest};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn health_answers_serving_for_the_server_and_each_service() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    assert_eq!(server.health_status("").await?, ServingStatus::Serving);
    assert_eq!(
        server.health_status("blangko.v1.CounterService").await?,
        ServingStatus::Serving
    );
    assert_eq!(
        server.health_status("blangko.v1.StockService").await?,
        ServingStatus::Serving
    );
    Ok(())
}

async fn list_services_v1(server: &TestServer) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(server.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))??;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection answer: {other:?}"),
    }
}

async fn list_services_v1alpha(server: &TestServer) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(server.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))??;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_both_services_in_v1_and_v1alpha() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for services in [
        list_services_v1(&server).await?,
        list_services_v1alpha(&server).await?,
    ] {
        for expected in [
            "blangko.v1.CounterService",
            "blangko.v1.StockService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn server_info_reports_version_database_and_uptime() -> anyhow::Result<()> {
    // On a clock the test moves: started_at is the start, uptime the time since, exactly.
    const START_MS: i64 = 1_764_979_200_000; // 2025-12-06 00:00 UTC
    let clock = blangko_server::clock::ManualClock::at(START_MS);
    let server = TestServer::start_with_clock(
        TestDatabase::sqlite().await?,
        &[],
        std::sync::Arc::new(clock.clone()),
    )
    .await?;
    clock.advance_ms(90 * 60 * 1000);
    let info = server
        .stock_client()
        .await?
        .get_server_info(GetServerInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.database_kind, "sqlite");
    assert_eq!(info.api_version, "blangko.v1");
    let started = info
        .started_at
        .ok_or_else(|| anyhow::anyhow!("no started_at"))?;
    assert_eq!(started.seconds, START_MS / 1000);
    assert_eq!(info.uptime_secs, 90 * 60);
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero_within_the_drain_time() -> anyhow::Result<()> {
    // A long drain time: an open stream that held the shutdown would hold it for a minute, and
    // the server would log that the drain time-out was reached (checked at the end).
    let mut server = TestServer::spawn_process(&["--drain-timeout-secs", "60"]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 10, 10).await?;
    let mut counter = server.counter_client().await?;
    let mut stream = counter
        .watch_quota(WatchQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        })
        .await?
        .into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))??;
    assert_eq!(first.quota.map(|q| q.quota), Some(10));
    // A client-side health check's Watch stream: it sees NOT_SERVING, then it ends.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    let mut health_watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let serving = health_watch
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no health status"))??;
    assert_eq!(serving.status(), ServingStatus::Serving);

    let (exit, _took) = server.terminate().await?;
    assert!(exit.success(), "exit status {exit:?}\n{}", server.log());
    // The open stream ended (cleanly or with a transport error), it did not hang.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        rest.is_ok(),
        "the WatchQuota stream was not ended by shutdown"
    );
    let mut statuses = Vec::new();
    let health_rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(item)) = health_watch.next().await {
            statuses.push(item.status());
        }
    })
    .await;
    assert!(health_rest.is_ok(), "the health Watch stream was not ended");
    assert_eq!(statuses, [ServingStatus::NotServing]);
    assert!(server.log().contains("draining"));
    assert!(
        !server.log().contains("drain time-out reached"),
        "nothing held the drain: {}",
        server.log()
    );
    Ok(())
}

/// A server process started on a new SQLite file that another connection (returned) holds
/// locked, so that the server waits for it while it starts; returned once the server has
/// logged its first line (before it opens the database) and waits: the lock's holder, the
/// process, and its log file.
#[cfg(unix)]
async fn a_server_waiting_for_a_lock(
    dir: &std::path::Path,
) -> anyhow::Result<(
    sqlx::SqliteConnection,
    tokio::process::Child,
    std::path::PathBuf,
)> {
    use sqlx::Connection;
    let file = dir.join("blangko.db");
    let mut holder = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true),
    )
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS held (x)")
        .execute(&mut holder)
        .await?;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await?;
    sqlx::query("INSERT INTO held VALUES (1)")
        .execute(&mut holder)
        .await?;

    let log = dir.join(format!("server-{}.log", rand::random::<u32>()));
    let mut command = tokio::process::Command::new(server_bin());
    command
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--database")
        .arg(format!("sqlite://{}", file.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    let child = blangko_e2e::without_blangko_env(&mut command).spawn()?;
    wait_for_line(&log, "WITHOUT authentication").await?;
    Ok((holder, child, log))
}

/// Waits (at most 30 s) until the log file has a line with `text`.
async fn wait_for_line(log: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)?.contains(text) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no line with {text:?}: {}",
            std::fs::read_to_string(log)?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(unix)]
fn sigterm(child: &tokio::process::Child) -> anyhow::Result<()> {
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -TERM failed");
    Ok(())
}

/// A SIGTERM that arrives while the server starts (here it waits for a lock another program
/// holds on its database file) is not lost and does not kill it half-way: the server stops
/// cleanly, exit status 0, once it has started. It used to end by the signal's default action
/// (and, as PID 1 in a container, to ignore the signal until the SIGKILL came). A second one
/// during the start stops it at once, for a start that would wait for ever.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_the_server_starts_stops_it_cleanly() -> anyhow::Result<()> {
    use sqlx::Connection;
    let dir = tempfile::tempdir()?;
    let (mut holder, mut child, log) = a_server_waiting_for_a_lock(dir.path()).await?;
    sigterm(&child)?;
    wait_for_line(&log, "shutdown requested while starting").await?;
    sqlx::query("COMMIT").execute(&mut holder).await?;
    holder.close().await?;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}\n{text}");
    assert!(text.contains("draining"), "{text}");
    assert!(text.contains("stopped"), "{text}");

    // Two while it waits: it stops at once, the lock still held (its own wait would end in a
    // "database is locked" after 5 s, with another message).
    let (mut holder, mut child, log) = a_server_waiting_for_a_lock(dir.path()).await?;
    sigterm(&child)?;
    wait_for_line(&log, "shutdown requested while starting").await?;
    sigterm(&child)?;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(exit.code(), Some(1), "exit status {exit:?}\n{text}");
    assert!(text.contains("stopped while starting"), "{text}");
    sqlx::query("COMMIT").execute(&mut holder).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_refuses_to_start() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let _first = TestServer::spawn_process_on(db.clone(), &[]).await?;
    let output = tokio::process::Command::new(server_bin())
        .args(["--listen", "127.0.0.1:0", "--database", &db.url])
        .args(["--nik-key-file", &db.nik_key_file.display().to_string()])
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another blangko-server is already using"),
        "stderr: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn help_explains_every_flag_and_its_environment_variable() -> anyhow::Result<()> {
    let output = tokio::process::Command::new(server_bin())
        .arg("--help")
        .output()
        .await?;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    // Every serving option of the server, as its parser knows them, with its variable.
    use clap::CommandFactory;
    let command = blangko_server::config::Config::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let env = env.to_string_lossy();
        // Whole names: --max-watchers must not be found inside --max-watchers-per-caller.
        assert!(
            help.contains(&format!("--{long} ")) || help.contains(&format!("--{long}\n")),
            "--{long} missing from --help"
        );
        assert!(
            help.contains(&format!("[env: {env}=")),
            "{env} (of --{long}) missing from --help"
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} options with a variable");
    // And none without one (README: "every option also reads an environment variable").
    let without: Vec<String> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_env().is_none())
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|long| !matches!(long.as_str(), "help" | "version"))
        .collect();
    assert!(
        without.is_empty(),
        "options without a variable: {without:?}"
    );
    assert!(help.contains("127.0.0.1:50051"));
    assert!(help.contains("sqlite:blangko.db"));
    Ok(())
}

/// Starts the server with `flag` set to each of `values` in an empty directory: each start must
/// exit 2 (a usage error) naming the flag, before any database is created.
async fn refused_before_anything_starts(flag: &str, values: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for value in values {
        let output = tokio::process::Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0", flag, value])
            .env_remove("BLANGKO_DATABASE_URL")
            .current_dir(dir.path())
            .output()
            .await?;
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{stderr}");
        assert!(
            !dir.path().join("blangko.db").exists(),
            "nothing was created"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_watch_refresh_outside_20_ms_to_10_s_is_refused_before_anything_starts()
-> anyhow::Result<()> {
    refused_before_anything_starts("--watch-refresh-ms", &["0", "19", "10001", "fast"]).await
}

#[tokio::test]
async fn a_clock_offset_past_ten_years_is_refused_before_anything_starts() -> anyhow::Result<()> {
    refused_before_anything_starts("--clock-offset-secs", &["9223372036854775", "-315619201"]).await
}

#[tokio::test]
async fn boolean_environment_variables_take_1_yes_and_on_and_refuse_anything_else()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let refused = tokio::process::Command::new(server_bin())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("BLANGKO_DATABASE_URL")
        .env("BLANGKO_INSECURE_NO_AUTH", "maybe")
        .current_dir(dir.path())
        .output()
        .await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--insecure-no-auth"));
    for yes in ["1", "yes", "on"] {
        let dir = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("BLANGKO_DATABASE_URL")
            .env("BLANGKO_DEMO", yes)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("stderr"))?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        let seeded = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("demo data seeded") {
                    return Ok::<_, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await??;
        assert!(seeded, "BLANGKO_DEMO={yes} did not seed the demo offices");
        child.start_kill()?;
    }
    Ok(())
}

#[tokio::test]
async fn zero_setup_start_creates_and_migrates_blangko_db_in_the_working_directory()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(server_bin())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("BLANGKO_DATABASE_URL")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(
        line.starts_with("blangko-server listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(dir.path().join("blangko.db").exists());
    let key = dir.path().join("blangko.db.nikkey");
    assert!(key.exists(), "the NIK key is generated beside the database");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    // Migrated: the schema takes an office, its service point and a delivery, and a Reserve.
    let addr = line.rsplit(' ').next().unwrap_or_default().to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut stock =
        blangko_proto::v1::stock_service_client::StockServiceClient::new(channel.clone());
    office_with_point(&mut stock, "3275", "mpp", 5, 10).await?;
    let mut counter = blangko_proto::v1::counter_service_client::CounterServiceClient::new(channel);
    let answer = counter
        .reserve(blangko_e2e::fixtures::reserve_request("3275", "mpp", 1))
        .await?
        .into_inner();
    assert!(
        matches!(
            answer.outcome,
            Some(blangko_proto::v1::reserve_response::Outcome::Reservation(_))
        ),
        "{answer:?}"
    );
    child.start_kill()?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn a_sighup_never_kills_a_server_without_a_token_file() -> anyhow::Result<()> {
    // SIGHUP reloads tokens; a server without a token file (or one still starting) has nothing
    // to reload, and the signal's default would end it.
    let server = TestServer::spawn_process(&[]).await?;
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("not a process"))?;
    for _ in 0..3 {
        let status = tokio::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -HUP failed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 10, 10).await?;
    Ok(())
}

/// The accepted connections of the server on `port` (IPv4, ESTABLISHED), from the kernel's
/// table: (timer kind, ticks until it fires), `/proc/net/tcp`'s `tr` and `tm->when` fields.
fn accepted_connection_timers(port: u16) -> anyhow::Result<Vec<(u8, u64)>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let mut timers = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(timer)) = (fields.get(1), fields.get(3), fields.get(5))
        else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) || *state != "01" {
            continue;
        }
        let (kind, when) = timer
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("odd timer field {timer}"))?;
        timers.push((
            u8::from_str_radix(kind, 16)?,
            u64::from_str_radix(when, 16)?,
        ));
    }
    Ok(timers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_carry_tcp_keepalive_so_a_vanished_peer_is_closed()
-> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    // Idle now (once the last segments are acknowledged: until then the retransmit timer, kind
    // 1, stands in the table): the kernel's keepalive timer (kind 2) runs on the server's side
    // of the connection, due in at most TCP_KEEPALIVE_IDLE (in ticks of 1/100 s). Without
    // keepalive an idle connection has no timer (kind 0).
    let idle_ticks = blangko_server::app::TCP_KEEPALIVE_IDLE.as_secs() * 100;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let timers = accepted_connection_timers(server.addr.port())?;
        anyhow::ensure!(
            !timers.is_empty(),
            "no accepted connection in /proc/net/tcp"
        );
        if timers.iter().all(|(kind, _)| *kind == 2) {
            for (_, when) in timers {
                assert!(
                    when > 0 && when <= idle_ticks,
                    "keepalive due in {when} ticks, expected at most {idle_ticks}"
                );
            }
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no keepalive timer on an idle accepted connection: {timers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server closes `stream` (end of stream or a reset) within `limit`, reading
/// whatever it sends meanwhile (an HTTP/2 SETTINGS frame once the client has spoken).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// The HTTP/2 client preface: what a gRPC client sends first on a plaintext connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_call_by_its_deadline_is_closed() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::spawn_process_on(
        TestDatabase::sqlite().await?,
        &["--first-call-timeout-secs", "1"],
    )
    .await?;
    // Closed after the second and its grace: a connection that says nothing, one that stops
    // after a byte of its set-up, and one that sets HTTP/2 up and never calls.
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await?;
    let mut one_byte = tokio::net::TcpStream::connect(server.addr).await?;
    one_byte.write_all(&PREFACE[..1]).await?;
    let mut set_up = tokio::net::TcpStream::connect(server.addr).await?;
    set_up.write_all(PREFACE).await?;
    set_up.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?; // an empty SETTINGS frame
    for (what, stream) in [
        ("silent", &mut silent),
        ("one byte", &mut one_byte),
        ("set up, no call", &mut set_up),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(15)).await,
            "{what}: the connection stayed open"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{what}: closed before its deadline"
        );
    }
    // A client that calls keeps its connection past the deadline: its watch stream, opened
    // before, is still open after (a closed connection would end it with an error).
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    watch.message().await?;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let still = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(still.is_err(), "the watch ended: {still:?}");
    Ok(())
}

/// An HTTP/2 connection of its own to `server`, driven on a task; the receiver learns when the
/// server closes it.
async fn h2_connection(
    server: &TestServer,
) -> anyhow::Result<(
    h2::client::SendRequest<bytes::Bytes>,
    tokio::sync::oneshot::Receiver<tokio::time::Instant>,
)> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = connection.await;
        let _ = closed_tx.send(tokio::time::Instant::now());
    });
    Ok((send, closed))
}

/// Starts a gRPC call of `method` with an empty request message on `send`; its response.
async fn h2_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    server: &TestServer,
    method: &str,
) -> anyhow::Result<http::Response<h2::RecvStream>> {
    let request = http::Request::post(format!("{}{method}", server.url))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let mut ready = send.clone().ready().await?;
    let (response, mut body) = ready.send_request(request, false)?;
    // One message of length 0: an empty HealthCheckRequest.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    Ok(response.await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_call_in_flight_for_its_idle_limit_is_closed() -> anyhow::Result<()>
{
    let server =
        TestServer::spawn_process_on(TestDatabase::sqlite().await?, &["--idle-timeout-secs", "1"])
            .await?;

    // One health check, then nothing: closed a second after the call ended (the first-call
    // deadline, 30 s by default, does not wait for its turn).
    let (mut send, closed) = h2_connection(&server).await?;
    let response = h2_call(&mut send, &server, "/grpc.health.v1.Health/Check").await?;
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk?;
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{trailers:?}"
    );
    let answered = tokio::time::Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .map_err(|_| anyhow::anyhow!("an idle connection stayed open 15 s"))??;
    let after = at.duration_since(answered);
    // The server's second starts as it sends the answer, a moment before it is read here.
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after its call, before its idle limit"
    );

    // A connection with a stream open is not idle: a health Watch keeps it open past the limit,
    // and once the stream ends, the connection is closed a limit later.
    let (mut send, mut closed) = h2_connection(&server).await?;
    let response = h2_call(&mut send, &server, "/grpc.health.v1.Health/Watch").await?;
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut watch = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.data())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the watch ended before its first status"))??;
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        closed.try_recv().is_err(),
        "a connection with a stream open was closed as idle"
    );
    // Dropping the stream cancels it (RST_STREAM); `send` is kept, or the client would close
    // the connection itself.
    drop(watch);
    let ended = tokio::time::Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .map_err(|_| anyhow::anyhow!("the connection stayed open 15 s after its stream ended"))??;
    let after = at.duration_since(ended);
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after its stream ended, before its idle limit"
    );
    drop(send);

    // A gRPC client whose connection was closed as idle calls again on the same channel.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(again.status, ServingStatus::Serving as i32);
    Ok(())
}

/// `n` connections to `server` that have sent the HTTP/2 preface and nothing more.
async fn http2_connections(
    server: &TestServer,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let mut raw = Vec::new();
    for _ in 0..n {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
        stream.write_all(PREFACE).await?;
        raw.push(stream);
    }
    Ok(raw)
}

/// Whether the server closed any of `raw` within `limit`.
async fn any_closed_within(raw: &mut [tokio::net::TcpStream], limit: Duration) -> bool {
    let mut closed = vec![false; raw.len()];
    let deadline = tokio::time::Instant::now() + limit;
    while !closed.iter().any(|c| *c) && tokio::time::Instant::now() < deadline {
        for (stream, closed) in raw.iter_mut().zip(closed.iter_mut()) {
            if !*closed && closed_within(stream, Duration::from_millis(100)).await {
                *closed = true;
            }
        }
    }
    closed.iter().any(|c| *c)
}

/// A new client connects and gets an answer (bounded, 10 s: the server notices closed
/// connections a moment later).
async fn connects_again(server: &TestServer) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = async {
            tonic_health::pb::health_client::HealthClient::new(
                tonic::transport::Endpoint::from_shared(server.url.clone())?
                    .connect()
                    .await?,
            )
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
            anyhow::Ok(())
        }
        .await;
        match fresh {
            Ok(()) => return Ok(()),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => anyhow::bail!("no room after the connections closed: {err:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_bound_is_closed_at_once() -> anyhow::Result<()> {
    let server = TestServer::spawn_process_on(
        TestDatabase::sqlite().await?,
        &["--max-connections", "2", "--first-call-timeout-secs", "60"],
    )
    .await?;
    // Three connections set up: at most two are kept (the start-up probe's connection may
    // still hold a place a moment, so one or two are closed).
    let mut raw = http2_connections(&server, 3).await?;
    // Within 10 s (a kept connection stays open for its first-call limit of 60 s): no timing
    // is asserted, a busy machine only takes longer.
    assert!(
        any_closed_within(&mut raw, Duration::from_secs(10)).await,
        "three connections kept under --max-connections 2"
    );
    // Once they are gone, there is room again.
    drop(raw);
    connects_again(&server).await?;
    assert!(
        server
            .log()
            .contains("connections refused: --max-connections are open"),
        "{}",
        server.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_no_more_than_its_share_of_the_connections() -> anyhow::Result<()> {
    // Room for many connections, but two per peer address: a third from this address is
    // closed at once, while the server still has room (no token was needed to hold the two).
    let server = TestServer::spawn_process_on(
        TestDatabase::sqlite().await?,
        &[
            "--max-connections",
            "100",
            "--max-connections-per-peer",
            "2",
            "--first-call-timeout-secs",
            "60",
        ],
    )
    .await?;
    let mut raw = http2_connections(&server, 3).await?;
    assert!(
        any_closed_within(&mut raw, Duration::from_secs(10)).await,
        "three connections of one peer kept under --max-connections-per-peer 2"
    );
    assert!(
        server
            .log()
            .contains("connections refused: a peer address holds --max-connections-per-peer"),
        "{}",
        server.log()
    );
    // Their places come back with them.
    drop(raw);
    connects_again(&server).await?;
    Ok(())
}

/// A call cut at the drain time-out while it holds a database connection (a Reserve batch
/// waiting for an office's row lock, held here by another transaction as a stuck replica would):
/// shutdown still ends soon after the drain time, not when the lock goes or the lock time-out
/// (60 s here) ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_a_call_waits_for_a_row_lock() -> anyhow::Result<()> {
    use sqlx::Connection;
    if blangko_e2e::postgres::skip_postgres() {
        return Ok(());
    }
    let db = TestDatabase::new(blangko_e2e::Backend::Postgres).await?;
    let mut server = TestServer::spawn_process_on(
        db.clone(),
        &["--drain-timeout-secs", "1", "--db-lock-timeout-secs", "60"],
    )
    .await?;
    let mut stock = server.stock_client().await?;
    blangko_e2e::fixtures::office_with_point(&mut stock, "3275", "mpp", 100, 100).await?;
    sqlx::any::install_default_drivers();
    let mut holder = sqlx::AnyConnection::connect(&db.url).await?;
    let mut watcher = sqlx::AnyConnection::connect(&db.url).await?;
    sqlx::query("BEGIN").execute(&mut holder).await?;
    sqlx::query("SELECT office_id FROM offices WHERE office_id = '3275' FOR UPDATE")
        .fetch_all(&mut holder)
        .await?;
    let mut counter = server.counter_client().await?;
    let call = tokio::spawn(async move {
        counter
            .reserve(blangko_e2e::fixtures::reserve_request("3275", "mpp", 1))
            .await
    });
    assert!(
        blangko_e2e::postgres::lock_waited(&mut watcher, "%FOR UPDATE%").await?,
        "the Reserve never waited for the office's row lock"
    );
    let (exit, took) = server.terminate().await?;
    sqlx::query("ROLLBACK").execute(&mut holder).await?;
    assert!(exit.success(), "exit status {exit:?}\n{}", server.log());
    // 1 s of drain and the rest of the stop; the lock would have held it for 60 s.
    assert!(
        took < Duration::from_secs(20),
        "shutdown took {took:?}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("drain time-out reached"),
        "{}",
        server.log()
    );
    // The cut call got an answer or a broken connection, not a reservation it never had.
    let _ = call.await;
    Ok(())
}

/// A drain held by a call that never ends (its request body never comes), then a second SIGTERM:
/// the operator's "stop now". The server stops at once, with status 1 and a log line that says
/// so, instead of waiting out the drain time (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_while_draining_stops_the_server_at_once() -> anyhow::Result<()> {
    let mut server = TestServer::spawn_process(&[
        "--drain-timeout-secs",
        "60",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await?;
    let _call = stalled_reserve(&server).await?;
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("a child process"))?
        .to_string();
    let signal = |name: &'static str| {
        let pid = pid.clone();
        async move {
            tokio::process::Command::new("kill")
                .args([name, &pid])
                .status()
                .await
        }
    };
    anyhow::ensure!(signal("-TERM").await?.success(), "kill -TERM failed");
    let draining = tokio::time::timeout(Duration::from_secs(10), async {
        while !server.log().contains("draining") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(draining.is_ok(), "never drained:\n{}", server.log());
    assert!(
        server
            .exited_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the stalled call did not hold the drain:\n{}",
        server.log()
    );
    anyhow::ensure!(signal("-INT").await?.success(), "kill -INT failed");
    let exit = server.exited_within(Duration::from_secs(15)).await;
    let log = server.log();
    let Some(exit) = exit else {
        server.kill();
        panic!("a second signal did not stop the draining server:\n{log}");
    };
    assert_eq!(exit.code(), Some(1), "{log}");
    assert!(log.contains("second signal while draining"), "{log}");
    Ok(())
}

/// Starts a Reserve on its own HTTP/2 connection whose request body never comes: a call that
/// stays in flight through any drain while what is returned is kept (dropping it resets the call).
/// The server must have its metrics endpoint on (`--metrics-listen 127.0.0.1:0`): the call is
/// returned once the server counts it in flight.
async fn stalled_reserve(server: &TestServer) -> anyhow::Result<StalledCall> {
    let (send, _closed) = h2_connection(server).await?;
    let request = http::Request::post(format!("{}/blangko.v1.CounterService/Reserve", server.url))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let mut ready = send.clone().ready().await?;
    let (response, body) = ready.send_request(request, false)?;
    // The HEADERS frame is only queued here: the call is in flight once the server counts it
    // (its metrics), before any shutdown a test starts next.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.scrape_metrics().await?;
        let in_flight = blangko_e2e::scrape::value(&text, "blangko_requests_in_flight", &[])
            .ok_or_else(|| anyhow::anyhow!("no blangko_requests_in_flight in:\n{text}"))?;
        if in_flight >= 1.0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the stalled call never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(StalledCall {
        _connection: send,
        _response: response,
        _body: body,
    })
}

/// A call in flight whose request body never comes ([`stalled_reserve`]).
struct StalledCall {
    _connection: h2::client::SendRequest<bytes::Bytes>,
    _response: h2::client::ResponseFuture,
    _body: h2::SendStream<bytes::Bytes>,
}

/// The drain time-out bounds the whole stop, not the drain alone: a metrics scraper that holds
/// its connection (a request head it never finishes) is cut at the same deadline as a call that
/// held the drain, instead of getting a second drain time of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_drain_deadline_bounds_the_calls_and_the_metrics_endpoint() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::spawn_process(&[
        "--drain-timeout-secs",
        "4",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await?;
    let _call = stalled_reserve(&server).await?;
    let metrics = server
        .metrics_addr
        .ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    let mut scraper = tokio::net::TcpStream::connect(metrics).await?;
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: blangko\r\n")
        .await?;
    // The head is unfinished; give the server a moment to read what came.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (exit, took) = server.terminate().await?;
    let log = server.log();
    assert!(exit.success(), "exit status {exit:?}\n{log}");
    assert!(log.contains("drain time-out reached"), "{log}");
    // 4 s of drain; before, the metrics endpoint then waited 4 s more.
    assert!(
        took < Duration::from_secs(7),
        "the stop took {took:?}\n{log}"
    );
    drop(scraper);
    Ok(())
}

/// The server's clock rides on every answer of the blangko services, an error included (a
/// trailers-only answer), and not on health checks: `x-server-time-ms`, milliseconds since the
/// Unix epoch by the server's clock (here an hour behind, `--clock-offset-secs -3600`).
#[tokio::test]
async fn answers_carry_the_servers_clock_errors_included_health_checks_not() -> anyhow::Result<()> {
    let server = TestServer::spawn_process(&["--clock-offset-secs", "-3600"]).await?;
    let server_ms = |metadata: &tonic::metadata::MetadataMap| {
        metadata
            .get("x-server-time-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let an_hour_behind = |ms: Option<i64>| {
        let behind = ms.map(|ms| now_ms() - ms);
        behind.is_some_and(|b| (3_590_000..=3_610_000).contains(&b))
    };

    let mut stock = server.stock_client().await?;
    let info = stock.get_server_info(GetServerInfoRequest {}).await?;
    assert!(
        an_hour_behind(server_ms(info.metadata())),
        "{:?}",
        info.metadata()
    );

    let mut counter = server.counter_client().await?;
    let refused = counter
        .reserve(blangko_proto::v1::ReserveRequest::default())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an empty Reserve was accepted"))?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(an_hour_behind(server_ms(refused.metadata())), "{refused:?}");

    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    let check = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(server_ms(check.metadata()), None, "{:?}", check.metadata());
    Ok(())
}

/// Milliseconds since the Unix epoch by this machine's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

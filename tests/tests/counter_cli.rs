//! The counter client end to end: the real `blangko-counter` program (as a child process) against
//! a real server with a fresh database. Every command in Bahasa Indonesia, English and `--json`;
//! exit codes; the queue forecast; a queue re-run after a kill; failover; `watch` across a server
//! restart; the interactive screen driven through stdin.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blangko_counter::serde_json::{self, Value};
use blangko_e2e::fixtures::{self, masked, nik, office_with_point};
use blangko_e2e::{TestDatabase, TestServer, counter_bin, free_port, server_bin};
use blangko_proto::v1::*;
use tokio::io::AsyncWriteExt;

/// No client run in these tests may take longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The identity every test's counter uses.
const WHO: [&str; 6] = [
    "--office",
    "3275",
    "--service-point",
    "mpp",
    "--counter",
    "loket-1",
];

/// What one run of the client printed and its exit code.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout's lines parsed as JSON objects (every line must be one).
    fn json(&self) -> anyhow::Result<Vec<Value>> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }

    /// The single JSON object on stdout.
    fn one_json(&self) -> anyhow::Result<Value> {
        let mut all = self.json()?;
        anyhow::ensure!(all.len() == 1, "expected one JSON object, got {self:?}");
        Ok(all.remove(0))
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn command(servers: &[&str], args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(counter_bin());
    // The test's own environment must not configure the client.
    blangko_e2e::without_blangko_env(&mut cmd);
    // The screen keeps unrecorded prints in a file under the home directory by default: each
    // run gets a file of its own, so that one test's list never shows in another's screen.
    cmd.env(
        "BLANGKO_UNRECORDED_FILE",
        std::env::temp_dir().join(format!(
            "blangko-unrecorded-{:016x}.txt",
            rand::random::<u64>()
        )),
    );
    for server in servers {
        cmd.arg("--server").arg(server);
    }
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the client to its end, feeding `stdin` if given.
async fn client(servers: &[&str], args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    let mut cmd = command(servers, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", counter_bin().display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        pipe.shutdown().await?;
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .context("the client did not finish in time")??;
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "the client panicked: {run:?}"
    );
    Ok(run)
}

/// `WHO` followed by `args`.
fn who(args: &[&str]) -> Vec<String> {
    WHO.iter().chain(args).map(|s| s.to_string()).collect()
}

async fn run_as(server: &str, args: &[&str]) -> anyhow::Result<Run> {
    let args = who(args);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client(&[server], &refs, None).await
}

/// A server with office 3275, service point `mpp` of FIXED `quota`, and `blanks` on hand.
async fn server_with(quota: u32, blanks: u32) -> anyhow::Result<TestServer> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", quota, blanks).await?;
    Ok(server)
}

/// Every reservation of counter loket-1 today.
async fn reservations(server: &TestServer) -> anyhow::Result<Vec<Reservation>> {
    let mut counter = server.counter_client().await?;
    let page = counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            counter_id: "loket-1".into(),
            page_size: 500,
            ..ListReservationsRequest::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(page.next_page_token.is_empty(), "more than one page");
    Ok(page.reservations)
}

async fn quota(server: &TestServer) -> anyhow::Result<QuotaSnapshot> {
    fixtures::quota_snapshot(&mut server.counter_client().await?, "3275", "mpp").await
}

/// A queue CSV of tickets 1..=n for NIKs nik(1)..=nik(n).
fn queue_csv(n: u32) -> String {
    let mut text = String::from("ticket,nik,reason\n");
    for i in 1..=n {
        text.push_str(&format!("{i},{},new-recording\n", nik(i)));
    }
    text
}

fn assert_no_clear_nik(run: &Run, niks: impl IntoIterator<Item = u32>) {
    for n in niks {
        assert!(
            !run.all().contains(&nik(n)),
            "NIK {n} printed in clear: {run:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_health_version_and_quota_in_both_languages_and_json() -> anyhow::Result<()> {
    let server = server_with(20, 100).await?;
    let url = server.url.as_str();

    let id = run_as(url, &["status"]).await?;
    assert_eq!(id.code, 0, "{id:?}");
    assert!(
        id.stdout.contains(&format!("Server {url}: SERVING")),
        "{id:?}"
    );
    assert!(id.stdout.contains("blangko.v1"), "{id:?}");
    assert!(id.stdout.contains("berjalan sejak"), "{id:?}");
    assert!(id.stdout.contains("3275/mpp: kuota 20"), "{id:?}");
    assert!(id.stdout.contains("sisa 20"), "{id:?}");
    assert!(id.stdout.contains("stok tersedia 100"), "{id:?}");
    assert!(id.stdout.contains(" WIB"), "times in local time: {id:?}");

    let en = run_as(url, &["--lang", "en", "status"]).await?;
    assert_eq!(en.code, 0, "{en:?}");
    assert!(en.stdout.contains("up since"), "{en:?}");
    assert!(en.stdout.contains("3275/mpp: quota 20"), "{en:?}");
    assert!(en.stdout.contains("remaining 20"), "{en:?}");
    assert!(en.stdout.contains("available stock 100"), "{en:?}");

    let json = run_as(url, &["--json", "status"]).await?.one_json()?;
    assert_eq!(json["servers"][0]["url"], url);
    assert_eq!(json["servers"][0]["health"], "SERVING");
    assert_eq!(json["servers"][0]["api_version"], "blangko.v1");
    assert_eq!(json["servers"][0]["database_kind"], "sqlite");
    assert_eq!(json["quota"]["quota"], 20);
    assert_eq!(json["quota"]["remaining"], 20);
    assert_eq!(json["quota"]["available"], 100);
    assert!(
        json["quota"]["next_reset_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("T00:00:00+07:00")),
        "next reset at local midnight: {json}"
    );

    // Without an office, status is health and version only.
    let bare = client(&[url], &["status"], None).await?;
    assert_eq!(bare.code, 0, "{bare:?}");
    assert!(!bare.stdout.contains("Kuota"), "{bare:?}");

    // BLANGKO_JSON=1 is --json; a value that is no boolean is refused, not taken as "on".
    let mut with_env = command(&[url], &["status"]);
    with_env.env("BLANGKO_JSON", "1");
    let output = with_env.output().await?;
    assert_eq!(output.status.code(), Some(0));
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    let env_json: serde_json::Value = serde_json::from_str(line.trim())?;
    assert_eq!(env_json["servers"][0]["health"], "SERVING");
    let mut bad = command(&[url], &["status"]);
    bad.env("BLANGKO_JSON", "maybe");
    let output = bad.output().await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--json"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_one_clear_line_and_exit_1() -> anyhow::Result<()> {
    let dead = blangko_e2e::DEAD_ENDPOINT.to_string();
    let args = who(&["--timeout", "2", "--retries", "1", "status"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = client(&[&dead], &refs, None).await?;
    assert_eq!(id.code, 1, "{id:?}");
    assert!(id.stdout.is_empty(), "{id:?}");
    assert_eq!(id.stderr.trim().lines().count(), 1, "one line: {id:?}");
    assert!(
        id.stderr
            .starts_with(&format!("Tidak ada server yang menjawab: {dead}")),
        "{id:?}"
    );

    let reserve = client(
        &[&dead],
        &[
            "--lang",
            "en",
            "--retries",
            "1",
            "--office",
            "3275",
            "--service-point",
            "mpp",
            "--counter",
            "loket-1",
            "reserve",
            "--nik",
            &nik(1),
            "--reason",
            "lost",
        ],
        None,
    )
    .await?;
    assert_eq!(reserve.code, 1, "{reserve:?}");
    assert_eq!(reserve.stderr.trim().lines().count(), 1, "{reserve:?}");
    assert!(
        reserve.stderr.starts_with("No server answered: "),
        "{reserve:?}"
    );
    assert_no_clear_nik(&reserve, [1]);

    let json = client(&[&dead], &["--json", "--retries", "0", "status"], None).await?;
    assert_eq!(json.code, 1, "{json:?}");
    let value = json.one_json()?;
    assert_eq!(value["servers"][0]["reachable"], false);
    assert_eq!(value["error"]["code"], "UNAVAILABLE");

    // A spoiled-blank report without an answer may have been recorded: the officer is given the
    // request id that makes running it again safe.
    let spoiled_args = |json: bool| {
        let mut args = vec!["--retries", "0", "--office", "3275"];
        if json {
            args.push("--json");
        }
        args.extend(["spoiled", "--reason", "misprint"]);
        args
    };
    let spoiled = client(&[&dead], &spoiled_args(false), None).await?;
    assert_eq!(spoiled.code, 1, "{spoiled:?}");
    let lines: Vec<&str> = spoiled.stderr.trim().lines().collect();
    assert!(
        lines[0].starts_with("Tidak ada server yang menjawab"),
        "{spoiled:?}"
    );
    assert!(
        lines[1].starts_with("Laporan blangko rusak mungkin sudah tercatat.")
            && lines[1].contains("--request-id s-"),
        "{spoiled:?}"
    );
    let json = client(&[&dead], &spoiled_args(true), None).await?;
    let value = json.one_json()?;
    assert_eq!(value["error"]["code"], "UNAVAILABLE");
    assert!(
        value["error"]["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("s-")),
        "{value}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_prints_the_reservation_or_the_referral_with_exit_codes() -> anyhow::Result<()> {
    let server = server_with(2, 100).await?;
    let url = server.url.as_str();
    let n1 = nik(1);

    // Reserved: exit 0, masked NIK, hold expiry in local time.
    let id = run_as(url, &["reserve", "--nik", &n1, "--reason", "new-recording"]).await?;
    assert_eq!(id.code, 0, "{id:?}");
    assert!(id.stdout.starts_with("DITAHAN "), "{id:?}");
    assert!(id.stdout.contains(&format!("NIK {}", masked(1))), "{id:?}");
    assert!(id.stdout.contains("alasan perekaman baru"), "{id:?}");
    assert!(
        id.stdout.contains("ditahan sampai") && id.stdout.contains(" WIB (sisa 30 menit)"),
        "{id:?}"
    );
    assert!(id.stdout.contains("Sisa kuota hari ini: 1/2"), "{id:?}");
    assert_no_clear_nik(&id, [1]);

    // The same NIK again at the same service point: the same reservation, marked replayed.
    let en = run_as(
        url,
        &[
            "--lang",
            "en",
            "reserve",
            "--nik",
            &n1,
            "--reason",
            "new-recording",
        ],
    )
    .await?;
    assert_eq!(en.code, 0, "{en:?}");
    assert!(en.stdout.starts_with("HELD "), "{en:?}");
    assert!(en.stdout.contains("reason new recording"), "{en:?}");
    // Its card may have been printed meanwhile: said, with what to do.
    assert!(
        en.stdout.contains("[already reserved earlier at ")
            && en.stdout.contains(
                ": if its card is already printed, mark it printed (c), do not print again]"
            ),
        "{en:?}"
    );

    let json = run_as(url, &["--json", "reserve", "--nik", &n1, "--reason", "1"]).await?;
    assert_eq!(json.code, 0, "{json:?}");
    let v = json.one_json()?;
    assert_eq!(v["outcome"], "reserved");
    assert_eq!(v["reservation"]["masked_nik"], masked(1));
    assert_eq!(v["reservation"]["state"], "HELD");
    assert_eq!(v["reservation"]["replayed"], true);
    assert_eq!(v["reservation"]["counter_id"], "loket-1");
    // Its own hold: this counter prints it, no warning.
    assert_eq!(v["do_not_print"], Value::Null, "{v}");
    // The same applicant at the next counter of the service point: held for loket-1, so loket-2
    // is told not to print it.
    let next = client(
        &[url],
        &[
            "--office",
            "3275",
            "--service-point",
            "mpp",
            "--counter",
            "loket-2",
            "reserve",
            "--nik",
            &n1,
            "--reason",
            "new-recording",
        ],
        None,
    )
    .await?;
    // Exit 4, not 0: a script that prints on success prints nothing here.
    assert_eq!(next.code, 4, "{next:?}");
    assert!(
        next.stdout
            .contains("Ditahan untuk loket loket-1: JANGAN cetak di sini"),
        "{next:?}"
    );
    assert!(
        v["reservation"]["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("+07:00")),
        "{v}"
    );
    assert_eq!(v["quota"]["remaining"], 1);

    // --zone changes the times shown.
    let wita = run_as(
        url,
        &[
            "--zone",
            "Asia/Makassar",
            "reserve",
            "--nik",
            &n1,
            "--reason",
            "1",
        ],
    )
    .await?;
    assert!(wita.stdout.contains(" WITA (sisa"), "{wita:?}");

    // The quota is used up: referral, exit 3.
    let second = run_as(
        url,
        &[
            "reserve",
            "--nik",
            &nik(2),
            "--reason",
            "hilang",
            "--ikd",
            "active",
        ],
    )
    .await?;
    assert_eq!(second.code, 0, "{second:?}");
    let referred = run_as(url, &["reserve", "--nik", &nik(3), "--reason", "lost"]).await?;
    assert_eq!(referred.code, 3, "{referred:?}");
    assert!(
        referred.stdout.starts_with(
            "RUJUK KE AKTIVASI IKD: kuota blangko hari ini sudah habis (QUOTA_EXHAUSTED)"
        ),
        "{referred:?}"
    );
    assert!(
        referred.stdout.contains("Langkah aktivasi IKD:"),
        "{referred:?}"
    );
    assert!(
        referred.stdout.contains("Kuota dibuka lagi:") && referred.stdout.contains("00:00 WIB"),
        "{referred:?}"
    );
    let referred_en = run_as(
        url,
        &[
            "--lang",
            "en",
            "reserve",
            "--nik",
            &nik(3),
            "--reason",
            "lost",
        ],
    )
    .await?;
    assert_eq!(referred_en.code, 3, "{referred_en:?}");
    assert!(
        referred_en
            .stdout
            .starts_with("REFER TO IKD ACTIVATION: today's quota is used up"),
        "{referred_en:?}"
    );
    assert!(
        referred_en.stdout.contains("How to activate IKD:"),
        "{referred_en:?}"
    );
    let referred_json = run_as(
        url,
        &["--json", "reserve", "--nik", &nik(3), "--reason", "lost"],
    )
    .await?;
    assert_eq!(referred_json.code, 3, "{referred_json:?}");
    let v = referred_json.one_json()?;
    assert_eq!(v["outcome"], "ikd_referral");
    assert_eq!(v["referral"]["cause"], "QUOTA_EXHAUSTED");
    assert!(
        v["referral"]["next_quota_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("T00:00:00+07:00")),
        "{v}"
    );
    assert_no_clear_nik(&referred_json, [3]);

    // Bad input: exit 2, the field and the server's reason.
    let bad_nik = "3275013201900001"; // birth day 32
    let bad = run_as(url, &["reserve", "--nik", bad_nik, "--reason", "lost"]).await?;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.starts_with("Masukan ditolak: nik"), "{bad:?}");
    let bad_en = run_as(
        url,
        &[
            "--lang", "en", "reserve", "--nik", bad_nik, "--reason", "lost",
        ],
    )
    .await?;
    assert_eq!(bad_en.code, 2, "{bad_en:?}");
    assert!(
        bad_en.stderr.starts_with("Input rejected: nik"),
        "{bad_en:?}"
    );
    let bad_json = run_as(
        url,
        &["--json", "reserve", "--nik", bad_nik, "--reason", "lost"],
    )
    .await?;
    assert_eq!(bad_json.code, 2, "{bad_json:?}");
    let v = bad_json.one_json()?;
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        v["error"]["field_violations"][0]["field"]
            .as_str()
            .is_some_and(|f| f.contains("nik")),
        "{v}"
    );
    assert!(
        !bad_json.all().contains(bad_nik),
        "the rejected NIK is not echoed: {bad_json:?}"
    );

    // A reason the client does not know never reaches the server; a missing counter neither.
    let unknown = run_as(url, &["reserve", "--nik", &nik(4), "--reason", "stolen"]).await?;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    let no_counter = client(
        &[url],
        &[
            "--office",
            "3275",
            "--service-point",
            "mpp",
            "reserve",
            "--nik",
            &nik(4),
            "--reason",
            "lost",
        ],
        None,
    )
    .await?;
    assert_eq!(no_counter.code, 2, "{no_counter:?}");
    assert!(no_counter.stderr.contains("--counter"), "{no_counter:?}");

    // Exactly two holds were made, whatever was retried or replayed.
    let all = reservations(&server).await?;
    assert_eq!(all.len(), 2, "{all:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ikd_first_office_refers_not_active_applicants_with_exit_3() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    fixtures::office(&mut stock, "3275", |o| o.ikd_first_required = true).await?;
    fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(5)).await?;
    fixtures::ship(&mut stock, "3275", 10).await?;
    let url = server.url.as_str();

    let referred = run_as(
        url,
        &[
            "reserve",
            "--nik",
            &nik(1),
            "--reason",
            "lost",
            "--ikd",
            "not-active",
        ],
    )
    .await?;
    assert_eq!(referred.code, 3, "{referred:?}");
    assert!(referred.stdout.contains("(IKD_REQUIRED)"), "{referred:?}");
    assert!(
        referred.stdout.contains("catat aktivasinya"),
        "{referred:?}"
    );
    let exempt = run_as(
        url,
        &[
            "reserve",
            "--nik",
            &nik(1),
            "--reason",
            "lost",
            "--ikd",
            "dikecualikan",
        ],
    )
    .await?;
    assert_eq!(exempt.code, 0, "{exempt:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_cancel_spoiled_and_holds() -> anyhow::Result<()> {
    let server = server_with(10, 100).await?;
    let url = server.url.as_str();
    // A blank spoiled for another reason needs its story: refused before anything is sent.
    let untold = run_as(url, &["--lang", "en", "spoiled", "--reason", "other"]).await?;
    assert_eq!(untold.code, 2, "{untold:?}");
    assert!(
        untold.stderr.contains("note") && untold.stderr.contains("--reason other"),
        "{untold:?}"
    );
    let mut ids = Vec::new();
    for n in 1..=3 {
        let run = run_as(
            url,
            &[
                "--json",
                "reserve",
                "--nik",
                &nik(n),
                "--reason",
                "data-change",
            ],
        )
        .await?;
        assert_eq!(run.code, 0, "{run:?}");
        let id = run.one_json()?["reservation"]["reservation_id"]
            .as_str()
            .context("no id")?
            .to_string();
        ids.push(id);
    }

    // holds: this counter's open holds with the time left.
    let holds = run_as(url, &["holds"]).await?;
    assert_eq!(holds.code, 0, "{holds:?}");
    assert!(
        holds
            .stdout
            .starts_with("Pemesanan ditahan, loket loket-1: 3"),
        "{holds:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        assert!(holds.stdout.contains(id), "{holds:?}");
        assert!(
            holds.stdout.contains(&masked(u32::try_from(i)? + 1)),
            "{holds:?}"
        );
    }
    assert_eq!(
        holds.stdout.matches("(sisa 30 menit)").count()
            + holds.stdout.matches("(sisa 29 menit)").count(),
        3,
        "{holds:?}"
    );
    assert_no_clear_nik(&holds, 1..=3);
    let holds_en = run_as(url, &["--lang", "en", "holds"]).await?;
    assert!(
        holds_en
            .stdout
            .starts_with("Open holds, counter loket-1: 3"),
        "{holds_en:?}"
    );
    let holds_json = run_as(url, &["--json", "holds"]).await?.one_json()?;
    assert_eq!(holds_json["holds"].as_array().map(Vec::len), Some(3));
    assert!(
        holds_json["holds"][0]["seconds_left"]
            .as_i64()
            .is_some_and(|s| s > 1700),
        "{holds_json}"
    );

    // Another counter sees none of them.
    let other = client(
        &[url],
        &["--office", "3275", "--counter", "loket-2", "holds"],
        None,
    )
    .await?;
    assert_eq!(other.code, 0, "{other:?}");
    assert!(
        other
            .stdout
            .starts_with("Tidak ada pemesanan yang masih ditahan untuk loket loket-2."),
        "{other:?}"
    );

    // commit: printed.
    let commit = run_as(url, &["commit", &ids[0]]).await?;
    assert_eq!(commit.code, 0, "{commit:?}");
    assert!(
        commit.stdout.starts_with(&format!("DICETAK {}", ids[0])),
        "{commit:?}"
    );
    let commit_again = run_as(url, &["--lang", "en", "commit", &ids[0]]).await?;
    assert_eq!(
        commit_again.code, 0,
        "a commit replays OK: {commit_again:?}"
    );
    assert!(
        commit_again
            .stdout
            .starts_with(&format!("COMMITTED {}", ids[0])),
        "{commit_again:?}"
    );

    // The printed applicant comes back to the counter: the answer is their printed reservation,
    // and the officer is told not to print again.
    let again = run_as(
        url,
        &["reserve", "--nik", &nik(1), "--reason", "data-change"],
    )
    .await?;
    assert_eq!(again.code, 4, "{again:?}");
    assert!(
        again.stdout.contains("SUDAH DICETAK pukul ")
            && again
                .stdout
                .contains("JANGAN cetak lagi untuk NIK ini hari ini."),
        "{again:?}"
    );

    let commit_json = run_as(url, &["--json", "commit", &ids[0]]).await?;
    assert_eq!(commit_json.code, 0, "{commit_json:?}");
    let v = commit_json.one_json()?;
    assert_eq!(v["outcome"], "committed");
    assert_eq!(v["reservation"]["state"], "COMMITTED");
    assert!(
        v["reservation"]["committed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("+07:00")),
        "{v}"
    );

    // cancel: slot and blank return.
    let cancel = run_as(
        url,
        &["--json", "cancel", &ids[1], "--note", "applicant left"],
    )
    .await?;
    assert_eq!(cancel.code, 0, "{cancel:?}");
    let v = cancel.one_json()?;
    assert_eq!(v["outcome"], "cancelled");
    assert_eq!(v["reservation"]["state"], "CANCELLED");
    let cancel_id = run_as(url, &["cancel", &ids[1]]).await?;
    assert!(
        cancel_id
            .stdout
            .starts_with(&format!("DIBATALKAN {}", ids[1])),
        "{cancel_id:?}"
    );
    let cancel_en = run_as(url, &["--lang", "en", "cancel", &ids[1]]).await?;
    assert!(
        cancel_en
            .stdout
            .starts_with(&format!("CANCELLED {}", ids[1])),
        "{cancel_en:?}"
    );

    // A commit on a cancelled reservation: refused, explained, exit 1.
    let refused = run_as(url, &["commit", &ids[1]]).await?;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("JANGAN cetak"), "{refused:?}");
    // The server's own words follow, in Bahasa Indonesia (its LocalizedMessage), not English.
    assert!(
        refused
            .stderr
            .contains(": pemesanan ini sudah dibatalkan; pesan lagi [")
            && !refused.stderr.contains("reserve again"),
        "{refused:?}"
    );
    assert!(
        refused
            .stderr
            .contains("FAILED_PRECONDITION/RESERVATION_CANCELLED"),
        "{refused:?}"
    );
    let refused_json = run_as(url, &["--json", "commit", &ids[1]]).await?;
    assert_eq!(
        refused_json.one_json()?["error"]["reason"],
        "RESERVATION_CANCELLED"
    );
    // A spoiled blank reported on the cancelled reservation: not recorded, and the officer is
    // told to record it from stock (not "do not print": the blank is spoiled already).
    let late = run_as(url, &["spoiled", &ids[1], "--reason", "misprint"]).await?;
    assert_eq!(late.code, 1, "{late:?}");
    assert!(
        late.stderr.starts_with("Blangko rusak BELUM tercatat")
            && late
                .stderr
                .contains("di layar loket rusak stok ALASAN, atau blangko-counter spoiled --reason ALASAN tanpa ID pemesanan")
            && !late.stderr.contains("JANGAN cetak"),
        "{late:?}"
    );
    // The server's words follow in Bahasa Indonesia too.
    assert!(
        late.stderr.contains(
            ": blangko rusak tidak dapat dicatat pada pemesanan ini: pemesanan sudah dibatalkan ["
        ),
        "{late:?}"
    );
    let unknown = run_as(url, &["--lang", "en", "commit", "no-such-reservation"]).await?;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("NOT_FOUND"), "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("Not found (reservation no-such-reservation): reservation 'no-such-reservation' not found [NOT_FOUND]"),
        "{unknown:?}"
    );
    let unknown_id = run_as(url, &["commit", "no-such-reservation"]).await?;
    assert!(
        unknown_id
            .stderr
            .contains("Pemesanan 'no-such-reservation' tidak ditemukan [NOT_FOUND]"),
        "{unknown_id:?}"
    );
    // The call's id in the server's log comes back with the error, for the operators.
    let unknown_json = run_as(url, &["--json", "commit", "no-such-reservation"]).await?;
    let v = unknown_json.one_json()?;
    assert!(
        v["error"]["call_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("srv-")),
        "{v}"
    );

    // spoiled on the held one: one more blank leaves the stock, the hold keeps its slot.
    let spoiled = run_as(
        url,
        &[
            "spoiled",
            &ids[2],
            "--reason",
            "chip",
            "--report",
            "BA-2026/117",
        ],
    )
    .await?;
    assert_eq!(spoiled.code, 0, "{spoiled:?}");
    assert!(
        spoiled
            .stdout
            .starts_with("Blangko rusak dicatat (CHIP_ENCODING_FAILURE)"),
        "{spoiled:?}"
    );
    assert!(spoiled.stdout.contains("blangko rusak: 1"), "{spoiled:?}");
    // A blank found defective in stock, with a reservation id still exported from a commit:
    // without an id on the line it is the stock's, never that reservation's.
    let args = who(&["--json", "spoiled", "--reason", "factory-defect"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = command(&[url], &refs);
    cmd.env("BLANGKO_RESERVATION", &ids[2]);
    let output = tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await??;
    assert!(output.status.success(), "{output:?}");
    let v: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(v["reservation"], Value::Null, "a stock report: {v}");
    assert_eq!(v["outcome"], "spoiled_recorded");
    assert_eq!(v["spoilage_reason"], "FACTORY_DEFECT");
    assert_eq!(v["on_hand"], 97, "100 - 1 printed - 2 spoiled: {v}");
    let spoiled_en = run_as(
        url,
        &[
            "--lang", "en", "spoiled", "--reason", "other", "--note", "dropped",
        ],
    )
    .await?;
    assert!(
        spoiled_en
            .stdout
            .starts_with("Spoiled blank recorded (OTHER)"),
        "{spoiled_en:?}"
    );
    // The same report run again with its request id (after an answer that never came) writes
    // off one blank, not two.
    let twice = [
        "--json",
        "spoiled",
        "--reason",
        "storage",
        "--request-id",
        "s-ulang-1",
    ];
    let first = run_as(url, &twice).await?.one_json()?;
    let again = run_as(url, &twice).await?.one_json()?;
    assert_eq!(first["outcome"], "spoiled_recorded", "{first}");
    assert_eq!(again["outcome"], "spoiled_recorded", "{again}");
    assert_eq!(first["on_hand"], 95, "100 - 1 printed - 4 spoiled: {first}");
    assert_eq!(
        again["on_hand"], 95,
        "the repeat is the same report: {again}"
    );
    assert_eq!(
        (first["replayed"].as_bool(), again["replayed"].as_bool()),
        (Some(false), Some(true))
    );
    let words = run_as(url, &twice[1..]).await?;
    assert!(
        words.stdout.starts_with(
            "Laporan ini sudah tercatat sebelumnya (sekali saja, blangko tidak dicatat dua kali)"
        ),
        "{words:?}"
    );

    let q = quota(&server).await?;
    assert_eq!((q.held, q.committed), (1, 1), "{q:?}");
    let after = run_as(url, &["--json", "holds"]).await?.one_json()?;
    assert_eq!(after["holds"][0]["reservation_id"], ids[2].as_str());
    assert_eq!(after["holds"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_tells_tickets_beyond_the_quota_before_any_reserve() -> anyhow::Result<()> {
    let server = server_with(20, 100).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(35))?;
    let results = dir.path().join("hasil.jsonl");
    let file_arg = file.display().to_string();
    let results_arg = results.display().to_string();

    let run = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()?;
    let kind = |v: &Value| v["event"].as_str().unwrap_or("").to_string();
    let forecast = events
        .iter()
        .position(|v| kind(v) == "forecast")
        .context("no forecast")?;
    assert_eq!(events[forecast]["waiting"], 35);
    assert_eq!(events[forecast]["expected_served"], 20);
    assert_eq!(events[forecast]["expected_referred"], 15);
    let told: Vec<String> = events
        .iter()
        .filter(|v| kind(v) == "ikd_forecast")
        .map(|v| v["ticket"].as_str().unwrap_or("").to_string())
        .collect();
    let expected: Vec<String> = (21..=35).map(|n| n.to_string()).collect();
    assert_eq!(told, expected);
    let first_row = events
        .iter()
        .position(|v| kind(v) == "row")
        .context("no row")?;
    let last_told = events
        .iter()
        .rposition(|v| kind(v) == "ikd_forecast")
        .context("none told")?;
    assert!(
        forecast < last_told && last_told < first_row,
        "tickets 21-35 are told before any Reserve"
    );
    let rows: Vec<&Value> = events.iter().filter(|v| kind(v) == "row").collect();
    assert_eq!(rows.len(), 20);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["ticket"], (i + 1).to_string(), "queue order");
        assert_eq!(row["outcome"], "reserved");
        assert_eq!(row["masked_nik"], masked(u32::try_from(i)? + 1));
    }
    let summary = events.last().context("no summary")?;
    assert_eq!(summary["event"], "summary");
    assert_eq!(
        (summary["reserved"].as_u64(), summary["told_ikd"].as_u64()),
        (Some(20), Some(15))
    );
    assert_no_clear_nik(&run, 1..=35);

    // The results file has every ticket, in JSON lines.
    let lines: Vec<Value> = std::fs::read_to_string(&results)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 35);
    assert!(
        !std::fs::read_to_string(&results)?.contains(&nik(1)),
        "no NIK in clear"
    );

    let all = reservations(&server).await?;
    assert_eq!(all.len(), 20);
    let q = quota(&server).await?;
    assert_eq!((q.held, q.remaining), (20, 0));
    // The finished queue withdrew its report.
    assert_eq!(q.waiting, 0, "{q:?}");
    Ok(())
}

/// Linux: util-linux's `prlimit` cuts the results file.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_cut_while_it_records_its_forecast_has_told_every_row_it_recorded()
-> anyhow::Result<()> {
    // The results file may stop taking writes at any line (a full disk, a kill): every ticket
    // the file says was told to activate IKD must have been told on the screen. Here the file
    // may grow to five forecast records, and the run dies (SIGXFSZ) writing the sixth.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(35))?;
    let file_arg = file.display().to_string();
    let results_of = |name: &str| dir.path().join(name).display().to_string();

    // The size of five forecast records, from a whole run on a server of its own.
    let whole = results_of("whole.jsonl");
    let calibration = server_with(20, 100).await?;
    let run = run_as(&calibration.url, &["queue", &file_arg, "--results", &whole]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(&whole)?;
    let five: usize = text.split_inclusive('\n').take(5).map(str::len).sum();
    assert!(
        text.lines().take(15).all(|l| l.contains("ikd_forecast")),
        "{text}"
    );

    let server = server_with(20, 100).await?;
    let cut = results_of("cut.jsonl");
    let args = who(&["queue", &file_arg, "--results", &cut]);
    let mut cmd = tokio::process::Command::new("prlimit");
    cmd.arg(format!("--fsize={}", five + 10))
        .arg("--")
        .arg(counter_bin())
        .args(["--server", &server.url])
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    blangko_e2e::without_blangko_env(&mut cmd);
    let output = tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await??;
    assert!(!output.status.success(), "the run was not cut: {output:?}");
    let recorded = std::fs::read_to_string(&cut)?;
    // Five whole records, and the sixth cut where the file stopped growing.
    let whole_lines = recorded.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    assert_eq!(whole_lines.count(), 5, "{recorded}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("AKTIVASI IKD SEKARANG: tiket 21–35 (15 orang)"),
        "the recorded tickets were never told: {stdout}"
    );

    // The next run goes on from the file: the five are final, the other ten told again.
    let rerun = run_as(
        &server.url,
        &["--json", "queue", &file_arg, "--results", &cut],
    )
    .await?;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let lines: Vec<Value> = std::fs::read_to_string(&cut)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 35);
    assert_eq!(reservations(&server).await?.len(), 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nik_typed_in_the_wrong_place_on_the_command_line_is_masked_in_the_error()
-> anyhow::Result<()> {
    let n = nik(7);
    // No server is needed: the command line is refused before anything connects.
    let url = "http://127.0.0.1:9";
    for args in [
        vec!["reserve", n.as_str(), "--reason", "lost"],
        vec!["reserve", "--reason", n.as_str(), "--nik", "lost"],
    ] {
        let run = run_as(url, &args).await?;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(!run.all().contains(&n), "NIK in clear: {run:?}");
        // Masked where it stood, so the officer still sees which word was refused.
        assert!(run.stderr.contains(&"*".repeat(16)), "{run:?}");
    }
    // Help still goes to stdout, exit 0, its made-up example NIK as it is (to copy).
    let help = run_as(url, &["reserve", "--help"]).await?;
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout.contains("--nik"), "{help:?}");
    let top = run_as(url, &["--help"]).await?;
    assert!(
        top.stdout
            .contains("reserve --nik 3275014101900001 --reason new-recording"),
        "{top:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_row_already_held_at_another_counter_is_marked_do_not_print() -> anyhow::Result<()>
{
    let server = server_with(20, 100).await?;
    let url = server.url.as_str();
    // Applicant 2 was served at loket-2's screen before loket-1's queue file reaches them.
    let elsewhere = reserve_at_loket_2(url, 2).await?;
    assert_eq!(elsewhere.code, 0, "{elsewhere:?}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(3))?;
    let results = dir.path().join("hasil.jsonl");
    let file_arg = file.display().to_string();
    let results_arg = results.display().to_string();
    let run = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()?;
    let rows: Vec<&Value> = events.iter().filter(|v| v["event"] == "row").collect();
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|v| v["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["reserved", "do_not_print", "reserved"],
        "{run:?}"
    );
    assert!(
        rows[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Held for counter loket-2: do NOT print here")),
        "{:?}",
        rows[1]
    );
    let summary = events.last().context("no summary")?;
    assert_eq!(
        (
            summary["reserved"].as_u64(),
            summary["do_not_print"].as_u64()
        ),
        (Some(2), Some(1)),
        "{summary}"
    );
    // The same in words, and a re-run leaves the row alone (loket-1 still holds no blank for it).
    std::fs::remove_file(&results)?;
    let human = run_as(url, &["queue", &file_arg, "--results", &results_arg]).await?;
    assert!(
        human
            .stdout
            .contains("Ditahan untuk loket loket-2: JANGAN cetak di sini"),
        "{human:?}"
    );
    let again = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert!(
        !again.json()?.iter().any(|v| v["event"] == "row"),
        "{again:?}"
    );
    let mine = reservations(&server).await?;
    assert_eq!(mine.len(), 2, "loket-1 holds 1 and 3 only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applicant_served_at_another_service_point_is_do_not_print_alone_and_in_a_queue()
-> anyhow::Result<()> {
    let server = server_with(20, 100).await?;
    let url = server.url.as_str();
    let mut stock = server.stock_client().await?;
    fixtures::service_point_named(&mut stock, "3275", "kec", "Kecamatan").await?;
    // Applicant 2 got a blank at the other service point first.
    let nik2 = nik(2);
    let there = client(
        &[url],
        &[
            "--office",
            "3275",
            "--service-point",
            "kec",
            "--counter",
            "kec-1",
            "reserve",
            "--nik",
            &nik2,
            "--reason",
            "new-recording",
        ],
        None,
    )
    .await?;
    assert_eq!(there.code, 0, "{there:?}");

    // Alone: exit 4, do not print here (not 1, "other error", which a script would retry).
    let alone = run_as(
        url,
        &[
            "--lang",
            "en",
            "reserve",
            "--nik",
            &nik2,
            "--reason",
            "new-recording",
        ],
    )
    .await?;
    assert_eq!(alone.code, 4, "{alone:?}");
    assert!(
        alone
            .stderr
            .contains("This NIK already holds a blank today at another service point"),
        "{alone:?}"
    );

    // In a queue: the row is served_elsewhere (do not print; counted with do_not_print), the run
    // handled every row (exit 0), and a re-run asks again for that row only (the hold there may
    // have been cancelled or run out since): still held there, still not printed here.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(3))?;
    let results = dir.path().join("hasil.jsonl");
    let file_arg = file.display().to_string();
    let results_arg = results.display().to_string();
    let run = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()?;
    let outcomes: Vec<&str> = events
        .iter()
        .filter(|v| v["event"] == "row")
        .map(|v| v["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["reserved", "served_elsewhere", "reserved"],
        "{run:?}"
    );
    let summary = events.last().context("no summary")?;
    assert_eq!(
        (
            summary["reserved"].as_u64(),
            summary["do_not_print"].as_u64(),
            summary["errors"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{summary}"
    );
    let again = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(again.code, 0, "{again:?}");
    let rows: Vec<(String, String)> = again
        .json()?
        .iter()
        .filter(|v| v["event"] == "row")
        .map(|v| {
            (
                v["ticket"].as_str().unwrap_or("").to_string(),
                v["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("2".to_string(), "served_elsewhere".to_string())],
        "{again:?}"
    );
    // Once the hold there is cancelled, the next run reserves the applicant here.
    let held_there = client(
        &[url],
        &[
            "--json",
            "--office",
            "3275",
            "--service-point",
            "kec",
            "--counter",
            "kec-1",
            "holds",
        ],
        None,
    )
    .await?;
    let id = held_there.one_json()?["holds"][0]["reservation_id"]
        .as_str()
        .context("no hold at kec")?
        .to_string();
    let cancelled = client(
        &[url],
        &[
            "--office",
            "3275",
            "--service-point",
            "kec",
            "--counter",
            "kec-1",
            "cancel",
            &id,
        ],
        None,
    )
    .await?;
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    let third = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    let outcomes: Vec<String> = third
        .json()?
        .iter()
        .filter(|v| v["event"] == "row")
        .map(|v| v["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(outcomes, ["reserved"], "{third:?}");
    Ok(())
}

/// `reserve` of applicant `n` at counter loket-2 of 3275/mpp (the tests' own counter is loket-1).
async fn reserve_at_loket_2(url: &str, n: u32) -> anyhow::Result<Run> {
    let nik = nik(n);
    client(
        &[url],
        &[
            "--office",
            "3275",
            "--service-point",
            "mpp",
            "--counter",
            "loket-2",
            "reserve",
            "--nik",
            &nik,
            "--reason",
            "new-recording",
        ],
        None,
    )
    .await
}

/// A queue file of `(ticket, NIK number)` rows, reason new-recording.
fn queue_of(rows: &[(&str, u32)]) -> String {
    let mut text = String::from("ticket,nik,reason\n");
    for (ticket, n) in rows {
        text.push_str(&format!("{ticket},{},new-recording\n", nik(*n)));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_list_that_numbers_its_tickets_again_is_refused_row_by_row_not_skipped()
-> anyhow::Result<()> {
    let server = server_with(20, 100).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let results = dir.path().join("hasil.jsonl");
    let results_arg = results.display().to_string();
    let morning = dir.path().join("pagi.csv");
    std::fs::write(&morning, queue_of(&[("1", 1), ("2", 2)]))?;
    let first = run_as(
        url,
        &[
            "--json",
            "queue",
            &morning.display().to_string(),
            "--results",
            &results_arg,
        ],
    )
    .await?;
    assert_eq!(first.code, 0, "{first:?}");
    // The afternoon list numbers from 1 again, with other applicants, into the same results
    // file: before, both were skipped as "already handled" and nobody was told anything.
    let afternoon = dir.path().join("siang.csv");
    std::fs::write(&afternoon, queue_of(&[("1", 11), ("2", 12), ("3", 13)]))?;
    let second = run_as(
        url,
        &[
            "queue",
            &afternoon.display().to_string(),
            "--results",
            &results_arg,
        ],
    )
    .await?;
    assert_eq!(second.code, 2, "invalid rows: {second:?}");
    for (line, ticket) in [(2, 1), (3, 2)] {
        assert!(
            second.stderr.contains(&format!(
                "Baris {line} (tiket {ticket}): ticket — tiket {ticket} sudah dipakai hari ini untuk pemohon lain"
            )),
            "{second:?}"
        );
    }
    // Ticket 3 is new: reserved. Tickets 1 and 2 of this list were not sent to the server.
    let mine = reservations(&server).await?;
    let masked_niks: Vec<&str> = mine.iter().map(|r| r.masked_nik.as_str()).collect();
    assert_eq!(mine.len(), 3, "{masked_niks:?}");
    assert!(masked_niks.contains(&masked(13).as_str()));
    assert!(!masked_niks.contains(&masked(11).as_str()));
    assert_no_clear_nik(&second, [11, 12, 13]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_settles_the_ticket_that_was_in_flight_not_an_earlier_error_row()
-> anyhow::Result<()> {
    let server = server_with(2, 100).await?;
    let url = server.url.as_str();
    let date = quota(&server).await?.local_date;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_of(&[("1", 1), ("2", 2), ("3", 3)]))?;
    let results = dir.path().join("hasil.jsonl");
    // The earlier run: ticket 1 got an error (recorded, not final); ticket 2's Reserve reached
    // the server, and the run died before recording it.
    std::fs::write(
        &results,
        format!(
            "{{\"local_date\":\"{date}\",\"line\":2,\"ticket\":\"1\",\"masked_nik\":\"{}\",\"reason\":\"NEW_RECORDING\",\"outcome\":\"error\",\"detail\":\"the applicant holds a blank elsewhere\"}}\n",
            masked(1)
        ),
    )?;
    let digits: String = date.chars().filter(char::is_ascii_digit).collect();
    let in_flight = run_as(
        url,
        &[
            "reserve",
            "--nik",
            &nik(2),
            "--reason",
            "new-recording",
            "--request-id",
            &format!("q-3275-mpp-loket-1-{digits}-2"),
        ],
    )
    .await?;
    assert_eq!(in_flight.code, 0, "{in_flight:?}");
    // Meanwhile another counter takes the last slot.
    let other = reserve_at_loket_2(url, 9).await?;
    assert_eq!(other.code, 0, "{other:?}");

    let resumed = run_as(
        url,
        &[
            "--json",
            "queue",
            &file.display().to_string(),
            "--results",
            &results.display().to_string(),
        ],
    )
    .await?;
    let events = resumed.json()?;
    let outcome_of = |ticket: &str| {
        events
            .iter()
            .filter(|v| v["ticket"] == ticket && v["event"] != "forecast")
            .map(|v| v["outcome"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // Ticket 2 holds a blank: it is settled first (the server replays it), not told to go.
    assert_eq!(outcome_of("2"), ["reserved"], "{resumed:?}");
    assert_eq!(outcome_of("1"), ["ikd_forecast"], "{resumed:?}");
    assert_eq!(outcome_of("3"), ["ikd_forecast"], "{resumed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_reserve_of_a_cancelled_hold_says_do_not_print_with_exit_4() -> anyhow::Result<()>
{
    let server = server_with(10, 100).await?;
    let url = server.url.as_str();
    let reserve = |lang: &'static str| {
        let nik = nik(1);
        async move {
            run_as(
                url,
                &[
                    "--lang",
                    lang,
                    "reserve",
                    "--nik",
                    &nik,
                    "--reason",
                    "data-change",
                    "--request-id",
                    "r-loket-1-pagi-017",
                ],
            )
            .await
        }
    };
    let first = reserve("id").await?;
    assert_eq!(first.code, 0, "{first:?}");
    let id = reservations(&server)
        .await?
        .first()
        .map(|r| r.reservation_id.clone())
        .context("no reservation")?;
    let cancelled = run_as(url, &["cancel", &id]).await?;
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    // The answer was lost, the officer sends the same request again: no blank is held any more.
    let again = reserve("id").await?;
    assert_eq!(again.code, 4, "{again:?}");
    assert!(
        again
            .stdout
            .contains("SUDAH DIBATALKAN: JANGAN cetak; blangko ini tidak lagi ditahan."),
        "{again:?}"
    );
    let english = reserve("en").await?;
    assert_eq!(english.code, 4, "{english:?}");
    assert!(
        english
            .stdout
            .contains("ALREADY CANCELLED: do NOT print; no blank is held for it any more."),
        "{english:?}"
    );
    assert_no_clear_nik(&english, [1]);
    // A script reading --json sees it too: not "reserved".
    let json = run_as(
        url,
        &[
            "--json",
            "reserve",
            "--nik",
            &nik(1),
            "--reason",
            "data-change",
            "--request-id",
            "r-loket-1-pagi-017",
        ],
    )
    .await?;
    assert_eq!(json.code, 4, "{json:?}");
    let v = json.one_json()?;
    assert_eq!(
        (v["outcome"].as_str(), v["reservation"]["state"].as_str()),
        (Some("do_not_print"), Some("CANCELLED")),
        "{v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_runs_for_a_counter_kept_to_its_service_point_and_finds_only_its_own_calls()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    {
        let mut setup = TestServer::start_on(Arc::clone(&db), &[]).await?;
        office_with_point(&mut setup.stock_client().await?, "3275", "mpp", 5, 100).await?;
        setup.stop().await?;
    }
    let mut tokens = blangko_e2e::TestTokens::new(&db);
    let loket1 = tokens.add("loket-1", "counter", Some("3275"), Some("mpp"))?;
    let loket9 = tokens.add("loket-9", "counter", Some("3275"), Some("mpp"))?;
    let server = TestServer::start_on(Arc::clone(&db), &["--token-file", &tokens.arg()]).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(2))?;
    let file_arg = file.display().to_string();
    let queue = |token: String, results: &'static str| {
        let results = dir.path().join(results).display().to_string();
        let file_arg = file_arg.clone();
        async move {
            run_as(
                url,
                &[
                    "--token",
                    &token,
                    "--json",
                    "queue",
                    &file_arg,
                    "--results",
                    &results,
                ],
            )
            .await
        }
    };
    let first = queue(loket1.clone(), "a.jsonl").await?;
    assert_eq!(first.code, 0, "{first:?}");
    // Its results lost, loket-1 runs the list again: the server finds its two tickets.
    let again = queue(loket1, "b.jsonl").await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .json()?
            .iter()
            .any(|v| v["event"] == "served_earlier" && v["count"] == 2),
        "{again:?}"
    );
    // Another principal sending the same ticket ids finds none of them: ids are each caller's
    // own. Its Reserves (under the same counter id, loket-1) are then answered with the
    // applicants' holds, replayed: nothing new is held.
    let other = queue(loket9, "c.jsonl").await?;
    assert_eq!(other.code, 0, "{other:?}");
    let events = other.json()?;
    let rows: Vec<(Option<&str>, Option<bool>)> = events
        .iter()
        .filter(|v| v["event"] == "row")
        .map(|v| (v["outcome"].as_str(), v["replayed"].as_bool()))
        .collect();
    assert_eq!(
        rows,
        [
            (Some("reserved"), Some(true)),
            (Some("reserved"), Some(true))
        ],
        "{other:?}"
    );
    assert!(
        !events.iter().any(|v| v["event"] == "served_earlier"),
        "{other:?}"
    );
    assert_eq!(
        events
            .iter()
            .find(|v| v["event"] == "forecast")
            .and_then(|v| v["waiting"].as_u64()),
        Some(2),
        "{other:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_number_used_for_someone_else_earlier_does_not_count_as_served()
-> anyhow::Result<()> {
    let server = server_with(4, 100).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let morning = dir.path().join("pagi.csv");
    std::fs::write(&morning, queue_of(&[("1", 1), ("2", 2)]))?;
    let served = run_as(
        url,
        &[
            "--json",
            "queue",
            &morning.display().to_string(),
            "--results",
            &dir.path().join("pagi.jsonl").display().to_string(),
        ],
    )
    .await?;
    assert_eq!(served.code, 0, "{served:?}");
    // The afternoon list numbers from 1 again, with other applicants, into a results file of
    // its own: its tickets' ids name the morning's reservations, not its applicants'.
    let afternoon = dir.path().join("siang.csv");
    std::fs::write(&afternoon, queue_of(&[("1", 3), ("2", 4)]))?;
    let forecast = run_as(
        url,
        &[
            "--json",
            "queue",
            &afternoon.display().to_string(),
            "--results",
            &dir.path().join("siang.jsonl").display().to_string(),
            "--forecast-only",
        ],
    )
    .await?;
    assert_eq!(forecast.code, 0, "{forecast:?}");
    let events = forecast.json()?;
    assert!(
        !events.iter().any(|v| v["event"] == "served_earlier"),
        "{forecast:?}"
    );
    let waiting = events
        .iter()
        .find(|v| v["event"] == "forecast")
        .and_then(|v| v["waiting"].as_u64());
    assert_eq!(waiting, Some(2), "both still need a blank: {forecast:?}");
    Ok(())
}

/// Tickets and their outcome events of a `--json` queue run, the forecast left out.
fn outcomes_of(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|v| v["event"] == "row" || v["event"] == "ikd_forecast")
        .map(|v| {
            (
                v["ticket"].as_str().unwrap_or("").to_string(),
                v["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_results_file_does_not_send_applicants_who_hold_a_blank_to_ikd() -> anyhow::Result<()>
{
    // Quota 6 for a list of 6: the morning run served tickets 1 to 4; ticket 2's card was
    // printed and ticket 4's hold cancelled. Then the results file was lost (a new laptop, a
    // deleted folder).
    let server = server_with(6, 100).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let morning = dir.path().join("pagi.csv");
    std::fs::write(&morning, queue_csv(4))?;
    let lost = dir.path().join("hilang.jsonl");
    let first = run_as(
        url,
        &[
            "--json",
            "queue",
            &morning.display().to_string(),
            "--results",
            &lost.display().to_string(),
        ],
    )
    .await?;
    assert_eq!(first.code, 0, "{first:?}");
    let first_events = first.json()?;
    let id_of = |ticket: &str| {
        first_events
            .iter()
            .find(|v| v["event"] == "row" && v["ticket"] == ticket)
            .and_then(|v| v["reservation_id"].as_str().map(str::to_string))
            .with_context(|| format!("ticket {ticket} was not reserved"))
    };
    let commit = run_as(url, &["commit", &id_of("2")?]).await?;
    assert_eq!(commit.code, 0, "{commit:?}");
    let cancelled = id_of("4")?;
    let cancel = run_as(url, &["cancel", &cancelled]).await?;
    assert_eq!(cancel.code, 0, "{cancel:?}");
    std::fs::remove_file(&lost)?;

    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(6))?;
    let results = dir.path().join("hasil.jsonl");
    let results_arg = results.display().to_string();
    let file_arg = file.display().to_string();
    // Forecast only: tickets 4 to 6 need the three slots left; nobody is told to go.
    let forecast = run_as(
        url,
        &[
            "--json",
            "queue",
            &file_arg,
            "--results",
            &results_arg,
            "--forecast-only",
        ],
    )
    .await?;
    assert_eq!(forecast.code, 0, "{forecast:?}");
    let events = forecast.json()?;
    let numbers = events
        .iter()
        .find(|v| v["event"] == "forecast")
        .map(|v| (v["waiting"].as_u64(), v["expected_referred"].as_u64()));
    assert_eq!(numbers, Some((Some(3), Some(0))), "{forecast:?}");
    assert!(
        events
            .iter()
            .any(|v| v["event"] == "served_earlier" && v["count"] == 3),
        "{forecast:?}"
    );
    assert_eq!(outcomes_of(&events), [], "{forecast:?}");

    // The run: tickets 1 and 3 get their own hold back, ticket 2 is not printed twice, ticket 4
    // (cancelled) is reserved again, 5 and 6 are served; nobody is sent to IKD.
    let run = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()?;
    let expect: Vec<(String, String)> = [
        ("1", "reserved"),
        ("2", "do_not_print"),
        ("3", "reserved"),
        ("4", "reserved"),
        ("5", "reserved"),
        ("6", "reserved"),
    ]
    .iter()
    .map(|(t, o)| (t.to_string(), o.to_string()))
    .collect();
    assert_eq!(outcomes_of(&events), expect, "{run:?}");
    let replayed_and_id = |events: &[Value]| -> Vec<(bool, String)> {
        events
            .iter()
            .filter(|v| v["event"] == "row" && v["outcome"] == "reserved")
            .map(|v| {
                (
                    v["replayed"].as_bool().unwrap_or(false),
                    v["reservation_id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let reserved = replayed_and_id(&events);
    let replayed: Vec<bool> = reserved.iter().map(|(r, _)| *r).collect();
    assert_eq!(replayed, [true, true, false, false, false], "{run:?}");
    let again_for_4 = reserved[2].1.clone();
    assert_ne!(again_for_4, cancelled, "ticket 4 holds a new blank");
    let mine = reservations(&server).await?;
    let live = mine
        .iter()
        .filter(|r| {
            matches!(
                r.state(),
                ReservationState::Held | ReservationState::Committed
            )
        })
        .count();
    assert_eq!(
        (mine.len(), live),
        (7, 6),
        "one blank per applicant: {mine:?}"
    );
    assert_eq!(quota(&server).await?.remaining, 0);

    // Lost again: a re-run finds ticket 4's new hold through its first request id, and
    // reserves nothing.
    std::fs::remove_file(&results)?;
    let rerun = run_as(
        url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let events = rerun.json()?;
    assert_eq!(outcomes_of(&events), expect, "{rerun:?}");
    let reserved = replayed_and_id(&events);
    assert!(reserved.iter().all(|(r, _)| *r), "{rerun:?}");
    assert_eq!(reserved[2].1, again_for_4, "{rerun:?}");
    assert_eq!(
        reservations(&server).await?.len(),
        7,
        "nothing reserved twice"
    );

    // The human words, in a run that says what the server knew.
    std::fs::remove_file(&results)?;
    let words = run_as(
        url,
        &[
            "queue",
            &file_arg,
            "--results",
            &results_arg,
            "--forecast-only",
        ],
    )
    .await?;
    assert!(
        words.stdout.contains(
            "Menurut server, 6 tiket dalam daftar ini sudah dijawab hari ini dengan blangko (ditahan atau dicetak)"
        ),
        "{words:?}"
    );
    assert!(!words.stdout.contains("AKTIVASI IKD"), "{words:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_human_output_in_both_languages_and_bad_rows_with_line_numbers() -> anyhow::Result<()>
{
    let server = server_with(5, 100).await?;
    let url = server.url.as_str();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    let mut text = queue_csv(8);
    text.push_str("9,327501410190001,lost\n"); // line 10: 15 digits
    text.push('\n');
    text.push_str("10,3275014101900011,stolen\n"); // line 12: unknown reason
    std::fs::write(&file, text)?;
    let file_arg = file.display().to_string();

    let en = run_as(
        url,
        &[
            "--lang",
            "en",
            "queue",
            &file_arg,
            "--forecast-only",
            "--results",
            &dir.path().join("en.csv").display().to_string(),
        ],
    )
    .await?;
    assert_eq!(en.code, 2, "bad rows make exit 2: {en:?}");
    assert!(
        en.stderr
            .contains("Line 10 (ticket 9): nik — must have 16 digits, got 15"),
        "{en:?}"
    );
    assert!(
        en.stderr
            .contains("Line 12 (ticket 10): reason — unknown reason \"stolen\""),
        "{en:?}"
    );
    assert!(en.stdout.contains("Forecast: 8 waiting at this counter (8 at the service point), 5 quota left → 5 served, 3 referred to IKD"), "{en:?}");
    assert!(
        en.stdout
            .contains("ACTIVATE IKD NOW: tickets 6–8 (3 people)"),
        "{en:?}"
    );
    assert!(
        reservations(&server).await?.is_empty(),
        "--forecast-only reserves nobody"
    );
    // Nor does its waiting count stay in the other counters' forecasts.
    assert_eq!(
        quota(&server).await?.waiting,
        0,
        "the preview withdrew its report"
    );

    let results = dir.path().join("hasil.csv");
    let id = run_as(
        url,
        &[
            "queue",
            &file_arg,
            "--results",
            &results.display().to_string(),
        ],
    )
    .await?;
    assert_eq!(id.code, 2, "{id:?}");
    assert!(
        id.stderr
            .contains("Baris 10 (tiket 9): nik — NIK harus 16 digit, bukan 15"),
        "{id:?}"
    );
    assert!(
        id.stdout.contains("Perkiraan: 8 menunggu di loket ini"),
        "{id:?}"
    );
    assert!(
        id.stdout.contains("→ 5 dilayani, 3 dirujuk ke IKD"),
        "{id:?}"
    );
    assert!(
        id.stdout
            .contains("AKTIVASI IKD SEKARANG: tiket 6–8 (3 orang)"),
        "{id:?}"
    );
    assert!(id.stdout.contains("[1] DITAHAN "), "{id:?}");
    assert!(id.stdout.contains("[5] DITAHAN "), "{id:?}");
    assert!(!id.stdout.contains("[6] "), "{id:?}");
    assert!(id.stdout.contains("Selesai: 5 dipesan (0 ulang), 3 diberi tahu aktivasi IKD, 0 dirujuk server, 2 tidak valid"), "{id:?}");
    assert_no_clear_nik(&id, 1..=10);
    let csv = std::fs::read_to_string(&results)?;
    assert!(
        csv.starts_with("local_date,line,ticket,masked_nik,reason,outcome,"),
        "{csv}"
    );
    assert_eq!(csv.matches(",reserved,").count(), 5, "{csv}");
    assert_eq!(csv.matches(",ikd_forecast,").count(), 3, "{csv}");
    assert_eq!(csv.matches(",invalid,").count(), 2, "{csv}");
    assert_eq!(reservations(&server).await?.len(), 5);

    // A queue file that is not there: said in the officer's language, and both in JSON.
    let missing = dir.path().join("tidak-ada.csv").display().to_string();
    let id = run_as(url, &["queue", &missing]).await?;
    assert_eq!(id.code, 1, "{id:?}");
    assert!(
        id.stderr.contains(&format!(
            "Galat: berkas antrean {missing} tidak terbaca: tidak ditemukan"
        )),
        "{id:?}"
    );
    let en = run_as(url, &["--lang", "en", "queue", &missing]).await?;
    assert!(
        en.stderr
            .contains(&format!("Error: cannot read queue file {missing}: ")),
        "{en:?}"
    );
    let json = run_as(url, &["--json", "queue", &missing]).await?;
    let error: Value = serde_json::from_str(json.stdout.trim())?;
    assert_eq!(error["error"]["code"], "LOCAL", "{json:?}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("cannot read queue file"), "{json:?}");
    let indonesian = error["error"]["message_indonesian"]
        .as_str()
        .unwrap_or_default();
    assert!(
        indonesian.starts_with("Galat: berkas antrean ") && indonesian.contains(" tidak terbaca"),
        "{json:?}"
    );
    Ok(())
}

/// Reads a JSON-lines results file: ticket → outcomes, in file order.
fn outcomes(path: &Path) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // a line torn by the kill
        };
        map.entry(v["ticket"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(v["outcome"].as_str().unwrap_or("").to_string());
    }
    Ok(map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rerun_after_a_kill_reserves_nobody_twice() -> anyhow::Result<()> {
    let server = server_with(20, 100).await?;
    let url = server.url.clone();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(35))?;
    let results = dir.path().join("hasil.jsonl");
    let file_arg = file.display().to_string();
    let results_arg = results.display().to_string();

    // First run, slowed down, killed (SIGKILL) half-way through.
    let args = who(&[
        "queue",
        &file_arg,
        "--results",
        &results_arg,
        "--pace-ms",
        "150",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&[&url], &refs).stdin(Stdio::null()).spawn()?;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let reserved = outcomes(&results)?
            .values()
            .filter(|o| o.iter().any(|x| x == "reserved"))
            .count();
        if reserved >= 8 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the first run never got to 8"
        );
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the first run ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill()?;
    let status = child.wait().await?;
    assert!(!status.success(), "killed: {status:?}");
    let before = reservations(&server).await?.len();
    assert!(
        (8..20).contains(&before),
        "killed half-way: {before} reserved"
    );

    // The re-run finishes the queue.
    let again = run_as(
        &url,
        &[
            "--lang",
            "en",
            "queue",
            &file_arg,
            "--results",
            &results_arg,
        ],
    )
    .await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("Resuming: "), "{again:?}");
    assert!(
        !again.stdout.contains("ACTIVATE IKD NOW"),
        "nobody else is cut off: {again:?}"
    );

    let all = reservations(&server).await?;
    assert_eq!(all.len(), 20, "exactly the quota, nobody twice: {all:?}");
    let distinct: HashSet<&str> = all.iter().map(|r| r.masked_nik.as_str()).collect();
    assert_eq!(distinct.len(), 20);
    let expected: Vec<String> = (1..=20).map(masked).collect();
    let expected: HashSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(distinct, expected);

    let map = outcomes(&results)?;
    for ticket in 1..=35u32 {
        let final_outcomes: Vec<&String> = map
            .get(&ticket.to_string())
            .map(|o| o.iter().filter(|x| x.as_str() != "error").collect())
            .unwrap_or_default();
        let want = if ticket <= 20 {
            "reserved"
        } else {
            "ikd_forecast"
        };
        assert_eq!(final_outcomes, vec![want], "ticket {ticket}");
    }

    // A third run changes nothing.
    let third = run_as(
        &url,
        &["--json", "queue", &file_arg, "--results", &results_arg],
    )
    .await?;
    assert_eq!(third.code, 0, "{third:?}");
    let summary = third.json()?.pop().context("no summary")?;
    assert_eq!(summary["earlier"], 35, "{summary}");
    assert_eq!(summary["reserved"], 0, "{summary}");
    assert_eq!(reservations(&server).await?.len(), 20);
    assert_eq!(quota(&server).await?.held, 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_from_a_dead_endpoint_to_a_live_one() -> anyhow::Result<()> {
    let server = server_with(10, 100).await?;
    let dead = blangko_e2e::DEAD_ENDPOINT.to_string();
    let servers = [dead.as_str(), server.url.as_str()];
    // Every call, whichever endpoint the round-robin starts with, reaches the live server.
    for n in 1..=4 {
        let args = who(&["--json", "reserve", "--nik", &nik(n), "--reason", "lost"]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = client(&servers, &refs, None).await?;
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.one_json()?["outcome"], "reserved");
    }
    assert_eq!(reservations(&server).await?.len(), 4);

    // status names the dead one but succeeds with the live one.
    let args = who(&["status"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let status = client(&servers, &refs, None).await?;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status
            .stderr
            .contains(&format!("Server {dead}: tidak terjangkau")),
        "{status:?}"
    );
    assert!(
        status
            .stdout
            .contains(&format!("Server {}: SERVING", server.url)),
        "{status:?}"
    );
    assert!(status.stdout.contains("sisa 6"), "{status:?}");

    // A queue run with the dead endpoint first in the list.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("q.csv");
    let mut text = String::from("ticket,nik,reason\n");
    for n in 5..=7 {
        text.push_str(&format!("T{n},{},lost\n", nik(n)));
    }
    std::fs::write(&file, text)?;
    let args = who(&["queue", &file.display().to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let queue = client(&servers, &refs, None).await?;
    assert_eq!(queue.code, 0, "{queue:?}");
    assert_eq!(reservations(&server).await?.len(), 7);
    Ok(())
}

/// A server process on a fixed port, so a restart comes back at the same address.
async fn server_process_on(
    db: &Arc<TestDatabase>,
    port: u16,
) -> anyhow::Result<tokio::process::Child> {
    let child = tokio::process::Command::new(server_bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &db.url,
            "--nik-key-file",
            &db.nik_key_file.display().to_string(),
        ])
        .env_remove("BLANGKO_NIK_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status()
                        == tonic_health::pb::health_check_response::ServingStatus::Serving
                })
            {
                return Ok(child);
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "server on port {port} never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a child process writes on `pipe`, gathered as it comes (for [`wait_for_text`]), and the
/// task that gathers it (it ends with the pipe).
fn collect(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> (Arc<std::sync::Mutex<String>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = seen.lock() {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    (seen, reader)
}

/// Waits (at most 60 s) until `seen` holds `text`.
async fn wait_for_text(seen: &Arc<std::sync::Mutex<String>>, text: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .contains(text)
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never saw {text:?} in {:?}",
            seen.lock().map(|s| s.clone()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An interactive screen (`counter`) at work: its process, its keyboard, and what it printed so
/// far (collected by `reader`).
struct OpenScreen {
    screen: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    seen: Arc<std::sync::Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Opens the screen with `args` against `url`, once its header is shown.
async fn open_screen(url: &str, args: &[&str]) -> anyhow::Result<OpenScreen> {
    let mut screen = command(&[url], args).stdin(Stdio::piped()).spawn()?;
    let stdin = screen.stdin.take().context("no stdin")?;
    let (seen, reader) = collect(screen.stdout.take().context("no stdout")?);
    wait_for_text(&seen, "== blangko-counter").await?;
    Ok(OpenScreen {
        screen,
        stdin,
        seen,
        reader,
    })
}

/// A server process on a port of its own (to be started again there), office 3275 with service
/// point mpp, and one hold in it.
struct OneHold {
    db: Arc<TestDatabase>,
    port: u16,
    url: String,
    server: tokio::process::Child,
    /// The hold's reservation id.
    id: String,
}

async fn one_hold() -> anyhow::Result<OneHold> {
    let db = TestDatabase::sqlite().await?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = server_process_on(&db, port).await?;
    office_with_point(&mut stock_at(&url).await?, "3275", "mpp", 10, 100).await?;
    reserve_at(&url, 1).await?;
    let id = reservations_at(&url)
        .await?
        .first()
        .map(|r| r.reservation_id.clone())
        .context("no reservation")?;
    Ok(OneHold {
        db,
        port,
        url,
        server,
        id,
    })
}

/// The reservations of office 3275 at `url`.
async fn reservations_at(url: &str) -> anyhow::Result<Vec<Reservation>> {
    let mut counter =
        blangko_proto::v1::counter_service_client::CounterServiceClient::connect(url.to_string())
            .await?;
    Ok(counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            ..ListReservationsRequest::default()
        })
        .await?
        .into_inner()
        .reservations)
}

/// A card printed while the server was away, its c unanswered, and then the counter's PC stops:
/// the next screen of this counter tells of it as it opens, before any applicant, and its c
/// then records it (the hold would otherwise run out and the printed blank count as in stock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_print_is_told_again_when_the_screen_opens_after_the_pc_stopped()
-> anyhow::Result<()> {
    let OneHold {
        db,
        port,
        url,
        mut server,
        id,
    } = one_hold().await?;
    let list = db.dir.path().join("loket").join("belum-tercatat.txt");
    let list_arg = list.display().to_string();
    let args = who(&[
        "--retries",
        "0",
        "--timeout",
        "2",
        "counter",
        "--unrecorded-file",
        &list_arg,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();

    let OpenScreen {
        mut screen,
        mut stdin,
        seen,
        reader,
    } = open_screen(&url, &refs).await?;
    server.start_kill()?;
    server.wait().await?;
    stdin.write_all(format!("c {id}\n").as_bytes()).await?;
    wait_for_text(&seen, "Cetak belum tercatat").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&list).is_ok_and(|text| text.lines().any(|l| l == id)) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the unrecorded print was not kept in {}",
            list.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The PC stops: no goodbye, no reminder at the end.
    screen.start_kill()?;
    screen.wait().await?;
    reader.await?;

    let _back = server_process_on(&db, port).await?;
    let reopened = client(&[&url], &refs, Some(&format!("c {id}\nkeluar\n"))).await?;
    assert_eq!(reopened.code, 0, "{}", reopened.all());
    let reminder = format!("Perhatian: cetak BELUM tercatat untuk {id}: ketik c ID");
    let told_at = reopened
        .stdout
        .find(&reminder)
        .with_context(|| format!("not told as the screen opened: {}", reopened.all()))?;
    // Told before the first prompt.
    assert!(
        reopened.stdout[..told_at].find("> ").is_none(),
        "{}",
        reopened.stdout
    );
    let printed = reservations_at(&url).await?;
    assert_eq!(printed.len(), 1);
    assert_eq!(printed[0].state(), ReservationState::Committed);
    assert!(
        !list.exists(),
        "the list was not emptied once c was answered"
    );

    // The next screen has nothing to tell.
    let again = client(&[&url], &refs, Some("keluar\n")).await?;
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(!again.stdout.contains("BELUM tercatat"), "{}", again.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_screen_keeps_an_unanswered_print_and_spoiled_report_until_a_server_answers()
-> anyhow::Result<()> {
    let OneHold {
        db,
        port,
        url,
        mut server,
        id,
    } = one_hold().await?;

    let args = who(&["--retries", "0", "--timeout", "2", "counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let OpenScreen {
        mut screen,
        mut stdin,
        seen,
        reader,
    } = open_screen(&url, &refs).await?;

    // The server goes away: the card is printed and its c gets no answer; a spoiled report
    // gets none either. A look at the quota in between does not lose the report.
    server.start_kill()?;
    server.wait().await?;
    stdin
        .write_all(
            format!(
                "c {id}\nrusak {id} chip-gagal\nkuota\nrusak {id} chip-gagal\ny\nrusak {id} chip-gagal\nt\nn\n\n"
            )
            .as_bytes(),
        )
        .await?;
    let reminder = format!("Perhatian: cetak BELUM tercatat untuk {id}: ketik c ID");
    wait_for_text(&seen, &reminder).await?;
    // Another applicant later: still told.
    stdin.write_all(b"n\n\n").await?;
    let told_twice = async {
        loop {
            if seen
                .lock()
                .map(|s| s.matches(&reminder).count())
                .unwrap_or(0)
                >= 2
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), told_twice)
        .await
        .context("the unconfirmed print was told once only")?;

    // The server is back: c is answered, and nothing is told at the end.
    let _back = server_process_on(&db, port).await?;
    stdin
        .write_all(format!("c {id}\nkeluar\n").as_bytes())
        .await?;
    stdin.shutdown().await?;
    let status = tokio::time::timeout(RUN_TIMEOUT, screen.wait()).await??;
    reader.await?;
    let out = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(status.success(), "{status:?} {out}");
    // The second rusak (after kuota), said to be the same blank, sent the first one's request
    // id again; the third, another blank spoiled alike, did not.
    assert_eq!(
        out.matches("Apakah ini blangko yang SAMA").count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("Mengulang laporan sebelumnya yang belum terjawab (ID")
            .count(),
        1,
        "{out}"
    );
    let printed = out
        .find(&format!("DICETAK {id}"))
        .context("the print was not recorded")?;
    assert!(!out[printed..].contains(&reminder), "{out}");
    Ok(())
}

async fn stock_at(
    url: &str,
) -> anyhow::Result<
    blangko_proto::v1::stock_service_client::StockServiceClient<tonic::transport::Channel>,
> {
    Ok(
        blangko_proto::v1::stock_service_client::StockServiceClient::connect(url.to_string())
            .await?,
    )
}

async fn reserve_at(url: &str, n: u32) -> anyhow::Result<()> {
    let mut counter =
        blangko_proto::v1::counter_service_client::CounterServiceClient::connect(url.to_string())
            .await?;
    counter
        .reserve(fixtures::reserve_request("3275", "mpp", n))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_change_and_survives_a_server_restart() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut first = server_process_on(&db, port).await?;
    office_with_point(&mut stock_at(&url).await?, "3275", "mpp", 10, 100).await?;

    // 4 snapshots: the initial one, one reserve before the restart, one after (through the new
    // process), and the first snapshot after reconnecting may repeat the last one (no line).
    let args = who(&["--json", "watch", "--max-updates", "3", "--for", "60"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watch = command(&[&url], &refs).stdin(Stdio::null()).spawn()?;
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().context("no stdout")?);
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await??;
    let v: Value = serde_json::from_str(&line)?;
    assert_eq!(v["quota"]["remaining"], 10, "{v}");

    reserve_at(&url, 1).await?;
    line.clear();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await??;
    let v: Value = serde_json::from_str(&line)?;
    assert_eq!(v["quota"]["remaining"], 9, "{v}");

    // Restart: SIGKILL, then a new process on the same port and database.
    first.start_kill()?;
    first.wait().await?;
    let _second = server_process_on(&db, port).await?;
    reserve_at(&url, 2).await?;
    line.clear();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line)).await??;
    let v: Value = serde_json::from_str(&line)?;
    assert_eq!(v["quota"]["remaining"], 8, "after the restart: {v}");

    let status = tokio::time::timeout(Duration::from_secs(30), watch.wait()).await??;
    assert!(
        status.success(),
        "--max-updates 3 ends it with exit 0: {status:?}"
    );
    let mut rest = String::new();
    use tokio::io::AsyncReadExt;
    stdout.read_to_string(&mut rest).await?;
    assert!(
        rest.trim().is_empty(),
        "nothing after the third update: {rest}"
    );
    let mut stderr = String::new();
    if let Some(mut e) = watch.stderr.take() {
        e.read_to_string(&mut stderr).await?;
    }
    assert!(
        stderr.contains("Koneksi terputus; menyambung ulang"),
        "{stderr}"
    );

    // Human lines, Indonesian and English, bounded by --for.
    let args = who(&["watch", "--for", "1"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = client(&[&url], &refs, None).await?;
    assert_eq!(id.code, 0, "{id:?}");
    assert_eq!(id.stdout.lines().count(), 1, "no change, one line: {id:?}");
    assert!(
        id.stdout
            .contains("3275/mpp: kuota 10  ditahan 2  dicetak 0  sisa 8"),
        "{id:?}"
    );
    let args = who(&["--lang", "en", "watch", "--for", "1"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let human = client(&[&url], &refs, None).await?;
    assert_eq!(human.code, 0, "{human:?}");
    assert_eq!(
        human.stdout.lines().count(),
        1,
        "no change, one line: {human:?}"
    );
    assert!(
        human.stdout.contains("3275/mpp: quota 10  held 2"),
        "{human:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_counter_is_driven_through_stdin() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut stock = server.stock_client().await?;
    fixtures::office(&mut stock, "3275", |o| o.ikd_first_required = true).await?;
    fixtures::service_point(&mut stock, "3275", "mpp", fixtures::fixed(1)).await?;
    fixtures::ship(&mut stock, "3275", 10).await?;
    let url = server.url.as_str();

    let script = format!(
        "antrean 3\n\
         n\n\
         12345\n\
         {}\n\
         1\n\
         b\n\
         y\n\
         c\n\
         \n\
         {}\n\
         2\n\
         a\n\
         x\n\
         rusak stok lainnya\n\
         rusak stok lainnya tinta tumpah di gudang\n\
         hold\n\
         bogus\n\
         keluar\n",
        nik(1),
        nik(2)
    );
    let args = who(&["counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = client(&[url], &refs, Some(&script)).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    let expect = [
        "== blangko-counter · loket loket-1 · 3275/mpp",
        "Perkiraan: dari 3 yang menunggu di loket ini, 1 dapat dilayani hari ini; nomor ke-2 dst.",
        "antrean loket 3 → 1 dilayani, 2 ke IKD",
        "NIK harus 16 digit angka.",
        "RUJUK KE AKTIVASI IKD: kantor mewajibkan aktivasi IKD terlebih dahulu (IKD_REQUIRED)",
        &format!("Aktivasi IKD dicatat untuk NIK {}", masked(1)),
        "DITAHAN ",
        "DICETAK ",
        "RUJUK KE AKTIVASI IKD: kuota blangko hari ini sudah habis (QUOTA_EXHAUSTED)",
        // x after this applicant's referral: not the previous applicant's reservation.
        "Sebutkan ID pemesanan (pemohon ini belum punya pemesanan; lihat: hold).",
        // A blank spoiled for another reason needs its story; with it, it is recorded.
        "Dengan alasan lainnya, tulis keterangannya sesudahnya",
        "Blangko rusak dicatat",
        "Tidak ada pemesanan yang ditahan.",
        "Perintah tidak dikenal; ketik bantuan.",
        "Sampai jumpa.",
    ];
    assert_in_order(out, &expect);
    assert!(
        out.contains("[sisa kuota 0/1"),
        "the quota stays in view: {out}"
    );
    assert_no_clear_nik(&run, [1, 2]);

    let all = reservations(&server).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state(), ReservationState::Committed);
    assert_eq!(all[0].masked_nik, masked(1));
    // 10 shipped, 1 printed, 1 spoiled in stock (once: the line without its story sent nothing).
    assert_eq!(fixtures::stock_level(&mut stock, "3275").await?.on_hand, 8);
    // Leaving the screen withdrew the queue report.
    assert_eq!(quota(&server).await?.waiting, 0);

    // English, and the end of input ends the screen too.
    let script = format!("queue 2\n\n{}\nlost\ne\n", nik(3));
    let args = who(&["--lang", "en", "counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let en = client(&[url], &refs, Some(&script)).await?;
    assert_eq!(en.code, 0, "{en:?}");
    assert!(
        en.stdout
            .contains("Forecast: of 2 waiting at this counter, 0 can be served today"),
        "{en:?}"
    );
    assert!(
        en.stdout
            .contains("REFER TO IKD ACTIVATION: today's quota is used up (QUOTA_EXHAUSTED)"),
        "{en:?}"
    );
    assert!(en.stdout.contains("Goodbye."), "{en:?}");

    // --json: results as JSON objects on stdout, the prompts and the screen on stderr.
    let args = who(&["--json", "counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let json = client(&[url], &refs, Some("antrean 4\nkeluar\n")).await?;
    assert_eq!(json.code, 0, "{json:?}");
    let v = json.one_json()?;
    assert_eq!(v["event"], "forecast");
    assert_eq!(
        (v["waiting"].as_u64(), v["expected_served"].as_u64()),
        (Some(4), Some(0))
    );
    assert!(json.stderr.contains("[sisa kuota 0/1"), "{json:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_x_asks_before_it_cancels_and_an_overlong_line_is_not_run()
-> anyhow::Result<()> {
    let server = server_with(5, 10).await?;
    let url = server.url.as_str();
    // Reserve; x answered "t" keeps the hold; an overlong line is refused whole (it would
    // otherwise have been cut and run); x answered "y" cancels.
    let long = format!("x {}", "9".repeat(2_000));
    // First a blank found defective in stock, recorded outside any reservation.
    let script = format!(
        "rusak stok cacat-pabrik\n\n{}\n1\na\nx\nt\n{long}\nx\ny\nkeluar\n",
        nik(1)
    );
    let run = screen(url, &script).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    let expect = [
        "Blangko rusak dicatat · tersedia 9",
        "DITAHAN ",
        "Batalkan pemesanan ",
        "Tidak dibatalkan.",
        "Baris terlalu panjang (lebih dari 1024 karakter): diabaikan, ketik lagi.",
        "Batalkan pemesanan ",
        "DIBATALKAN ",
        "Sampai jumpa.",
    ];
    assert_in_order(out, &expect);
    let all = reservations(&server).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state(), ReservationState::Cancelled);

    // A hold left without c or x is recalled when the screen closes; k alone does not close it
    // (a slip away from kuota).
    let script = format!("\n{}\n1\na\nk\nkeluar\n", nik(2));
    let run = screen(url, &script).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    let expect = [
        "DITAHAN ",
        "Perintah tidak dikenal; ketik bantuan.",
        "Perhatian: pemesanan ",
        "belum ditandai dicetak (c) atau dibatalkan (x). Jika kartunya sudah dicetak, ketik c ",
        "Sampai jumpa.",
    ];
    assert_in_order(out, &expect);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applicant_served_elsewhere_today_leaves_the_screens_queue() -> anyhow::Result<()> {
    // Served at another service point today: a decision (not to be served here), so the queue
    // this counter reports goes down by one, as after any other decision.
    let server = server_with(5, 10).await?;
    let mut stock = server.stock_client().await?;
    fixtures::service_point(&mut stock, "3275", "kec", fixtures::fixed(5)).await?;
    server
        .counter_client()
        .await?
        .reserve(fixtures::reserve_request("3275", "kec", 7))
        .await?;
    let run = screen(
        &server.url,
        &format!("antrean 3\nn\n{}\n1\na\nkeluar\n", nik(7)),
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    // The refusal (on stderr, as every failure) names where the applicant was served.
    assert!(run.stderr.contains("ALREADY_RESERVED_ELSEWHERE"), "{run:?}");
    assert_in_order(&run.stdout, &["antrean loket 3 →", "antrean loket 2 →"]);
    // The one reservation is the applicant's at kec: nothing was reserved here.
    let all = reservations(&server).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].service_point_id, "kec");
    Ok(())
}

/// The interactive screen of counter loket-1, fed `script` on stdin, to its end.
async fn screen(url: &str, script: &str) -> anyhow::Result<Run> {
    let args = who(&["counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client(&[url], &refs, Some(script)).await
}

/// Asserts that every text of `expect` is in `out`, in this order.
fn assert_in_order(out: &str, expect: &[&str]) {
    let mut at = 0;
    for text in expect {
        let Some(found) = out[at..].find(text) else {
            panic!("{text:?} missing (in order) from:\n{out}");
        };
        at += found + text.len();
    }
}

/// A tmux server of this test alone (its own socket), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new("tmux");
        cmd.arg("-L").arg(&self.socket).args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("BLANGKO_") || key == "TMUX" {
                cmd.env_remove(key);
            }
        }
        // CI may run without a terminal type; tmux makes its own terminal anyway.
        if std::env::var_os("TERM").is_none() {
            cmd.env("TERM", "xterm");
        }
        let output = cmd.output()?;
        anyhow::ensure!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn screen(&self) -> anyhow::Result<String> {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "counter"])
    }

    /// Waits until the screen shows `text` `count` times.
    async fn wait_for(&self, text: &str, count: usize) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen()?;
            if screen.matches(text).count() >= count {
                return Ok(screen);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{text:?} never appeared:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn keys(&self, keys: &str) -> anyhow::Result<()> {
        self.run(&["send-keys", "-t", "counter", "-l", keys])?;
        self.run(&["send-keys", "-t", "counter", "Enter"])?;
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_counter_works_on_a_real_terminal_under_tmux() -> anyhow::Result<()> {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        return blangko_e2e::skipped(
            "tmux is not installed: this test needs it (apt-get install tmux)",
        );
    }
    let server = server_with(1, 10).await?;
    let tmux = Tmux {
        socket: format!("blangko-e2e-{}-{:x}", std::process::id(), rand_suffix()),
    };
    let program = format!(
        "{} --server {} --office 3275 --service-point mpp --counter loket-1 --lang en counter --waiting 2; sleep 60",
        counter_bin().display(),
        server.url
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-s",
        "counter",
        &program,
    ])?;
    tmux.wait_for("> ", 1).await?;
    let screen = tmux.wait_for("[quota left 1/1", 1).await?;
    assert!(
        screen.contains("queue here 2 → 1 served, 1 to IKD"),
        "{screen}"
    );

    tmux.keys("")?;
    tmux.wait_for("NIK: ", 1).await?;
    tmux.keys(&nik(7))?;
    tmux.wait_for("Reason (1 new recording", 1).await?;
    tmux.keys("first-time-voter")?;
    tmux.wait_for("IKD (a = active", 1).await?;
    tmux.keys("a")?;
    let screen = tmux.wait_for("HELD ", 1).await?;
    assert!(screen.contains(&format!("NIK {}", masked(7))), "{screen}");
    assert!(screen.contains("reason first-time voter"), "{screen}");
    tmux.wait_for("[quota left 0/1", 1).await?;
    tmux.keys("c")?;
    tmux.wait_for("COMMITTED ", 1).await?;
    tmux.keys("quit")?;
    let screen = tmux.wait_for("Goodbye.", 1).await?;
    // The officer's own typing is on the screen; nothing the program printed shows the NIK.
    let printed: String = screen
        .lines()
        .filter(|l| !l.starts_with("NIK: "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!printed.contains(&nik(7)), "{screen}");

    let all = reservations(&server).await?;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state(), ReservationState::Committed);
    Ok(())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_forecast_follows_the_live_quota_while_reserving() -> anyhow::Result<()> {
    let server = server_with(10, 100).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(10))?;
    let results = dir.path().join("hasil.jsonl");
    let args = who(&[
        "--json",
        "queue",
        &file.display().to_string(),
        "--results",
        &results.display().to_string(),
        // Slow enough that the three Reserves below, and the forecast they move, land before
        // the queue reaches ticket 8 on a busy machine.
        "--pace-ms",
        "800",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&[&server.url], &refs)
        .stdin(Stdio::null())
        .spawn()?;

    // Once two are reserved, another counter takes three slots.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while outcomes(&results)?
        .values()
        .filter(|o| o.iter().any(|x| x == "reserved"))
        .count()
        < 2
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never got to 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut other = server.counter_client().await?;
    for n in 101..=103 {
        let mut request = fixtures::reserve_request("3275", "mpp", n);
        request.counter_id = "loket-2".into();
        other.reserve(request).await?;
    }

    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await??;
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()?;
    let kind = |v: &Value| v["event"].as_str().unwrap_or("").to_string();
    let forecasts: Vec<u64> = events
        .iter()
        .filter(|v| kind(v) == "forecast")
        .filter_map(|v| v["expected_served"].as_u64())
        .collect();
    assert_eq!(forecasts.first(), Some(&10), "{run:?}");
    assert!(
        forecasts.len() >= 2,
        "a second forecast after the others took quota: {run:?}"
    );
    let told: Vec<String> = events
        .iter()
        .filter(|v| kind(v) == "ikd_forecast")
        .map(|v| v["ticket"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        told,
        ["8", "9", "10"],
        "the new tail is told at once: {run:?}"
    );
    // Told while reserving: after the first reservation and before the last one.
    let first_row = events
        .iter()
        .position(|v| kind(v) == "row")
        .context("no row")?;
    let last_row = events
        .iter()
        .rposition(|v| kind(v) == "row")
        .context("no row")?;
    let first_told = events
        .iter()
        .position(|v| kind(v) == "ikd_forecast")
        .context("none told")?;
    assert!(
        first_row < first_told && first_told < last_row,
        "told while reserving: {run:?}"
    );
    assert_eq!(reservations(&server).await?.len(), 7);
    let q = quota(&server).await?;
    assert_eq!((q.held, q.remaining), (10, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_stopped_by_a_dead_server_resumes_after_the_restart() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut first = server_process_on(&db, port).await?;
    office_with_point(&mut stock_at(&url).await?, "3275", "mpp", 10, 100).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("antrean.csv");
    std::fs::write(&file, queue_csv(12))?;
    let file_arg = file.display().to_string();
    let results = dir.path().join("antrean.results.csv");

    let args = who(&[
        "--retries",
        "1",
        "--timeout",
        "2",
        "queue",
        &file_arg,
        "--pace-ms",
        "200",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&[&url], &refs).stdin(Stdio::null()).spawn()?;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&results).unwrap_or_default();
        if text.matches(",reserved,").count() >= 3 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never got to 3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill()?;
    first.wait().await?;
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await??;
    let stopped = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(stopped.code, 1, "{stopped:?}");
    assert!(
        stopped
            .stderr
            .contains("Antrean berhenti. Jalankan perintah yang sama lagi"),
        "{stopped:?}"
    );
    assert!(!stopped.all().contains("panicked"), "{stopped:?}");

    let _second = server_process_on(&db, port).await?;
    let again = run_as(&url, &["queue", &file_arg]).await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("Melanjutkan: "), "{again:?}");
    let mut counter =
        blangko_proto::v1::counter_service_client::CounterServiceClient::connect(url.clone())
            .await?;
    let all = counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            counter_id: "loket-1".into(),
            page_size: 500,
            ..ListReservationsRequest::default()
        })
        .await?
        .into_inner()
        .reservations;
    assert_eq!(all.len(), 10, "{all:?}");
    let distinct: HashSet<&str> = all.iter().map(|r| r.masked_nik.as_str()).collect();
    assert_eq!(distinct.len(), 10);
    let text = std::fs::read_to_string(&results)?;
    assert_eq!(text.matches(",reserved,").count(), 10, "{text}");
    assert_eq!(text.matches(",ikd_forecast,").count(), 2, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_counters_numbering_their_tickets_alike_reserve_everyone() -> anyhow::Result<()> {
    // Loket 1 and loket 2 of one service point each number their own queue 1, 2, 3, ... with
    // different applicants: ticket 1 of loket 2 is not a repeat of ticket 1 of loket 1.
    let server = server_with(20, 100).await?;
    let url = server.url.clone();
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (counter, first_nik) in [("loket-1", 1), ("loket-2", 11)] {
        let mut text = String::from("ticket,nik,reason\n");
        for ticket in 1..=4 {
            text.push_str(&format!(
                "{ticket},{},new-recording\n",
                nik(first_nik + ticket)
            ));
        }
        let file = dir.path().join(format!("{counter}.csv"));
        std::fs::write(&file, text)?;
        let file_arg = file.display().to_string();
        let args = [
            "--office",
            "3275",
            "--service-point",
            "mpp",
            "--counter",
            counter,
            "queue",
            &file_arg,
        ];
        let run = client(&[&url], &args, None).await?;
        assert_eq!(run.code, 0, "{counter}: {run:?}");
        runs.push(run);
    }
    assert!(
        runs[1].stdout.contains("Selesai: 4 dipesan (0 ulang)"),
        "{:?}",
        runs[1]
    );
    let q = quota(&server).await?;
    assert_eq!(q.held, 8, "{q:?}");

    // An afternoon list at loket 1 that numbers its tickets from 1 again: those tickets were
    // used today for other applicants. Nobody is reserved on them, and the officer is told how
    // to go on.
    let afternoon = dir.path().join("loket-1-siang.csv");
    std::fs::write(
        &afternoon,
        format!(
            "ticket,nik,reason\n1,{},new-recording\n2,{},new-recording\n",
            nik(31),
            nik(32)
        ),
    )?;
    let file_arg = afternoon.display().to_string();
    let run = client(&[&url], &who_args(&["queue", &file_arg]), None).await?;
    assert!(
        run.stdout.contains(
            "Nomor tiket ini sudah dipakai hari ini di loket ini untuk pemohon lain: beri nomor tiket yang unik"
        ),
        "{run:?}"
    );
    assert_eq!(quota(&server).await?.held, 8);
    Ok(())
}

/// `WHO` and `args`, as the borrowed slice `client` takes.
fn who_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    WHO.iter().copied().chain(args.iter().copied()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_waits_for_a_watcher_slot_when_the_server_is_full() -> anyhow::Result<()> {
    // A server with one watcher slot, taken: `watch` is refused with TOO_MANY_WATCHERS and a
    // RetryInfo of 5 s. It waits that long and connects again (once the slot is free) instead of
    // giving up at once.
    let server =
        TestServer::start_on(TestDatabase::sqlite().await?, &["--max-watchers", "1"]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", 10, 100).await?;
    let mut other = server.counter_client().await?;
    let mut taken = other
        .watch_quota(WatchQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "mpp".into(),
        })
        .await?
        .into_inner();
    taken.message().await?;
    let args = who(&["--json", "watch", "--max-updates", "1", "--for", "30"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watch = command(&[&server.url], &refs)
        .stdin(Stdio::null())
        .spawn()?;
    // The slot frees once the client has been refused (its stderr says so), not after a guess
    // at how long it takes to start.
    let (seen, reader) = collect(watch.stderr.take().context("no stderr")?);
    wait_for_text(&seen, "TOO_MANY_WATCHERS").await?;
    let refused_at = std::time::Instant::now();
    drop(taken);
    let out = tokio::time::timeout(Duration::from_secs(40), watch.wait_with_output()).await??;
    // It waited the server's delay before it asked again (a lower bound: a slow machine only
    // waits longer; 0.5 s of it for seeing the refusal a poll late).
    assert!(
        refused_at.elapsed() >= Duration::from_millis(4500),
        "asked again after {:?}, before the server's 5 s",
        refused_at.elapsed()
    );
    reader.await?;
    let stderr = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(out.status.success(), "{stderr}");
    // The retry waits at least the delay the server's RetryInfo gave (5 s), as the client says.
    let waited_ms: u64 = stderr
        .split("Server belum bisa melayani; mencoba lagi dalam ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.trim().parse().ok())
        .with_context(|| format!("the refusal and its delay are shown: {stderr}"))?;
    assert!(
        waited_ms >= 5000,
        "{waited_ms} ms, under the server's 5 s: {stderr}"
    );
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
    assert_eq!(v["quota"]["remaining"], 10, "{v}");
    Ok(())
}

/// A counter PC whose clock runs an hour ahead of the server's (made here by a server an hour
/// behind: `--clock-offset-secs -3600`). A fresh 30-minute hold is judged by the server's clock
/// the answer carries: printable (exit 0, 30 minutes left), not "do not print, it ran out" by
/// the PC's clock; `status` tells the officer the PC's clock is off.
#[tokio::test]
async fn a_counter_pc_clock_an_hour_ahead_still_prints_a_fresh_hold() -> anyhow::Result<()> {
    let server = TestServer::spawn_process(&["--clock-offset-secs", "-3600"]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "mpp", 5, 100).await?;
    let url = server.url.as_str();

    let run = run_as(
        url,
        &["reserve", "--nik", &nik(1), "--reason", "new-recording"],
    )
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("DITAHAN "), "{run:?}");
    assert!(run.stdout.contains("(sisa 30 menit)"), "{run:?}");

    // The same applicant again: the answer repeats the hold (replayed), which the counter checks
    // for having run out: by the server's clock it has 30 minutes left, so it is printable.
    let again = run_as(
        url,
        &["reserve", "--nik", &nik(1), "--reason", "new-recording"],
    )
    .await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("(sisa 30 menit)"), "{again:?}");
    assert!(!again.all().contains("MASA TAHAN SUDAH HABIS"), "{again:?}");

    let json = run_as(
        url,
        &["--json", "reserve", "--nik", &nik(2), "--reason", "1"],
    )
    .await?;
    assert_eq!(json.code, 0, "{json:?}");
    let v = json.one_json()?;
    assert_eq!(v["outcome"], "reserved", "{v}");
    let left = v["reservation"]["seconds_left"].as_i64().unwrap_or(-1);
    assert!((1_700..=1_800).contains(&left), "{v}");

    let status = run_as(url, &["status"]).await?;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status
            .all()
            .contains("jam komputer ini 60 menit lebih cepat dari jam server"),
        "{status:?}"
    );
    let status = run_as(url, &["--json", "status"]).await?;
    let v = status.one_json()?;
    let offset = v["servers"][0]["clock_offset_secs"].as_i64().unwrap_or(0);
    assert!((-3_610..=-3_590).contains(&offset), "{v}");

    // The officer's screen says it once, as it opens.
    let args = who(&["counter"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let screen = client(&[url], &refs, Some("keluar\n")).await?;
    assert_eq!(screen.code, 0, "{screen:?}");
    assert_eq!(
        screen
            .all()
            .matches("jam komputer ini 60 menit lebih cepat dari jam server")
            .count(),
        1,
        "{screen:?}"
    );
    Ok(())
}

//! Durability on the embedded store: SIGKILL the server process during a burst of Reserves and
//! Commits, restart it on the same file, and find every acknowledged reservation and commit,
//! with consistent counts and the quota never exceeded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blangko_e2e::fixtures::{self, office_with_point, reserve_request, rid};
use blangko_e2e::{TestDatabase, TestServer};
use blangko_proto::v1::reserve_response::Outcome;
use blangko_proto::v1::*;

#[derive(Default)]
struct Acknowledged {
    reserved: HashSet<String>,
    committed: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let mut server = TestServer::spawn_process_on(db.clone(), &[]).await?;
    let mut stock = server.stock_client().await?;
    office_with_point(&mut stock, "3275", "main", 300, 1000).await?;

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let mut counter = server.counter_client().await?;
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            // Each worker reserves and commits applicants until the server dies (bounded).
            for i in 0..200u32 {
                let n = w * 1000 + i;
                let Ok(answer) = counter.reserve(reserve_request("3275", "main", n)).await else {
                    return;
                };
                let Some(Outcome::Reservation(r)) = answer.into_inner().outcome else {
                    continue;
                };
                if let Ok(mut a) = acked.lock() {
                    a.reserved.insert(r.reservation_id.clone());
                }
                if i % 2 == 0 {
                    let commit = counter
                        .commit_reservation(CommitReservationRequest {
                            request_id: rid(),
                            reservation_id: r.reservation_id.clone(),
                        })
                        .await;
                    match commit {
                        Ok(_) => {
                            if let Ok(mut a) = acked.lock() {
                                a.committed.insert(r.reservation_id);
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    // Let the burst run, then kill the process without warning.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count = acked.lock().map(|a| a.reserved.len()).unwrap_or(0);
        if count >= 60 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    server.wait_killed().await;
    for w in workers {
        let _ = w.await;
    }
    let (reserved, committed) = {
        let a = acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (a.reserved.clone(), a.committed.clone())
    };
    assert!(reserved.len() >= 60, "the burst was under way when killed");

    // Restart on the same file.
    let server = TestServer::spawn_process_on(db, &[]).await?;
    let mut counter = server.counter_client().await?;
    let found = fixtures::all_reservations(&mut counter, "3275").await?;
    let by_id: std::collections::HashMap<&str, &Reservation> = found
        .iter()
        .map(|r| (r.reservation_id.as_str(), r))
        .collect();
    for id in &reserved {
        let r = by_id
            .get(id.as_str())
            .ok_or_else(|| anyhow::anyhow!("acknowledged reservation {id} lost"))?;
        assert!(matches!(
            r.state(),
            ReservationState::Held | ReservationState::Committed
        ));
    }
    for id in &committed {
        assert_eq!(
            by_id[id.as_str()].state(),
            ReservationState::Committed,
            "acknowledged commit {id} lost"
        );
    }
    let held = found
        .iter()
        .filter(|r| r.state() == ReservationState::Held)
        .count() as u32;
    let printed = found
        .iter()
        .filter(|r| r.state() == ReservationState::Committed)
        .count() as u32;
    let q = counter
        .get_quota(GetQuotaRequest {
            office_id: "3275".into(),
            service_point_id: "main".into(),
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default();
    assert_eq!(
        (q.held, q.committed),
        (held, printed),
        "counters agree with the rows"
    );
    assert!(q.held + q.committed <= q.quota);
    assert_eq!(
        q.on_hand,
        1000 - printed,
        "every printed card left the stock once"
    );
    assert_eq!(q.available, 1000 - printed - held);
    Ok(())
}

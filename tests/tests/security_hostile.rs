//! Hostile input: thousands of random and malformed requests to every RPC — bad protobuf bytes,
//! truncated messages, wrong wire types, unknown enum numbers, huge strings, an oversized
//! message, unknown methods — sent as raw bytes. Every answer must be a proper gRPC status, the
//! server must not panic, must stay healthy, and its counts must be unchanged afterwards.

use std::sync::Arc;
use std::time::Duration;

use blangko_e2e::{TestDatabase, TestServer, TestTokens};
use blangko_proto::v1::*;
use bytes::{Buf, BufMut};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Requests sent in total.
const REQUESTS: usize = 3000;
/// Concurrent senders.
const SENDERS: usize = 8;

const UNARY: &[&str] = &[
    "/blangko.v1.CounterService/Reserve",
    "/blangko.v1.CounterService/CommitReservation",
    "/blangko.v1.CounterService/CancelReservation",
    "/blangko.v1.CounterService/ReportSpoiledBlank",
    "/blangko.v1.CounterService/RecordIkdActivation",
    "/blangko.v1.CounterService/ListReservations",
    "/blangko.v1.CounterService/GetQuota",
    "/blangko.v1.CounterService/ReportQueue",
    "/blangko.v1.StockService/UpsertOffice",
    "/blangko.v1.StockService/UpsertServicePoint",
    "/blangko.v1.StockService/RecordShipment",
    "/blangko.v1.StockService/TransferStock",
    "/blangko.v1.StockService/AdjustStock",
    "/blangko.v1.StockService/SetQuotaPolicy",
    "/blangko.v1.StockService/GetStock",
    "/blangko.v1.StockService/ListStock",
    "/blangko.v1.StockService/ListLedgerEntries",
    "/blangko.v1.StockService/VerifyLedger",
    "/blangko.v1.StockService/GetServerInfo",
    "/blangko.v1.CounterService/NoSuchMethod",
    "/blangko.v1.NoSuchService/Reserve",
];

/// Sends and receives raw bytes: the request body is whatever the test made.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A string to put in a field: hostile more often than not, never an existing office's id.
fn text(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..8) {
        0 => vec![b'9'; rng.random_range(0..200_000)],
        1 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        2 => "3275014101900001".into(),
        3 => "\u{0}\u{7}\n\r".into(),
        4 => "Ωﾟ🙂".repeat(rng.random_range(1..500)).into_bytes(),
        5 => match rng.random_range(1100..9700) {
            3275 => b"3204".to_vec(),
            n => n.to_string().into_bytes(),
        },
        6 => Vec::new(),
        _ => b"mpp".to_vec(),
    }
}

/// One field with a random tag and a random (possibly wrong or invalid) wire type.
fn field(rng: &mut StdRng, out: &mut Vec<u8>) {
    let tag: u64 = rng.random_range(1..20);
    let wire: u64 = rng.random_range(0..8);
    varint((tag << 3) | wire, out);
    match wire {
        0 => {
            // Unknown enum numbers, negatives (10-byte varints), huge numbers.
            let v = match rng.random_range(0..4) {
                0 => rng.random_range(0..20),
                1 => (-(rng.random_range(1..1000) as i64)) as u64,
                2 => u64::MAX,
                _ => rng.random(),
            };
            varint(v, out);
        }
        1 => out.extend_from_slice(&rng.random::<u64>().to_le_bytes()),
        2 => {
            let body = if rng.random_bool(0.3) {
                random_message(rng, 2)
            } else {
                text(rng)
            };
            // Sometimes a length that lies.
            let len = if rng.random_bool(0.1) {
                body.len() as u64 + rng.random_range(1..1000)
            } else {
                body.len() as u64
            };
            varint(len, out);
            out.extend_from_slice(&body);
        }
        5 => out.extend_from_slice(&rng.random::<u32>().to_le_bytes()),
        // 3, 4: deprecated groups; 6, 7: no such wire type.
        _ => out.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>())),
    }
}

fn random_message(rng: &mut StdRng, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if depth == 0 {
        return out;
    }
    for _ in 0..rng.random_range(0..8) {
        field(rng, &mut out);
    }
    out
}

/// A request body of one of the hostile kinds.
fn hostile_body(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => (0..rng.random_range(0..512))
            .map(|_| rng.random())
            .collect(),
        1 => random_message(rng, 3),
        2 => {
            // A well-formed request for an unknown office, with unknown enum numbers, cut short.
            let mut full = ReserveRequest {
                request_id: "x".repeat(rng.random_range(0..100)),
                office_id: String::from_utf8_lossy(&text(rng)).into_owned(),
                service_point_id: String::from_utf8_lossy(&text(rng)).into_owned(),
                counter_id: "loket-1".into(),
                nik: String::from_utf8_lossy(&text(rng)).into_owned(),
                reason: rng.random_range(-3..40),
                ikd_status: rng.random_range(-3..40),
            }
            .encode_to_vec();
            if rng.random_bool(0.3) {
                let cut = rng.random_range(0..=full.len());
                full.truncate(cut);
            }
            full
        }
        _ => {
            let mut body = random_message(rng, 1);
            body.extend((0..rng.random_range(0..16)).map(|_| rng.random::<u8>()));
            body
        }
    }
}

fn proper(status: &tonic::Status) -> bool {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::Unimplemented
        | Code::OutOfRange
        | Code::ResourceExhausted => true,
        // gRPC's status-code table: a message that does not parse is INTERNAL. Only that one.
        Code::Internal => status.message().contains("decode"),
        _ => false,
    }
}

async fn counts(
    server: &TestServer,
    token: &str,
) -> anyhow::Result<(u32, u32, String, usize, usize)> {
    let mut stock = server.stock_client_as(Some(token)).await?;
    let s = stock
        .get_stock(GetStockRequest {
            office_id: "3275".into(),
        })
        .await?
        .into_inner()
        .stock
        .unwrap_or_default();
    let offices = stock
        .list_stock(ListStockRequest::default())
        .await?
        .into_inner()
        .stocks
        .len();
    let mut counter = server.counter_client_as(Some(token)).await?;
    let reservations = counter
        .list_reservations(ListReservationsRequest {
            office_id: "3275".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .reservations
        .len();
    Ok((s.on_hand, s.held, s.ledger_head_hash, offices, reservations))
}

async fn send(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<tonic::Status, String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(30));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "token".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    match grpc
        .unary::<Vec<u8>, Vec<u8>, RawCodec>(request, PathAndQuery::from_static(path), RawCodec)
        .await
    {
        Ok(_) => Ok(tonic::Status::ok("")),
        Err(status) => Ok(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_hostile_requests_get_proper_statuses_and_change_nothing() -> anyhow::Result<()>
{
    let db = TestDatabase::sqlite().await?;
    let mut tokens = TestTokens::new(&db);
    let admin = tokens.add("ops", "admin", None, None)?;
    let server =
        Arc::new(TestServer::spawn_process_on(db, &["--token-file", &tokens.arg()]).await?);
    let mut setup_stock = server.stock_client_as(Some(&admin)).await?;
    setup(&mut setup_stock).await?;
    let before = counts(&server, &admin).await?;

    let seed: u64 = rand::random();
    eprintln!("hostile input seed: {seed}");
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let channel = server.channel().await?;
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ sender as u64);
            let mut bad = Vec::new();
            let mut codes = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..REQUESTS / SENDERS {
                let path = UNARY[rng.random_range(0..UNARY.len())];
                let body = hostile_body(&mut rng);
                let token = match i % 10 {
                    0 => None,
                    1 => Some("blk_forged"),
                    _ => Some(admin.as_str()),
                };
                match send(channel.clone(), path, body, token).await {
                    Ok(status) if status.code() == Code::Ok || proper(&status) => {
                        *codes.entry(format!("{:?}", status.code())).or_default() += 1;
                    }
                    Ok(status) => bad.push(format!("{path}: {status:?}")),
                    Err(e) => bad.push(format!("{path}: transport: {e}")),
                }
            }
            (bad, codes)
        }));
    }
    let mut bad = Vec::new();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let (b, c) = task.await?;
        bad.extend(b);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    eprintln!("answers: {codes:?}");
    assert!(
        bad.is_empty(),
        "improper answers (seed {seed}):\n{}",
        bad.join("\n")
    );
    // Many of them got as far as validation: 200-275 of 3,000 in runs of random seeds (about
    // 15 either way at one standard deviation), so 100 fails only when validation is not reached.
    assert!(
        codes.get("InvalidArgument").copied().unwrap_or(0) > 100,
        "{codes:?}"
    );

    // An oversized message: refused with a status, not a dropped connection.
    let channel = server.channel().await?;
    let huge = ReserveRequest {
        nik: "9".repeat(5 * 1024 * 1024),
        ..Default::default()
    }
    .encode_to_vec();
    let status = send(channel.clone(), UNARY[0], huge, Some(&admin))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // Huge strings in the right fields: INVALID_ARGUMENT naming them.
    let long = ReserveRequest {
        request_id: "r".repeat(100_000),
        office_id: "3".repeat(100_000),
        service_point_id: "s".repeat(100_000),
        counter_id: "c".repeat(100_000),
        nik: "3".repeat(100_000),
        reason: 99,
        ikd_status: -1,
    };
    let status = server
        .counter_client_as(Some(&admin))
        .await?
        .reserve(long)
        .await
        .expect_err("huge strings");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = blangko_e2e::field_violations(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    for f in [
        "request_id",
        "office_id",
        "service_point_id",
        "counter_id",
        "nik",
        "reason",
        "ikd_status",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} not named: {fields:?}");
    }
    assert!(
        status.message().len() < 4096,
        "the message does not echo the input"
    );

    // Still healthy, same counts, no panic in the log.
    assert_eq!(
        server.health_status("").await?,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let after = counts(&server, &admin).await?;
    assert_eq!(before, after);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

async fn setup(
    stock: &mut stock_service_client::StockServiceClient<blangko_e2e::AuthedChannel>,
) -> anyhow::Result<()> {
    stock
        .upsert_office(UpsertOfficeRequest {
            request_id: "setup-office".into(),
            office: Some(Office {
                office_id: "3275".into(),
                name: "Kota Bekasi".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await?;
    stock
        .upsert_service_point(UpsertServicePointRequest {
            request_id: "setup-point".into(),
            service_point: Some(ServicePoint {
                office_id: "3275".into(),
                service_point_id: "mpp".into(),
                name: "MPP".into(),
                kind: ServicePointKind::Mpp as i32,
                service_days: blangko_e2e::fixtures::EVERY_DAY
                    .iter()
                    .map(|d| *d as i32)
                    .collect(),
                holidays: vec![],
                policy: Some(blangko_e2e::fixtures::fixed(50)),
            }),
        })
        .await?;
    stock
        .record_shipment(RecordShipmentRequest {
            request_id: "setup-ship".into(),
            office_id: "3275".into(),
            quantity: 100,
            reference: "DO-1".into(),
            note: String::new(),
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_gets_at_most_the_configured_number_of_concurrent_streams()
-> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let server = TestServer::start_on(db, &["--max-streams-per-connection", "2"]).await?;
    let mut stock = server.stock_client().await?;
    blangko_e2e::fixtures::office_with_point(&mut stock, "3275", "mpp", 10, 10).await?;
    let watch = || WatchQuotaRequest {
        office_id: "3275".into(),
        service_point_id: "mpp".into(),
    };
    let channel = server.channel().await?;
    let client = counter_service_client::CounterServiceClient::new(channel);
    let open = |mut c: counter_service_client::CounterServiceClient<Channel>| async move {
        let mut stream = c.watch_quota(watch()).await?.into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
        anyhow::Ok(stream)
    };
    // The server tells every connection its limit in its first SETTINGS frame; HTTP/2 clients
    // keep to it, and the server refuses a stream past it.
    assert_eq!(
        advertised_max_concurrent_streams(server.addr).await?,
        Some(2)
    );
    let first = open(client.clone()).await?;
    let _second = open(client.clone()).await?;
    // A third stream on the same connection waits for a free slot...
    let third = tokio::spawn(open(client.clone()));
    // ...while another connection is served at once...
    let other = counter_service_client::CounterServiceClient::new(server.channel().await?);
    tokio::time::timeout(Duration::from_secs(5), open(other)).await??;
    // (by then an unlimited third stream would have had its snapshot long since)...
    assert!(
        !third.is_finished(),
        "a third stream was served beside two on one connection"
    );
    // ...and it proceeds as soon as one of the two ends.
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), third).await???;
    Ok(())
}

/// SETTINGS_MAX_CONCURRENT_STREAMS as the server announces it on a new HTTP/2 connection (None
/// when its first SETTINGS frame leaves it out: no limit).
async fn advertised_max_concurrent_streams(
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<u32>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    // The client preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    let read = async {
        loop {
            let mut header = [0u8; 9];
            tcp.read_exact(&mut header).await?;
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            anyhow::ensure!(length <= 16_384, "a frame of {length} bytes");
            let mut payload = vec![0u8; length];
            tcp.read_exact(&mut payload).await?;
            // SETTINGS (type 4) without ACK (flag 1): the server's own settings.
            if header[3] == 4 && header[4] & 1 == 0 {
                return anyhow::Ok(
                    payload
                        .chunks_exact(6)
                        .find(|entry| entry[..2] == [0, 3])
                        .map(|entry| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]])),
                );
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await?
}

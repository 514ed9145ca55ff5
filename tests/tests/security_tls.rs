//! TLS and mutual TLS with certificates generated in the test (rcgen): the server speaks only
//! TLS when given a certificate; with --tls-client-ca it admits only clients with a certificate
//! from that CA; the real counter client connects with --ca (and --cert/--key).

use std::path::{Path, PathBuf};
use std::time::Duration;

use blangko_e2e::{TestDatabase, TestServer, TestTokens, counter_bin};
use blangko_proto::v1::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from another CA (must be refused under mutual TLS).
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    dir: &Path,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let cert = params.signed_by(&key, issuer)?;
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

fn pki(dir: &Path) -> anyhow::Result<Pki> {
    let authority = ca("blangko test CA")?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, authority.pem())?;
    let (server_cert, server_key) = leaf(&authority, &["localhost", "127.0.0.1"], dir, "server")?;
    let (client_cert, client_key) = leaf(&authority, &["loket-1"], dir, "client")?;
    let other = ca("another CA")?;
    let (stranger_cert, stranger_key) = leaf(&other, &["stranger"], dir, "stranger")?;
    Ok(Pki {
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        stranger_cert,
        stranger_key,
    })
}

fn client_tls(pki: &Pki, identity: Option<(&Path, &Path)>) -> anyhow::Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca)?))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(tls)
}

async fn server_info(url: &str, tls: Option<ClientTlsConfig>) -> anyhow::Result<String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let mut client = stock_service_client::StockServiceClient::new(channel);
    Ok(client
        .get_server_info(GetServerInfoRequest {})
        .await?
        .into_inner()
        .version)
}

async fn counter_status(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new(counter_bin())
        .args(args)
        .env_remove("BLANGKO_TOKEN")
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_serves_only_tls_and_the_counter_client_connects_with_its_ca() -> anyhow::Result<()> {
    let db = TestDatabase::sqlite().await?;
    let pki = pki(db.dir.path())?;
    let mut tokens = TestTokens::new(&db);
    let admin = tokens.add("ops", "admin", None, None)?;
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let server = TestServer::start_tls(
        db.clone(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token-file",
            &tokens.arg(),
        ],
        client_tls(&pki, None)?,
    )
    .await?;
    assert!(server.url.starts_with("https://"));
    // Over TLS: answers, token and all.
    let mut stock = server.stock_client_as(Some(&admin)).await?;
    stock
        .list_stock(ListStockRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{s:?}"))?;
    // Plaintext to a TLS port: refused, an error rather than an answer.
    let plain = format!("http://{}", server.addr);
    assert!(server_info(&plain, None).await.is_err());
    // A client that does not trust the CA: refused.
    let untrusted = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.stranger_cert)?))
        .domain_name("localhost");
    let refused = server_info(&server.url, Some(untrusted))
        .await
        .expect_err("a client that does not trust the server's CA");
    assert!(
        format!("{refused:?}").contains("certificate"),
        "refused for its certificate, not for another reason: {refused:?}"
    );
    // The server still serves a client that trusts it: the refusals were the TLS rules'.
    stock
        .list_stock(ListStockRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{s:?}"))?;

    // The real counter client: --ca, bare host:port becomes https.
    let addr = server.addr.to_string();
    let ca = pki.ca.display().to_string();
    let out = counter_status(&[
        "--server",
        &addr,
        "--ca",
        &ca,
        "--timeout",
        "5",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = counter_status(&[
        "--server",
        &addr,
        "--timeout",
        "3",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "plaintext client reached a TLS server, or was refused as a usage error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --ca with an http:// URL would send everything in the clear: refused before any call,
    // naming the fix. An https:// URL without --ca could never connect: refused the same way.
    let out = counter_status(&[
        "--server",
        &plain,
        "--ca",
        &ca,
        "--timeout",
        "3",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must start with https://"), "{stderr}");
    let out = counter_status(&[
        "--server",
        &server.url,
        "--timeout",
        "3",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs --ca"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() -> anyhow::Result<()>
{
    let db = TestDatabase::sqlite().await?;
    let pki = pki(db.dir.path())?;
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let server = TestServer::start_tls(
        db.clone(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        client_tls(&pki, Some((&pki.client_cert, &pki.client_key)))?,
    )
    .await?;
    // With the client certificate: answers.
    let version = server_info(
        &server.url,
        Some(client_tls(&pki, Some((&pki.client_cert, &pki.client_key)))?),
    )
    .await?;
    assert!(!version.is_empty());
    // Without one, or with one from another CA: refused.
    assert!(
        server_info(&server.url, Some(client_tls(&pki, None)?))
            .await
            .is_err()
    );
    assert!(
        server_info(
            &server.url,
            Some(client_tls(
                &pki,
                Some((&pki.stranger_cert, &pki.stranger_key))
            )?)
        )
        .await
        .is_err()
    );
    // The server still serves a client with a certificate from the client CA: the refusals
    // were the TLS rules'.
    assert!(
        !server_info(
            &server.url,
            Some(client_tls(&pki, Some((&pki.client_cert, &pki.client_key)))?),
        )
        .await?
        .is_empty()
    );
    // The counter client with --cert/--key.
    let url = server.url.clone();
    let (ccert, ckey) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let out = counter_status(&[
        "--server",
        &url,
        "--ca",
        &ca,
        "--cert",
        &ccert,
        "--key",
        &ckey,
        "--timeout",
        "5",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = counter_status(&[
        "--server",
        &url,
        "--ca",
        &ca,
        "--timeout",
        "3",
        "--retries",
        "0",
        "status",
    ])
    .await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a client without a certificate got through, or was refused as a usage error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A TLS connection to `server` that completes its handshake, trusting `pki`'s CA.
async fn tls_connection(
    server: &TestServer,
    pki: &Pki,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&pki.ca)?)?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_without_a_call_by_its_deadline_is_closed() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDatabase::sqlite().await?;
    let pki = pki(db.dir.path())?;
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let server = TestServer::start_tls(
        db.clone(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--first-call-timeout-secs",
            "1",
        ],
        client_tls(&pki, None)?,
    )
    .await?;
    // The handshake runs on a task of its own before the connection's: the deadline must
    // still close a connection that completes it and then says nothing, or only sets HTTP/2
    // up.
    let started = tokio::time::Instant::now();
    let mut silent = tls_connection(&server, &pki).await?;
    let mut set_up = tls_connection(&server, &pki).await?;
    set_up
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await?;
    set_up.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?; // an empty SETTINGS frame
    set_up.flush().await?;
    for (what, stream) in [("silent", &mut silent), ("set up, no call", &mut set_up)] {
        let mut buffer = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{what}: the TLS connection stayed open 15 s"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{what}: closed before its deadline"
        );
    }
    Ok(())
}

//! `status`: each server's health (grpc.health.v1) and version, and today's quota of the service
//! point when --office and --service-point are given.

use std::process::ExitCode;

use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;

use crate::connect::one_line;
use crate::error::{EXIT_ERROR, EXIT_OK, Failure};
use crate::output::{Out, snapshot_json, snapshot_line, uptime_text};
use crate::server_clock;
use crate::terminal::Terminal;

/// What one endpoint said: its health, its server info, and its clock minus this machine's in
/// seconds (when it said).
struct EndpointStatus {
    url: String,
    result: Result<
        (
            String,
            blangko_proto::v1::GetServerInfoResponse,
            Option<i64>,
        ),
        String,
    >,
}

async fn check_endpoint(term: &Terminal, index: usize, url: String) -> EndpointStatus {
    let timeout = term.conn.call_timeout();
    let (Some(mut health), Some(mut stock)) = (
        term.conn.health_client_at(index),
        term.conn.stock_client_at(index),
    ) else {
        return EndpointStatus {
            url,
            result: Err("no such endpoint".to_string()),
        };
    };
    let health = tokio::time::timeout(
        timeout,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let serving = match health {
        Ok(Ok(answer)) => answer.into_inner().status().as_str_name().to_string(),
        Ok(Err(status)) => {
            return EndpointStatus {
                url,
                result: Err(one_line(status.message())),
            };
        }
        Err(_) => {
            return EndpointStatus {
                url,
                result: Err(format!("no answer within {} ms", timeout.as_millis())),
            };
        }
    };
    let info = tokio::time::timeout(
        timeout,
        stock.get_server_info(blangko_proto::v1::GetServerInfoRequest {}),
    )
    .await;
    let result = match info {
        Ok(Ok(info)) => {
            let offset_secs = server_clock::observe(info.metadata()).map(|ms| ms / 1000);
            Ok((serving, info.into_inner(), offset_secs))
        }
        Ok(Err(status)) => Err(one_line(status.message())),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    EndpointStatus { url, result }
}

/// Runs `status`.
pub async fn run(term: &Terminal, out: Out) -> ExitCode {
    let lang = out.lang;
    let mut endpoints = Vec::new();
    for (index, url) in term.conn.urls().into_iter().enumerate() {
        endpoints.push(check_endpoint(term, index, url).await);
    }
    let reachable = endpoints.iter().filter(|e| e.result.is_ok()).count();

    let wants_quota = term.id.office.is_some() && term.id.service_point.is_some();
    let quota = if wants_quota && reachable > 0 {
        Some(term.quota().await)
    } else {
        None
    };

    // A server that answers but is not SERVING (draining at shutdown) does not count as up: the
    // containers' healthcheck runs this command.
    let serving = endpoints
        .iter()
        .any(|e| matches!(&e.result, Ok((health, _, _)) if health == "SERVING"));

    if out.json {
        let servers: Vec<Value> = endpoints
            .iter()
            .map(|e| match &e.result {
                Ok((health, info, clock_offset_secs)) => json!({
                    "url": e.url,
                    "reachable": true,
                    "health": health,
                    "version": info.version,
                    "database_kind": info.database_kind,
                    "api_version": info.api_version,
                    "started_at": out.zone.rfc3339(info.started_at.as_ref()),
                    "uptime_secs": info.uptime_secs,
                    "clock_offset_secs": clock_offset_secs,
                }),
                Err(error) => json!({"url": e.url, "reachable": false, "error": error}),
            })
            .collect();
        let (quota_json, quota_error) = match &quota {
            Some(Ok(q)) => (snapshot_json(q, out.zone), Value::Null),
            Some(Err(failure)) => (Value::Null, failure.json()["error"].clone()),
            None => (Value::Null, Value::Null),
        };
        let mut value = json!({"servers": servers, "quota": quota_json});
        if !quota_error.is_null() {
            value["quota_error"] = quota_error;
        }
        if reachable == 0 {
            value["error"] = json!({
                "code": "UNAVAILABLE",
                "message": "no server answered",
            });
        } else if !serving {
            value["error"] = json!({
                "code": "UNAVAILABLE",
                "message": "no server is SERVING",
            });
        }
        out.json(&value);
    } else {
        for e in &endpoints {
            if let Ok((_, _, Some(secs))) = &e.result
                && let Some(warning) = server_clock::warning(*secs, lang)
            {
                out.notice(&format!("Server {}: {warning}", e.url));
            }
            match &e.result {
                Ok((health, info, _)) => out.line(&format!(
                    "Server {}: {health} · blangko-server {} · {} · {} · {} {} ({} {})",
                    e.url,
                    info.version,
                    info.database_kind,
                    info.api_version,
                    lang.t("berjalan sejak", "up since"),
                    out.zone.date_time(info.started_at.as_ref()),
                    lang.t("uptime", "uptime"),
                    uptime_text(info.uptime_secs, lang),
                )),
                // With no server reachable at all, the one line below says it all.
                Err(error) if reachable > 0 => out.notice(&format!(
                    "Server {}: {} ({error})",
                    e.url,
                    lang.t("tidak terjangkau", "unreachable")
                )),
                Err(_) => {}
            }
        }
        match &quota {
            Some(Ok(q)) => out.line(&snapshot_line(q, &out)),
            Some(Err(failure)) => out.notice(&failure.human(lang)),
            None => {}
        }
    }
    if reachable == 0 {
        if !out.json {
            let detail = endpoints
                .last()
                .and_then(|e| e.result.as_ref().err().cloned())
                .unwrap_or_default();
            out.notice(
                &Failure::NoServer {
                    servers: term.conn.urls().join(", "),
                    detail,
                }
                .human(lang),
            );
        }
        return ExitCode::from(EXIT_ERROR);
    }
    if !serving {
        if !out.json {
            out.notice(lang.t(
                "Tidak ada server yang SERVING (siap melayani).",
                "No server is SERVING.",
            ));
        }
        return ExitCode::from(EXIT_ERROR);
    }
    match quota {
        Some(Err(failure)) => ExitCode::from(failure.exit_code()),
        _ => ExitCode::from(EXIT_OK),
    }
}

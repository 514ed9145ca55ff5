//! Reading the metrics endpoint as a scraper does: a plain HTTP/1.1 GET, and the values of the
//! text exposition by metric name and labels.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest exposition a test reads.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// GET `path` from `addr`; the body of a 200 answer, an error naming the status otherwise.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut raw)
            .await?;
        anyhow::Ok(String::from_utf8(raw)?)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("the metrics endpoint did not answer in time")??;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("no end of headers in the answer")?;
    let status_line = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status_line.starts_with("HTTP/1.1 200"),
        "GET {path}: {status_line}\n{body}"
    );
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked answers are not expected"
    );
    Ok(body.to_string())
}

/// One sample of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name as written (`_total`, `_count`, … included).
    pub name: String,
    /// The labels, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Every sample of an exposition (comments skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((
                        k.to_string(),
                        v.trim_start_matches('"').trim_end_matches('"').to_string(),
                    ))
                })
                .collect();
            (name.to_string(), labels)
        }
        None => (series.to_string(), Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The samples named `name` whose labels include every pair of `labels`.
fn matching(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include every pair of `labels`; None
/// when no sample or more than one matches.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match matching(text, name, labels).as_slice() {
        [one] => Some(one.value),
        _ => None,
    }
}

/// As [`value`], 0 when the series does not exist yet (a counter never incremented). Panics when
/// more than one series matches, and when a metric without labels is not declared at all
/// (`# TYPE`: renamed or never registered): a check for 0 must not pass on a metric that is not
/// there. (A labeled family is written only once it has a series, so for one asked by its
/// labels a missing declaration is an empty family.)
pub fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = matching(text, name, labels);
    match found.as_slice() {
        [one] => return one.value,
        [] => {}
        _ => panic!("more than one {name} series matches {labels:?}"),
    }
    let family = ["_total", "_count", "_sum", "_bucket", "_created"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    let declared = text.lines().any(|l| {
        l.starts_with(&format!("# TYPE {family} ")) || l.starts_with(&format!("# TYPE {name} "))
    });
    assert!(
        declared || !labels.is_empty(),
        "the scrape has no metric {name}: renamed, or never registered?"
    );
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_names_labels_and_values() {
        let text = "# HELP x y\nblangko_rpc_requests_total{method=\"/a.B/C\",code=\"OK\"} 3\nblangko_ikd_activations_total 1\n# TYPE blangko_load_shed counter\n# EOF\n";
        assert_eq!(
            value(text, "blangko_rpc_requests_total", &[("code", "OK")]),
            Some(3.0)
        );
        assert_eq!(value(text, "blangko_ikd_activations_total", &[]), Some(1.0));
        assert_eq!(count(text, "blangko_load_shed_total", &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "no metric blangko_renamed_total")]
    fn a_zero_count_of_a_metric_the_scrape_does_not_declare_is_an_error() {
        count(
            "# TYPE blangko_load_shed counter\n# EOF\n",
            "blangko_renamed_total",
            &[],
        );
    }

    #[test]
    #[should_panic(expected = "more than one")]
    fn a_count_that_matches_two_series_is_an_error() {
        let text = "# TYPE blangko_x counter\nblangko_x_total{a=\"1\"} 1\nblangko_x_total{a=\"2\"} 2\n# EOF\n";
        count(text, "blangko_x_total", &[]);
    }
}

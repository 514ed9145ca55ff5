//! `holds`: this counter's open holds today, with the time left on each (e.g. after a crash:
//! print the ones still live, cancel the others).

use std::process::ExitCode;

use serde_json::json;

use crate::error::EXIT_OK;
use crate::output::{Out, reservation_json, reservation_line};
use crate::terminal::Terminal;

/// Runs `holds`.
pub async fn run(term: &Terminal, out: Out) -> ExitCode {
    let holds = match term.holds().await {
        Ok(holds) => holds,
        Err(failure) => return failure.exit(&out),
    };
    let counter = term.id.counter.clone().unwrap_or_default();
    if out.json {
        out.json(&json!({
            "counter_id": counter,
            "holds": holds.iter().map(|r| reservation_json(r, out.zone)).collect::<Vec<_>>(),
        }));
    } else if holds.is_empty() {
        out.line(&format!(
            "{} {counter}.",
            out.t(
                "Tidak ada pemesanan yang masih ditahan untuk loket",
                "No open holds for counter"
            )
        ));
    } else {
        out.line(&format!(
            "{} {counter}: {}",
            out.t("Pemesanan ditahan, loket", "Open holds, counter"),
            holds.len()
        ));
        for hold in &holds {
            out.line(&format!("  {}", reservation_line(hold, &out)));
        }
    }
    ExitCode::from(EXIT_OK)
}

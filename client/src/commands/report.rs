//! `report`: an office's daily stock report over a range of days (GetStockReport), as a table
//! (Bahasa Indonesia by default), CSV (one row per day) or an SVG chart of the stock and the daily
//! use. The figures are the server's, computed from the ledger, so every agency sees the same;
//! the reconciliation is checked again here from the figures themselves: each day opening +
//! received + transferred in − transferred out − printed − spoiled ± stock-take = closing, and
//! each day's closing is the next day's opening. The report says whether it holds, and names the
//! days where it does not (exit 1 then).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use blangko_proto::v1::{GetStockReportRequest, GetStockReportResponse, StockReportDay};
use serde_json::{Value, json};

use crate::error::{EXIT_ERROR, EXIT_OK, Failure};
use crate::output::{Lang, Out};
use crate::terminal::Terminal;

/// The shapes a report can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for people, with totals and the reconciliation line.
    Table,
    /// Comma-separated values with a header row, one row per day (for spreadsheets).
    Csv,
    /// An SVG chart: closing stock as a line, printed and spoiled blanks as daily bars.
    Svg,
}

/// What `report` was asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// First local day, YYYY-MM-DD.
    pub from: String,
    /// Last local day, YYYY-MM-DD (inclusive).
    pub to: String,
    /// The shape.
    pub format: ReportFormat,
    /// Write here instead of stdout.
    pub out: Option<PathBuf>,
}

/// A day where the figures do not add up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The local day.
    pub local_date: String,
    /// What does not add up, in the output's language.
    pub why: String,
}

/// Runs `report` for the office given with --office.
pub async fn run(term: &Terminal, out: Out, options: &ReportOptions) -> ExitCode {
    let office = match term.office() {
        Ok(o) => o.to_string(),
        Err(failure) => return failure.exit(&out),
    };
    let request = GetStockReportRequest {
        office_id: office,
        from_date: options.from.trim().to_string(),
        to_date: options.to.trim().to_string(),
    };
    let report = match term
        .conn
        .stock(|mut c| {
            let request = request.clone();
            async move { c.get_stock_report(request).await }
        })
        .await
    {
        Ok(report) => report,
        Err(error) => return Failure::from(error).exit(&out),
    };
    let mismatches = reconcile(&report, out.lang);
    let text = match (options.format, out.json) {
        (ReportFormat::Csv, _) => csv(&report),
        (ReportFormat::Svg, _) => svg(&report, &mismatches, out.lang),
        (ReportFormat::Table, true) => format!("{}\n", report_json(&report, &mismatches)),
        (ReportFormat::Table, false) => {
            let mut text = table_lines(&report, &mismatches, out.lang).join("\n");
            text.push('\n');
            text
        }
    };
    let verdict = reconciliation_line(&mismatches, out.lang);
    match &options.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text.as_bytes()) {
                let path = path.display();
                return Failure::bad_field(
                    "out",
                    format!("cannot write {path}: {e}"),
                    format!("tidak dapat menulis {path}: {e}"),
                )
                .exit(&out);
            }
            if out.json {
                out.json(&json!({
                    "written": path.display().to_string(),
                    "reconciled": mismatches.is_empty(),
                }));
            } else {
                out.line(&format!(
                    "{} {}",
                    out.t("Laporan ditulis ke", "Report written to"),
                    path.display()
                ));
                out.line(&verdict);
            }
        }
        None => {
            // Not print!: it panics on a closed pipe (`| head`); a reader that stopped reading
            // is no error, as for every other line (Out::line).
            let mut stdout = std::io::stdout().lock();
            let _ = std::io::Write::write_all(&mut stdout, text.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout));
            drop(stdout);
            // CSV and SVG on stdout stay pure data; the verdict goes to stderr beside them.
            if options.format != ReportFormat::Table {
                out.notice(&verdict);
            }
        }
    }
    if mismatches.is_empty() {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

/// The balance of a day as the figures state it: opening + in − out ± stock-take.
fn computed_closing(d: &StockReportDay) -> i128 {
    i128::from(d.opening_on_hand) + i128::from(d.received) + i128::from(d.transferred_in)
        - i128::from(d.transferred_out)
        - i128::from(d.printed)
        - i128::from(d.spoiled)
        + i128::from(d.stock_take_difference)
}

/// Checks the report's arithmetic itself (not trusting the server's flags alone): every day
/// balances, each closing is the next opening, and the server agrees.
pub fn reconcile(report: &GetStockReportResponse, lang: Lang) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    let mut previous: Option<&StockReportDay> = None;
    for d in &report.days {
        let mut why = Vec::new();
        let computed = computed_closing(d);
        if computed != i128::from(d.closing_on_hand) {
            why.push(match lang {
                Lang::Id => format!("perhitungan {computed} ≠ stok akhir {}", d.closing_on_hand),
                Lang::En => format!("computed {computed} ≠ closing {}", d.closing_on_hand),
            });
        } else if !d.balanced {
            why.push(
                lang.t(
                    "server menandai tidak seimbang",
                    "the server marks it unbalanced",
                )
                .into(),
            );
        }
        if let Some(p) = previous
            && p.closing_on_hand != d.opening_on_hand
        {
            why.push(match lang {
                Lang::Id => format!(
                    "stok awal {} ≠ stok akhir {} ({})",
                    d.opening_on_hand, p.closing_on_hand, p.local_date
                ),
                Lang::En => format!(
                    "opening {} ≠ closing {} of {}",
                    d.opening_on_hand, p.closing_on_hand, p.local_date
                ),
            });
        }
        if !why.is_empty() {
            mismatches.push(Mismatch {
                local_date: d.local_date.clone(),
                why: why.join("; "),
            });
        }
        previous = Some(d);
    }
    mismatches
}

/// "Rekonsiliasi: sesuai" or the days that do not add up.
pub fn reconciliation_line(mismatches: &[Mismatch], lang: Lang) -> String {
    if mismatches.is_empty() {
        lang.t(
            "Rekonsiliasi: sesuai (stok awal + diterima + transfer masuk − transfer keluar − dicetak − rusak ± selisih opname = stok akhir, setiap hari; stok akhir = stok awal hari berikutnya)",
            "Reconciliation: balanced (opening + received + transfers in − transfers out − printed − spoiled ± stock-take = closing, every day; each closing = the next opening)",
        )
        .to_string()
    } else {
        let days = mismatches
            .iter()
            .map(|m| format!("{} ({})", m.local_date, m.why))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} {days}",
            lang.t(
                "Rekonsiliasi: TIDAK SESUAI pada",
                "Reconciliation: DOES NOT BALANCE on"
            )
        )
    }
}

/// Column titles of the table, in order.
fn headers(lang: Lang) -> [&'static str; 11] {
    match lang {
        Lang::Id => [
            "Tanggal",
            "Awal",
            "Diterima",
            "Trf masuk",
            "Trf keluar",
            "Dicetak",
            "Rusak",
            "Opname",
            "Akhir",
            "Rujukan IKD",
            "Aktivasi IKD",
        ],
        Lang::En => [
            "Date",
            "Opening",
            "Received",
            "Transfer in",
            "Transfer out",
            "Printed",
            "Spoiled",
            "Stock-take",
            "Closing",
            "IKD referrals",
            "IKD activations",
        ],
    }
}

/// A signed stock-take difference: "+3", "-2", "0".
fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

/// The cells of one day, in column order.
fn cells(d: &StockReportDay) -> [String; 11] {
    [
        d.local_date.clone(),
        d.opening_on_hand.to_string(),
        d.received.to_string(),
        d.transferred_in.to_string(),
        d.transferred_out.to_string(),
        d.printed.to_string(),
        d.spoiled.to_string(),
        signed(d.stock_take_difference),
        d.closing_on_hand.to_string(),
        d.ikd_referrals.to_string(),
        d.ikd_activations.to_string(),
    ]
}

/// The report as a table: a title, one row per day, the totals and the reconciliation line.
pub fn table_lines(
    report: &GetStockReportResponse,
    mismatches: &[Mismatch],
    lang: Lang,
) -> Vec<String> {
    let head = headers(lang);
    let mut rows: Vec<[String; 11]> = report.days.iter().map(cells).collect();
    // Saturating: figures from the network never panic or wrap here.
    let sum = |f: fn(&StockReportDay) -> u64| {
        report
            .days
            .iter()
            .map(f)
            .fold(0u64, u64::saturating_add)
            .to_string()
    };
    let first = report.days.first();
    let last = report.days.last();
    rows.push([
        lang.t("Jumlah", "Total").to_string(),
        first
            .map(|d| d.opening_on_hand.to_string())
            .unwrap_or_default(),
        sum(|d| d.received),
        sum(|d| d.transferred_in),
        sum(|d| d.transferred_out),
        sum(|d| d.printed),
        sum(|d| d.spoiled),
        signed(
            report
                .days
                .iter()
                .map(|d| d.stock_take_difference)
                .fold(0i64, i64::saturating_add),
        ),
        last.map(|d| d.closing_on_hand.to_string())
            .unwrap_or_default(),
        sum(|d| d.ikd_referrals),
        sum(|d| d.ikd_activations),
    ]);
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let rule = "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
    let mut lines = vec![
        format!(
            "{} {} ({}), {} {} {} ({})",
            lang.t(
                "LAPORAN STOK BLANGKO KTP-EL",
                "BLANK e-KTP CARD STOCK REPORT"
            ),
            report.office_name,
            report.office_id,
            first.map(|d| d.local_date.as_str()).unwrap_or(""),
            lang.t("s.d.", "to"),
            last.map(|d| d.local_date.as_str()).unwrap_or(""),
            report.time_zone
        ),
        String::new(),
        line(&head.map(String::from)),
        rule.clone(),
    ];
    let total = rows.pop();
    lines.extend(rows.iter().map(|r| line(r)));
    lines.push(rule);
    if let Some(total) = total {
        lines.push(line(&total));
    }
    lines.push(String::new());
    lines.push(reconciliation_line(mismatches, lang));
    lines.push(format!(
        "{} {}",
        lang.t(
            "Dihitung dari buku stok sampai entri nomor",
            "Computed from the stock ledger up to entry"
        ),
        report.ledger_sequence
    ));
    lines
}

/// Column names of the CSV (stable, whatever the language, for spreadsheets and scripts).
pub const CSV_HEADER: &str = "local_date,opening_on_hand,received,transferred_in,transferred_out,printed,spoiled,stock_take_difference,closing_on_hand,ikd_referrals,ikd_activations,balanced";

/// The report as CSV: the header row, then one row per day.
pub fn csv(report: &GetStockReportResponse) -> String {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for d in &report.days {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            d.local_date,
            d.opening_on_hand,
            d.received,
            d.transferred_in,
            d.transferred_out,
            d.printed,
            d.spoiled,
            d.stock_take_difference,
            d.closing_on_hand,
            d.ikd_referrals,
            d.ikd_activations,
            d.balanced
        );
    }
    text
}

/// The report as one JSON object.
pub fn report_json(report: &GetStockReportResponse, mismatches: &[Mismatch]) -> Value {
    json!({
        "report": "daily_stock",
        "office_id": report.office_id,
        "office_name": report.office_name,
        "time_zone": report.time_zone,
        "ledger_sequence": report.ledger_sequence,
        "reconciled": mismatches.is_empty(),
        "mismatches": mismatches.iter().map(|m| json!({"local_date": m.local_date, "why": m.why})).collect::<Vec<_>>(),
        "days": report.days.iter().map(|d| json!({
            "local_date": d.local_date,
            "opening_on_hand": d.opening_on_hand,
            "received": d.received,
            "transferred_in": d.transferred_in,
            "transferred_out": d.transferred_out,
            "printed": d.printed,
            "spoiled": d.spoiled,
            "stock_take_difference": d.stock_take_difference,
            "closing_on_hand": d.closing_on_hand,
            "ikd_referrals": d.ikd_referrals,
            "ikd_activations": d.ikd_activations,
            "balanced": d.balanced,
        })).collect::<Vec<_>>(),
    })
}

/// Escapes text for XML content and attribute values.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A "nice" axis maximum at or above `value` (1, 2 or 5 times a power of ten), at least 1.
fn nice_ceiling(value: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let candidate = step.saturating_mul(m);
            if candidate >= value.max(1) {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// The chart's size and margins, in SVG user units.
const SVG_WIDTH: f64 = 960.0;
const SVG_HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 70.0;
const MARGIN_TOP: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 90.0;
/// Most date labels on the x axis (the others are skipped, evenly).
const MAX_X_LABELS: usize = 15;

/// The report as an SVG chart: the closing stock as a line (left axis), printed and spoiled
/// blanks as stacked daily bars (right axis), a title with the reconciliation verdict, a legend,
/// and a tooltip (`<title>`) with every figure of each day.
pub fn svg(report: &GetStockReportResponse, mismatches: &[Mismatch], lang: Lang) -> String {
    let days = &report.days;
    let n = days.len().max(1);
    let plot_w = SVG_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = SVG_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = MARGIN_TOP + plot_h;
    let slot = plot_w / n as f64;
    let stock_max = nice_ceiling(
        days.iter()
            .map(|d| d.closing_on_hand.max(d.opening_on_hand))
            .max()
            .unwrap_or(0),
    );
    let use_max = nice_ceiling(
        days.iter()
            .map(|d| d.printed.saturating_add(d.spoiled))
            .max()
            .unwrap_or(0),
    );
    let y_stock = |v: u64| bottom - plot_h * v as f64 / stock_max as f64;
    let y_use = |v: u64| bottom - plot_h * v as f64 / use_max as f64;
    let x_mid = |i: usize| MARGIN_LEFT + slot * (i as f64 + 0.5);

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let title = format!(
        "{} {} ({}), {} {} {}",
        lang.t("Stok blangko KTP-el", "Blank e-KTP card stock"),
        report.office_name,
        report.office_id,
        days.first().map(|d| d.local_date.as_str()).unwrap_or(""),
        lang.t("s.d.", "to"),
        days.last().map(|d| d.local_date.as_str()).unwrap_or("")
    );
    let _ = writeln!(s, "  <title>{}</title>", xml_escape(&title));
    let _ = writeln!(
        s,
        "  <desc>{}</desc>",
        xml_escape(&reconciliation_line(mismatches, lang))
    );
    let _ = writeln!(
        s,
        r#"  <rect x="0" y="0" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"  <text x="{MARGIN_LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        xml_escape(&title)
    );
    let verdict = if mismatches.is_empty() {
        lang.t("Rekonsiliasi: sesuai", "Reconciliation: balanced")
            .to_string()
    } else {
        format!(
            "{} {}",
            lang.t(
                "Rekonsiliasi: TIDAK SESUAI pada",
                "Reconciliation: DOES NOT BALANCE on"
            ),
            mismatches
                .iter()
                .map(|m| m.local_date.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = writeln!(
        s,
        r#"  <text x="{MARGIN_LEFT}" y="44" fill="{}">{}</text>"#,
        if mismatches.is_empty() {
            "#1a7f37"
        } else {
            "#cf222e"
        },
        xml_escape(&verdict)
    );

    // Grid and both y axes: five steps each.
    let _ = writeln!(s, r##"  <g class="axes" stroke="#888" stroke-width="1">"##);
    for step in 0..=5u64 {
        let y = bottom - plot_h * step as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"    <line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            MARGIN_LEFT + plot_w
        );
    }
    let _ = writeln!(
        s,
        r#"    <line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{bottom}"/>"#
    );
    let _ = writeln!(
        s,
        r#"    <line x1="{r:.1}" y1="{MARGIN_TOP}" x2="{r:.1}" y2="{bottom}"/>"#,
        r = MARGIN_LEFT + plot_w
    );
    let _ = writeln!(
        s,
        r#"    <line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}"/>"#,
        MARGIN_LEFT + plot_w
    );
    let _ = writeln!(s, "  </g>");
    let _ = writeln!(s, r#"  <g class="y-labels" font-size="11">"#);
    for step in 0..=5u64 {
        let y = bottom - plot_h * step as f64 / 5.0 + 4.0;
        let _ = writeln!(
            s,
            r#"    <text x="{:.1}" y="{y:.1}" text-anchor="end">{}</text>"#,
            MARGIN_LEFT - 6.0,
            stock_max.saturating_mul(step) / 5
        );
        let _ = writeln!(
            s,
            r#"    <text x="{:.1}" y="{y:.1}" text-anchor="start">{}</text>"#,
            MARGIN_LEFT + plot_w + 6.0,
            use_max.saturating_mul(step) / 5
        );
    }
    let _ = writeln!(
        s,
        r#"    <text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        MARGIN_TOP + plot_h / 2.0,
        xml_escape(lang.t("Stok akhir (blangko)", "Closing stock (blanks)"))
    );
    let _ = writeln!(
        s,
        r#"    <text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle">{}</text>"#,
        SVG_WIDTH - 16.0,
        MARGIN_TOP + plot_h / 2.0,
        xml_escape(lang.t(
            "Pemakaian harian (dicetak + rusak)",
            "Daily use (printed + spoiled)"
        ))
    );
    let _ = writeln!(s, "  </g>");

    // Bars: printed at the bottom, spoiled stacked on top; every day has a tooltip.
    let bar_w = (slot * 0.6).max(1.0);
    let _ = writeln!(s, r#"  <g class="daily-use">"#);
    for (i, d) in days.iter().enumerate() {
        let x = x_mid(i) - bar_w / 2.0;
        let printed_top = y_use(d.printed);
        let used_top = y_use(d.printed.saturating_add(d.spoiled));
        let tip = day_tooltip(d, lang);
        let _ = writeln!(
            s,
            r#"    <g data-date="{}" data-printed="{}" data-spoiled="{}" data-closing="{}"><title>{}</title>"#,
            xml_escape(&d.local_date),
            d.printed,
            d.spoiled,
            d.closing_on_hand,
            xml_escape(&tip)
        );
        let _ = writeln!(
            s,
            r##"      <rect x="{x:.1}" y="{printed_top:.1}" width="{bar_w:.1}" height="{:.1}" fill="#4e79a7"/>"##,
            bottom - printed_top
        );
        let _ = writeln!(
            s,
            r##"      <rect x="{x:.1}" y="{used_top:.1}" width="{bar_w:.1}" height="{:.1}" fill="#e15759"/>"##,
            printed_top - used_top
        );
        let _ = writeln!(s, "    </g>");
    }
    let _ = writeln!(s, "  </g>");

    // The closing-stock line, with a dot per day.
    let points = days
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{:.1},{:.1}", x_mid(i), y_stock(d.closing_on_hand)))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        s,
        r##"  <polyline class="closing-stock" points="{points}" fill="none" stroke="#f28e2b" stroke-width="2.5"/>"##
    );
    for (i, d) in days.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"  <circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#f28e2b"><title>{}: {}</title></circle>"##,
            x_mid(i),
            y_stock(d.closing_on_hand),
            xml_escape(&d.local_date),
            d.closing_on_hand
        );
    }

    // Date labels on the x axis, evenly thinned to at most MAX_X_LABELS.
    let every = days.len().div_ceil(MAX_X_LABELS).max(1);
    let _ = writeln!(s, r#"  <g class="x-labels" font-size="11">"#);
    for (i, d) in days.iter().enumerate() {
        if i % every != 0 && i + 1 != days.len() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"    <text transform="translate({:.1} {:.1}) rotate(-45)" text-anchor="end">{}</text>"#,
            x_mid(i) + 4.0,
            bottom + 14.0,
            xml_escape(&d.local_date)
        );
    }
    let _ = writeln!(
        s,
        r#"    <text x="{:.1}" y="{:.1}" text-anchor="middle">{} ({})</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        SVG_HEIGHT - 8.0,
        xml_escape(lang.t("Tanggal", "Date")),
        xml_escape(&report.time_zone)
    );
    let _ = writeln!(s, "  </g>");

    // Legend.
    let legend_y = 58.0;
    let lx = SVG_WIDTH - MARGIN_RIGHT - 420.0;
    let _ = writeln!(s, r#"  <g class="legend" font-size="11">"#);
    let items = [
        ("#f28e2b", lang.t("Stok akhir", "Closing stock")),
        ("#4e79a7", lang.t("Dicetak", "Printed")),
        ("#e15759", lang.t("Rusak", "Spoiled")),
    ];
    for (k, (color, label)) in items.iter().enumerate() {
        let x = lx + 140.0 * k as f64;
        let _ = writeln!(
            s,
            r#"    <rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/>"#,
            legend_y - 10.0
        );
        let _ = writeln!(
            s,
            r#"    <text x="{:.1}" y="{legend_y:.1}">{}</text>"#,
            x + 16.0,
            xml_escape(label)
        );
    }
    let _ = writeln!(s, "  </g>");
    let _ = writeln!(s, "</svg>");
    s
}

/// Every figure of a day, for the chart's tooltip.
fn day_tooltip(d: &StockReportDay, lang: Lang) -> String {
    let h = headers(lang);
    format!(
        "{}: {} {}, {} {}, {} {}, {} {}, {} {}, {} {}, {} {}, {} {}, {} {}, {} {}",
        d.local_date,
        h[1],
        d.opening_on_hand,
        h[2],
        d.received,
        h[3],
        d.transferred_in,
        h[4],
        d.transferred_out,
        h[5],
        d.printed,
        h[6],
        d.spoiled,
        h[7],
        signed(d.stock_take_difference),
        h[8],
        d.closing_on_hand,
        h[9],
        d.ikd_referrals,
        h[10],
        d.ikd_activations
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(date: &str, opening: u64, printed: u64, closing: u64) -> StockReportDay {
        StockReportDay {
            local_date: date.into(),
            opening_on_hand: opening,
            printed,
            closing_on_hand: closing,
            balanced: true,
            ..Default::default()
        }
    }

    fn report(days: Vec<StockReportDay>) -> GetStockReportResponse {
        GetStockReportResponse {
            office_id: "3275".into(),
            office_name: "Kota <Bekasi> & co".into(),
            time_zone: "Asia/Jakarta".into(),
            days,
            reconciled: true,
            ledger_sequence: 9,
        }
    }

    #[test]
    fn a_balanced_report_says_so() {
        let r = report(vec![
            day("2026-11-27", 10, 2, 8),
            day("2026-11-28", 8, 3, 5),
        ]);
        let m = reconcile(&r, Lang::Id);
        assert!(m.is_empty(), "{m:?}");
        assert!(reconciliation_line(&m, Lang::Id).starts_with("Rekonsiliasi: sesuai"));
    }

    #[test]
    fn a_day_that_does_not_add_up_or_does_not_follow_on_is_named() {
        // 2026-11-27 loses a blank nobody recorded; 2026-11-28 opens with one more than closed.
        let r = report(vec![
            day("2026-11-27", 10, 2, 7),
            day("2026-11-28", 8, 3, 5),
        ]);
        let m = reconcile(&r, Lang::En);
        let dates: Vec<&str> = m.iter().map(|m| m.local_date.as_str()).collect();
        assert_eq!(dates, ["2026-11-27", "2026-11-28"]);
        let line = reconciliation_line(&m, Lang::En);
        assert!(line.contains("DOES NOT BALANCE on 2026-11-27"), "{line}");
        assert!(
            line.contains("opening 8 ≠ closing 7 of 2026-11-27"),
            "{line}"
        );
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_day() {
        let r = report(vec![
            day("2026-11-27", 10, 2, 8),
            day("2026-11-28", 8, 3, 5),
        ]);
        let text = csv(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "2026-11-27,10,0,0,0,2,0,0,8,0,0,true");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_svg_escapes_names_and_carries_every_day() {
        let r = report(vec![
            day("2026-11-27", 10, 2, 8),
            day("2026-11-28", 8, 3, 5),
        ]);
        let text = svg(&r, &[], Lang::Id);
        assert!(text.contains("Kota &lt;Bekasi&gt; &amp; co"));
        assert!(!text.contains("<Bekasi>"));
        assert!(text.contains(r#"data-date="2026-11-28" data-printed="3""#));
        assert!(text.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(120), 200);
        assert_eq!(nice_ceiling(500), 500);
    }
}

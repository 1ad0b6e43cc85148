//! The Source Overview web page: the list of sources, and per source a volume line chart
//! over the chosen range, the time picker and the breakdown table, as Segment's overview
//! pages show them. One self-contained HTML page per request: the chart is an SVG drawn
//! here, there is no script and nothing is loaded from elsewhere (the machines that run
//! this often have no internet), and the picker is plain links and a GET form.
//!
//! Every source and event name is user- or vendor-controlled and is escaped.
//!
//! Routes (relative links, so the router can be mounted under any prefix):
//! - `GET /?range=1h`: every source with its count and % change, and the picker.
//! - `GET /?source=NAME&range=1h` (or `&from=RFC3339&to=RFC3339`): one source's chart,
//!   picker and breakdown table.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::range::{PRESETS, TimeRange};
use super::report::{self, Overview, SourceKind, SourceOverview, time};
use crate::warehouse::Warehouse;

/// Where `serve` mounts the page (`http://<listen>/overview`).
pub const PATH: &str = "/overview";

/// The range a page shows when none is chosen.
pub const DEFAULT_RANGE: &str = "24h";

struct Shared {
    warehouse: Warehouse,
    sources: Vec<(String, SourceKind)>,
}

/// The page's router: `warehouse` holds the volume table, `sources` are the configured
/// sources (listed even without volume; any other source with volume is listed too).
pub fn router(warehouse: Warehouse, sources: Vec<(String, SourceKind)>) -> Router {
    Router::new()
        .route("/", get(page))
        .with_state(Arc::new(Shared { warehouse, sources }))
}

/// The query of a page.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    source: Option<String>,
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn page(State(shared): State<Arc<Shared>>, Query(q): Query<PageQuery>) -> Response {
    let source = q.source.as_deref().filter(|s| !s.is_empty());
    let spec = match (q.from.as_deref(), q.to.as_deref()) {
        (Some(from), Some(to)) if !from.trim().is_empty() || !to.trim().is_empty() => {
            format!("{}..{}", from.trim(), to.trim())
        }
        _ => q.range.clone().unwrap_or_else(|| DEFAULT_RANGE.to_owned()),
    };
    let range = match TimeRange::parse(&spec, chrono::Utc::now()) {
        Ok(r) => r,
        Err(e) => {
            let mut body = String::new();
            let _ = write!(
                body,
                "<p class=\"error\" id=\"error\">{}</p>",
                escape(&e.to_string())
            );
            body.push_str(&picker(source, &spec));
            return html(StatusCode::BAD_REQUEST, &document("Source Overview", &body));
        }
    };
    match report::build(&shared.warehouse, &shared.sources, &range, source).await {
        Ok(overview) => {
            let (title, body) = match source {
                None => ("Source Overview".to_owned(), list(&overview)),
                Some(name) => (
                    format!("{name} · Source Overview"),
                    overview
                        .sources
                        .first()
                        .map(|s| detail(&overview, s))
                        .unwrap_or_default(),
                ),
            };
            html(StatusCode::OK, &document(&title, &body))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Could not build the Source Overview.");
            let body = format!(
                "<p class=\"error\" id=\"error\">{}</p>{}",
                escape(&format!("{e:#}")),
                picker(None, &range.spec)
            );
            html(StatusCode::NOT_FOUND, &document("Source Overview", &body))
        }
    }
}

fn html(status: StatusCode, body: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing on the page comes from elsewhere, and nothing runs.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
        body.to_owned(),
    )
        .into_response()
}

/// `text` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A relative link to the page of `source` (or the list) over `range`.
fn link(source: Option<&str>, range: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(s) = source {
        q.append_pair("source", s);
    }
    q.append_pair("range", range);
    format!("?{}", q.finish())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
table{border-collapse:collapse;margin-top:8px}\
th,td{padding:4px 12px;border-bottom:1px solid #d0d7de;text-align:left}\
td.num,th.num{text-align:right}\
nav.picker a{margin-right:10px}nav.picker a.current{font-weight:bold;text-decoration:none}\
.error{color:#b42318}.up{color:#1a7f37}.down{color:#b42318}\
svg{border:1px solid #d0d7de;background:#fff}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1><a href=\"?\">Source Overview</a></h1>{body}</body></html>\n",
        escape(title)
    )
}

/// The time picker: the presets as links, and a custom range within the last two weeks.
fn picker(source: Option<&str>, current: &str) -> String {
    let mut out = String::from("<nav class=\"picker\" id=\"picker\">");
    for (word, label, _) in PRESETS {
        let class = match word == current {
            true => " class=\"current\"",
            false => "",
        };
        let _ = write!(
            out,
            "<a href=\"{}\" data-range=\"{word}\"{class}>{label}</a>",
            escape(&link(source, word))
        );
    }
    let (from, to) = current.split_once("..").unwrap_or(("", ""));
    out.push_str("<form method=\"get\" action=\"\" id=\"custom\">");
    if let Some(s) = source {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"source\" value=\"{}\">",
            escape(s)
        );
    }
    let _ = write!(
        out,
        "Custom (RFC 3339, within the last two weeks): <input name=\"from\" value=\"{}\" placeholder=\"2026-01-02T10:00:00Z\"> to <input name=\"to\" value=\"{}\" placeholder=\"2026-01-02T12:00:00Z\"> <button type=\"submit\">Apply</button></form></nav>",
        escape(from),
        escape(to)
    );
    out
}

fn range_line(overview: &Overview) -> String {
    let r = &overview.range;
    format!(
        "<p id=\"range\" data-from=\"{from}\" data-to=\"{to}\">{from} to {to} ({spec}); % change against the previous {len} minutes.</p>",
        from = time(r.from),
        to = time(r.to),
        spec = escape(&r.spec),
        len = r.length().num_minutes()
    )
}

fn change_cell(change: &str) -> String {
    let class = match change.chars().next() {
        Some('+') | Some('n') => "up",
        Some('-') => "down",
        _ => "",
    };
    format!("<td class=\"num {class}\">{}</td>", escape(change))
}

/// The list of sources.
fn list(overview: &Overview) -> String {
    let mut out = picker(None, &overview.range.spec);
    out.push_str(&range_line(overview));
    if overview.sources.is_empty() {
        out.push_str("<p>No sources configured and no volume recorded.</p>");
        return out;
    }
    out.push_str("<table id=\"sources\"><thead><tr><th>Source</th><th>Sends</th><th class=\"num\">Count</th><th class=\"num\">% Change</th></tr></thead><tbody>");
    for s in &overview.sources {
        let _ = write!(
            out,
            "<tr data-source=\"{name}\"><td><a href=\"{href}\">{name}</a></td><td>{what}</td><td class=\"num count\">{}</td>{}</tr>",
            s.total,
            change_cell(&s.change()),
            name = escape(&s.name),
            href = escape(&link(Some(&s.name), &overview.range.spec)),
            what = match s.kind {
                SourceKind::Events => "events",
                SourceKind::Records => "records",
            },
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// One source: picker, chart, breakdown.
fn detail(overview: &Overview, s: &SourceOverview) -> String {
    let mut out = format!("<h2 id=\"source\">{}</h2>", escape(&s.name));
    out.push_str(&picker(Some(&s.name), &overview.range.spec));
    out.push_str(&range_line(overview));
    let _ = write!(
        out,
        "<p id=\"total\" data-total=\"{}\">{} {} ({} against the previous period)</p>",
        s.total,
        s.total,
        match s.kind {
            SourceKind::Events => "events",
            SourceKind::Records => "records",
        },
        escape(&s.change())
    );
    out.push_str(&chart(overview, s));
    let (name_header, count_header) = match s.kind {
        SourceKind::Events => ("Event name", "Event count"),
        SourceKind::Records => ("Collection", "Records"),
    };
    let _ = write!(
        out,
        "<table id=\"breakdown\"><thead><tr><th>Event type</th><th>{name_header}</th><th class=\"num\">{count_header}</th><th class=\"num\">% Change</th></tr></thead><tbody>"
    );
    if s.rows.is_empty() {
        out.push_str("<tr><td colspan=\"4\">Nothing in this range or the one before.</td></tr>");
    }
    for r in &s.rows {
        let _ = write!(
            out,
            "<tr class=\"row\" data-kind=\"{kind}\" data-name=\"{name}\" data-count=\"{}\"><td>{kind}</td><td>{name}</td><td class=\"num\">{}</td>{}</tr>",
            r.count,
            r.count,
            change_cell(&r.change()),
            kind = escape(&r.kind),
            name = escape(r.name.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The colours of the series, in Segment's call order then `records`.
const COLOURS: [&str; 7] = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#1f2937",
];

/// The volume line chart: one polyline per kind, a point per bucket of the range.
fn chart(overview: &Overview, s: &SourceOverview) -> String {
    const W: f64 = 800.0;
    const H: f64 = 240.0;
    const PAD: f64 = 40.0;
    let range = &overview.range;
    let buckets = range.buckets();
    let max = s
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |i: usize| match buckets {
        0 | 1 => PAD + (W - 2.0 * PAD) / 2.0,
        n => PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64,
    };
    let y = |v: u64| H - PAD - (H - 2.0 * PAD) * v as f64 / max as f64;
    let mut out = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" data-buckets=\"{buckets}\" data-bucket-minutes=\"{}\" role=\"img\"><title>Volume of {} per {} minutes</title>",
        range.bucket().num_minutes(),
        escape(&s.name),
        range.bucket().num_minutes()
    );
    let _ = write!(
        out,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#8c959f\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#8c959f\"/>",
        b = H - PAD,
        r = W - PAD
    );
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        PAD - 4.0,
        PAD + 4.0,
        PAD - 4.0,
        H - PAD + 4.0
    );
    let _ = write!(
        out,
        "<text x=\"{PAD}\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        H - PAD + 16.0,
        time(range.from),
        W - PAD,
        H - PAD + 16.0,
        time(range.to)
    );
    for (i, (kind, values)) in s.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"series\" data-kind=\"{}\" data-total=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            escape(kind),
            values.iter().sum::<u64>(),
            points.join(" ")
        );
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{}</text>",
            PAD + 8.0 + 90.0 * i as f64,
            PAD - 12.0,
            escape(kind)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overview::report::BreakdownRow;

    fn overview(name: &str) -> Overview {
        let range = TimeRange::parse("1h", chrono::Utc::now()).unwrap();
        let mut series = vec![0; 60];
        series[59] = 3;
        Overview {
            range,
            sources: vec![SourceOverview {
                name: "web".into(),
                kind: SourceKind::Events,
                rows: vec![BreakdownRow {
                    kind: "track".into(),
                    name: Some(name.into()),
                    count: 3,
                    previous: 0,
                }],
                series: vec![("track".into(), series)],
                total: 3,
                previous_total: 0,
            }],
        }
    }

    #[test]
    fn names_are_escaped_and_the_chart_has_a_point_per_bucket() {
        let o = overview("<script>alert('x')</script>");
        let page = document("web", &detail(&o, &o.sources[0]));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        let points = page
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap();
        assert_eq!(points.split(' ').count(), 60);
        assert!(page.contains("data-buckets=\"60\""));
        assert!(page.contains(">new<"));
    }

    #[test]
    fn links_encode_the_source() {
        assert_eq!(link(Some("a b&c"), "1h"), "?source=a+b%26c&range=1h");
        assert_eq!(link(None, "24h"), "?range=24h");
    }
}

//! The status page on the admin listener (`/`): plain HTML rendered here from the very values
//! the JSON admin answers carry (`/admin/routes`, `/admin/regions`, `/admin/cache`), plus the
//! tenants moving now and the hottest tenants. No script, no build step: it asks the browser
//! to load it again every few seconds.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Shared;
use crate::context::{admin, SAMPLE_EVERY};

/// Seconds between the page's reloads.
const REFRESH_SECS: u32 = 5;
/// Hottest tenants shown.
const HOTTEST: usize = 10;

/// `GET /`: the status page.
pub(super) async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let routes = super::admin::routes_json(&shared);
    let regions = admin::regions_json(&shared.service);
    let cache = admin::cache_json(&shared.service).await;
    let walk = shared.clone();
    let (moving, hottest) =
        tokio::task::spawn_blocking(move || (walk.cache.frozen(), walk.cache.hottest(HOTTEST)))
            .await
            .unwrap_or_default();
    let ready = shared.service.ready() && !shared.drain.draining();
    let mut html = String::with_capacity(16 * 1024);
    render(
        &mut html,
        &Page {
            ready,
            draining: shared.drain.draining(),
            routes: &routes,
            regions: &regions,
            cache: &cache,
            moving: &moving,
            hottest: &hottest,
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// What the page shows.
struct Page<'a> {
    ready: bool,
    draining: bool,
    routes: &'a Value,
    regions: &'a Value,
    cache: &'a Value,
    moving: &'a [(crate::tenant::TenantId, Vec<crate::tenant::Product>)],
    hottest: &'a [(crate::tenant::TenantId, u64)],
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
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

/// A JSON value as escaped text: strings without quotes, null as a dash.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}.ok{color:#17702b}.bad{color:#b3261e;font-weight:600}.dim{color:#777}";

fn render(html: &mut String, p: &Page<'_>) {
    let version = show(&p.routes["version"]);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>tenant-edge status</title><style>{STYLE}</style></head><body>\
         <h1>tenant-edge</h1><p id=\"state\">{} &middot; routes <b id=\"route-version\">{version}</b> \
         &middot; applied sequence {} &middot; <span class=\"dim\">reloads every {REFRESH_SECS} s</span></p>",
        if p.draining {
            "<span class=\"bad\">draining</span>"
        } else if p.ready {
            "<span class=\"ok\">ready</span>"
        } else {
            "<span class=\"bad\">not ready</span>"
        },
        show(&p.regions["applied_seq"]),
    );
    regions(html, p.regions);
    cache(html, p.cache);
    moving(html, p.moving);
    hottest(html, p.hottest);
    routes(html, p.routes);
    html.push_str("</body></html>\n");
}

fn regions(html: &mut String, r: &Value) {
    html.push_str(
        "<h2>TCS regions</h2><table id=\"regions\"><tr><th>region</th><th>trust</th><th>ping ms</th>\
         <th>lookups in flight</th><th>stream</th><th>last message</th></tr>",
    );
    for g in r["regions"].as_array().into_iter().flatten() {
        let trust = show(&g["trust"]);
        let class = if trust == "trusted" { "ok" } else { "bad" };
        let stream = match g["stream_connected"].as_bool() {
            Some(true) => "<span class=\"ok\">connected</span>",
            Some(false) => "<span class=\"dim\">not connected</span>",
            None => "-",
        };
        let last = match g["stream_last_message_ms_ago"].as_u64() {
            Some(ms) => format!("{ms} ms ago"),
            None => "-".into(),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{class}\">{trust}</td><td>{}</td><td>{}</td><td>{stream}</td><td>{last}</td></tr>",
            show(&g["region"]),
            show(&g["ping_ms"]),
            show(&g["in_flight"]),
        );
    }
    let _ = write!(
        html,
        "</table><p class=\"dim\">changes through {} &middot; hedges {} ({} refused by the budget)</p>",
        show(&r["fanout"]["transport"]),
        show(&r["hedges"]),
        show(&r["hedges_refused_by_budget"]),
    );
}

fn cache(html: &mut String, c: &Value) {
    let ratio = c["hit_ratio"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.2} %", r * 100.0));
    let file = &c["file"];
    let written = match file["last_write_ms"].as_u64() {
        Some(0) | None => "never".to_owned(),
        Some(ms) => format!(
            "{} s ago ({} tenants)",
            crate::clock::now_ms().saturating_sub(ms) / 1000,
            show(&file["last_write_records"])
        ),
    };
    let _ = write!(
        html,
        "<h2>Tenant cache</h2><table id=\"cache\">\
         <tr><th>hosts</th><td>{}</td></tr><tr><th>tenants</th><td>{}</td></tr>\
         <tr><th>hit ratio</th><td>{ratio} ({} hits, {} misses, {} known-unknown)</td></tr>\
         <tr><th>sweeps</th><td>{} ({} entries dropped)</td></tr>\
         <tr><th>cache file</th><td>{} &middot; last written {written}</td></tr></table>",
        show(&c["cached_hosts"]),
        show(&c["cached_tenants"]),
        show(&c["hits"]),
        show(&c["misses"]),
        show(&c["negative_hits"]),
        show(&c["sweeps"]),
        show(&c["swept"]),
        show(&file["path"]),
    );
}

fn moving(html: &mut String, moving: &[(crate::tenant::TenantId, Vec<crate::tenant::Product>)]) {
    html.push_str("<h2>Tenants moving now</h2>");
    if moving.is_empty() {
        html.push_str("<p id=\"moving\" class=\"dim\">none</p>");
        return;
    }
    html.push_str("<table id=\"moving\"><tr><th>tenant</th><th>product</th><th>phase</th></tr>");
    for (tenant, products) in moving {
        for product in products {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>frozen: writes paused until the switch</td></tr>",
                esc(tenant.as_str()),
                esc(product.as_str())
            );
        }
    }
    html.push_str("</table>");
}

fn hottest(html: &mut String, hottest: &[(crate::tenant::TenantId, u64)]) {
    let _ = write!(
        html,
        "<h2>Hottest tenants</h2><p class=\"dim\">requests since each was cached, sampled one in {SAMPLE_EVERY}</p>"
    );
    if hottest.is_empty() {
        html.push_str("<p id=\"hottest\" class=\"dim\">none yet</p>");
        return;
    }
    html.push_str("<table id=\"hottest\"><tr><th>tenant</th><th>requests (about)</th></tr>");
    for (tenant, samples) in hottest {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(tenant.as_str()),
            samples * u64::from(SAMPLE_EVERY)
        );
    }
    html.push_str("</table>");
}

fn routes(html: &mut String, r: &Value) {
    html.push_str(
        "<h2>Route snapshot</h2><table id=\"products\"><tr><th>product</th><th>prefixes</th>\
         <th>rate limit per tenant</th></tr>",
    );
    for p in r["routes"]["products"].as_array().into_iter().flatten() {
        let prefixes: Vec<String> = p["prefixes"].as_array().into_iter().flatten().map(show).collect();
        let limit = match p["rate_limit_rps"].as_u64() {
            Some(0) | None => "none".to_owned(),
            Some(n) => format!("{n}/s"),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{limit}</td></tr>",
            show(&p["name"]),
            prefixes.join(", ")
        );
    }
    html.push_str(
        "</table><table id=\"shards\"><tr><th>shard</th><th>healthy backends</th><th>requests in flight</th></tr>",
    );
    let mut shards: Vec<(&String, &Value)> = r["backends"]
        .as_object()
        .map(|o| o.iter().collect())
        .unwrap_or_default();
    shards.sort_by(|a, b| a.0.cmp(b.0));
    for (shard, backends) in shards {
        let all = backends.as_array().map_or(0, Vec::len);
        let healthy = backends
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["healthy"].as_bool() == Some(true))
            .count();
        let outstanding: u64 = backends
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["outstanding"].as_u64())
            .sum();
        let class = if healthy == 0 { "bad" } else { "ok" };
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{class}\">{healthy} of {all}</td><td>{outstanding}</td></tr>",
            esc(shard)
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(show(&Value::Null), "-");
        assert_eq!(show(&serde_json::json!("<b>")), "&lt;b&gt;");
    }
}

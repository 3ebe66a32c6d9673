//! The processes page: who holds the scheduler role, and every process executing tries on
//! this store (the same list as `nightshift status`).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::{St, page, render};

pub async fn status(State(st): St, headers: HeaderMap) -> Response {
    render(&st, &headers, || {
        let now = st.store.now_us()?;
        let engines = st.store.engines()?;
        let lease = st.store.scheduler_lease()?.filter(|l| l.expires_at > now);
        let age = |at: i64| (now - at).max(0) / 1_000_000;
        Ok(page(
            &st,
            &headers,
            "Processes",
            html! {
                h1 { "Processes" }
                p #role {
                    @if let Some(l) = &lease {
                        "Scheduler role: pid " (l.pid) " on " code { (l.host) } " (last heartbeat " (age(l.heartbeat_at)) "s ago)"
                    } @else {
                        span.err { "Nobody holds the scheduler role: no run is created until a `nightshift up` runs." }
                    }
                }
                table #processes {
                    tr { th { "Host" } th { "PID" } th { "Role" } th { "Pools" } th { "Last heartbeat" } th { "Running tries" } }
                    @for e in &engines {
                        tr data-host=(e.host) data-role=(e.role) {
                            td { (e.host) }
                            td { (e.pid) }
                            td { (e.role) }
                            td { (e.pools.clone().unwrap_or_else(|| "all".into())) }
                            td {
                                (age(e.heartbeat_at)) "s ago"
                                @if !e.alive(now) { " " span.err { "(gone?)" } }
                            }
                            td { (e.running) }
                        }
                    }
                }
            },
        ))
    })
}

/// The audit log: every action through the UI and API, newest first, 100 a page.
pub async fn audit(
    State(st): St,
    headers: HeaderMap,
    axum::extract::Query(q): super::Q,
) -> Response {
    render(&st, &headers, || {
        let before = crate::api::query_int(&q, "before", 1, i64::MAX)?;
        let rows = st.store.audit(before, 100)?;
        let tz = jiff::tz::TimeZone::UTC;
        Ok(page(
            &st,
            &headers,
            "Audit log",
            html! {
                h1 { "Audit log" }
                p.muted { "Every action taken through the web UI and the API: which token, what, on which target, from where, and how it went." }
                table #audit {
                    tr { th { "When (UTC)" } th { "Token" } th { "Action" } th { "Target" } th { "Client" } th { "Outcome" } }
                    @for r in &rows {
                        tr data-action=(r.action) data-actor=(r.actor) {
                            td { (nightshift_core::time::from_micros(r.at).to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S")) }
                            td { (r.actor) }
                            td { (r.action) }
                            td { (r.target) }
                            td { (r.client) }
                            td { (r.outcome) }
                        }
                    }
                }
                @if let Some(last) = rows.last().filter(|_| rows.len() == 100) {
                    p { a href={"/audit?before=" (last.id)} { "Older entries »" } }
                }
            },
        ))
    })
}

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

//! SVG drawings: the DAG with state colours, the Gantt chart of a run's tries, and the
//! duration and rows_loaded history of a pipeline. Plain SVG, no script.

use std::collections::HashMap;
use std::fmt::Write;

use maud::{Markup, PreEscaped, html};

use crate::model::{Run, RunDetail, TaskInfo};

/// The colour of a state, as Airflow users know them.
pub fn color(state: &str) -> &'static str {
    match state {
        "SUCCESS" | "PASS" | "done" | "met" => "#2e7d32",
        "WARN" => "#f9a825",
        "ERROR" | "FAIL" => "#c62828",
        "FAILED" | "failed" | "missed" => "#c62828",
        "UPSTREAM_FAILED" => "#ef6c00",
        // Blue, not a second green: running must not read as done (the stylesheet adds
        // stripes, for colour-blind eyes).
        "RUNNING" | "running" => "#1e88e5",
        "QUEUED" | "queued" => "#8d8d8d",
        "UP_FOR_RETRY" | "at_risk" => "#f9a825",
        "SKIPPED" => "#f48fb1",
        // Airflow's "removed"/"shutdown" grey-purple: stopped on purpose, not failed.
        "CANCELLED" | "cancelled" => "#7e57c2",
        "PENDING" => "#cfd8dc",
        "missing" => "#ffffff",
        "paused" => "#78909c",
        _ => "#eceff1",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Layers by longest path from a root, then rows in file order within a layer.
fn layout(tasks: &[TaskInfo]) -> HashMap<String, (usize, usize)> {
    let mut depth: HashMap<&str, usize> = HashMap::new();
    // Tasks come in file order; repeat until stable (validated acyclic, so this ends).
    for _ in 0..tasks.len() + 1 {
        let mut changed = false;
        for t in tasks {
            let d = t
                .depends_on
                .iter()
                .filter_map(|u| depth.get(u.as_str()).map(|d| d + 1))
                .max()
                .unwrap_or(0);
            if depth.get(t.id.as_str()) != Some(&d) {
                depth.insert(&t.id, d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: HashMap<usize, usize> = HashMap::new();
    let mut out = HashMap::new();
    for t in tasks {
        let d = depth.get(t.id.as_str()).copied().unwrap_or(0);
        let r = rows.entry(d).or_default();
        out.insert(t.id.clone(), (d, *r));
        *r += 1;
    }
    out
}

/// The DAG; each node links to `link(task)` and is coloured by `states`.
pub fn graph(
    tasks: &[TaskInfo],
    states: &HashMap<String, String>,
    link: impl Fn(&str) -> Option<String>,
) -> Markup {
    graph_labeled(tasks, states, str::to_owned, link)
}

/// As [`graph`], each node named by `label(id)` (shortened to fit; the full name in its
/// tooltip): dbt's lineage draws `fct_orders` for `model.shop.fct_orders`.
pub fn graph_labeled(
    tasks: &[TaskInfo],
    states: &HashMap<String, String>,
    label: impl Fn(&str) -> String,
    link: impl Fn(&str) -> Option<String>,
) -> Markup {
    let pos = layout(tasks);
    let (w, h, gx, gy) = (150.0, 36.0, 200.0, 56.0);
    let cols = pos.values().map(|p| p.0).max().unwrap_or(0) + 1;
    let rows = pos.values().map(|p| p.1).max().unwrap_or(0) + 1;
    let width = cols as f64 * gx + 20.0;
    let height = rows as f64 * gy + 20.0;
    let at = |id: &str| {
        pos.get(id)
            .map(|&(c, r)| (10.0 + c as f64 * gx, 10.0 + r as f64 * gy))
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="task graph">"#
    );
    s.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#607d8b"/></marker></defs>"##);
    for t in tasks {
        let Some((x2, y2)) = at(&t.id) else { continue };
        for u in &t.depends_on {
            if let Some((x1, y1)) = at(u) {
                let (sx, sy, ex, ey) = (x1 + w, y1 + h / 2.0, x2, y2 + h / 2.0);
                let mx = (sx + ex) / 2.0;
                let _ = write!(
                    s,
                    r##"<path d="M{sx},{sy} C{mx},{sy} {mx},{ey} {ex},{ey}" fill="none" stroke="#607d8b" stroke-width="1.5" marker-end="url(#arrow)"/>"##
                );
            }
        }
    }
    for t in tasks {
        let Some((x, y)) = at(&t.id) else { continue };
        let state = states.get(&t.id).map(String::as_str).unwrap_or("NONE");
        let fill = color(state);
        let text_color = if matches!(state, "PENDING" | "NONE" | "missing") {
            "#263238"
        } else {
            "#ffffff"
        };
        let full = label(&t.id);
        let shown = if full.chars().count() > 19 {
            format!("{}…", full.chars().take(18).collect::<String>())
        } else {
            full.clone()
        };
        let (id, full, label, kind) = (esc(&t.id), esc(&full), esc(&shown), esc(&t.kind));
        let node = format!(
            r##"<g class="node" data-task="{id}" data-kind="{kind}" data-state="{state}"><title>{full}: {state}</title><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#37474f"/><text x="{}" y="{}" fill="{text_color}" font-size="13" text-anchor="middle" font-family="sans-serif">{label}</text></g>"##,
            x + w / 2.0,
            y + h / 2.0 + 4.0
        );
        match link(&t.id) {
            Some(href) => {
                let _ = write!(s, r#"<a href="{}">{node}</a>"#, esc(&href));
            }
            None => s.push_str(&node),
        }
    }
    s.push_str("</svg>");
    PreEscaped(s)
}

/// One row per task, one bar per try: grey while queued, coloured by the try's end state.
pub fn gantt(d: &RunDetail, now_us: i64, link: impl Fn(&str, u32) -> String) -> Markup {
    let starts = d
        .tasks
        .iter()
        .flat_map(|t| t.tries.iter().map(|x| x.queued_us.unwrap_or(x.start_us)));
    let Some(t0) = starts.min() else {
        return html! { p.muted { "No try has started yet." } };
    };
    let t1 = d
        .tasks
        .iter()
        .flat_map(|t| t.tries.iter().map(|x| x.end_us.unwrap_or(now_us)))
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    let (label_w, plot_w, row_h) = (170.0, 640.0, 24.0);
    let scale = plot_w / (t1 - t0) as f64;
    let height = d.tasks.len() as f64 * row_h + 30.0;
    let width = label_w + plot_w + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="Gantt chart of task tries">"#
    );
    for (i, t) in d.tasks.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let _ = write!(
            s,
            r##"<text x="0" y="{}" font-size="12" font-family="sans-serif" fill="#263238">{}</text>"##,
            y + 14.0,
            esc(&t.task_id)
        );
        for x in &t.tries {
            if let Some(q) = x.queued_us.filter(|q| *q < x.start_us) {
                let qx = label_w + (q - t0) as f64 * scale;
                let qw = ((x.start_us - q) as f64 * scale).max(1.0);
                let _ = write!(
                    s,
                    r##"<rect class="queued" x="{qx}" y="{}" width="{qw}" height="{}" fill="#cfd8dc"><title>{} try {} queued</title></rect>"##,
                    y + 4.0,
                    row_h - 10.0,
                    esc(&t.task_id),
                    x.try_number
                );
            }
            let bx = label_w + (x.start_us - t0) as f64 * scale;
            let bw = ((x.end_us.unwrap_or(now_us) - x.start_us) as f64 * scale).max(2.0);
            let dur = x
                .duration_ms
                .map(nightshift_core::time::human_ms)
                .unwrap_or_else(|| "running".into());
            let _ = write!(
                s,
                r##"<a href="{}"><rect class="try" data-state="{}" x="{bx}" y="{}" width="{bw}" height="{}" rx="2" fill="{}"><title>{} try {}: {} ({dur})</title></rect></a>"##,
                esc(&link(&t.task_id, x.try_number)),
                x.state,
                y + 1.0,
                row_h - 4.0,
                color(&x.state),
                esc(&t.task_id),
                x.try_number,
                x.state
            );
        }
    }
    let total = (t1 - t0) as f64 / 1e6;
    let _ = write!(
        s,
        r##"<text x="{label_w}" y="{}" font-size="11" font-family="sans-serif" fill="#546e7a">0s</text><text x="{}" y="{}" font-size="11" font-family="sans-serif" fill="#546e7a" text-anchor="end">{total:.1}s</text>"##,
        height - 6.0,
        label_w + plot_w,
        height - 6.0
    );
    s.push_str("</svg>");
    PreEscaped(s)
}

/// Bars of run duration and a line of rows_loaded over the runs shown (oldest left).
pub fn history(runs: &[&Run]) -> Markup {
    if runs.is_empty() {
        return html! { p.muted { "No runs yet." } };
    }
    let (w, h) = (760.0, 140.0);
    let n = runs.len() as f64;
    let bw = (w / n).min(40.0);
    let max_d = runs
        .iter()
        .filter_map(|r| r.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_r = runs.iter().map(|r| r.rows_loaded).max().unwrap_or(1).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="history" width="{w}" height="{}" viewBox="0 0 {w} {}" role="img" aria-label="run duration and rows loaded">"#,
        h + 20.0,
        h + 20.0
    );
    let mut points = vec![];
    for (i, r) in runs.iter().enumerate() {
        let x = i as f64 * bw;
        if let Some(d) = r.duration_ms {
            let bh = d as f64 / max_d * h;
            let _ = write!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{bh}" fill="{}" opacity="0.75"><title>{} ds {}: {}, {} rows</title></rect>"#,
                x + 1.0,
                h - bh,
                bw - 2.0,
                color(&r.state),
                esc(&r.run_id),
                esc(&r.ds),
                nightshift_core::time::human_ms(d),
                r.rows_loaded
            );
        }
        points.push(format!(
            "{},{}",
            x + bw / 2.0,
            h - r.rows_loaded as f64 / max_r * h
        ));
    }
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1565c0" stroke-width="2"/>"##,
        points.join(" ")
    );
    let _ = write!(
        s,
        r##"<text x="0" y="{}" font-size="11" font-family="sans-serif" fill="#546e7a">bars: duration (max {}) · line: rows_loaded (max {})</text>"##,
        h + 16.0,
        nightshift_core::time::human_ms(max_d as i64),
        max_r as i64
    );
    s.push_str("</svg>");
    PreEscaped(s)
}

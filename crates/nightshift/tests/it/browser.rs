//! The web UI in a real headless Chromium (Debian's package), driven over the DevTools
//! protocol: pages of the reference project render with real runs and without console
//! errors, the grid shows states, an action works with the token and is refused without
//! it. Screenshots go to `target/ui-screenshots/`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::support::*;

struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Console errors and uncaught exceptions seen since the last navigation.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is installed by tools/testdeps/install");
        // Chromium writes its DevTools port into the profile folder.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&port_file)
                && t.lines().count() >= 2
            {
                break t;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("chromium did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut lines = text.lines();
        let port = lines.next().unwrap().trim();
        let path = lines.next().unwrap().trim();
        let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{path}")).unwrap();
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            errors: vec![],
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(Some(()), m, json!({}));
        }
        b
    }

    fn note(&mut self, msg: &Value) {
        let params = &msg["params"];
        match msg["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                self.errors.push(params["exceptionDetails"].to_string())
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors.push(params["args"].to_string())
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(params["entry"].to_string())
            }
            _ => {}
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                _ => continue,
            }
        }
    }

    /// Sends a command (to the page's session when `page` is given) and waits for its result.
    fn call(&mut self, page: Option<()>, method: &str, params: Value) -> Value {
        match self.try_call(page, method, params) {
            Ok(r) => r,
            Err(m) => panic!("{method}: {m}"),
        }
    }

    /// [`Browser::call`], with the browser's error as an error.
    fn try_call(&mut self, page: Option<()>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if page.is_some() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.read();
            if m["id"] == id {
                if m.get("error").is_some() {
                    return Err(m);
                }
                return Ok(m["result"].clone());
            }
            self.note(&m);
        }
    }

    /// Navigates and waits for the load event.
    fn open(&mut self, url: &str) {
        self.errors.clear();
        self.call(Some(()), "Page.navigate", json!({"url": url}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.read();
            if m["method"] == "Page.loadEventFired" {
                break;
            }
            self.note(&m);
            assert!(Instant::now() < deadline, "{url} did not load");
        }
        // Let scripts run (the live log's first fetch) and report.
        self.eval("new Promise(r => setTimeout(r, 300))");
    }

    /// Evaluates in the page. A page that navigates meanwhile (a form just submitted)
    /// drops the evaluation: it is asked again in the new page, for at most 30 s.
    fn eval(&mut self, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            match self.try_call(
                Some(()),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            ) {
                Ok(r) => break r,
                Err(m) => {
                    let why = m["error"]["message"].as_str().unwrap_or_default();
                    let navigated = why.contains("navigated or closed")
                        || why.contains("context was destroyed")
                        || why.contains("Cannot find context");
                    assert!(
                        navigated && Instant::now() < deadline,
                        "Runtime.evaluate: {m}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            Some(()),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_ui_shows_the_reference_project_and_acts_only_with_the_token() {
    // The reference project with real runs: the demo's three nights and its backfill.
    let p = TestProject::new();
    let demo = p.path().join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    std::os::unix::fs::symlink(crate::dbt::venv(), demo.join(".venv")).unwrap();
    let out = Command::new(bin()).arg("demo").arg(&demo).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("--project")
            .arg(&demo)
            .args(args)
            .output()
            .unwrap()
    };
    // Paused, so the real clock schedules no catch-up while the browser looks.
    assert!(run(&["pause", "nightly"]).status.success());
    let up_err = p.path().join("up.stderr");
    let mut up = Command::new(bin())
        .arg("--project")
        .arg(&demo)
        .args(["up", "--bind", "127.0.0.1:0"])
        .env("NIGHTSHIFT_TOKEN", crate::web::TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&up_err).unwrap())
        .spawn()
        .unwrap();
    let url = served_url(&up_err);
    let shots = screenshots();
    let mut b = Browser::start();

    let run_id = "20240603_0000";
    // A failing dbt test and a long run, as the store would hold them: the run page lists
    // failing tests first and says durations as people read them.
    {
        let db = rusqlite::Connection::open(demo.join(".nightshift/nightshift.db")).unwrap();
        let changed = db
            .execute(
                "UPDATE dbt_nodes SET status = 'fail', failures = 3 WHERE id = (SELECT max(id) FROM dbt_nodes
                   WHERE resource_type = 'test' AND run = (SELECT id FROM pipeline_runs WHERE run_id = ?1))",
                [run_id],
            )
            .unwrap();
        assert_eq!(changed, 1);
        db.execute(
            "UPDATE pipeline_runs SET end_time = start_time + 1278200000 WHERE run_id = ?1",
            [run_id],
        )
        .unwrap();
    }
    let pages = [
        ("pipelines", "/".to_owned()),
        ("grid", "/pipelines/nightly".to_owned()),
        ("graph", format!("/pipelines/nightly/graph?run={run_id}")),
        (
            "calendar",
            "/pipelines/nightly/calendar?from=2024-05-20&to=2024-06-10".to_owned(),
        ),
        ("run", format!("/pipelines/nightly/runs/{run_id}")),
        ("lineage", "/pipelines/nightly/dbt/dbt_run".to_owned()),
        (
            "dbt-node",
            "/pipelines/nightly/dbt/dbt_run/nodes/model.shop.fct_orders".to_owned(),
        ),
        (
            "try",
            format!("/pipelines/nightly/runs/{run_id}/tasks/dbt_test/tries/1"),
        ),
    ];
    for (name, path) in &pages {
        b.open(&format!("{url}{path}"));
        let title = b.eval("document.title");
        assert!(
            title.as_str().unwrap().contains("nightshift"),
            "{name}: {title}"
        );
        assert!(b.errors.is_empty(), "{name}: console errors {:?}", b.errors);
        b.screenshot(&shots.join(format!("{name}.png")));
        match *name {
            "grid" => {
                // 4 runs × 7 tasks, all green, plus the run row.
                let states = b.eval("Array.from(document.querySelectorAll('#grid td.cell[data-task]')).map(c => c.dataset.state)");
                let states = states.as_array().unwrap();
                assert_eq!(states.len(), 28, "{states:?}");
                assert!(states.iter().all(|s| s == "SUCCESS"), "{states:?}");
                let chart = b.eval("document.querySelectorAll('svg.history rect').length");
                assert_eq!(chart, 4);
                // The demo's backfill run is marked B in the run row.
                let mark = b.eval("getComputedStyle(document.querySelector('td.cell[data-trigger=backfill] a'), '::after').content");
                assert_eq!(mark, "\"B\"");
                let scheduled =
                    b.eval("document.querySelectorAll('td.cell[data-trigger=scheduled]').length");
                assert_eq!(scheduled, 3);
                // RUNNING is not a second green: another colour, and stripes.
                let look = b.eval("(() => { const t = document.createElement('td'); t.className = 'st'; document.body.appendChild(t); const look = s => { t.dataset.state = s; const c = getComputedStyle(t); return [c.backgroundColor, c.backgroundImage]; }; return [look('RUNNING'), look('SUCCESS')]; })()");
                assert_ne!(look[0][0], look[1][0], "{look}");
                assert!(
                    look[0][1]
                        .as_str()
                        .unwrap()
                        .contains("repeating-linear-gradient"),
                    "{look}"
                );
                assert_eq!(look[1][1], "none");
                // The filter, from its form: only the backfill run is left.
                b.eval("const f = document.getElementById('grid-filter'); f.querySelector('select[name=trigger]').value = 'backfill'; f.submit(); true");
                p.wait_for("the filtered grid", || {
                    b.eval("document.readyState === 'complete' && location.search.includes('trigger=backfill')")
                        == Value::Bool(true)
                });
                let shown = b.eval("Array.from(document.querySelectorAll('#grid td.cell[data-trigger]')).map(c => c.dataset.trigger)");
                assert_eq!(shown, json!(["backfill"]));
                let kept =
                    b.eval("document.querySelector('#grid-filter select[name=trigger]').value");
                assert_eq!(kept, "backfill");
                b.screenshot(&shots.join("grid-filtered.png"));
                // By state: every run succeeded, so none failed.
                b.open(&format!("{url}/pipelines/nightly?state=FAILED"));
                let none = b.eval("document.querySelectorAll('#grid').length === 0 && document.body.textContent.includes('No runs match.')");
                assert_eq!(none, Value::Bool(true));
                // A jump to a date shows the runs up to that ds.
                b.open(&format!("{url}/pipelines/nightly?date=2024-06-02"));
                let ds = b.eval("Array.from(document.querySelectorAll('#grid th.run a')).map(a => a.textContent)");
                assert_eq!(ds, json!(["2024-05-31", "2024-06-01", "2024-06-02"]));
                assert!(b.errors.is_empty(), "console errors {:?}", b.errors);
                b.screenshot(&shots.join("grid-jump.png"));
            }
            "graph" => {
                let nodes = b.eval("Array.from(document.querySelectorAll('svg.dag g.node')).map(n => n.dataset.state)");
                assert_eq!(nodes.as_array().unwrap().len(), 7, "{nodes}");
                // The picker shows the run that is drawn.
                let picked = b.eval("document.querySelector('select[name=run]').value");
                assert_eq!(picked, run_id);
            }
            "calendar" => {
                let done =
                    b.eval("document.querySelectorAll('#calendar [data-state=done]').length");
                assert_eq!(done, 4);
                let missing =
                    b.eval("document.querySelectorAll('#calendar [data-state=missing]').length");
                assert!(missing.as_u64().unwrap() > 0);
                // Month and weekday labels, and the way to earlier and later weeks.
                let months = b.eval("document.getElementById('cal-months').textContent");
                assert!(months.as_str().unwrap().contains("Jun"), "{months}");
                let days = b.eval("document.querySelector('.cal-days').textContent");
                assert!(days.as_str().unwrap().contains("Mon"), "{days}");
                let earlier =
                    b.eval("document.querySelector('#cal-nav a[rel=prev]').getAttribute('href')");
                assert!(
                    earlier.as_str().unwrap().contains("to=2024-05-19"),
                    "{earlier}"
                );
            }
            "run" => {
                let bars = b.eval("document.querySelectorAll('svg.gantt rect.try').length");
                assert_eq!(bars, 7);
                let rows = b.eval("document.getElementById('rows-loaded').textContent");
                assert_ne!(rows, "0");
                let tests = b.eval("document.querySelectorAll('#dbt-tests tr').length");
                assert!(tests.as_u64().unwrap() > 10, "{tests}");
                let first =
                    b.eval("document.querySelector('#dbt-tests tr[data-status]').dataset.status");
                assert_eq!(first, "fail", "the failing test is listed first");
                let summary = b.eval("document.getElementById('summary').textContent");
                assert!(summary.as_str().unwrap().contains("21m18s"), "{summary}");
                let manifests = b.eval("document.querySelectorAll('pre.manifest').length");
                assert_eq!(manifests, 2);
                let why =
                    b.eval("document.querySelector('tr[data-task=dbt_test] td.why').textContent");
                assert_eq!(why, "succeeded on try 1 of 1");
                // The history has every transition: queued, each try's start and its end.
                let history = b.eval("Array.from(document.querySelectorAll('#events tr')).map(r => r.textContent).filter(t => t.includes('dbt_test'))");
                let rows: Vec<&str> = history
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                assert!(rows.iter().any(|r| r.contains("QUEUED")), "{rows:?}");
                assert!(rows.iter().any(|r| r.contains("RUNNING")), "{rows:?}");
                assert!(rows.iter().any(|r| r.contains("SUCCESS")), "{rows:?}");
            }
            "lineage" => {
                // The manifest's models, sources and tests, coloured by the run's statuses.
                let kinds = b.eval("Array.from(new Set(Array.from(document.querySelectorAll('#lineage g.node')).map(n => n.dataset.kind))).sort()");
                assert_eq!(kinds, json!(["model", "source", "test"]), "{kinds}");
                let fct = b.eval("document.querySelector('#lineage g.node[data-task=\"model.shop.fct_orders\"]').dataset.state");
                assert_eq!(fct, "SUCCESS");
                let passed = b.eval("document.querySelectorAll('#lineage g.node[data-kind=test][data-state=PASS]').length");
                assert!(passed.as_u64().unwrap() > 10, "{passed}");
                let label = b.eval("document.querySelector('#lineage g.node[data-task=\"model.shop.fct_orders\"] text').textContent");
                assert_eq!(label, "fct_orders");
            }
            "dbt-node" => {
                // Its status and time in each of the demo's four runs.
                let rows =
                    b.eval("document.querySelectorAll('#node-history tr[data-status]').length");
                assert_eq!(rows, 4);
            }
            "try" => {
                let log = b.eval("document.getElementById('log').textContent");
                assert!(log.as_str().unwrap().contains("PASS"), "{log}");
                let state = b.eval("document.getElementById('live').textContent");
                assert_eq!(state, "complete");
            }
            _ => {}
        }
    }

    // Without logging in there is no form, and a forged post is refused.
    b.open(&format!("{url}/pipelines/nightly"));
    let forms = b.eval("document.querySelectorAll('form[action$=\"/trigger\"]').length");
    assert_eq!(forms, 0);
    let status = b.eval(&format!(
        "fetch('{url}/ui/pipelines/nightly/trigger', {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: 'ds=2024-06-05'}}).then(r => r.status)"
    ));
    assert_eq!(status, 401);
    let status = b.eval(&format!(
        "fetch('{url}/api/v1/pipelines/nightly/runs', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{ds: '2024-06-05'}})}}).then(r => r.status)"
    ));
    assert_eq!(status, 401);
    let json = |args: &[&str]| -> Value { serde_json::from_slice(&run(args).stdout).unwrap() };
    assert_eq!(
        json(&["runs", "nightly", "--json"])
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Log in with the token, then trigger a run for a date from the form.
    b.open(&format!("{url}/login"));
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = '{}'; document.querySelector('form').submit(); true",
        crate::web::TOKEN
    ));
    p.wait_for("the login", || {
        b.eval("document.readyState === 'complete' && location.pathname === '/'")
            == Value::Bool(true)
    });
    b.open(&format!("{url}/pipelines/nightly"));
    b.eval("const f = document.querySelector('form[action$=\"/trigger\"]'); f.querySelector('input[name=ds]').value = '2024-06-05'; f.submit(); true");
    p.wait_for("the triggered run", || {
        json(&["runs", "nightly", "--json"])
            .as_array()
            .unwrap()
            .len()
            == 5
    });
    let runs = json(&["runs", "nightly", "--json"]);
    let new = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ds"] == "2024-06-05")
        .unwrap();
    assert_eq!(new["trigger"], "manual");
    b.open(&format!("{url}/pipelines/nightly"));
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    // The queued run (the pipeline is paused) keeps the page refreshing itself in place.
    p.wait_for("the grid to refresh itself", || {
        b.eval("document.body.dataset.refreshed !== undefined") == Value::Bool(true)
    });
    let marked = b.eval("document.querySelectorAll('td.cell[data-trigger=manual]').length");
    assert_eq!(marked, 1, "the manual run is marked M");
    b.screenshot(&shots.join("grid-after-trigger.png"));
    // A dark theme for people whose system asks for one.
    b.call(
        Some(()),
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    );
    b.open(&format!("{url}/pipelines/nightly"));
    let bg = b.eval("getComputedStyle(document.body).backgroundColor");
    assert_eq!(bg, "rgb(18, 20, 23)");
    b.screenshot(&shots.join("grid-dark.png"));

    sigterm(&up);
    up.wait().unwrap();
}

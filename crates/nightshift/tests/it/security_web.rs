//! Security of the web server, black-box against a real `nightshift up` on loopback, with
//! curl as the client (it sends exactly the Host, Origin and cookies a test asks for).

use std::io::Read;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// A project with pipelines `p` and `q` (paused: nothing runs by itself) and tokens of
/// each role; `extra_web` goes under `[web]`.
fn project(extra_web: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        &format!(
            "[web]\n{extra_web}\n[web.tokens.viewer]\nrole = \"viewer\"\ntoken_env = \"NS_VIEWER\"\n\
             [web.tokens.ops]\nrole = \"operator\"\ntoken_env = \"NS_OPS\"\npipelines = [\"p\"]\n"
        ),
    );
    for name in ["p", "q"] {
        p.file(
            &format!("pipelines/{name}.toml"),
            &format!(
                "schedule = \"0 0 * * *\"\ntimezone = \"UTC\"\nstart_date = \"{}\"\ncatchup = false\n\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
                days_ago(6)
            ),
        );
        assert!(p.run(&["pause", name]).status.success());
    }
    p
}

fn serve(p: &TestProject) -> (std::process::Child, String) {
    let child = p.spawn(
        &["up", "--bind", "127.0.0.1:0"],
        &[
            ("NIGHTSHIFT_TOKEN", ADMIN),
            ("NS_OPS", OPS),
            ("NS_VIEWER", VIEWER),
        ],
        "up",
    );
    let url = web_url(p, "up");
    (child, url)
}

struct Answer {
    code: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// One request with curl: `-D` headers, no redirects followed.
fn curl(args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "30",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-D",
        ])
        .arg(&headers)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Answer {
        code: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_owned(),
    }
}

fn api(url: &str, token: &str, body: &str) -> Answer {
    curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "--data",
        body,
        url,
    ])
}

/// Viewers get 403 on every action; an operator acts on its pipelines only, cannot mark,
/// and every action (and refusal) is in `nightshift audit` with the token's name.
#[test]
fn roles_limit_actions_and_the_audit_log_records_them() {
    let p = project("");
    let (mut up, url) = serve(&p);
    let ds = days_ago(2);
    let run_id = {
        let out = api(
            &format!("{url}/api/v1/pipelines/p/runs"),
            ADMIN,
            &format!(r#"{{"ds": "{ds}"}}"#),
        );
        assert_eq!(out.code, 201, "{}", out.body);
        out.json()["run_id"].as_str().unwrap().to_owned()
    };
    let actions = [
        ("runs", format!(r#"{{"ds": "{}"}}"#, days_ago(3))),
        (
            "backfills",
            format!(r#"{{"from": "{}", "to": "{}"}}"#, days_ago(4), days_ago(3)),
        ),
        ("backfills/cancel", String::new()),
        ("pause", String::new()),
        ("unpause", String::new()),
        (
            &format!("runs/{run_id}/clear") as &str,
            r#"{"task": "t"}"#.to_owned(),
        ),
        (&format!("runs/{run_id}/cancel") as &str, String::new()),
        (
            &format!("runs/{run_id}/mark") as &str,
            r#"{"task": "t", "state": "success", "reason": "done by hand"}"#.to_owned(),
        ),
    ]
    .map(|(a, b)| (a.to_owned(), b));
    for (path, body) in &actions {
        let out = api(&format!("{url}/api/v1/pipelines/p/{path}"), VIEWER, body);
        assert_eq!(out.code, 403, "viewer {path}: {}", out.body);
        assert!(
            out.json()["error"].as_str().unwrap().contains("viewer"),
            "{}",
            out.body
        );
    }
    // The operator: allowed on `p` except mark; refused on `q`.
    for (path, body) in &actions[..5] {
        let out = api(&format!("{url}/api/v1/pipelines/p/{path}"), OPS, body);
        assert!(
            [200, 201].contains(&out.code),
            "operator {path}: {} {}",
            out.code,
            out.body
        );
    }
    let out = api(
        &format!("{url}/api/v1/pipelines/p/{}", actions[7].0),
        OPS,
        &actions[7].1,
    );
    assert_eq!(out.code, 403, "{}", out.body);
    let out = api(&format!("{url}/api/v1/pipelines/q/pause"), OPS, "");
    assert_eq!(out.code, 403, "{}", out.body);
    assert!(out.body.contains("may act on `p` only"), "{}", out.body);
    // The admin may mark.
    let out = api(
        &format!("{url}/api/v1/pipelines/p/{}", actions[7].0),
        ADMIN,
        &actions[7].1,
    );
    assert_eq!(out.code, 200, "{}", out.body);

    let audit: Value = serde_json::from_slice(&p.run(&["audit", "--json"]).stdout).unwrap();
    let entries = audit.as_array().unwrap();
    let by = |token: &str, action: &str| {
        entries
            .iter()
            .filter(|e| e["token"] == token && e["action"] == action)
            .collect::<Vec<_>>()
    };
    for action in ["trigger", "backfill", "cancel", "pause", "unpause"] {
        let e = by("ops", action);
        assert!(
            e.iter()
                .any(|e| e["outcome"] == "ok" && e["client"] == "127.0.0.1"),
            "{action}: {audit:#}"
        );
    }
    assert!(
        by("ops", "mark")[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused")
    );
    assert_eq!(by("viewer", "pause").len(), 1, "refusals are recorded too");
    assert_eq!(by("admin", "mark")[0]["outcome"], "ok");
    assert!(
        by("ops", "pause")
            .iter()
            .any(|e| e["target"] == "q" && e["outcome"].as_str().unwrap().starts_with("refused"))
    );
    // The same log on the audit page.
    let page = curl(&[&format!("{url}/audit")]);
    assert_eq!(page.code, 200);
    assert!(
        page.body.contains("done by hand") || page.body.contains("mark"),
        "{}",
        page.body
    );
    sigkill(&mut up);
}

/// Login goes only to local paths, sessions end after their idle time, pages carry CSP and
/// no-store, logout needs the CSRF token, foreign Host and Origin are refused, and failed
/// attempts are rate-limited with 429 and Retry-After.
#[test]
fn logins_sessions_hosts_origins_and_rate_limits() {
    let p = project("session_idle = \"2s\"\n");
    let (mut up, url) = serve(&p);
    let jar = p.path().join("cookies");
    let jar = jar.to_str().unwrap();

    let login = curl(&[
        "-c",
        jar,
        "--data-urlencode",
        &format!("token={ADMIN}"),
        "--data-urlencode",
        "next=/\\evil.example/",
        &format!("{url}/login"),
    ]);
    assert_eq!(login.code, 303, "{}", login.body);
    assert_eq!(login.header("location").as_deref(), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    let home = curl(&["-b", jar, &format!("{url}/")]);
    assert_eq!(home.code, 200);
    assert!(home.body.contains("Log out"), "logged in");
    let csp = home.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(home.header("cache-control").as_deref(), Some("no-store"));
    assert!(
        !home.body.contains("<style") && !home.body.contains(" style="),
        "no inline style under the CSP"
    );

    // Logout is a POST with the session's CSRF token.
    assert_eq!(curl(&["-b", jar, &format!("{url}/logout")]).code, 405);
    let no_csrf = curl(&[
        "-b",
        jar,
        "-X",
        "POST",
        "-H",
        &format!("origin: {url}"),
        &format!("{url}/logout"),
    ]);
    assert_eq!(no_csrf.code, 403, "{}", no_csrf.body);
    // A form from another site is refused even with a valid session.
    let csrf = home
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let foreign = curl(&[
        "-b",
        jar,
        "-H",
        "origin: http://evil.example",
        "--data",
        &format!("csrf={csrf}"),
        &format!("{url}/ui/pipelines/p/unpause"),
    ]);
    assert_eq!(foreign.code, 403, "{}", foreign.body);
    let no_origin = curl(&[
        "-b",
        jar,
        "--data",
        &format!("csrf={csrf}"),
        &format!("{url}/ui/pipelines/p/unpause"),
    ]);
    assert_eq!(
        no_origin.code, 403,
        "a browser form without Origin or Referer"
    );

    // Idle past `session_idle`: the session is over.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = curl(&["-b", jar, &format!("{url}/")]);
    assert!(later.body.contains("Log in to act"), "the session expired");

    // Only localhost names reach a loopback server (DNS rebinding), and an API POST with a
    // foreign Origin is refused even with the token.
    let rebound = curl(&[
        "-H",
        "host: evil.example",
        &format!("{url}/api/v1/pipelines"),
    ]);
    assert_eq!(rebound.code, 421, "{}", rebound.body);
    let port = url.rsplit(':').next().unwrap();
    let by_name = curl(&[&format!("http://localhost:{port}/healthz")]);
    assert_eq!(by_name.code, 200);
    let cross = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {ADMIN}"),
        "-H",
        "origin: http://evil.example",
        &format!("{url}/api/v1/pipelines/p/pause"),
    ]);
    assert_eq!(cross.code, 403, "{}", cross.body);

    // Wrong tokens: after a few, the address waits.
    let mut codes = vec![];
    for _ in 0..12 {
        codes.push(
            api(
                &format!("{url}/api/v1/pipelines/p/pause"),
                "wrong-token-0123456789",
                "",
            )
            .code,
        );
    }
    assert_eq!(codes[0], 401);
    assert_eq!(*codes.last().unwrap(), 429, "{codes:?}");
    let limited = api(&format!("{url}/api/v1/pipelines/p/pause"), ADMIN, "");
    assert_eq!(limited.code, 429);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let login = curl(&[
        "--data-urlencode",
        "token=still-wrong-0123456789",
        &format!("{url}/login"),
    ]);
    assert_eq!(login.code, 429);
    assert!(
        p.read("up.stderr").contains("wrong token"),
        "failures are logged"
    );
    sigkill(&mut up);
}

/// Tokens shorter than 16 characters are refused when `up` starts, from any source.
#[test]
fn short_tokens_are_refused_at_start() {
    let p = project("");
    for (var, what) in [
        ("NIGHTSHIFT_TOKEN", "NIGHTSHIFT_TOKEN"),
        ("NS_OPS", "token `ops`"),
    ] {
        let out = p
            .cmd(&["up", "--bind", "127.0.0.1:0"])
            .env("NIGHTSHIFT_TOKEN", ADMIN)
            .env("NS_OPS", OPS)
            .env(var, "short")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(what) && stderr(&out).contains("shorter than 16"),
            "{}",
            stderr(&out)
        );
    }
}

/// `[web] tls_cert` and `tls_key` serve HTTPS, and the session cookie is `Secure`.
#[test]
fn https_with_secure_cookies() {
    let p = project("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let (mut up, url) = serve(&p);
    assert!(url.starts_with("https://"), "{url}");
    let port = url.rsplit(':').next().unwrap();
    let base = format!("https://localhost:{port}");
    let cert = p.path().join("cert.pem");
    let ok = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{base}/healthz"),
    ]);
    assert_eq!((ok.code, ok.body.as_str()), (200, "ok"));
    let login = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "--data-urlencode",
        &format!("token={ADMIN}"),
        &format!("{base}/login"),
    ]);
    assert_eq!(login.code, 303);
    assert!(login.header("set-cookie").unwrap().contains("; Secure"));
    assert!(login.header("strict-transport-security").is_some());
    // Plain HTTP to the same port gets no page.
    let plain = curl(&[&format!("http://localhost:{port}/healthz")]);
    assert_ne!(plain.code, 200);
    sigkill(&mut up);
}

/// Slow clients are cut off (header-read and idle timeouts) without holding the server,
/// and trigger and backfill refuse intervals the pipeline never has.
#[test]
fn slow_clients_are_cut_off_and_impossible_intervals_are_refused() {
    let p = project("max_backfill_runs = 3\n");
    let (mut up, url) = serve(&p);
    let addr = url.trim_start_matches("http://").to_owned();
    // Fifty connections that never send a request.
    let mut idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // Others are still served meanwhile.
    let ok = curl(&[&format!("{url}/healthz")]);
    assert_eq!((ok.code, ok.body.as_str()), (200, "ok"));
    // Each silent connection is closed by the server (read sees the end, not a hang).
    for s in &mut idle {
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the server closed it"
        );
    }

    let runs = format!("{url}/api/v1/pipelines/p/runs");
    for (ds, needle) in [
        ("4799-11-19", "has not ended"),
        (days_ago(30).as_str(), "outside"),
    ] {
        let out = api(&runs, ADMIN, &format!(r#"{{"ds": "{ds}"}}"#));
        assert_eq!(out.code, 400, "{ds}: {}", out.body);
        assert!(out.body.contains(needle), "{ds}: {}", out.body);
    }
    let backfills = format!("{url}/api/v1/pipelines/p/backfills");
    let too_many = api(
        &backfills,
        ADMIN,
        &format!(r#"{{"from": "{}", "to": "{}"}}"#, days_ago(6), days_ago(1)),
    );
    assert_eq!(too_many.code, 400, "{}", too_many.body);
    assert!(
        too_many.body.contains("max_backfill_runs"),
        "{}",
        too_many.body
    );
    let future = api(
        &backfills,
        ADMIN,
        &format!(r#"{{"from": "{}", "to": "4799-11-19"}}"#, days_ago(2)),
    );
    assert_eq!(future.code, 400, "{}", future.body);
    assert!(p.runs("p").is_empty(), "nothing was created");
    sigkill(&mut up);
}

/// schemathesis, against the served document, with and without a token: no 5xx, no
/// status the document does not list, and every body as documented.
#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let (p, mut up, url) = crate::web::served_example();
    let st =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.testvenv/bin/schemathesis");
    for (seed, token) in [("1", Some(crate::web::TOKEN)), ("2", None)] {
        let mut cmd = Command::new(&st);
        cmd.args([
            "run",
            &format!("{url}/api/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "20",
            "--seed",
            seed,
            "--workers",
            "1",
        ])
        .current_dir(p.path())
        .env("NO_COLOR", "1");
        if let Some(t) = token {
            cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd
            .output()
            .expect("schemathesis is installed by tools/testdeps/install");
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "with token: {}\n{text}{}",
            token.is_some(),
            stderr(&out)
        );
        assert!(text.contains("passed"), "{text}");
    }
    sigkill(&mut up);
}

/// An action runs off the server's thread: a backfill of 1,000 runs does not hold up the
/// requests that come while it is being created.
#[test]
fn a_large_backfill_holds_up_no_other_request() {
    let p = project("");
    p.file(
        "pipelines/h.toml",
        &format!(
            "schedule = \"0 * * * *\"\ntimezone = \"UTC\"\nstart_date = \"{}\"\ncatchup = false\n\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
            days_ago(60)
        ),
    );
    assert!(p.run(&["pause", "h"]).status.success());
    let (mut up, url) = serve(&p);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered_meanwhile = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let poller = {
        let (done, seen, url) = (done.clone(), answered_meanwhile.clone(), url.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let ok = curl(&[&format!("{url}/api/v1/pipelines")]).code == 200;
                // Counted only if the backfill was still being created when it came back.
                if ok && !done.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    // 984 hourly intervals (41 days), all ended.
    let from = days_ago(50);
    let to = {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("{from} + 40 days"), "+%Y-%m-%d"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let big = api(
        &format!("{url}/api/v1/pipelines/h/backfills"),
        ADMIN,
        &format!(r#"{{"from": "{from}", "to": "{to}"}}"#),
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    poller.join().unwrap();
    assert_eq!(big.code, 201, "{}", big.body);
    assert_eq!(big.json()["created"], 984, "{}", big.body);
    assert!(
        answered_meanwhile.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "other requests were answered while the backfill was created"
    );
    sigkill(&mut up);
}

//! Security, black-box: real `nightshift` processes, a real HTTP server, the files on disk
//! and `/proc`. Each test names the weakness it shows fixed.

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;

use crate::support::*;

const SECRET: &str = "S3cret-Value/with+odd?chars&more";
const TOKEN: &str = "tok-0123456789abcdef-tok";

/// Tasks see no secret of nightshift's own (the web token, a webhook URL's variable), and
/// a registered secret printed plainly, in base64 (standard, URL-safe, inside a longer
/// text, wrapped by `base64` across lines), URL-encoded and in hex leaves no trace in the
/// log.
#[test]
fn tasks_get_a_scrubbed_environment_and_no_form_of_a_secret_reaches_a_log() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "secrets = [\"API_KEY\"]\n[channels.hook]\nkind = \"webhook\"\nurl_env = \"HOOK_URL\"\n",
    );
    p.file(
        "print.sh",
        r#"#!/bin/sh
env
printf '%s' "$API_KEY" | base64
printf '%s' "$API_KEY" | base64 | tr '+/' '-_'
printf 'user:%s' "$API_KEY" | base64
printf '%s%s%s' "$API_KEY" "$API_KEY" "$API_KEY" | base64
python3 -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["API_KEY"]))'
python3 -c 'import os, urllib.parse; print(urllib.parse.quote_plus(os.environ["API_KEY"]))'
printf '%s' "$API_KEY" | od -An -tx1 | tr -d ' \n'; echo
printf '%s' "$API_KEY" | od -An -tx1 | tr -d ' \n' | tr a-f A-F; echo
"#,
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"leak\"\ncommand = [\"./print.sh\"]\n\n\
               [[task]]\nid = \"passed\"\npass_env = [\"NIGHTSHIFT_TOKEN\"]\ncommand = [\"sh\", \"-c\", \"test \\\"$NIGHTSHIFT_TOKEN\\\" = tok-0123456789abcdef-tok\"]\n"),
    );
    let out = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .env("API_KEY", SECRET)
        .env("NIGHTSHIFT_TOKEN", TOKEN)
        .env(
            "HOOK_URL",
            "http://user:hookpass@hooks.example/T0/hooksecret",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = p.run(&["logs", "20240602_0000", "leak"]);
    let text = stdout(&log);
    assert!(
        text.contains("PATH="),
        "the task printed its environment: {text}"
    );
    assert!(!text.contains("NIGHTSHIFT_TOKEN"), "{text}");
    assert!(!text.contains("HOOK_URL"), "{text}");
    assert!(!text.contains("hookpass"), "{text}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        SECRET.to_owned(),
        b64.encode(SECRET),
        base64::engine::general_purpose::URL_SAFE.encode(SECRET),
        b64.encode(format!("{SECRET}{SECRET}{SECRET}")),
        SECRET.replace('/', "%2F").replace('+', "%2B"),
        SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
    ];
    // Every line of the log file on disk, with the line breaks taken out (base64 wraps).
    let raw: String = std::fs::read_dir(p.path().join(".nightshift/logs/p/20240602_0000"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let joined: String = raw
        .lines()
        .map(|l| l.split("] ").nth(1).unwrap_or(l))
        .collect();
    for f in &forms {
        // A form's core: its first 12 characters carry the secret's first 9 bytes.
        let core = &f[..12];
        assert!(
            !raw.contains(core),
            "`{core}` of `{f}` is in the log:\n{raw}"
        );
        assert!(
            !joined.contains(core),
            "`{core}` of `{f}` runs across lines:\n{raw}"
        );
    }
    assert!(raw.contains("***"));
    assert_eq!(
        task(&p.tasks("20240602_0000"), "passed")["state"],
        "SUCCESS",
        "a task gets what its pipeline passes explicitly"
    );
}

/// nightshift creates its files 0600 and its folders 0700.
#[test]
fn the_store_and_the_logs_are_for_their_owner_only() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01") + "[[task]]\nid = \"t\"\ncommand = [\"echo\", \"hi\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |rel: &str| {
        std::fs::metadata(p.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".nightshift"), 0o700);
    assert_eq!(mode(".nightshift/nightshift.db"), 0o600);
    assert_eq!(mode(".nightshift/logs/p/20240602_0000"), 0o700);
    assert_eq!(mode(".nightshift/logs/p/20240602_0000/t.try-1.log"), 0o600);
}

/// A webhook URL's user, password, path and query never show: not in `alerts --json`, the
/// API, the try's log, stderr, or any process's argv while `notify` runs.
#[test]
fn a_webhook_urls_credentials_never_show() {
    let (hung, _) = http_server(true);
    let base = hung.trim_end_matches("/hooks/secret-token");
    let url = format!(
        "{}/hooks/pathsecret?token=querysecret",
        base.replace("http://", "http://hookuser:hookpass@")
    );
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        &format!(
            "[channels.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nallow_private = true\ntimeout = \"2s\"\nretries = 0\n[alerts]\nchannels = [\"hook\"]\n"
        ),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"boom\"\ncommand = [\"false\"]\n\n\
               [[task]]\nid = \"notify\"\nkind = \"notify\"\nchannels = [\"hook\"]\ndepends_on = [\"boom\"]\n"),
    );
    let mut child = p
        .cmd(&["run", "p", "--date", "2024-06-01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the notify try waits on the hung server, no process carries the URL.
    let mut seen_notify = false;
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed().as_secs() < 60 {
        seen_notify |= !processes_with("__notify").is_empty();
        for secret in ["hookpass", "pathsecret", "querysecret"] {
            assert!(
                processes_with(secret).is_empty(),
                "`{secret}` is in a process's argv"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(seen_notify, "the notify try ran while we looked");
    let mut shown = stdout(&out) + &stderr(&out);
    shown += &stdout(&p.run(&["alerts", "--json"]));
    shown += &stdout(&p.run(&["logs", "20240602_0000", "notify"]));
    // The API shows the same alerts, and `up` says nothing of the URL on its stderr.
    let mut up = p.spawn(
        &["up", "--bind", "127.0.0.1:0"],
        &[("NIGHTSHIFT_TOKEN", "admin-token-0123456789abcdef")],
        "up",
    );
    let web = web_url(&p, "up");
    let mut r = http().get(format!("{web}/api/v1/alerts")).call().unwrap();
    let api = r.body_mut().read_to_string().unwrap();
    assert!(api.contains("boom"), "the API lists the alert: {api}");
    shown += &api;
    sigkill(&mut up);
    shown += &p.read("up.stderr");
    for secret in ["hookuser", "hookpass", "pathsecret", "querysecret"] {
        assert!(!shown.contains(secret), "`{secret}` shows:\n{shown}");
    }
    assert!(shown.contains(&format!("{base}/…")), "{shown}");
}

/// A webhook to the cloud metadata address is refused before any connection, and says why.
#[test]
fn a_webhook_to_the_metadata_address_is_refused() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[channels.meta]\nkind = \"webhook\"\nurl = \"http://169.254.169.254/latest/meta-data/\"\nretries = 0\n",
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"notify\"\nkind = \"notify\"\nchannels = [\"meta\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stdout(&p.run(&["logs", "20240602_0000", "notify"]));
    assert!(
        log.contains("169.254.169.254 is a cloud metadata address"),
        "{log}"
    );
    assert!(log.contains("allow_private = true"), "{log}");
}

/// `nightshift logs` shows a task's terminal escapes inertly (unless `--raw`) and never
/// follows a log file replaced by a symbolic link.
#[test]
fn the_log_reader_shows_escapes_inertly_and_follows_no_link() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"t\"\ncommand = [\"printf\", \"before\\\\033]52;c;aGk=\\\\007after\\\\n\"]\n"),
    );
    assert!(
        p.run(&["run", "p", "--date", "2024-06-01"])
            .status
            .success()
    );
    let shown = stdout(&p.run(&["logs", "20240602_0000", "t"]));
    assert!(shown.contains("before^[]52;c;aGk=^Gafter"), "{shown:?}");
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    let raw = stdout(&p.run(&["logs", "20240602_0000", "t", "--raw"]));
    assert!(raw.contains("before\u{1b}]52;c;aGk=\u{7}after"), "{raw:?}");

    let log = p
        .path()
        .join(".nightshift/logs/p/20240602_0000/t.try-1.log");
    let outside = p.path().join("outside.txt");
    std::fs::write(&outside, "not a log: private\n").unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&outside, &log).unwrap();
    let out = p.run(&["logs", "20240602_0000", "t"]);
    assert!(!stdout(&out).contains("private"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("never followed"), "{}", stderr(&out));
}

/// SMTP credentials never travel in cleartext unless the project says so, and a webhook's
/// redirect is not followed (it could lead to an address the checks refuse).
#[test]
fn smtp_credentials_need_tls_and_webhook_redirects_are_not_followed() {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "[channels.mail]\nkind = \"smtp\"\nhost = \"smtp.example.com\"\nport = 25\ntls = \"none\"\nfrom = \"n@example.com\"\nto = [\"ops@example.com\"]\nusername_env = \"SMTP_USER\"\npassword_env = \"SMTP_PASSWORD\"\n",
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out) + &stdout(&out);
    assert!(
        text.contains("cleartext") && text.contains("nightshift.toml:8:"),
        "{text}"
    );
    assert!(text.contains("allow_plaintext_auth"), "{text}");

    // A webhook that answers with a redirect to a second server.
    let (target, calls) = http_server(false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirecting = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in listener.incoming().take(5) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    p.file(
        "nightshift.toml",
        &format!("[channels.hook]\nkind = \"webhook\"\nurl = \"{redirecting}\"\nallow_private = true\nretries = 0\n"),
    );
    p.file(
        "pipelines/p.toml",
        &(daily("p", "2024-06-01")
            + "[[task]]\nid = \"notify\"\nkind = \"notify\"\nchannels = [\"hook\"]\n"),
    );
    let out = p.run(&["run", "p", "--date", "2024-06-01"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a redirect is a failed delivery"
    );
    assert!(
        calls.lock().unwrap().is_empty(),
        "the redirect was not followed"
    );
}

//! Test harness: projects in temp folders, the real binary, real processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nightshift"))
}

pub struct TestProject {
    pub dir: tempfile::TempDir,
}

/// A pipeline file header with a daily schedule; tasks are appended by each test.
pub fn daily(name: &str, start_date: &str) -> String {
    format!(
        "name = \"{name}\"\nschedule = \"0 0 * * *\"\ntimezone = \"UTC\"\nstart_date = \"{start_date}\"\ncatchup = true\nmax_active_runs = 1\n\n[defaults]\nretries = 0\nretry_delay = \"100ms\"\ntimeout = \"5m\"\n\n"
    )
}

/// The UTC date `n` days ago.
pub fn days_ago(n: u32) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("{n} days ago"), "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Yesterday's date (UTC), so a real-clock scheduler has exactly one ended interval.
pub fn yesterday() -> String {
    let out = Command::new("date")
        .args(["-u", "-d", "yesterday", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl TestProject {
    pub fn new() -> Self {
        TestProject {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The scaffolded example project.
    pub fn example() -> Self {
        let p = TestProject::new();
        let out = p.cmd(&["init"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, rel: &str, text: &str) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--project")
            .arg(self.path())
            .args(args)
            .env_remove("NIGHTSHIFT_CRASH_AT")
            .env_remove("NIGHTSHIFT_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Starts a long-running command (`up`) with its output in files under the project.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)], tag: &str) -> Child {
        let out = std::fs::File::create(self.path().join(format!("{tag}.stdout"))).unwrap();
        let err = std::fs::File::create(self.path().join(format!("{tag}.stderr"))).unwrap();
        let mut c = self.cmd(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn runs(&self, pipeline: &str) -> Vec<Value> {
        self.json(&["runs", pipeline, "--json"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every run of a pipeline (not only the newest 50).
    pub fn runs_all(&self, pipeline: &str) -> Vec<Value> {
        let out = self.run(&["runs", pipeline, "--json", "--limit", "100000"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    pub fn tasks(&self, run_id: &str) -> Value {
        self.json(&["tasks", run_id, "--json"])
    }

    /// Polls until `f` holds; panics after a generous deadline (a hang guard, not a timing test).
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Text with runs of spaces collapsed, for comparing table output.
pub fn squash(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(marker)
        {
            out.push(pid);
        }
    }
    out
}

pub fn sigkill(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Every task instance of a `tasks --json` document, by task id.
pub fn task<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {doc}"))
}

/// An HTTP server that records request bodies; with `hang`, it accepts and never answers.
pub fn http_server(hang: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/secret-token",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(vec![]));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for stream in listener.incoming().take(10) {
            let Ok(mut stream) = stream else { continue };
            if hang {
                held.push(stream);
                continue;
            }
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, bodies)
}

/// A free loopback port (bound, then released for a server the test starts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real SMTP server (aiosmtpd from tools/testdeps) writing each message into a maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub fn start(dir: &Path) -> SmtpServer {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.testvenv/bin/python");
        assert!(
            python.exists(),
            "the test tools are not installed: run `bash tools/testdeps/install` (tools/test.sh does)"
        );
        let port = free_port();
        let maildir = dir.join("maildir");
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            port,
            maildir,
            child,
        }
    }

    /// The messages delivered so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = vec![];
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP agent that returns error statuses instead of failing on them.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Waits for `up` (spawned with `tag`) to print where it serves, and returns the base URL.
pub fn web_url(p: &TestProject, tag: &str) -> String {
    served_url(&p.path().join(format!("{tag}.stderr")))
}

/// Waits (up to two minutes, a hang guard) until the `up` writing `stderr` prints where it serves, and
/// returns the base URL.
pub fn served_url(stderr: &Path) -> String {
    let t0 = Instant::now();
    loop {
        let err = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(u) = err
            .lines()
            .find_map(|l| l.split("web UI and API at ").nth(1))
        {
            return u
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for the web server to start: {err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rows of a partition folder's `part-0.parquet`.
pub fn parquet_rows(dir: &Path) -> i64 {
    let f = std::fs::File::open(dir.join("part-0.parquet")).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows() as i64)
        .sum()
}

/// One number from a SQLite file (a source's row count).
pub fn source_count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A small tmpfs mounted by the test; unmounted when dropped.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            stderr(&out)
        );
        SmallDisk(at.to_owned())
    }

    /// Fills the disk with one file; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        let f = self.0.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", f.display()))
            .stderr(Stdio::null())
            .status();
        f
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l"]).arg(&self.0).status();
    }
}

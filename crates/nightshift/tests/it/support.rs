//! Test harness: projects in temp folders, the real binary, real processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

//! A real PostgreSQL for tests: a private cluster in a temporary folder on a free loopback
//! port, started with the machine's `initdb` and `pg_ctl`, stopped (and removed) on drop.
//!
//! `initdb` runs once per machine into a template folder; each cluster is a copy of it, so a
//! test pays for a copy and a start (well under a second), not for an `initdb`. Each test
//! owns its cluster, so it may stop and restart it (an outage) without disturbing others.
//! PostgreSQL refuses to run as root: under root, the server runs as the `postgres` user
//! that Debian's package creates.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// One running PostgreSQL cluster, owned by a test.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    tls: AtomicBool,
}

/// The folder holding `initdb` and `pg_ctl`: on PATH, or Debian's versioned folder.
pub fn bin_dir() -> Option<PathBuf> {
    #[allow(clippy::disallowed_methods)]
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        if d.join("pg_ctl").is_file() && d.join("initdb").is_file() {
            return Some(d);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// The uid and gid of the `postgres` user, when running as root.
fn server_user() -> io::Result<Option<(u32, u32)>> {
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            io::Error::other(
                "running as root, and there is no `postgres` user to run the test server as; install Debian's postgresql package (tools/testdeps/install)",
            )
        })
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestCluster {
    /// Starts a new cluster. Fails with a clear message when PostgreSQL is not installed.
    pub fn start() -> io::Result<TestCluster> {
        let bin = bin_dir().ok_or_else(|| {
            io::Error::other(
                "PostgreSQL's initdb and pg_ctl are not installed; run tools/testdeps/install",
            )
        })?;
        let user = server_user()?;
        let template = template(&bin, user)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nightshift-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&dir)
            .status()?;
        if !status.success() {
            return Err(io::Error::other("copying the PostgreSQL template failed"));
        }
        let cluster = TestCluster {
            dir,
            bin,
            port: free_port()?,
            user,
            tls: AtomicBool::new(false),
        };
        cluster.resume()?;
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Starts (or starts again, on the same port) the server.
    pub fn resume(&self) -> io::Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        if self.tls.load(Ordering::Relaxed) {
            opts.push_str(" -c ssl=on");
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "pg_ctl start failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops the server at once (`immediate`: as if its host lost power), keeping its data.
    pub fn halt(&self) -> io::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Restarts the server with TLS on: a test CA (made with the `openssl` command) and a
    /// certificate it signed for `localhost` and 127.0.0.1. Returns the CA's certificate.
    pub fn enable_tls(&self) -> io::Result<PathBuf> {
        self.halt()?;
        let data = self.dir.join("data");
        let ca = self.dir.join("root.crt");
        let ca_key = self.dir.join("root.key");
        let ext = self.dir.join("server.ext");
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
        let openssl = |args: Vec<&std::ffi::OsStr>| -> io::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .stdin(Stdio::null())
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "openssl failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        openssl(vec![
            os("req"),
            os("-x509"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-days"),
            os("2"),
            os("-subj"),
            os("/CN=nightshift test CA"),
            os("-keyout"),
            ca_key.as_os_str(),
            os("-out"),
            ca.as_os_str(),
        ])?;
        let csr = self.dir.join("server.csr");
        let (key, crt) = (data.join("server.key"), data.join("server.crt"));
        openssl(vec![
            os("req"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-subj"),
            os("/CN=localhost"),
            os("-keyout"),
            key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
        ])?;
        openssl(vec![
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            ca.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-days"),
            os("2"),
            os("-extfile"),
            ext.as_os_str(),
            os("-out"),
            crt.as_os_str(),
        ])?;
        use std::os::unix::fs::PermissionsExt;
        for p in [&key, &crt] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
        }
        self.tls.store(true, Ordering::Relaxed);
        self.resume()?;
        Ok(ca)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` in this cluster (user `nightshift`, no password: trust).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://nightshift@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a new empty database and returns its URL.
    pub fn database(&self, name: &str) -> io::Result<String> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(io::Error::other)?;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(io::Error::other)?;
        Ok(self.url(name))
    }

    /// The server's own log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.halt();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A folder holding an initialised, never started cluster in `data/`, made once per machine
/// and PostgreSQL version. Made beside its final name and renamed into place, so tests that
/// race to make it each get a whole one.
fn template(bin: &Path, user: Option<(u32, u32)>) -> io::Result<PathBuf> {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = std::env::temp_dir();
    let template = root.join(format!("nightshift-pg-template-{version}"));
    if template.join("data/PG_VERSION").is_file() {
        return Ok(template);
    }
    let tmp = root.join(format!("nightshift-pg-template-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    }
    let mut c = Command::new(bin.join("initdb"));
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    let out = c
        .arg("-D")
        .arg(tmp.join("data"))
        .args(["-U", "nightshift", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .args(["--locale", "C"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io::Error::other(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    if std::fs::rename(&tmp, &template).is_err() {
        // Another test made it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(template)
}

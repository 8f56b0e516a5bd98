//! PostgreSQL and NATS as real servers for the cluster's tests and for
//! `ivr bench ivc --nodes`, each started on a free loopback port with its
//! data in a temporary folder and stopped when dropped. PostgreSQL runs as
//! its own user (`postgres`; it refuses root). A missing server is a
//! failure that says how to install it, never a skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn wait_port(port: u16, what: &str, log: &Path) -> Result<(), String> {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} did not listen on 127.0.0.1:{port} within 30 s; its log:\n{tail}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ivr-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).expect("a temporary folder");
    d
}

/// The PostgreSQL 15 programs of Debian's `postgresql` package.
fn pg_bin(name: &str) -> Result<PathBuf, String> {
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!("PostgreSQL is not installed ({name} not found): `apt-get install postgresql` (scripts/test.sh does)"))
}

/// A PostgreSQL server of its own.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// initdb, then a server on a free port (as user `postgres` when run
    /// as root); panics saying what went wrong.
    pub fn start() -> Postgres {
        Postgres::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<Postgres, String> {
        let (initdb, pg_ctl) = (pg_bin("initdb")?, pg_bin("pg_ctl")?);
        let dir = temp_dir("pg");
        let data = dir.join("data");
        let root = is_root();
        if root {
            let ok = Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir).status();
            assert!(
                ok.is_ok_and(|s| s.success()),
                "chown of {} to postgres failed (is the user there?)",
                dir.display()
            );
        }
        let run = |prog: &Path, args: &[&str]| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(prog);
                c
            } else {
                Command::new(prog)
            };
            c.args(args).stdin(Stdio::null());
            c
        };
        let data_s = data.to_str().expect("utf-8 path").to_owned();
        let out = run(&initdb, &["-D", &data_s, "-U", "ivr", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_port();
        let log = dir.join("pg.log");
        let opts =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", dir.display());
        let out = run(&pg_ctl, &["-D", &data_s, "-l", log.to_str().expect("utf-8"), "-o", &opts, "-w", "start"])
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        // Stopped when dropped, from here on.
        let pg = Postgres { dir, port };
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        wait_port(port, "PostgreSQL", &log)?;
        Ok(pg)
    }

    /// Transactions committed so far, in all databases (`pg_stat_database`).
    pub fn commits(&self) -> Result<u64, String> {
        let out = Command::new(pg_bin("psql")?)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "ivr", "-d", "postgres", "-tAc"])
            .arg("SELECT sum(xact_commit) FROM pg_stat_database")
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("psql said {:?}: {e}", out.stdout))
    }

    /// The server's processes now: the postmaster and its children (one
    /// backend per connection, and the background workers).
    pub fn pids(&self) -> Vec<u32> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let Some(main) =
            std::fs::read_to_string(pid_file).ok().and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let parent = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(main) {
                pids.push(pid);
            }
        }
        pids
    }

    /// `postgres://ivr@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://ivr@127.0.0.1:{}/postgres", self.port)
    }

    /// A new empty database on this server; its URL.
    pub fn database(&self, name: &str) -> String {
        let psql = pg_bin("psql").unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "ivr", "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://ivr@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin("pg_ctl").unwrap_or_default());
            c
        } else {
            Command::new(pg_bin("pg_ctl").unwrap_or_default())
        };
        let _ = c.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A NATS server of its own.
pub struct Nats {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Nats {
    /// The server's process id (for its CPU time in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Nats {
        Nats::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<Nats, String> {
        Nats::try_start_with(None)
    }

    /// [`Nats::try_start`] with the Go runtime's threads capped at
    /// `threads` (`GOMAXPROCS`; `None`: one a core, Go's default).
    pub fn try_start_with(threads: Option<u16>) -> Result<Nats, String> {
        let dir = temp_dir("nats");
        let port = free_port();
        let log = dir.join("nats.log");
        // Debian puts it in /usr/sbin, which not every PATH has.
        let exe = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut cmd = Command::new(exe);
        if let Some(n) = threads {
            cmd.env("GOMAXPROCS", n.to_string());
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-l"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("nats-server cannot start ({e}): `apt-get install nats-server` (scripts/test.sh does)")
            })?;
        let n = Nats { child, dir, port };
        wait_port(port, "nats-server", &log)?;
        Ok(n)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

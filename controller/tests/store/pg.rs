//! A throwaway PostgreSQL cluster for the store tests (docs/DEVELOP.md, "Suites that
//! need PostgreSQL"): a temp dir, `initdb`/`pg_ctl` as the `postgres` user (initdb refuses
//! root), Unix socket only (`listen_addresses=''`), fsync off.
//!
//! One cluster per test binary, one fresh database per test. The cluster
//! lives in a `static`, which Rust never drops, so teardown is a watchdog
//! shell started before `initdb`: it blocks reading a pipe whose write end
//! only this process holds, and when the process ends however it ends (pass,
//! panic, abort, kill), the pipe closes and the watchdog stops the cluster
//! and removes the dir. Dropping a `PgCluster` triggers the same teardown.
//! A machine without PostgreSQL fails these tests; they never skip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use knockgate_controller::store::Store;
use sqlx::Connection;

const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: u16 = 55440;

pub struct PgCluster {
    dir: PathBuf,
    watchdog: Mutex<Option<Child>>,
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.watchdog.lock().map(|mut w| w.take()).unwrap_or(None) {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// The argv prefix running `bin` as `postgres` when we are root (initdb
/// refuses root), else as ourselves.
fn pg_argv(bin: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = if is_root() {
        ["runuser", "-u", "postgres", "--"]
            .map(OsString::from)
            .into()
    } else {
        Vec::new()
    };
    argv.push(bin.into());
    argv
}

fn pg_command(bin: &Path) -> Command {
    let argv = pg_argv(bin);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

fn run(mut cmd: Command, what: &str, log: &Path) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let server_log = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!(
        "{what} failed ({}):\n{}{}\n{server_log}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn start() -> Result<PgCluster, String> {
    let bin =
        PathBuf::from(std::env::var("KNOCKGATE_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.into()));
    let (initdb, pg_ctl) = (bin.join("initdb"), bin.join("pg_ctl"));
    if !initdb.exists() || !pg_ctl.exists() {
        return Err(format!(
            "PostgreSQL binaries not found in {} (install postgresql-15 or set KNOCKGATE_PG_BIN); \
             the PostgreSQL store tests cannot run",
            bin.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("knockgate-pg.")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?
        .keep();
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' INT TERM HUP; read _; "$@" -D "$D/data" -m immediate -w stop; rm -rf "$D""#)
        .arg("watchdog")
        .args(pg_argv(&pg_ctl))
        .env("D", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))?;
    let cluster = PgCluster {
        dir: dir.clone(),
        watchdog: Mutex::new(Some(watchdog)),
    };

    if is_root() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:").arg(&dir);
        run(chown, "chown postgres: <tempdir>", Path::new("/dev/null"))?;
    }
    let log = dir.join("log");
    let mut init = pg_command(&initdb);
    init.arg("-D").arg(dir.join("data"));
    init.args([
        "-U",
        "app",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-locale",
        "-N",
    ]);
    run(init, "initdb", &log)?;
    let mut start = pg_command(&pg_ctl);
    start
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(&log)
        .arg("-w")
        .arg("-o")
        .arg(format!(
            "-c listen_addresses='' -k {} -p {PORT} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=300",
            dir.display()
        ));
    start.arg("start");
    run(start, "pg_ctl start", &log)?;
    Ok(cluster)
}

fn url(cluster: &PgCluster, db: &str) -> String {
    format!(
        "postgres://app@localhost/{db}?host={}&port={PORT}",
        cluster.dir.display()
    )
}

/// A store on a new, empty database of the shared cluster. Panics with the
/// reason when PostgreSQL cannot be started.
#[allow(dead_code)] // not every test binary including this file uses both
pub async fn fresh_store() -> Store {
    Store::open(&fresh_database().await).await.unwrap()
}

/// The URL of a new, empty database of the shared cluster (for tests that
/// open it more than once, like replicas).
pub async fn fresh_database() -> String {
    let cluster = match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("PostgreSQL test cluster unavailable: {e}"),
    };
    let db = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let mut admin = sqlx::PgConnection::connect(&url(cluster, "postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    url(cluster, &db)
}

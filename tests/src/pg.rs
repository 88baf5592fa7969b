//! A throwaway PostgreSQL cluster (docs/DEVELOP.md, "Suites that need PostgreSQL"): a
//! temp dir, `initdb`/`pg_ctl` run as the `postgres` user (initdb refuses root), Unix
//! socket only, fsync off. Stopped and removed
//! on drop. A machine without PostgreSQL fails the test; it never skips.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Postgres {
    dir: PathBuf,
    port: u16,
}

fn pg(bin: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{bin}"));
    c
}

fn ok(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (is postgresql-15 installed?)"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Start a cluster with one database, `knockgate`.
    pub fn start() -> Postgres {
        crate::require_root();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kgt-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        ok(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(&dir);
                c
            },
            "chown",
        );
        let pg_guard = Postgres {
            dir: dir.clone(),
            port: 55500 + (n as u16 % 400),
        };
        let data = dir.join("data");
        let mut init = pg("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "app",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ]);
        ok(init, "initdb");
        let mut start = pg("pg_ctl");
        let opts = format!(
            "-c listen_addresses='' -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            pg_guard.port,
            dir.display()
        );
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-o", &opts, "start"]);
        ok(start, "pg_ctl start");
        let mut create = Command::new("psql");
        create.args(["-h"]).arg(&dir).args([
            "-p",
            &pg_guard.port.to_string(),
            "-U",
            "app",
            "-d",
            "postgres",
            "-c",
            "create database knockgate",
        ]);
        ok(create, "create database");
        pg_guard
    }

    /// The sqlx URL of the `knockgate` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://app@localhost/knockgate?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut stop = pg("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The walsender stream against a real PostgreSQL 15 that this test starts itself (initdb in a
//! temporary directory, wal_level=logical, a free port on 127.0.0.1, run as the `postgres` OS
//! user when the test runs as root; stopped and removed afterwards). Skips with a message when
//! /usr/lib/postgresql/15/bin is absent.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test assertions on recorded data"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use realtide_replication::lsn::Lsn;
use realtide_replication::pgoutput::{ColumnValue, LogicalMessage};
use realtide_replication::stream::{
    ReplicationConfig, ReplicationStream, StreamError, WalMessage, connect,
};

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

struct Cluster {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// `None` (after saying why) when PostgreSQL 15 is not installed.
    fn start(tag: &str) -> Option<Cluster> {
        if !Path::new(PGBIN).join("postgres").exists() {
            eprintln!("SKIP: PostgreSQL 15 not found in {PGBIN}; stream tests not run");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "realtide-stream-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(&dir));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster {
            dir,
            port,
            as_postgres,
        };
        let data = c.dir.join("data");
        run(c.pg_cmd("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host all trustuser 127.0.0.1/32 trust\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all pwuser 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off",
            c.port,
            c.dir.display()
        );
        run(c
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(c.dir.join("log"))
            .args(["-w", "-o", &opts, "start"]));
        Some(c)
    }

    fn pg_cmd(&self, bin: &str) -> Command {
        let path = Path::new(PGBIN).join(bin);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn psql(&self, sql: &str) -> String {
        run(Command::new(Path::new(PGBIN).join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]))
        .trim()
        .to_owned()
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg_cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connect, retrying while the previous walsender of the slot is still exiting (55006).
async fn connect_retry(cfg: &ReplicationConfig) -> ReplicationStream {
    let mut tries = 0;
    loop {
        match connect(cfg).await {
            Ok(s) => return s,
            Err(e) if e.sqlstate() == Some("55006") && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// Read until `commits` transactions have been received; keepalives are skipped.
async fn read_transactions(s: &mut ReplicationStream, commits: usize) -> Vec<LogicalMessage> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < commits {
        let msg = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("timed out waiting for changes")
            .expect("stream error")
            .expect("stream ended");
        if let WalMessage::Data { message, .. } = msg {
            if matches!(message, LogicalMessage::Commit(_)) {
                seen += 1;
            }
            out.push(message);
        }
    }
    out
}

fn tags(msgs: &[LogicalMessage]) -> String {
    msgs.iter().map(|m| char::from(m.tag())).collect()
}

fn inserted_ids(msgs: &[LogicalMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            LogicalMessage::Insert(i) => i
                .new
                .first()
                .and_then(ColumnValue::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn commit_ends(msgs: &[LogicalMessage]) -> Vec<Lsn> {
    msgs.iter()
        .filter_map(|m| match m {
            LogicalMessage::Commit(c) => Some(c.end_lsn),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn stream_confirm_and_resume() {
    let Some(pg) = Cluster::start("resume") else {
        return;
    };
    pg.psql(
        "CREATE ROLE repl LOGIN REPLICATION PASSWORD 'se''cret:@/';
         CREATE TABLE items (id int4 PRIMARY KEY, name text);
         CREATE PUBLICATION pub FOR TABLE items;",
    );
    let cfg = ReplicationConfig {
        conn: format!(
            "postgres://repl:se'cret%3A%40%2F@127.0.0.1:{}/postgres",
            pg.port
        ),
        slot: "rt_resume".into(),
        publications: vec!["pub".into()],
        tls: None,
    };

    // first connect creates a persistent slot (SCRAM-SHA-256 authentication)
    let mut s = connect_retry(&cfg).await;
    assert_eq!(
        pg.psql("SELECT plugin || ' ' || slot_type || ' ' || temporary FROM pg_replication_slots WHERE slot_name = 'rt_resume'"),
        "pgoutput logical false"
    );

    pg.psql("INSERT INTO items VALUES (1, 'one')");
    pg.psql("INSERT INTO items VALUES (2, 'two')");
    let msgs = read_transactions(&mut s, 2).await;
    assert_eq!(tags(&msgs), "BRICBIC");
    let LogicalMessage::Relation(rel) = &msgs[1] else {
        panic!()
    };
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "items")
    );
    let names: Vec<_> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key()))
        .collect();
    assert_eq!(names, vec![("id", true), ("name", false)]);
    let LogicalMessage::Insert(ins) = &msgs[2] else {
        panic!()
    };
    assert_eq!(ins.new[1].as_str(), Some("one"));
    assert_eq!(inserted_ids(&msgs), vec!["1", "2"]);
    let ends = commit_ends(&msgs);

    // confirm only the first transaction, then drop the connection
    s.confirm(ends[0]).await.unwrap();
    assert_eq!(s.confirmed(), ends[0]);
    s.keepalive_reply().await.unwrap();
    s.close().await.unwrap();

    pg.psql("INSERT INTO items VALUES (3, 'three')");

    // the unconfirmed transaction and the new one come again, the confirmed one does not
    let mut s = connect_retry(&cfg).await;
    assert_eq!(s.confirmed(), ends[0]);
    let msgs = read_transactions(&mut s, 2).await;
    assert_eq!(tags(&msgs), "BRICBIC");
    assert_eq!(inserted_ids(&msgs), vec!["2", "3"]);
    let ends2 = commit_ends(&msgs);
    assert_eq!(ends2[0], ends[1]);
    s.confirm(ends2[1]).await.unwrap();
    // a lower position never moves the slot back
    s.confirm(ends[0]).await.unwrap();
    assert_eq!(s.confirmed(), ends2[1]);
    drop(s); // dropping without close() also ends the session

    let mut s = connect_retry(&cfg).await;
    pg.psql("BEGIN; INSERT INTO items VALUES (4, 'four'); UPDATE items SET name = 'FOUR' WHERE id = 4; DELETE FROM items WHERE id = 1; COMMIT;");
    let msgs = read_transactions(&mut s, 1).await;
    assert_eq!(tags(&msgs), "BRIUDC", "{msgs:?}");
    assert_eq!(inserted_ids(&msgs), vec!["4"]);
    s.close().await.unwrap();

    let confirmed: Lsn = pg
        .psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'rt_resume'")
        .parse()
        .unwrap();
    assert_eq!(confirmed, ends2[1]);
}

#[tokio::test]
async fn auth_methods_and_slot_checks() {
    let Some(pg) = Cluster::start("auth") else {
        return;
    };
    pg.psql(
        "CREATE ROLE trustuser LOGIN REPLICATION;
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5pw';
         RESET password_encryption;
         CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'plainpw';
         CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scrampw';
         CREATE TABLE t (id int4 PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE t;",
    );
    for (user, password) in [
        ("trustuser", ""),
        ("md5user", "md5pw"),
        ("pwuser", "plainpw"),
        ("scramuser", "scrampw"),
    ] {
        let cfg = ReplicationConfig {
            conn: pg.url(user, password),
            slot: format!("slot_{user}"),
            publications: vec!["pub".into()],
            tls: None,
        };
        let s = connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        s.close().await.unwrap();
    }
    for (user, password) in [
        ("md5user", "wrong"),
        ("pwuser", "wrong"),
        ("scramuser", "wrong"),
    ] {
        let cfg = ReplicationConfig {
            conn: pg.url(user, password),
            slot: "never".into(),
            publications: vec!["pub".into()],
            tls: None,
        };
        let Err(err) = connect(&cfg).await else {
            panic!("{user}: wrong password accepted")
        };
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
    }
    // a slot of another plugin is refused
    pg.psql("SELECT pg_create_logical_replication_slot('other', 'test_decoding')");
    let cfg = ReplicationConfig {
        conn: pg.url("scramuser", "scrampw"),
        slot: "other".into(),
        publications: vec!["pub".into()],
        tls: None,
    };
    assert!(matches!(
        connect(&cfg).await,
        Err(StreamError::SlotMismatch { .. })
    ));
    // a missing publication is reported by the server
    let cfg = ReplicationConfig {
        conn: pg.url("scramuser", "scrampw"),
        slot: "slot_nopub".into(),
        publications: vec!["missing".into()],
        tls: None,
    };
    let mut s = connect_retry(&cfg).await;
    pg.psql("INSERT INTO t VALUES (1)");
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("timed out");
    assert!(
        matches!(&err, Err(StreamError::Server { message, .. }) if message.contains("missing")),
        "{err:?}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE NOT temporary"),
        "6"
    );
}

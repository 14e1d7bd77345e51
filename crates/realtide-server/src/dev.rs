//! `realtide dev`: a private PostgreSQL plus realtide, with one command.
//!
//! Finds the system's PostgreSQL binaries, creates (or reuses) a cluster in the data directory
//! with `wal_level=logical`, starts it on a free local port (as the `postgres` OS user when run
//! as root), installs Supabase-like roles, `auth.*` helpers and a demo table with an owner-only
//! policy in the publication, then serves realtide against it and prints the URL, keys and a
//! supabase-js snippet. The cluster is stopped when realtide stops (Ctrl-C).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::ServeArgs;

/// Roles and `auth.*` helpers, as in Supabase.
const SUPABASE_SQL: &str = include_str!("../sql/supabase.sql");
/// The demo table.
const DEMO_SQL: &str = include_str!("../sql/dev-demo.sql");

/// Arguments of `realtide dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where the cluster and the generated secret live.
    #[arg(long, default_value = ".realtide/dev")]
    data_dir: PathBuf,
    /// Delete the data directory first.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

/// A running cluster; stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = pg_command(&self.bin.join("pg_ctl"), self.as_postgres);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        match stop.output() {
            Ok(out) if out.status.success() => eprintln!("realtide dev: PostgreSQL stopped"),
            _ => eprintln!(
                "realtide dev: could not stop PostgreSQL in {}",
                self.data.display()
            ),
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as the `postgres` OS user when we are root
/// (PostgreSQL refuses to run as root).
fn pg_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// PATH, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let pg_ctl = dir.join("pg_ctl");
            if pg_ctl.is_file() {
                let real = std::fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
                if let Some(parent) = real.parent() {
                    return Ok(parent.to_path_buf());
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").is_file() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL binaries found (PATH, pg_config --bindir, /usr/lib/postgresql/<version>/bin)"
        ),
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(listener.local_addr()?.port())
}

fn check(mut command: Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates or reuses the cluster and starts it.
fn start_cluster(dir: &Path) -> anyhow::Result<(Cluster, u16)> {
    let bin = find_bindir()?;
    let as_postgres = running_as_root();
    let data = dir.join("pgdata");
    if as_postgres {
        check(
            {
                let mut c = Command::new("chown");
                c.arg("-R").arg("postgres").arg(dir);
                c
            },
            "chown of the data directory to postgres",
        )?;
    }
    if !data.join("PG_VERSION").is_file() {
        let mut initdb = pg_command(&bin.join("initdb"), as_postgres);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        check(initdb, "initdb")?;
    }
    let port = free_port()?;
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=logical -c timezone=UTC",
        dir.display()
    );
    let mut start = pg_command(&bin.join("pg_ctl"), as_postgres);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-w", "-t", "60", "start", "-o"])
        .arg(options);
    // Its own process group: a terminal's Ctrl-C reaches only realtide, which then stops
    // PostgreSQL itself after draining.
    std::os::unix::process::CommandExt::process_group(&mut start, 0);
    check(start, "pg_ctl start")?;
    Ok((
        Cluster {
            bin,
            data,
            as_postgres,
        },
        port,
    ))
}

/// The JWT secret: the one configured, else one generated once and kept in the data directory.
fn dev_secret(dir: &Path, configured: Option<String>) -> anyhow::Result<String> {
    if let Some(secret) = configured.filter(|s| !s.is_empty()) {
        return Ok(secret);
    }
    let path = dir.join("jwt_secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret.trim().to_owned());
    }
    let bytes: [u8; 24] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &secret).context("cannot store the generated JWT secret")?;
    Ok(secret)
}

fn key(role: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({ "role": role, "iat": now, "exp": now + 10 * 365 * 24 * 3600 });
    realtide_auth::sign_hs256(&claims, secret)
}

/// What `realtide dev` prints once it serves.
fn banner(url: &str, db_url: &str, anon: &str, service: &str, dir: &Path) -> String {
    format!(
        "
realtide dev is running
  URL:          {url}
  database:     {db_url}
  anon key:     {anon}
  service key:  {service}
  data:         {dir}

supabase-js (Node 20: npm install @supabase/supabase-js ws):

const {{ createClient }} = require('@supabase/supabase-js')
const supabase = createClient('{url}', '{anon}', {{ realtime: {{ transport: require('ws') }} }})
const room = supabase.channel('room1', {{ config: {{ broadcast: {{ self: true }} }} }})
room
  .on('broadcast', {{ event: 'hello' }}, (m) => console.log('got', m.payload))
  .subscribe((status) => {{
    if (status === 'SUBSCRIBED') room.send({{ type: 'broadcast', event: 'hello', payload: {{ at: Date.now() }} }})
  }})

Demo table public.todos: owner-only row level security, in the supabase_realtime publication.
Ctrl-C stops realtide and PostgreSQL.
",
        dir = dir.display()
    )
}

/// Runs `realtide dev` to completion.
pub fn run(args: DevArgs) -> ExitCode {
    match dev(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("realtide dev: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dev(args: DevArgs) -> anyhow::Result<()> {
    let DevArgs {
        data_dir,
        fresh,
        mut serve,
    } = args;
    if fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("cannot remove {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let dir = std::fs::canonicalize(&data_dir)?;
    let secret = dev_secret(
        &dir,
        serve.jwt_secret.take().or(serve.api_jwt_secret.take()),
    )?;
    let (cluster, pg_port) = start_cluster(&dir)?;
    let db_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    serve.jwt_secret = Some(secret.clone());
    serve.db_url = Some(db_url.clone());
    let config = serve.into_config().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::init_logs(config.json_logs);
    crate::raise_open_files();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let client = crate::database::connect(&db_url, None).await?;
        client
            .batch_execute(SUPABASE_SQL)
            .await
            .context("installing roles and auth helpers")?;
        client
            .batch_execute(DEMO_SQL)
            .await
            .context("installing the demo table")?;
        let anon = key("anon", &secret);
        let service = key("service_role", &secret);
        let (listener, local) = crate::bind(&config).await?;
        let url = format!("http://127.0.0.1:{}", local.port());
        println!("{}", banner(&url, &db_url, &anon, &service, &dir));
        crate::serve_on(config, listener, local).await
    });
    drop(cluster);
    result
}

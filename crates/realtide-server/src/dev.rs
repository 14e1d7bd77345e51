//! `realtide dev`: a private PostgreSQL plus realtide, with one command.
//!
//! Finds the system's PostgreSQL binaries, creates (or reuses) a cluster in the data directory
//! with `wal_level=logical`, starts it on a free local port (as the `postgres` OS user when run
//! as root), installs Supabase-like roles, `auth.*` helpers and a demo table with an owner-only
//! policy in the publication, then serves realtide against it and prints the URL, keys, a user
//! token, the psql command and supabase-js snippets. The cluster is stopped when realtide stops
//! (Ctrl-C). The database port is kept across starts (`pg_port` in the data directory) while it
//! is free; realtide listens on 127.0.0.1 unless `--host`/`HOST` says otherwise; a second
//! `realtide dev` on the same data directory is refused with the PID holding it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::ServeArgs;

/// Roles and `auth.*` helpers, as in Supabase.
const SUPABASE_SQL: &str = include_str!("../sql/supabase.sql");
/// The demo table.
const DEMO_SQL: &str = include_str!("../sql/dev-demo.sql");
/// The user the banner's user token is for.
pub const DEMO_USER: &str = "11111111-1111-4111-8111-111111111111";

/// Arguments of `realtide dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where the cluster and the generated secret live.
    #[arg(long, default_value = crate::config::DEV_DATA_DIR)]
    data_dir: PathBuf,
    /// Delete the data directory first.
    #[arg(long)]
    fresh: bool,
    /// Serve this many demo tenants (`tenant1` ... `tenantN`, one database each, at
    /// `/t/tenant<k>`) instead of one project; at most 100.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    tenants: u32,
    #[command(flatten)]
    serve: ServeArgs,
}

/// A running cluster; stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

/// `pg_ctl stop -m <mode>` for the cluster in `data`.
fn pg_ctl_stop(bin: &Path, data: &Path, as_postgres: bool, mode: &str) -> Command {
    let mut stop = pg_command(&bin.join("pg_ctl"), as_postgres);
    stop.arg("-D").arg(data).args(["-m", mode, "-w", "stop"]);
    stop
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match pg_ctl_stop(&self.bin, &self.data, self.as_postgres, "fast").output() {
            Ok(out) if out.status.success() => {
                crate::logs::complain("realtide dev: PostgreSQL stopped");
            }
            _ => crate::logs::complain(&format!(
                "realtide dev: could not stop PostgreSQL in {}",
                self.data.display()
            )),
        }
    }
}

impl Cluster {
    /// A way to stop the cluster from the signal thread, when the process ends without
    /// finishing its drain.
    fn stopper(&self) -> crate::shutdown::ForcedExit {
        let (bin, data, as_postgres) = (self.bin.clone(), self.data.clone(), self.as_postgres);
        Box::new(move || {
            let mut stop = pg_command(&bin.join("pg_ctl"), as_postgres);
            stop.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        })
    }
}

/// Whether a process with this PID exists (Linux `/proc`; elsewhere assumed alive).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Claims the data directory for this process: refuses when another live `realtide dev` holds
/// it (naming its PID and log), and stops a PostgreSQL left running by one that was killed.
fn claim(dir: &Path) -> anyhow::Result<()> {
    let owner = dir.join("realtide.pid");
    if let Some(pid) = read_pid(&owner)
        && pid != std::process::id()
        && alive(pid)
    {
        bail!(
            "another `realtide dev` (PID {pid}) is using {}; stop it (kill {pid}) or pass --data-dir (its PostgreSQL log: {})",
            dir.display(),
            dir.join("postgres.log").display()
        );
    }
    std::fs::write(&owner, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", owner.display()))?;
    Ok(())
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

/// The port of the last start when it is free (a saved psql URL keeps working), else a free
/// one; remembered in `pg_port`.
fn dev_port(dir: &Path) -> anyhow::Result<u16> {
    let file = dir.join("pg_port");
    let last = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|port| *port != 0 && TcpListener::bind(("127.0.0.1", *port)).is_ok());
    let port = match last {
        Some(port) => port,
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").context("no free local port")?;
            listener.local_addr()?.port()
        }
    };
    std::fs::write(&file, format!("{port}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(port)
}

fn eprintln_dev(text: &str) {
    crate::logs::complain(&format!("realtide dev: {text}"));
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
    let postmaster = data.join("postmaster.pid");
    if let Some(pid) = read_pid(&postmaster)
        && alive(pid)
    {
        // Its realtide dev is gone (claim() checked): a kill -9 left PostgreSQL running.
        eprintln_dev(&format!(
            "stopping PostgreSQL (PID {pid}) left running by an earlier realtide dev"
        ));
        check(
            pg_ctl_stop(&bin, &data, as_postgres, "fast"),
            "pg_ctl stop of the earlier PostgreSQL",
        )?;
    }
    let port = dev_port(dir)?;
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

/// What the banner shows.
struct Banner<'a> {
    url: &'a str,
    db_url: &'a str,
    anon: &'a str,
    service: &'a str,
    user: &'a str,
    dir: &'a Path,
    /// `--data-dir` when not the default, for the printed commands.
    data_dir_flag: String,
}

/// What `realtide dev` prints once it serves.
fn banner(b: &Banner<'_>) -> String {
    let Banner {
        url,
        db_url,
        anon,
        service,
        user,
        ..
    } = b;
    let dir = b.dir.display();
    let flag = &b.data_dir_flag;
    format!(
        "
realtide dev is running
  URL:          {url}
  database:     {db_url}
  psql:         psql {db_url}
  anon key:     {anon}
  service key:  {service}
  user token:   {user}
                (role authenticated, sub {DEMO_USER}, valid 30 days;
                 more: realtide token{flag} --role authenticated --sub <uuid> --exp 1h)
  data:         {dir}

supabase-js 2.119.1 on Node 20 or newer (npm install @supabase/supabase-js@2.119.1 ws):

const {{ createClient }} = require('@supabase/supabase-js')
const supabase = createClient('{url}', '{anon}', {{ realtime: {{ transport: require('ws') }} }})
const room = supabase.channel('room1', {{ config: {{ broadcast: {{ self: true }} }} }})
room
  .on('broadcast', {{ event: 'hello' }}, (m) => console.log('got', m.payload))
  .subscribe((status) => {{
    if (status === 'SUBSCRIBED') room.send({{ type: 'broadcast', event: 'hello', payload: {{ at: Date.now() }} }})
  }})

Demo table public.todos: each user reads only their own rows (row level security), and it is in
the supabase_realtime publication. The anon key may not read it (its changes would arrive as
`Error 401: Unauthorized`): subscribe with the user token.

const user = createClient('{url}', '{anon}', {{
  realtime: {{ transport: require('ws') }},
  accessToken: async () => '{user}',
}})
// The first join must carry the user token: let the client resolve it first.
user.realtime.setAuth().then(() =>
  user.channel('todos')
    .on('postgres_changes', {{ event: '*', schema: 'public', table: 'todos' }}, (change) => console.log(change))
    .subscribe())

psql {db_url} -c \"insert into public.todos(owner, title) values ('{DEMO_USER}', 'hello')\"

Ctrl-C stops realtide and PostgreSQL.
"
    )
}

/// Runs `realtide dev` to completion.
pub fn run(args: DevArgs, host_given: bool) -> ExitCode {
    match dev(args, host_given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln_dev(&format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

fn dev(args: DevArgs, host_given: bool) -> anyhow::Result<()> {
    let DevArgs {
        data_dir,
        fresh,
        tenants,
        mut serve,
    } = args;
    if fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("cannot remove {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let dir = std::fs::canonicalize(&data_dir)?;
    claim(&dir)?;
    let secret = dev_secret(
        &dir,
        serve.jwt_secret.take().or(serve.api_jwt_secret.take()),
    )?;
    let (cluster, pg_port) = start_cluster(&dir)?;
    let db_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    serve.jwt_secret = Some(secret.clone());
    serve.db_url = Some(db_url.clone());
    if !host_given {
        // What the banner prints, and nothing more reachable than that.
        serve.host = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if tenants > 0 {
        let demo = runtime.block_on(demo_tenants(&dir, pg_port, tenants))?;
        serve.db_url = None;
        serve.tenants_file = Some(demo.file);
        // The tenants' journals belong with their databases, in the data directory.
        if serve.changes_dir == Path::new(".realtide/changes") {
            serve.changes_dir = dir.join("changes");
        }
        let config = serve.into_config().map_err(|e| anyhow::anyhow!("{e}"))?;
        let logs = crate::logs::init(config.json_logs);
        crate::raise_open_files();
        let result = runtime.block_on(async {
            let listener = crate::bind(&config).await?;
            let local = listener.local_addr()?;
            let base = format!("http://127.0.0.1:{}", local.port());
            let mut text = format!("\nrealtide dev is running {tenants} tenants\n");
            for tenant in &demo.tenants {
                text.push_str(&format!(
                    "\n  {name}\n    URL:         {base}/t/{name}\n    database:    postgres://postgres@127.0.0.1:{pg_port}/{name}\n    anon key:    {anon}\n    user token:  {user}\n",
                    name = tenant.name,
                    anon = tenant.anon,
                    user = tenant.user,
                ));
            }
            text.push_str(&format!(
                "\nEach tenant has its own secret, database (with the demo table public.todos), slot and\ntopics; the tenant is the URL's /t/<name> (or the first label of the Host header).\nTenants: {}\nCtrl-C stops realtide and PostgreSQL.\n",
                dir.join("tenants.toml").display()
            ));
            crate::logs::say(&text);
            crate::run(config, listener, dev_process(&logs, &cluster)).await
        });
        return wind_down(runtime, &logs, cluster, &dir, result);
    }
    let config = serve.into_config().map_err(|e| anyhow::anyhow!("{e}"))?;
    let logs = crate::logs::init(config.json_logs);
    crate::raise_open_files();
    let result = runtime.block_on(async {
        let client = crate::db::pool::connect(&db_url, None).await?;
        client
            .batch_execute(SUPABASE_SQL)
            .await
            .context("installing roles and auth helpers")?;
        client
            .batch_execute(DEMO_SQL)
            .await
            .context("installing the demo table")?;
        const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        let anon = crate::token::sign(&secret, "anon", None, TEN_YEARS);
        let service = crate::token::sign(&secret, "service_role", None, TEN_YEARS);
        let user = crate::token::sign(
            &secret,
            "authenticated",
            Some(DEMO_USER),
            Duration::from_secs(30 * 24 * 3600),
        );
        let listener = crate::bind(&config).await?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let url = format!("http://{host}:{}", local.port());
        let data_dir_flag = if data_dir == Path::new(crate::config::DEV_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        };
        crate::logs::say(&banner(&Banner {
            url: &url,
            db_url: &db_url,
            anon: &anon,
            service: &service,
            user: &user,
            dir: &dir,
            data_dir_flag,
        }));
        crate::run(config, listener, dev_process(&logs, &cluster)).await
    });
    wind_down(runtime, &logs, cluster, &dir, result)
}

/// What the server needs from `realtide dev`: its log output, and PostgreSQL stopped on a
/// forced exit.
fn dev_process(logs: &crate::logs::LogOutput, cluster: &Cluster) -> crate::Process {
    crate::Process {
        logs: logs.clone(),
        forced_exit: Some(cluster.stopper()),
        stop: None,
    }
}

/// After the server stopped: the runtime, the log output, PostgreSQL and the PID file.
fn wind_down(
    runtime: tokio::runtime::Runtime,
    logs: &crate::logs::LogOutput,
    cluster: Cluster,
    dir: &Path,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    runtime.shutdown_background();
    logs.flush(Duration::from_millis(500));
    drop(cluster);
    let _ = std::fs::remove_file(dir.join("realtide.pid"));
    result
}

/// One demo tenant's name and keys.
struct DemoTenant {
    name: String,
    anon: String,
    user: String,
}

/// The demo tenants and their file.
struct DemoTenants {
    file: PathBuf,
    tenants: Vec<DemoTenant>,
}

/// Creates `tenant1` ... `tenant<count>`: a database each with the roles and the demo table,
/// a secret each (kept in the data directory), and the tenants file naming them.
async fn demo_tenants(dir: &Path, pg_port: u16, count: u32) -> anyhow::Result<DemoTenants> {
    const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    let admin_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
    let admin = crate::db::pool::connect(&admin_url, None).await?;
    let mut file = String::new();
    let mut tenants = Vec::new();
    for k in 1..=count {
        let name = format!("tenant{k}");
        let exists = admin
            .query_opt("select 1 from pg_database where datname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("create database {name}"))
                .await
                .with_context(|| format!("creating the database {name}"))?;
        }
        let url = format!("postgres://postgres@127.0.0.1:{pg_port}/{name}");
        let client = crate::db::pool::connect(&url, None).await?;
        client
            .batch_execute(SUPABASE_SQL)
            .await
            .with_context(|| format!("installing roles and auth helpers in {name}"))?;
        client
            .batch_execute(DEMO_SQL)
            .await
            .with_context(|| format!("installing the demo table in {name}"))?;
        let secret_dir = dir.join("tenants").join(&name);
        std::fs::create_dir_all(&secret_dir)?;
        let secret = dev_secret(&secret_dir, None)?;
        file.push_str(&format!(
            "[[tenant]]\nexternal_id = \"{name}\"\njwt_secret = \"{secret}\"\ndb_url = \"{url}\"\npublication = \"supabase_realtime\"\n\n"
        ));
        tenants.push(DemoTenant {
            anon: crate::token::sign(&secret, "anon", None, TEN_YEARS),
            user: crate::token::sign(
                &secret,
                "authenticated",
                Some(DEMO_USER),
                Duration::from_secs(30 * 24 * 3600),
            ),
            name,
        });
    }
    let path = dir.join("tenants.toml");
    std::fs::write(&path, file).context("cannot write the tenants file")?;
    Ok(DemoTenants {
        file: path,
        tenants,
    })
}

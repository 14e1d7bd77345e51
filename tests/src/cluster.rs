//! Cluster mode: N realtide nodes sharing one PostgreSQL (one slot, one publication, one JWT
//! secret) and one NATS with JetStream, each with its own port, name and change journal.
//!
//! [`ClusterEnv::start`] starts them and waits until the cluster has formed: every node's
//! `/api/health` lists all node names and the same slot holder. Nodes are killed (SIGKILL or
//! SIGTERM) through [`Node::server`]; [`ClusterEnv::wait_formed`] then waits for the survivors
//! to agree again. Every wait is bounded.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::nats::Nats;
use crate::{Client, Endpoint, PgCluster, Server, TEST_PUBLICATION, TEST_SLOT, Vsn};

/// How long a cluster may take to form (every node seeing every other one and a slot holder).
pub const FORM_WAIT: Duration = Duration::from_secs(20);

/// One node of a test cluster.
#[derive(Debug)]
pub struct Node {
    /// `CLUSTER_NODE_NAME` (`node-1`, `node-2`, ...).
    pub name: String,
    /// The process.
    pub server: Server,
    /// Its own `CHANGES_DIR`.
    pub changes_dir: PathBuf,
}

impl std::ops::Deref for Node {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.server
    }
}

/// What one node's `/api/health` says about the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterHealth {
    /// `cluster.node`.
    pub node: String,
    /// `cluster.nats` (`connected` or `disconnected`).
    pub nats: String,
    /// `cluster.nodes` (sorted names of live nodes, self included).
    pub nodes: Vec<String>,
    /// `cluster.slot_holder`.
    pub slot_holder: Option<String>,
}

impl Endpoint {
    /// `GET /api/health` parsed as JSON (whatever the status: 503 bodies are JSON too).
    pub async fn health(&self) -> Result<Value> {
        let response = self.http("GET", "/api/health", &[]).await?;
        serde_json::from_str(&response.body)
            .with_context(|| format!("/api/health is not JSON: {response:?}"))
    }

    /// The `cluster` object of `/api/health`.
    pub async fn cluster_health(&self) -> Result<ClusterHealth> {
        let health = self.health().await?;
        parse_cluster_health(&health)
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> Result<String> {
        let response = self.http("GET", "/metrics", &[]).await?;
        ensure!(response.status == 200, "/metrics: {response:?}");
        Ok(response.body)
    }
}

/// The `cluster` object of an `/api/health` body.
pub fn parse_cluster_health(health: &Value) -> Result<ClusterHealth> {
    let cluster = health
        .get("cluster")
        .with_context(|| format!("no `cluster` in /api/health: {health}"))?;
    let text = |name: &str| {
        cluster
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("cluster.{name} is not a string: {health}"))
    };
    let nodes = cluster
        .get("nodes")
        .and_then(Value::as_array)
        .with_context(|| format!("cluster.nodes is not an array: {health}"))?
        .iter()
        .map(|n| {
            n.as_str()
                .map(str::to_owned)
                .with_context(|| format!("a cluster.nodes entry is not a string: {health}"))
        })
        .collect::<Result<Vec<String>>>()?;
    let slot_holder = match cluster.get("slot_holder") {
        Some(Value::String(name)) => Some(name.clone()),
        Some(Value::Null) | None => None,
        Some(other) => bail!("cluster.slot_holder is neither a string nor null: {other}"),
    };
    Ok(ClusterHealth {
        node: text("node")?,
        nats: text("nats")?,
        nodes,
        slot_holder,
    })
}

/// The value of a Prometheus sample (`name` or `name{labels}` exactly as printed), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name.trim() == series).then(|| value.trim().parse().ok())?
        })
}

/// Removes a directory tree on drop (the nodes' journals), after the nodes are gone.
#[derive(Debug)]
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster of realtide nodes with their NATS and PostgreSQL. Dropped in field order: the
/// nodes are killed first, then their journals removed, NATS stopped, and the PostgreSQL
/// cluster removed.
#[derive(Debug)]
pub struct ClusterEnv {
    /// The nodes, `node-1` first.
    pub nodes: Vec<Node>,
    journals: DirGuard,
    /// The NATS server (restartable on the same port and store).
    pub nats: Nats,
    /// A superuser connection for setup SQL and changes.
    pub db: tokio_postgres::Client,
    /// The PostgreSQL cluster.
    pub pg: PgCluster,
    /// Settings every node was started with (besides name, journal and NATS URL).
    env: Vec<(String, String)>,
}

/// The name of node `i` (0-based): `node-<i+1>`.
pub fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

impl ClusterEnv {
    /// Starts PostgreSQL, NATS and `n` nodes (with `env` on top of the cluster settings),
    /// waits until the cluster has formed and the slot streams, then runs `sql` (after the
    /// publication exists, so `sql` may add tables to it).
    pub async fn start(n: usize, env: &[(&str, &str)], sql: &str) -> Result<ClusterEnv> {
        // Fail first (and clearly) when nats-server is missing.
        crate::nats::nats_server_binary()?;
        let pg = PgCluster::start().await?;
        let nats = Nats::start().await?;
        let db = pg.connect().await?;
        let journals = std::env::temp_dir()
            .join("realtide-test-changes")
            .join(format!("cluster-{}-{}", std::process::id(), pg.port()?));
        let mut cluster = ClusterEnv {
            nodes: Vec::with_capacity(n),
            journals: DirGuard(journals),
            nats,
            db,
            pg,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for i in 0..n {
            let node = cluster.start_node(&node_name(i)).await?;
            cluster.nodes.push(node);
        }
        if let Err(error) = cluster.pg.wait_slot_active(TEST_SLOT).await {
            bail!("{error:#}\n{}", cluster.logs());
        }
        cluster.wait_formed(FORM_WAIT).await?;
        if !sql.is_empty() {
            cluster
                .db
                .batch_execute(sql)
                .await
                .with_context(|| format!("setup SQL failed: {sql}"))?;
        }
        Ok(cluster)
    }

    /// Starts one more node process named `name` (its own journal directory), without
    /// waiting for the cluster to see it.
    pub async fn start_node(&self, name: &str) -> Result<Node> {
        let changes_dir = self.journals.0.join(name);
        std::fs::create_dir_all(&changes_dir)?;
        let nats_url = self.nats.url();
        let changes = changes_dir.display().to_string();
        let mut all: Vec<(&str, &str)> = vec![
            ("DB_URL", self.pg.url.as_str()),
            ("SLOT_NAME", TEST_SLOT),
            ("PUBLICATION", TEST_PUBLICATION),
            ("CLUSTER_NATS_URL", nats_url.as_str()),
            ("CLUSTER_NODE_NAME", name),
            ("CHANGES_DIR", changes.as_str()),
        ];
        all.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let server = Server::start(&all)
            .await
            .with_context(|| format!("starting {name}"))?;
        Ok(Node {
            name: name.to_owned(),
            server,
            changes_dir,
        })
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .with_context(|| format!("no node {i} of {}", self.nodes.len()))
    }

    /// Node `i`, mutably (to kill it).
    pub fn node_mut(&mut self, i: usize) -> Result<&mut Node> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .with_context(|| format!("no node {i} of {len}"))
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node named {name}"))
    }

    /// A V2 client of node `i` whose socket token is `token`.
    pub async fn client(&self, i: usize, token: &str) -> Result<Client> {
        self.node(i)?.connect_token(Vsn::V2, token).await
    }

    /// Runs SQL statements on [`ClusterEnv::db`].
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.db
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing {sql}"))
    }

    /// Waits (up to `wait`) until every node that still runs lists exactly the running
    /// nodes, is connected to NATS, and all name the same running slot holder; returns the
    /// holder's name.
    pub async fn wait_formed(&mut self, wait: Duration) -> Result<String> {
        let mut live = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.server.try_exit_status()?.is_none() {
                live.push(i);
            }
        }
        self.wait_agree(&live, wait).await
    }

    /// Waits (up to `wait`) until the nodes `live` (indexes) each report NATS connected,
    /// exactly these nodes alive, and the same slot holder among them; returns the holder.
    pub async fn wait_agree(&self, live: &[usize], wait: Duration) -> Result<String> {
        let mut names = live
            .iter()
            .map(|&i| self.node(i).map(|n| n.name.clone()))
            .collect::<Result<Vec<String>>>()?;
        names.sort();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut seen = Vec::new();
            let mut holders = Vec::new();
            let mut agreed = true;
            for &i in live {
                let node = self.node(i)?;
                match node.cluster_health().await {
                    Ok(health) => {
                        let ok = health.nats == "connected"
                            && health.nodes == names
                            && health.node == node.name
                            && health
                                .slot_holder
                                .as_ref()
                                .is_some_and(|h| names.contains(h));
                        agreed &= ok;
                        holders.push(health.slot_holder.clone());
                        seen.push(format!("{}: {health:?}", node.name));
                    }
                    Err(error) => {
                        agreed = false;
                        seen.push(format!("{}: {error:#}", node.name));
                    }
                }
            }
            let first = holders.first().cloned().flatten();
            if agreed
                && holders.iter().all(|h| *h == first)
                && let Some(holder) = first
            {
                return Ok(holder);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the cluster did not agree on nodes {names:?} and one slot holder within \
                     {wait:?}; last health:\n{}\n{}",
                    seen.join("\n"),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the node holding the slot (as the running nodes agree, within
    /// [`FORM_WAIT`]).
    pub async fn holder(&mut self) -> Result<usize> {
        let name = self.wait_formed(FORM_WAIT).await?;
        self.index_of(&name)
    }

    /// What every running node says now: its `/api/health` `cluster` and replication fields,
    /// and its `realtide_cluster_*` series (for failure messages).
    pub async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let health = match node.health().await {
                Ok(h) => serde_json::json!({
                    "cluster": h.get("cluster"),
                    "replication": h.get("replication"),
                    "problem": h.get("problem"),
                })
                .to_string(),
                Err(error) => format!("{error:#}"),
            };
            let series = match node.metrics_text().await {
                Ok(text) => text
                    .lines()
                    .filter(|l| l.starts_with("realtide_cluster_"))
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(error) => format!("{error:#}"),
            };
            out.push_str(&format!("{}: {health}\n  {series}\n", node.name));
        }
        out
    }

    /// Every node's stderr tail and NATS's log tail, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |text: &str, lines: usize| {
            let all: Vec<&str> = text.lines().collect();
            all.get(all.len().saturating_sub(lines)..)
                .unwrap_or_default()
                .join("\n")
        };
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "--- {} (pid {:?}) stderr tail ---\n{}\n",
                node.name,
                node.server.pid(),
                tail(&node.server.stderr(), 40)
            ));
        }
        out.push_str(&format!(
            "--- nats-server ({}) log tail ---\n{}\n",
            if self.nats.alive() {
                "running"
            } else {
                "not running"
            },
            tail(&self.nats.log(), 20)
        ));
        out
    }
}

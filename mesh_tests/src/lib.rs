//! Harness for multi-node tests: real PostgreSQL clusters (of the major `MM_PGBIN` points to) on free loopback ports under
//! `target/mm_clusters/` (or `MM_CLUSTER_ROOT`, see [`cluster_root`]), a full mesh of native publications and subscriptions, pgbench load, and the
//! checks every scenario ends with (quiet mesh, equal checksums, no apply errors).
//!
//! Clusters are stopped when the [`Mesh`] is dropped, so also when a test panics. As root, servers
//! run as the `postgres` user (through `runuser`); as any other user, directly.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The PostgreSQL binaries the clusters run: `MM_PGBIN` (scripts/test.sh sets it for each major),
/// else the system PostgreSQL 15.
pub fn pgbin() -> String {
    std::env::var("MM_PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string())
}

/// The major of [`pgbin`], from `MM_PG_MAJOR` (default 15).
pub fn pg_major() -> u32 {
    std::env::var("MM_PG_MAJOR")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(15)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A command for a server-side binary, run as `postgres` when we are root.
/// Servers run without RUST_BACKTRACE: pgrx would add a backtrace to the DETAIL of errors it
/// re-raises.
fn server_command(binary: &str) -> Command {
    let path = format!("{}/{binary}", pgbin());
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    };
    c.env_remove("RUST_BACKTRACE");
    c
}

fn run(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .canonicalize()
        .unwrap()
}

/// Whether the `postgres` user can enter `dir` (always, when we are not root).
fn postgres_reaches(dir: &Path) -> bool {
    !is_root()
        || Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
}

/// Where the clusters live: `MM_CLUSTER_ROOT` (scripts/test.sh sets it, see scripts/common.sh),
/// else `target/mm_clusters/` when the `postgres` user can reach it, else a directory of its own
/// under /var/tmp (a checkout under a directory only root may enter).
fn cluster_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MM_CLUSTER_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let target = workspace_target();
    if postgres_reaches(&target) {
        return target.join("mm_clusters");
    }
    let hash = target
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let dir = PathBuf::from(format!("/var/tmp/mm_conflict-tests-{hash:016x}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("mm_clusters")
}

/// One PostgreSQL cluster.
pub struct Node {
    pub id: i16,
    pub port: u16,
    pub dir: PathBuf,
}

impl Node {
    fn start(test: &str, id: i16) -> Node {
        let root = cluster_root();
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join(format!("{test}-n{id}"));
        if dir.exists() {
            // A left-over from an interrupted run: stop it if it still runs, then start afresh.
            let mut stop = server_command("pg_ctl");
            stop.arg("-D").arg(&dir).args(["-m", "immediate", "stop"]);
            let _ = stop.stderr(Stdio::null()).stdout(Stdio::null()).status();
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run({
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(&root).arg(&dir);
                c
            });
        }
        let mut initdb = server_command("initdb");
        initdb.arg("-D").arg(&dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb);
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             max_logical_replication_workers = 16\nmax_worker_processes = 32\n\
             max_sync_workers_per_subscription = 2\nwal_retrieve_retry_interval = '1s'\n\
             synchronous_commit = off\nfsync = off\nfull_page_writes = off\nshared_buffers = 64MB\n\
             max_connections = 60\nwal_receiver_status_interval = '1s'\nshared_preload_libraries = 'mm_conflict'\nlog_min_messages = warning\nlog_error_verbosity = verbose\nlog_line_prefix = '%m [%p] %b '\n"
        );
        let conf_path = dir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let node = Node { id, port, dir };
        node.pg_ctl_start();
        node
    }

    fn pg_ctl_start(&self) {
        let mut start = server_command("pg_ctl");
        start
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(start);
    }

    pub fn stop(&self, mode: &str) {
        let mut stop = server_command("pg_ctl");
        stop.arg("-D")
            .arg(&self.dir)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }

    /// Starts the node again after [`Node::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn psql_command(&self) -> Command {
        let mut c = Command::new(format!("{}/psql", pgbin()));
        c.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string());
        c
    }

    /// Runs SQL and returns its output (unaligned, tuples only), or the error text.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command()
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("node {}: {sql}\n{e}", self.id))
    }

    /// Starts pgbench running `script` for `seconds` with `clients` clients.
    /// `pgoptions` goes to the sessions as `PGOPTIONS` (e.g. `-c mm_conflict.local_conflict=skip`).
    pub fn pgbench(
        &self,
        script: &Path,
        clients: u32,
        seconds: u32,
        pgoptions: Option<&str>,
    ) -> Child {
        self.pgbench_as("postgres", script, clients, seconds, pgoptions)
    }

    /// [`Node::pgbench`], connected as role `user`.
    pub fn pgbench_as(
        &self,
        user: &str,
        script: &Path,
        clients: u32,
        seconds: u32,
        pgoptions: Option<&str>,
    ) -> Child {
        self.pgbench_run(
            user,
            &[OsStr::new("-f"), script.as_os_str()],
            clients,
            seconds,
            pgoptions,
        )
    }

    /// pgbench's built-in script `name` (`tpcb-like`), as [`Node::pgbench`] runs a file.
    pub fn pgbench_builtin(&self, name: &str, clients: u32, seconds: u32) -> Child {
        self.pgbench_run(
            "postgres",
            &[OsStr::new("-b"), OsStr::new(name)],
            clients,
            seconds,
            None,
        )
    }

    fn pgbench_run(
        &self,
        user: &str,
        what: &[&OsStr],
        clients: u32,
        seconds: u32,
        pgoptions: Option<&str>,
    ) -> Child {
        let mut cmd = Command::new(format!("{}/pgbench", pgbin()));
        if let Some(options) = pgoptions {
            cmd.env("PGOPTIONS", options);
        }
        cmd.args(["-n", "-h", "127.0.0.1", "-U", user])
            .arg("-p")
            .arg(self.port.to_string())
            .args(what)
            // Scripts that differ only by the node they run on read it as :node.
            .arg("-D")
            .arg(format!("node={}", self.id))
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.to_string(),
                "-T",
                &seconds.to_string(),
            ])
            .arg("postgres")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench starts")
    }

    /// `pgbench -i -s scale`: pgbench's own tables and rows.
    pub fn pgbench_init(&self, scale: u32) {
        let out = Command::new(format!("{}/pgbench", pgbin()))
            .args(["-i", "-q", "-h", "127.0.0.1", "-U", "postgres", "-s"])
            .arg(scale.to_string())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("postgres")
            .output()
            .expect("pgbench -i runs");
        assert!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// Transactions per second reported by a finished pgbench.
pub fn pgbench_tps(child: Child) -> f64 {
    let out = child.wait_with_output().expect("pgbench finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_tps(&text)
}

/// Transactions per second and transactions processed by a finished pgbench.
pub fn pgbench_counts(child: Child) -> (f64, u64) {
    let out = child.wait_with_output().expect("pgbench finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let transactions = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .expect("pgbench reports its transactions");
    (parse_tps(&text), transactions)
}

/// Waits for a pgbench whose server is killed under it: its failure is expected.
pub fn pgbench_tps_until_crash(child: Child) -> f64 {
    let out = child.wait_with_output().expect("pgbench finishes");
    parse_tps(&String::from_utf8_lossy(&out.stdout))
}

fn parse_tps(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// N nodes. Dropping it stops every node.
pub struct Mesh {
    pub nodes: Vec<Node>,
    /// Built with `mm_conflict.create_mesh` (so `wait_for_sync` applies), not by hand.
    by_helpers: bool,
    /// A fault test stops nodes: their peers' workers then log lost connections.
    pub nodes_go_down: bool,
    /// Worker errors a test causes on purpose (a line containing one of these is tolerated, as a
    /// lost connection is when nodes go down).
    pub expected_errors: Vec<&'static str>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.stop("immediate");
        }
    }
}

/// Which workload script a test uses, from `mesh_tests/workloads/`.
pub fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name)
}

fn long_tier() -> bool {
    std::env::var("MM_LONG").is_ok_and(|v| v == "1")
}

/// Seconds of load per scenario: short by default, `MM_LONG=1` for the long tier.
pub fn load_seconds() -> u32 {
    if long_tier() {
        60
    } else {
        10
    }
}

/// Nodes in the scenarios that scale: 3 by default, 5 in the long tier (`MM_LONG=1`).
pub fn mesh_size() -> usize {
    if long_tier() {
        5
    } else {
        3
    }
}

impl Mesh {
    /// Starts `n` clusters with the extension created.
    pub fn start(test: &str, n: usize) -> Mesh {
        let mut mesh = Mesh {
            nodes: Vec::new(),
            by_helpers: false,
            nodes_go_down: false,
            expected_errors: Vec::new(),
        };
        for id in 1..=n as i16 {
            mesh.nodes.push(Node::start(test, id));
        }
        for node in &mesh.nodes {
            node.sql("CREATE EXTENSION mm_conflict");
        }
        mesh
    }

    /// `create_mesh`'s node list.
    fn nodes_json(nodes: &[Node]) -> String {
        let items: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    r#"{{"id": {}, "name": "n{}", "conninfo": "{}"}}"#,
                    n.id,
                    n.id,
                    n.conninfo()
                )
            })
            .collect();
        format!("[{}]", items.join(", "))
    }

    /// Creates `table_sql` on every node, then the whole mesh with one `mm_conflict.create_mesh`
    /// call on node 1 (policy: `criterion`, `method`, `preferred`).
    pub fn create_mesh(
        &mut self,
        table: &str,
        table_sql: &str,
        criterion: &str,
        method: &str,
        preferred: Option<i16>,
    ) {
        self.create_mesh_of(&[table], table_sql, criterion, method, preferred);
    }

    /// [`Mesh::create_mesh`] for several tables (`tables_sql` creates them all).
    pub fn create_mesh_of(
        &mut self,
        tables: &[&str],
        tables_sql: &str,
        criterion: &str,
        method: &str,
        preferred: Option<i16>,
    ) {
        for node in &self.nodes {
            node.sql(tables_sql);
        }
        self.create_mesh_on(tables, criterion, method, preferred);
    }

    /// [`Mesh::create_mesh`] for tables already created on every node (each node its own way).
    pub fn create_mesh_on(
        &mut self,
        tables: &[&str],
        criterion: &str,
        method: &str,
        preferred: Option<i16>,
    ) {
        self.create_mesh_repairing(tables, criterion, method, preferred, false);
    }

    /// [`Mesh::create_mesh_on`], with `create_mesh(..., repair => repair)`.
    pub fn create_mesh_repairing(
        &mut self,
        tables: &[&str],
        criterion: &str,
        method: &str,
        preferred: Option<i16>,
        repair: bool,
    ) {
        self.create_mesh_with(
            tables,
            criterion,
            method,
            preferred,
            &format!("repair => {repair}"),
        );
    }

    /// [`Mesh::create_mesh_on`], with `create_mesh(..., delta_columns => delta)` (`delta`: the
    /// JSON object, `{"table": ["column"]}`).
    pub fn create_mesh_delta(&mut self, tables: &[&str], delta: &str) {
        self.create_mesh_with(
            tables,
            "last_xacttime",
            "last",
            None,
            &format!("delta_columns => '{delta}'"),
        );
    }

    fn create_mesh_with(
        &mut self,
        tables: &[&str],
        criterion: &str,
        method: &str,
        preferred: Option<i16>,
        named_args: &str,
    ) {
        let preferred = preferred.map_or("NULL".to_string(), |p| p.to_string());
        let tables = tables
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // create_mesh reaches the nodes through dblink, which it needs on this node first.
        self.nodes[0].sql("CREATE EXTENSION IF NOT EXISTS dblink");
        self.nodes[0].sql(&format!(
            "SELECT mm_conflict.create_mesh('{}', ARRAY[{tables}]::regclass[], '{criterion}', '{method}', {preferred}, {named_args})",
            Self::nodes_json(&self.nodes)
        ));
        self.by_helpers = true;
        self.wait_subscriptions_streaming(Duration::from_secs(60));
    }

    /// Adds node `id` to a mesh built with [`Mesh::create_mesh`], following the README's "Add a
    /// node": the new node gets the extension, its id and the table; every peer subscribes to it;
    /// it subscribes to the peers, copying the existing rows from the first one only.
    pub fn join(
        &mut self,
        test: &str,
        id: i16,
        table: &str,
        table_sql: &str,
        policy: &str,
    ) -> Duration {
        let new = Node::start(test, id);
        let start = Instant::now();
        new.sql(&format!(
            "CREATE EXTENSION mm_conflict; {table_sql}; SELECT mm_conflict.node_init({id}, 'n{id}'); \
             SELECT mm_conflict.replicate_table('{table}', {policy})"
        ));
        for peer in &self.nodes {
            peer.sql(&format!(
                "SELECT mm_conflict.subscribe({id}, '{}')",
                new.conninfo()
            ));
        }
        for peer in self.nodes.iter().skip(1) {
            new.sql(&format!(
                "SELECT mm_conflict.subscribe({}, '{}')",
                peer.id,
                peer.conninfo()
            ));
        }
        new.sql(&format!(
            "SELECT mm_conflict.subscribe({}, '{}', copy_data => true)",
            self.nodes[0].id,
            self.nodes[0].conninfo()
        ));
        self.nodes.push(new);
        self.wait_subscriptions_streaming(Duration::from_secs(60));
        start.elapsed()
    }

    /// Starts node `id` with `table_sql` (the tables, empty) and adds it to the mesh with one
    /// `mm_conflict.add_node` call on the first node; returns what add_node said and how long
    /// it took.
    pub fn add_node(&mut self, test: &str, id: i16, table_sql: &str) -> (String, Duration) {
        let new = Node::start(test, id);
        new.sql(table_sql);
        let start = Instant::now();
        let said = self.nodes[0].sql(&format!(
            "SELECT string_agg(node || ': ' || step, E'\\n') FROM mm_conflict.add_node({id}, '{}', node_name => 'n{id}')",
            new.conninfo()
        ));
        let took = start.elapsed();
        self.nodes.push(new);
        self.wait_subscriptions_streaming(Duration::from_secs(60));
        (said, took)
    }

    /// On every node: `table_sql`, the trigger with `trigger_args` (`{node}` is replaced by the
    /// node's id), `ENABLE ALWAYS`, and a publication of the table and the tombstones; then N−1
    /// subscriptions per node (the article's hand-written procedure).
    pub fn setup_by_hand(&self, table: &str, table_sql: &str, trigger_args: &str) {
        self.setup_by_hand_owned_by(table, table_sql, trigger_args, None);
    }

    /// [`Mesh::setup_by_hand`], with the table owned by role `owner` (created on every node).
    pub fn setup_by_hand_owned_by(
        &self,
        table: &str,
        table_sql: &str,
        trigger_args: &str,
        owner: Option<&str>,
    ) {
        for node in &self.nodes {
            let args = trigger_args.replace("{node}", &node.id.to_string());
            let owned = owner.map_or(String::new(), |role| {
                format!("CREATE ROLE {role} LOGIN; ALTER TABLE {table} OWNER TO {role};")
            });
            node.sql(&format!(
                "{table_sql}; {owned}
                 CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION mm_resolve({args});
                 ALTER TABLE {table} ENABLE ALWAYS TRIGGER mm_resolve;
                 CREATE TRIGGER mm_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION mm_conflict.truncate_guard();
                 ALTER TABLE {table} ENABLE ALWAYS TRIGGER mm_truncate;
                 CREATE PUBLICATION pub1 FOR TABLE {table}, mm_conflict.tombstone WITH (publish = 'insert, delete, update');"
            ));
        }
        for node in &self.nodes {
            for peer in &self.nodes {
                if peer.id != node.id {
                    node.sql(&format!(
                        "CREATE SUBSCRIPTION sub{}_{} CONNECTION '{}' PUBLICATION pub1 WITH (copy_data = false)",
                        node.id,
                        peer.id,
                        peer.conninfo()
                    ));
                }
            }
        }
        self.wait_subscriptions_streaming(Duration::from_secs(60));
    }

    /// Pauses (`false`) or resumes (`true`) every subscription on every node: changes made while
    /// paused wait in the publishers' slots, so tests can force an interleaving.
    pub fn set_replication(&self, enabled: bool) {
        let action = if enabled { "ENABLE" } else { "DISABLE" };
        for node in &self.nodes {
            for sub in node.sql("SELECT subname FROM pg_subscription").lines() {
                node.sql(&format!("ALTER SUBSCRIPTION {sub} {action}"));
            }
        }
        if enabled {
            self.wait_subscriptions_streaming(Duration::from_secs(60));
        } else {
            // Wait until the apply workers have exited.
            for node in &self.nodes {
                let start = Instant::now();
                while node.sql("SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL")
                    != "0"
                {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "node {}: workers still running",
                        node.id
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Waits until every node has a running apply worker per peer.
    pub fn wait_subscriptions_streaming(&self, timeout: Duration) {
        let expected = self.nodes.len() - 1;
        let start = Instant::now();
        for node in &self.nodes {
            loop {
                let running: usize = node
                    .sql("SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL AND relid IS NULL")
                    .parse()
                    .unwrap();
                let slots: usize = node
                    .sql("SELECT count(*) FROM pg_replication_slots WHERE active")
                    .parse()
                    .unwrap();
                if running >= expected && slots >= expected {
                    break;
                }
                assert!(
                    start.elapsed() < timeout,
                    "node {}: subscriptions did not start",
                    node.id
                );
                // PostgreSQL 16.2's launcher can miss the wake-up of a subscription created
                // right after another and start its worker only after its 3-minute nap:
                // ALTER SUBSCRIPTION ... ENABLE wakes it again.
                // A node's slots wait for its peers' workers: wake every node's launcher.
                if start.elapsed() > Duration::from_secs(3) {
                    for any in &self.nodes {
                        for sub in any
                            .sql(
                                "SELECT s.subname FROM pg_subscription s WHERE s.subenabled AND NOT EXISTS
                                   (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL)",
                            )
                            .lines()
                        {
                            any.sql(&format!("ALTER SUBSCRIPTION \"{sub}\" ENABLE"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Waits until every logical slot on every node has confirmed the WAL its node had when the
    /// round began (`mm_conflict.wait_for_sync` on every node, for a mesh built by the helpers).
    fn wait_slots_caught_up(&self, deadline: Instant) -> bool {
        if self.by_helpers {
            return self.nodes.iter().all(|node| {
                let left = deadline.saturating_duration_since(Instant::now());
                node.sql(&format!(
                    "SELECT mm_conflict.wait_for_sync('{} ms')",
                    left.as_millis().max(1)
                )) == "t"
            });
        }
        let targets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.sql("SELECT pg_current_wal_insert_lsn()"))
            .collect();
        for (node, target) in self.nodes.iter().zip(&targets) {
            loop {
                let behind = node.sql(&format!(
                    "SELECT count(*) FROM pg_replication_slots
                      WHERE slot_type = 'logical' AND (confirmed_flush_lsn IS NULL OR confirmed_flush_lsn < '{target}')"
                ));
                if behind == "0" {
                    break;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        true
    }

    /// Waits until the mesh is quiet: rounds of "every slot confirms what its node had", until two
    /// rounds in a row see the same checksums, equal on all nodes (applying relayed copies writes
    /// WAL, so one round is not enough). Returns how long that took and the row count every node
    /// has, or the last checksums seen.
    pub fn wait_quiet(
        &self,
        table: &str,
        timeout: Duration,
    ) -> Result<(Duration, i64), Vec<(i64, String)>> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut previous: Option<Vec<(i64, String)>> = None;
        loop {
            let caught_up = self.wait_slots_caught_up(deadline);
            let sums = self.checksums(table);
            let all_equal = sums.iter().all(|s| s == &sums[0]);
            if caught_up && all_equal && previous.as_ref() == Some(&sums) {
                return Ok((start.elapsed(), sums[0].0));
            }
            if Instant::now() > deadline {
                return Err(sums);
            }
            previous = Some(sums);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `(row count, mm_conflict.table_checksum)` per node.
    pub fn checksums(&self, table: &str) -> Vec<(i64, String)> {
        self.nodes
            .iter()
            .map(|n| {
                let out = n.sql(&format!(
                    "SELECT count(*) || ' ' || mm_conflict.table_checksum('{table}') FROM {table}"
                ));
                let (count, sum) = out.split_once(' ').unwrap();
                (count.parse().unwrap(), sum.to_string())
            })
            .collect()
    }

    /// Fails the test on any ERROR of an apply or table-sync worker (server logs and PostgreSQL 15's
    /// subscription statistics), except deadlocks, which the worker retries: those are counted and
    /// returned.
    pub fn assert_no_apply_errors(&self) -> usize {
        // PostgreSQL counts a worker's error in its statistics just before it logs it: when the two
        // disagree, let the log catch up before judging.
        let mut attempt = 0;
        loop {
            let (report, deadlocks, unlogged) = self.apply_errors();
            assert!(report.is_empty(), "apply errors:\n{report}");
            if unlogged.is_empty() {
                return deadlocks;
            }
            attempt += 1;
            assert!(
                attempt < 10,
                "apply errors counted but never logged:\n{unlogged}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// (logged worker errors other than deadlocks, deadlocks, nodes whose error counters exceed
    /// what their log shows)
    fn apply_errors(&self) -> (String, usize, String) {
        struct NodeErrors {
            id: i16,
            counts: Vec<usize>,
            deadlocks: usize,
            lost_connections: usize,
            /// Worker restart races: (the line, counted as an apply error on this node?).
            restart_races: Vec<(String, bool)>,
            others: Vec<String>,
        }
        let per_node: Vec<NodeErrors> = self
            .nodes
            .iter()
            .map(|node| {
                let counts: Vec<usize> = node
                    .sql(
                        "SELECT coalesce(sum(apply_error_count), 0) || ' ' || coalesce(sum(sync_error_count), 0)
                           FROM pg_stat_subscription_stats",
                    )
                    .split(' ')
                    .map(|c| c.parse().unwrap())
                    .collect();
                let mut e = NodeErrors {
                    id: node.id,
                    counts,
                    deadlocks: 0,
                    lost_connections: 0,
                    restart_races: Vec::new(),
                    others: Vec::new(),
                };
                for line in node.server_log().lines() {
                    // log_line_prefix has the backend type: any ERROR not from a client session
                    // (our own psql calls, pgbench) comes from a worker or a walsender.
                    if !line.contains("ERROR:") || line.contains(" client backend ") {
                        continue;
                    }
                    if line.contains("deadlock detected") {
                        e.deadlocks += 1;
                    } else if (self.nodes_go_down && is_lost_connection(line))
                        || self.expected_errors.iter().any(|e| line.contains(e))
                    {
                        // Expected while a peer is down; what matters is the data afterwards.
                        e.lost_connections += 1;
                    } else if let Some(counted) = restart_race(line) {
                        e.restart_races.push((line.to_string(), counted));
                    } else {
                        e.others.push(line.to_string());
                    }
                }
                e
            })
            .collect();
        // PostgreSQL restarts an apply worker after its error (a deadlock, or a lost connection to
        // a peer that went down) while the exiting one may still hold its replication origin, or
        // its walsender on the publisher may still hold the slot: the new worker fails at
        // startup, before applying anything, and is started again. Tolerated only when such an
        // error happened in the mesh.
        let restarts_expected = per_node
            .iter()
            .any(|e| e.deadlocks + e.lost_connections > 0);
        let mut report = String::new();
        let mut unlogged = String::new();
        let mut deadlocks = 0;
        for e in &per_node {
            for line in &e.others {
                writeln!(report, "node {}: {line}", e.id).unwrap();
            }
            let mut tolerated_races = 0;
            for (line, counted) in &e.restart_races {
                if restarts_expected {
                    tolerated_races += usize::from(*counted);
                } else {
                    writeln!(report, "node {}: {line}", e.id).unwrap();
                }
            }
            if e.counts[0] + e.counts[1] > e.deadlocks + e.lost_connections + tolerated_races {
                writeln!(
                    unlogged,
                    "node {}: apply/sync error counts {:?}, {} deadlocks logged",
                    e.id, e.counts, e.deadlocks
                )
                .unwrap();
            }
            deadlocks += e.deadlocks;
        }
        (report, deadlocks, unlogged)
    }

    /// Waits for quiet, then asserts equal checksums and row counts and no apply errors; returns
    /// (rows, time to converge).
    pub fn assert_converged(&self, table: &str) -> Converged {
        self.assert_no_apply_errors();
        let (took, rows) = self
            .wait_quiet(table, Duration::from_secs(120))
            .unwrap_or_else(|sums| {
                panic!("nodes did not converge: (rows, checksum) per node = {sums:?}")
            });
        let apply_deadlocks = self.assert_no_apply_errors();
        if self.by_helpers {
            self.assert_no_diff(table);
        }
        let tombstones = self.nodes[0]
            .sql("SELECT count(*) FROM mm_conflict.tombstone")
            .parse()
            .unwrap();
        Converged {
            rows,
            took,
            apply_deadlocks,
            tombstones,
        }
    }
}

impl Mesh {
    /// Waits until every node has received what every other node had (the tables may differ).
    pub fn wait_synced(&self) {
        assert!(
            self.wait_slots_caught_up(Instant::now() + Duration::from_secs(120)),
            "the nodes did not catch up with each other"
        );
    }

    /// `mm_conflict.table_diff` finds nothing between any two nodes (a mesh built by the helpers,
    /// whose nodes know their peers).
    pub fn assert_no_diff(&self, table: &str) {
        for (i, node) in self.nodes.iter().enumerate() {
            for peer in &self.nodes[i + 1..] {
                let diff = node.sql(&format!(
                    "SELECT count(*) || ':' || coalesce(string_agg(key::text || ' ' || winner, ', '), '')
                       FROM mm_conflict.table_diff('{table}', {})",
                    peer.id
                ));
                assert!(
                    diff.starts_with("0:"),
                    "table_diff({table}) from node {} to node {}: {diff}",
                    node.id,
                    peer.id
                );
            }
        }
    }
}

/// A worker's (or walsender's) error of a worker restart race; `Some(true)` when the subscription
/// statistics count it as an apply error on this node.
fn restart_race(line: &str) -> Option<bool> {
    if line.contains("replication origin with ID") && line.contains("is already active for PID") {
        Some(true)
    } else if line.contains("replication slot") && line.contains("is active for PID") {
        // The worker's side ("could not start WAL streaming: ...") is counted; the walsender's
        // (on the publisher) is not.
        Some(line.contains("logical replication"))
    } else {
        None
    }
}

/// A worker's error about a peer that went away (or is not back yet): SQLSTATE class 08,
/// connection exception (`log_error_verbosity = verbose` puts the code after "ERROR:").
fn is_lost_connection(line: &str) -> bool {
    line.contains("ERROR:  08")
}

/// What a converged scenario ended with.
pub struct Converged {
    pub rows: i64,
    pub took: Duration,
    /// Deadlocks an apply worker hit and retried.
    pub apply_deadlocks: usize,
    /// Tombstones on node 1.
    pub tombstones: i64,
}

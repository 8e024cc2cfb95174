//! Multi-node scenarios on real PostgreSQL 15 clusters. Each ends with identical checksums and
//! row counts on every node and no apply or table-sync ERROR in any server log.
//!
//! Run one at a time (`--test-threads=1`): each starts its own clusters. `MM_LONG=1` runs the
//! long tier (60 s loads instead of 10 s).

use mm_conflict_mesh_tests::{
    load_seconds, mesh_size, pgbench_counts, pgbench_tps, pgbench_tps_until_crash, workload,
    Converged, Mesh, Node,
};

/// The article's table, unchanged.
const ARTICLE_TABLE: &str = "CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp,
    mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp)";
/// The same with `timestamptz` columns, for the user-column criterion.
const TZ_TABLE: &str = "CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamptz,
    mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz, mm_last_stattime timestamptz)";

/// Starts `script(node)` on each of `nodes` at once for `seconds`, with `clients` clients each,
/// without waiting for them.
fn start_load(
    nodes: &[Node],
    script: impl Fn(i16) -> String,
    clients: u32,
    seconds: u32,
    pgoptions: Option<&str>,
) -> Vec<std::process::Child> {
    nodes
        .iter()
        .map(|n| n.pgbench(&workload(&script(n.id)), clients, seconds, pgoptions))
        .collect()
}

/// Runs `script(node)` on every node at once for `seconds`, with `clients` clients each.
fn load(
    mesh: &Mesh,
    script: impl Fn(i16) -> String,
    clients: u32,
    seconds: u32,
    pgoptions: Option<&str>,
) -> Vec<f64> {
    start_load(&mesh.nodes, script, clients, seconds, pgoptions)
        .into_iter()
        .map(pgbench_tps)
        .collect()
}

/// A node's rows of `mm` as `id:info:mm_nodeid`, comma-separated in key order.
fn rows_of(node: &Node) -> String {
    node.sql("SELECT string_agg(id || ':' || info || ':' || mm_nodeid, ',' ORDER BY id) FROM mm")
}

/// The article's script a node runs: test1/2/3.sql on nodes 1/2/3 (nodes past 3 repeat them).
fn article_script(id: i16) -> String {
    format!("article_test{}.sql", (id - 1) % 3 + 1)
}

fn report(name: &str, mesh: &Mesh, tps: &[f64], c: &Converged) {
    let total: f64 = tps.iter().sum();
    eprintln!(
        "[{name}] {} nodes, load tps per node {:?} (total {total:.0}), {} rows on every node, {} tombstones on node 1, \
         quiet and identical {:.1} s after the load, {} apply-worker deadlocks retried",
        mesh.nodes.len(),
        tps.iter().map(|t| t.round()).collect::<Vec<_>>(),
        c.rows,
        c.tombstones,
        c.took.as_secs_f64(),
        c.apply_deadlocks
    );
}

/// The article's scenario: 3 nodes, its table, mm_resolve(k, last_xacttime, last, 2), its three
/// pgbench scripts at once (with their deletes really deleting), set up with its own
/// hand-written publications and subscriptions.
#[test]
fn article_scenario_by_hand() {
    let mesh = Mesh::start("article_by_hand", 3);
    mesh.setup_by_hand("mm", ARTICLE_TABLE, "{node}, last_xacttime, last, 2");
    run_article_workload("article_by_hand", &mesh);
}

/// The article's test1/2/3.sql on every node at once (nodes past 3 repeat them), then convergence.
fn run_article_workload(name: &str, mesh: &Mesh) {
    let tps = load(mesh, article_script, 4, load_seconds(), None);
    let c = mesh.assert_converged("mm");
    assert!(c.rows > 1000, "the load inserted rows");
    assert!(c.tombstones > 100, "the load really deleted");
    report(name, mesh, &tps, &c);
}

/// The same scenario with the mesh built by one `mm_conflict.create_mesh` call; 5 nodes in the
/// long tier (nodes 4 and 5 run test1/test2.sql again, so their inserts overlap).
#[test]
fn article_scenario_with_create_mesh() {
    let mut mesh = Mesh::start("article_helpers", mesh_size());
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    run_article_workload("article_create_mesh", &mesh);
}

/// Starts the article's scripts on `nodes` (2 clients each) without waiting for them.
fn start_article_load(nodes: &[Node], seconds: u32) -> Vec<std::process::Child> {
    start_load(nodes, article_script, 2, seconds, None)
}

/// A fourth node joins a 3-node mesh while the article's workload runs on the three: it copies
/// the rows from one peer (`copy_data => true`) and streams from all; after the load all four
/// nodes are identical.
#[test]
fn fourth_node_joins_a_loaded_mesh() {
    let mut mesh = Mesh::start("join", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    let seconds = load_seconds();
    let runs = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds) / 2));
    let rows_before = mesh.nodes[0].sql("SELECT count(*) FROM mm");
    let joined_in = mesh.join("join", 4, "mm", ARTICLE_TABLE, "'last_xacttime', 'last', 2");
    let tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let c = mesh.assert_converged("mm");
    assert_eq!(mesh.nodes.len(), 4);
    assert!(c.rows > 1000, "the load inserted rows");
    eprintln!(
        "[join] node 4 joined while node 1 had {rows_before} rows (join calls took {:.1} s)",
        joined_in.as_secs_f64()
    );
    report("join", &mesh, &tps, &c);
}

/// Fault: node 3 is stopped with `-m immediate` in the middle of the load on all three and
/// restarted 2 s later; the mesh resumes and converges.
#[test]
fn node_crashes_mid_load() {
    let mut mesh = Mesh::start("crash", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    let seconds = load_seconds();
    let mut runs = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds) / 3));
    mesh.nodes[2].stop("immediate");
    std::thread::sleep(std::time::Duration::from_secs(2));
    mesh.nodes[2].restart();
    // Node 3's pgbench ends with the crash.
    let crashed = runs.pop().unwrap();
    let mut tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    tps.push(pgbench_tps_until_crash(crashed));
    mesh.wait_subscriptions_streaming(std::time::Duration::from_secs(60));
    let c = mesh.assert_converged("mm");
    assert!(c.rows > 1000, "the load inserted rows");
    report("crash", &mesh, &tps, &c);
}

/// Fault: node 3 is down (fast shutdown) for 30 s while nodes 1 and 2 write, then restarted; it
/// catches up from its peers' slots and the mesh converges.
#[test]
fn node_down_for_30_seconds() {
    let mut mesh = Mesh::start("down", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    mesh.nodes[2].stop("fast");
    let runs = start_article_load(&mesh.nodes[..2], 30);
    let mut tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let rows_meanwhile = mesh.nodes[0].sql("SELECT count(*) FROM mm");
    mesh.nodes[2].restart();
    mesh.wait_subscriptions_streaming(std::time::Duration::from_secs(60));
    let c = mesh.assert_converged("mm");
    tps.push(0.0);
    assert!(c.rows > 1000, "the load inserted rows");
    eprintln!("[down] node 1 had {rows_meanwhile} rows when node 3 came back (node 3 had none)");
    report("down_30s", &mesh, &tps, &c);
}

/// All nodes (3; 5 in the long tier) INSERT the same keys at full speed: apply workers and local
/// sessions race on new keys. The insert path must never end in a duplicate-key error.
#[test]
fn same_keys_inserted_at_full_speed() {
    let mut mesh = Mesh::start("same_keys", mesh_size());
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    let tps = load(
        &mesh,
        |_| "insert_same_keys.sql".into(),
        4,
        load_seconds(),
        None,
    );
    let c = mesh.assert_converged("mm");
    assert!(c.rows > 1000);
    report("same_keys", &mesh, &tps, &c);
}

/// The overlap workload draws its keys at random from 2000: at this machine's usual rates every
/// key is drawn (over 30000 draws), but a slow run (a cold build) may miss a few. The nodes must
/// agree either way; this only checks that the load covered the key range.
fn assert_covered(rows: i64) {
    assert!(
        (1900..=2000).contains(&rows),
        "{rows} of the 2000 keys written"
    );
}

/// Every node inserts and upserts the same 2000 keys.
#[test]
fn overlapping_upserts() {
    let mut mesh = Mesh::start("overlap", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    let tps = load(&mesh, |_| "overlap.sql".into(), 4, load_seconds(), None);
    let c = mesh.assert_converged("mm");
    assert_covered(c.rows);
    report("overlap", &mesh, &tps, &c);
}

/// All nodes update the same 100 keys as fast as they can.
#[test]
fn hot_keys() {
    let mut mesh = Mesh::start("hot_keys", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes[0].sql("INSERT INTO mm(id, info, mod_time) SELECT g, 'initial', now() FROM generate_series(1, 100) g");
    mesh.assert_converged("mm");
    let tps = load(&mesh, |_| "hot_keys.sql".into(), 4, load_seconds(), None);
    let c = mesh.assert_converged("mm");
    assert_eq!(c.rows, 100);
    let updated: i64 = mesh.nodes[0]
        .sql("SELECT count(*) FROM mm WHERE info <> 'initial'")
        .parse()
        .unwrap();
    assert!(updated > 90, "the load updated the hot keys");
    report("hot_keys", &mesh, &tps, &c);
}

/// Each criterion, with the overlapping-upsert load (every upsert of an existing key is an UPDATE
/// that conflicts with the other nodes').
#[test]
fn every_criterion_converges() {
    let seconds = (load_seconds() / 2).max(5);
    // (name, table, criterion, method (the winning node for nodeid), preferred node, PGOPTIONS)
    let skip = Some("-c mm_conflict.local_conflict=skip");
    let cases: [(&str, &str, &str, &str, Option<i16>, Option<&str>); 5] = [
        (
            "last_xacttime",
            ARTICLE_TABLE,
            "last_xacttime",
            "last",
            Some(2),
            None,
        ),
        (
            "last_stattime",
            ARTICLE_TABLE,
            "last_stattime",
            "last",
            Some(3),
            None,
        ),
        ("user_column", TZ_TABLE, "mod_time", "last", Some(1), None),
        ("nodeid", ARTICLE_TABLE, "nodeid", "2", None, skip),
        (
            "first",
            ARTICLE_TABLE,
            "last_xacttime",
            "first",
            Some(2),
            skip,
        ),
    ];
    for (name, table, criterion, method, preferred, pgoptions) in cases {
        let mut mesh = Mesh::start(&format!("criterion_{name}"), 3);
        mesh.create_mesh("mm", table, criterion, method, preferred);
        let tps = load(&mesh, |_| "overlap.sql".into(), 3, seconds, pgoptions);
        let c = mesh.assert_converged("mm");
        assert_covered(c.rows);
        report(&format!("criterion {name}"), &mesh, &tps, &c);
    }
}

/// All nodes delete and re-insert the same 500 keys concurrently: versioned deletes must end with
/// the same keys present everywhere, under an automatic criterion and under a user column.
#[test]
fn delete_storm() {
    let seconds = (load_seconds() / 2).max(5);
    let cases: [(&str, &str, &str, Option<i16>, Option<&str>); 2] = [
        (
            "last_xacttime",
            ARTICLE_TABLE,
            "last_xacttime",
            Some(2),
            None,
        ),
        // A re-insert carries now() as mod_time; when that is older than the deleted row's
        // value the insert loses everywhere, so it is skipped rather than raised.
        (
            "user_column",
            TZ_TABLE,
            "mod_time",
            Some(1),
            Some("-c mm_conflict.local_conflict=skip"),
        ),
    ];
    for (name, table, criterion, preferred, pgoptions) in cases {
        let mut mesh = Mesh::start(&format!("delete_storm_{name}"), 3);
        mesh.create_mesh("mm", table, criterion, "last", preferred);
        let tps = load(&mesh, |_| "delete_storm.sql".into(), 3, seconds, pgoptions);
        let c = mesh.assert_converged("mm");
        assert!(c.tombstones > 100, "{name}: the load deleted");
        report(&format!("delete storm {name}"), &mesh, &tps, &c);
    }
}

/// The hard case of versioned deletes, forced: with replication paused, node 1 deletes a row and
/// node 2 then updates it (a newer version). Node 1 can never get node 2's row back from the
/// UPDATE; node 2 re-sends it when node 1's losing tombstone arrives, and the row survives on every
/// node with node 2's version. In the opposite order (update first, delete later) the delete wins
/// everywhere.
#[test]
fn delete_against_a_concurrent_update() {
    let mut mesh = Mesh::start("delete_vs_update", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes[0].sql(
        "INSERT INTO mm(id, info, mod_time) VALUES (1, 'original', now()), (2, 'original', now())",
    );
    mesh.assert_converged("mm");

    mesh.set_replication(false);
    mesh.nodes[0].sql("DELETE FROM mm WHERE id = 1"); // older: loses
    mesh.nodes[1].sql("UPDATE mm SET info = 'updated on node 2' WHERE id = 1");
    mesh.nodes[1].sql("UPDATE mm SET info = 'updated on node 2' WHERE id = 2");
    mesh.nodes[0].sql("DELETE FROM mm WHERE id = 2"); // newer: wins
    mesh.set_replication(true);

    let c = mesh.assert_converged("mm");
    for node in &mesh.nodes {
        assert_eq!(rows_of(node), "1:updated on node 2:2", "node {}", node.id);
    }
    assert_eq!(c.tombstones, 2);
    eprintln!(
        "[delete_vs_update] the newer update survived the older delete and the newer delete won, on all 3 nodes, quiet {:.1} s after resuming",
        c.took.as_secs_f64()
    );
}

/// Known conflicts on two nodes, each row of `mm_conflict.conflict_log` and each counter of
/// `mm_conflict.conflict_stats` checked exactly (see the README's "Observing conflicts").
#[test]
fn conflicts_are_logged_and_counted() {
    let mut mesh = Mesh::start("conflict_log", 2);
    for node in &mesh.nodes {
        node.sql("ALTER DATABASE postgres SET mm_conflict.log_conflicts = 'table'");
    }
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", None);
    let (n1, n2) = (&mesh.nodes[0], &mesh.nodes[1]);
    let stats = |node: &Node| {
        node.sql(
            "SELECT concat_ws(' ', applied, kept_local, inserts_converted, deletes_applied,
                              deletes_skipped, duplicates_dropped, conflicts)
               FROM mm_conflict.conflict_stats WHERE table_name = 'mm'::regclass",
        )
    };
    let log = |node: &Node| {
        node.sql(
            "SELECT string_agg(concat_ws(' ', decision, key->>'id', stored_node, incoming_node,
                                         coalesce(stored_row->>'info', '-'), coalesce(incoming_row->>'info', '-')),
                               '; ' ORDER BY id)
               FROM mm_conflict.conflict_log WHERE subscription IS NOT NULL",
        )
    };

    // Node 1's four rows reach node 2 (applied, no conflict) and come back to node 1 (duplicates).
    n1.sql("INSERT INTO mm(id, info) VALUES (1, 'original'), (3, 'original'), (4, 'original')");
    mesh.assert_converged("mm");
    //                  applied kept conv del_app del_skip dup conflicts
    assert_eq!(stats(n1), "0 0 0 0 0 3 0");
    assert_eq!(stats(n2), "3 0 0 0 0 0 0");
    assert_eq!(log(n1), "");
    assert_eq!(log(n2), "");
    for node in &mesh.nodes {
        node.sql("SELECT mm_conflict.reset_conflict_stats()");
    }

    // While the nodes cannot see each other, each key gets two conflicting writes, node 2's later.
    mesh.set_replication(false);
    n1.sql("UPDATE mm SET info = 'n1' WHERE id = 1");
    n1.sql("DELETE FROM mm WHERE id = 3"); // loses to node 2's later update
    n2.sql("UPDATE mm SET info = 'n2' WHERE id = 3");
    n2.sql("UPDATE mm SET info = 'n2' WHERE id = 4");
    n1.sql("DELETE FROM mm WHERE id = 4"); // beats node 2's earlier update
    n1.sql("INSERT INTO mm(id, info) VALUES (5, 'n1')");
    n2.sql("UPDATE mm SET info = 'n2' WHERE id = 1");
    n2.sql("INSERT INTO mm(id, info) VALUES (5, 'n2')");
    mesh.set_replication(true);
    mesh.assert_converged("mm");
    for node in &mesh.nodes {
        assert_eq!(rows_of(node), "1:n2:2,3:n2:2,5:n2:2", "node {}", node.id);
    }
    // Node 1 gets node 2's key 1 (applied over its own update) and key 5 (its insert overwritten);
    // node 2's updates of keys 3 and 4, deleted here, are skipped by PostgreSQL itself (no row, no
    // trigger); key 3 comes back as node 2's re-send, applied over node 1's tombstone.
    assert_eq!(
        log(n1),
        "applied 1 1 2 n1 n2; insert_converted_to_update 5 1 2 n1 n2; applied 3 1 2 - n2"
    );
    // Node 2 keeps its key 1 and key 5, keeps key 3 against node 1's older delete (re-sending it)
    // and deletes key 4 for node 1's newer delete.
    assert_eq!(
        log(n2),
        "kept_local 1 2 1 n2 n1; delete_skipped 3 2 1 n2 -; delete_applied 4 2 1 n2 -; kept_local 5 2 1 n2 n1"
    );
    assert_eq!(stats(n1), "2 0 1 0 0 0 3");
    // Node 1's three writes come back to node 2 as copies of its own versions.
    assert_eq!(stats(n2), "0 2 0 1 1 3 4");

    // Counts follow the transaction: a rolled-back savepoint takes its changes' counts with it.
    n1.sql(
        "SELECT pg_replication_origin_create('by_hand');
         SELECT pg_replication_origin_session_setup('by_hand');
         BEGIN;
         SAVEPOINT s;
         INSERT INTO mm VALUES (100, 'rolled back', now(), true, 3, now(), now());
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO mm VALUES (101, 'kept', now(), true, 3, now(), now());
         COMMIT;",
    );
    mesh.assert_converged("mm");
    // One more applied on node 1; node 2 applies the relayed row, whose copy returns to node 1.
    assert_eq!(stats(n1), "3 0 1 0 0 1 3");
    assert_eq!(stats(n2), "1 2 0 1 1 3 4");
    eprintln!("[conflict_log] 7 conflicts on 2 nodes logged and counted exactly");
}

/// An application role that is not a superuser owns the table and writes it on every node under
/// the article's workload. From PostgreSQL 16 on, apply workers write as the table's owner too:
/// what mm_conflict records on the side (tombstones, conflict log) is written with the extension's
/// rights. Built by hand, so it runs on every major.
#[test]
fn application_role_owns_the_table_by_hand() {
    let mesh = Mesh::start("app_role", 3);
    mesh.setup_by_hand_owned_by(
        "mm",
        ARTICLE_TABLE,
        "{node}, last_xacttime, last, 2",
        Some("app"),
    );
    let seconds = load_seconds();
    let runs: Vec<_> = mesh
        .nodes
        .iter()
        .map(|n| n.pgbench_as("app", &workload(&article_script(n.id)), 2, seconds, None))
        .collect();
    let tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let c = mesh.assert_converged("mm");
    assert!(c.rows > 500, "the load inserted rows");
    assert!(
        c.tombstones > 50,
        "the application role's deletes recorded tombstones"
    );
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'mm'"),
            "app"
        );
    }
    report("application role", &mesh, &tps, &c);
}

/// TRUNCATE on one node of a loaded mesh is refused (it is neither versioned nor replicated, and it
/// used to circulate for ever); the supported way, DELETE, is versioned and converges under the
/// same load. Built by hand, so it runs on every major.
#[test]
fn truncate_is_refused_and_delete_converges_by_hand() {
    let mesh = Mesh::start("truncate", 3);
    mesh.setup_by_hand("mm", ARTICLE_TABLE, "{node}, last_xacttime, last, 2");
    let seconds = load_seconds();
    let runs = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds) / 2));
    let refused = mesh.nodes[0].try_sql("TRUNCATE mm").unwrap_err();
    assert!(
        refused.contains("TRUNCATE of replicated table public.mm is refused"),
        "{refused}"
    );
    let deleted =
        mesh.nodes[0].sql("WITH d AS (DELETE FROM mm RETURNING 1) SELECT count(*) FROM d");
    let tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let c = mesh.assert_converged("mm");
    assert!(c.tombstones > 0);
    for node in &mesh.nodes {
        // Each node's table was truncated never: its relfilenode is the one it was created with.
        assert_eq!(
            node.sql("SELECT pg_relation_filenode('mm') = (SELECT oid FROM pg_class WHERE relname = 'mm')::int"),
            "t",
            "node {}",
            node.id
        );
    }
    eprintln!("[truncate] refused; DELETE of {deleted} rows under load converged");
    report("truncate", &mesh, &tps, &c);
}

/// Every node inserts new rows at full speed through a `bigserial` key and a `GENERATED ALWAYS AS
/// IDENTITY` key. replicate_table staggered each node's sequences, so no two nodes draw the same
/// key: every node ends with every row (rows = the inserts of all nodes), identical checksums, and
/// no conflict reported for those tables.
#[test]
fn serial_and_identity_keys_never_collide() {
    let mut mesh = Mesh::start("sequences", 3);
    mesh.create_mesh_of(
        &["seq_serial", "seq_identity"],
        "CREATE TABLE seq_serial(id bigserial PRIMARY KEY, v float8);
         CREATE TABLE seq_identity(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v float8);",
        "last_xacttime",
        "last",
        None,
    );
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT string_agg(node_safe::text, ',') FROM mm_conflict.sequences"),
            "true,true",
            "node {}",
            node.id
        );
    }
    let runs: Vec<_> = mesh
        .nodes
        .iter()
        .map(|n| n.pgbench(&workload("sequence_inserts.sql"), 4, load_seconds(), None))
        .collect();
    let counts: Vec<(f64, u64)> = runs.into_iter().map(pgbench_counts).collect();
    let inserted: u64 = counts.iter().map(|c| c.1).sum();
    for table in ["seq_serial", "seq_identity"] {
        let c = mesh.assert_converged(table);
        assert_eq!(
            c.rows as u64, inserted,
            "{table}: every node holds every row"
        );
    }
    for node in &mesh.nodes {
        assert_eq!(
            node.sql(
                "SELECT coalesce(sum(conflicts), 0) || ' ' || coalesce(sum(kept_local + inserts_converted), 0)
                   FROM mm_conflict.conflict_stats
                  WHERE table_name IN ('seq_serial'::regclass, 'seq_identity'::regclass)"
            ),
            "0 0",
            "node {}: no conflict on keys from sequences",
            node.id
        );
    }
    eprintln!(
        "[sequences] 3 nodes inserted {inserted} rows into each table ({:?} per node), all on every node, no conflict",
        counts.iter().map(|c| c.1).collect::<Vec<_>>()
    );
}

/// A table with large (TOASTed) values; the nodes update different columns of the same rows at
/// once: node 1 a small column, node 2 the large one, node 3 another small one. Logical
/// replication sends an UPDATE without the large values it left unchanged; mm_resolve makes a
/// local UPDATE carry them (it writes them anew), so that the node that applies a winning version
/// gets all of it. Ends identical over every column, large values included.
#[test]
fn large_values_converge() {
    let mut mesh = Mesh::start("large_values", 3);
    mesh.create_mesh(
        "big",
        // EXTERNAL: stored out of line, uncompressed, whatever the major's default compression.
        "CREATE TABLE big(id int PRIMARY KEY, a int, b int, t text);
         ALTER TABLE big ALTER COLUMN t SET STORAGE EXTERNAL",
        "last_xacttime",
        "last",
        None,
    );
    mesh.nodes[0].sql(
        "INSERT INTO big(id, a, b, t)
         SELECT g, 0, 0, (SELECT string_agg(md5(g::text || '.' || i), '') FROM generate_series(1, 200) i)
           FROM generate_series(1, 200) g",
    );
    mesh.assert_converged("big");
    let toast_bytes: i64 = mesh.nodes[1]
        .sql("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'big'::regclass")
        .parse()
        .unwrap();
    assert!(
        toast_bytes > 200 * 6400,
        "the large values are stored out of line ({toast_bytes} bytes of TOAST)"
    );
    let scripts = [
        "toast_small_a.sql",
        "toast_large_t.sql",
        "toast_small_b.sql",
    ];
    let tps = load(
        &mesh,
        |id| scripts[(id - 1) as usize].into(),
        2,
        load_seconds(),
        None,
    );
    let c = mesh.assert_converged("big");
    assert_eq!(c.rows, 200);
    report("large values", &mesh, &tps, &c);
}

/// A partitioned table, partitioned differently on each node (ranges on node 1, a hash on node
/// 2, other ranges and a default partition on node 3), under the article's workload: replicated
/// as its root, it ends identical on every node, with tombstones naming the root.
#[test]
fn partitioned_differently_converges() {
    let mut mesh = Mesh::start("partitioned", 3);
    let columns =
        "id int PRIMARY KEY, info text, mod_time timestamp, mm_islocal boolean, mm_nodeid int2,
                   mm_last_xacttime timestamp, mm_last_stattime timestamp";
    mesh.nodes[0].sql(&format!(
        "CREATE TABLE mm({columns}) PARTITION BY RANGE (id);
         CREATE TABLE mm_a PARTITION OF mm FOR VALUES FROM (MINVALUE) TO (5000);
         CREATE TABLE mm_b PARTITION OF mm FOR VALUES FROM (5000) TO (MAXVALUE);"
    ));
    mesh.nodes[1].sql(&format!(
        "CREATE TABLE mm({columns}) PARTITION BY HASH (id);
         CREATE TABLE mm_h0 PARTITION OF mm FOR VALUES WITH (MODULUS 3, REMAINDER 0);
         CREATE TABLE mm_h1 PARTITION OF mm FOR VALUES WITH (MODULUS 3, REMAINDER 1);
         CREATE TABLE mm_h2 PARTITION OF mm FOR VALUES WITH (MODULUS 3, REMAINDER 2);"
    ));
    mesh.nodes[2].sql(&format!(
        "CREATE TABLE mm({columns}) PARTITION BY RANGE (id);
         CREATE TABLE mm_low PARTITION OF mm FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE mm_rest PARTITION OF mm DEFAULT;"
    ));
    mesh.create_mesh_on(&["mm"], "last_xacttime", "last", Some(2));
    let tps = load(&mesh, article_script, 2, load_seconds(), None);
    let c = mesh.assert_converged("mm");
    assert!(c.rows > 500, "the load inserted rows");
    assert!(c.tombstones > 50, "the load deleted");
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT string_agg(DISTINCT table_name, ',') FROM mm_conflict.tombstone"),
            "public.mm",
            "node {}: tombstones name the root",
            node.id
        );
    }
    report("partitioned differently", &mesh, &tps, &c);
}

/// A secondary UNIQUE column whose values collide across nodes (each node inserts its own keys
/// with e-mail addresses from one small set). Native logical replication stops on the duplicate;
/// mm_resolve gives the value to the row with the better version on every node and deletes the
/// other everywhere (a tombstone with the winner's version), reporting each as a unique_conflict.
/// Ends identical, with every e-mail held once, and no apply-worker error.
#[test]
fn unique_values_colliding_across_nodes_converge() {
    let mut mesh = Mesh::start("unique", 3);
    for node in &mesh.nodes {
        node.sql("ALTER DATABASE postgres SET mm_conflict.log_conflicts = 'table'");
    }
    mesh.create_mesh(
        "uq",
        "CREATE TABLE uq(id bigint PRIMARY KEY, node int, email text NOT NULL UNIQUE, v int)",
        "last_xacttime",
        "last",
        None,
    );
    let tps = load(&mesh, |_| "unique.sql".into(), 2, load_seconds(), None);
    let c = mesh.assert_converged("uq");
    assert!(c.rows > 100, "the load inserted rows");
    let mut contests = 0;
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT count(*) = count(DISTINCT email) FROM uq"),
            "t",
            "node {}",
            node.id
        );
        let counted: i64 = node
            .sql("SELECT unique_conflicts FROM mm_conflict.conflict_stats WHERE table_name = 'uq'::regclass")
            .parse()
            .unwrap();
        let logged: i64 = node
            .sql("SELECT count(*) FROM mm_conflict.conflict_log WHERE decision = 'unique_conflict' AND stored_row IS NOT NULL AND incoming_row IS NOT NULL")
            .parse()
            .unwrap();
        assert_eq!(
            counted, logged,
            "node {}: every unique conflict counted and logged in full",
            node.id
        );
        contests += counted;
    }
    assert!(contests > 0, "the load made e-mails collide across nodes");
    eprintln!("[unique] {contests} unique conflicts resolved across the 3 nodes");
    report("unique values", &mesh, &tps, &c);
}

/// `table_diff` from node 1 to `peer`: `id:winner` per differing key, in key order.
fn diff_of(mesh: &Mesh, peer: i16) -> String {
    mesh.nodes[0].sql(&format!(
        "SELECT coalesce(string_agg((key->>'id') || ':' || winner, ',' ORDER BY (key->>'id')::int), '')
           FROM mm_conflict.table_diff('mm', {peer})"
    ))
}

fn ids(range: std::ops::RangeInclusive<i32>, winner: &str) -> Vec<String> {
    range.map(|i| format!("{i}:{winner}")).collect()
}

/// Nodes made to differ in every way a change can fail to travel: rows present before the mesh
/// existed, writes made while the table was out of the publication, a row changed with the trigger
/// disabled, a tombstone purged early (an older insert arriving after it was gone). `table_diff`
/// finds exactly those keys with the right winner; one `repair` makes every node identical with
/// each key's winning version and `table_diff` empty everywhere; a second finds nothing to do.
/// Then new differences are repaired from another node while the article's workload runs on all
/// three, and the mesh ends identical.
#[test]
fn differences_are_found_and_repaired() {
    let mut mesh = Mesh::start("repair", 3);
    for node in &mesh.nodes {
        node.sql(ARTICLE_TABLE);
    }
    // Before the mesh: nodes 1 and 2 hold ids 1..200 (node 2 two of them with another content),
    // node 3 ids 1..100 and 900.
    mesh.nodes[0]
        .sql("INSERT INTO mm(id, info) SELECT g, 'row ' || g FROM generate_series(1, 200) g");
    mesh.nodes[1].sql(
        "INSERT INTO mm(id, info) SELECT g, 'row ' || g FROM generate_series(1, 200) g;
         UPDATE mm SET info = 'node 2 before the mesh' WHERE id IN (5, 50)",
    );
    mesh.nodes[2].sql(
        "INSERT INTO mm(id, info) SELECT g, 'row ' || g FROM generate_series(1, 100) g;
         INSERT INTO mm(id, info) VALUES (900, 'only on node 3')",
    );
    mesh.create_mesh_on(&["mm"], "last_xacttime", "last", None);
    mesh.nodes[0]
        .sql("INSERT INTO mm(id, info) SELECT g, 'mesh ' || g FROM generate_series(2000, 2099) g");
    mesh.wait_synced();
    let late_row = mesh.nodes[2].sql("SELECT to_json(mm)::text FROM mm WHERE id = 2030");
    // Node 2 writes while its table is out of the publication.
    mesh.nodes[1].sql(
        "DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I DROP TABLE mm', mm_conflict.publication_name()); END$$;
         UPDATE mm SET info = 'unpublished' WHERE id IN (2010, 2011);
         INSERT INTO mm(id, info) SELECT g, 'unpublished' FROM generate_series(3000, 3004) g;
         DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I ADD TABLE mm', mm_conflict.publication_name()); END$$",
    );
    // Node 3 changes a row with the trigger disabled (same version, other content).
    mesh.nodes[2].sql(
        r#"ALTER TABLE mm DISABLE TRIGGER "!mm_resolve";
           UPDATE mm SET info = 'changed behind the trigger' WHERE id = 2020;
           ALTER TABLE mm ENABLE ALWAYS TRIGGER "!mm_resolve""#,
    );
    // Node 1 deletes a key; node 3 purges the tombstone at once, then an older change of the key
    // arrives there (a replicated insert of the version it had).
    mesh.nodes[0].sql("DELETE FROM mm WHERE id = 2030");
    mesh.wait_synced();
    mesh.nodes[2].sql(&format!(
        "DELETE FROM mm_conflict.tombstone;
         SELECT pg_replication_origin_create('late_change');
         SELECT pg_replication_origin_session_setup('late_change');
         INSERT INTO mm SELECT * FROM json_populate_record(NULL::mm, '{}');
         SELECT pg_replication_origin_session_reset();
         SELECT pg_replication_origin_drop('late_change')",
        late_row.replace('\'', "''")
    ));
    mesh.wait_synced();

    let mut to_2 = vec![
        "5:equal".to_string(),
        "50:equal".into(),
        "2010:peer".into(),
        "2011:peer".into(),
    ];
    to_2.extend(ids(3000..=3004, "peer"));
    let mut to_3 = ids(101..=200, "local");
    to_3.extend([
        "900:peer".to_string(),
        "2020:equal".into(),
        "2030:local".into(),
    ]);
    assert_eq!(diff_of(&mesh, 2), to_2.join(","));
    assert_eq!(diff_of(&mesh, 3), to_3.join(","));
    let tombstone_side = mesh.nodes[0].sql(
        "SELECT local_version LIKE 'deleted: %' AND peer_version NOT LIKE 'deleted%'
           FROM mm_conflict.table_diff('mm', 3) WHERE key = '{\"id\": 2030}'",
    );
    assert_eq!(
        tombstone_side, "t",
        "2030: node 1's tombstone against node 3's row"
    );

    let repaired = mesh.nodes[0].sql("SELECT mm_conflict.repair('mm')");
    assert_eq!(repaired, (to_2.len() + to_3.len()).to_string());
    let c = mesh.assert_converged("mm");
    assert_eq!(c.rows, 200 + 1 + 100 - 1 + 5);
    // Each key has its winning version: the newer unpublished writes, node 1's content for rows
    // without a version and for the row its version came from, the tombstone.
    for node in &mesh.nodes {
        assert_eq!(
            node.sql(
                "SELECT string_agg(id || '=' || info, ',' ORDER BY id) FROM mm
                  WHERE id IN (5, 900, 2010, 2020, 2030, 3000)"
            ),
            "5=row 5,900=only on node 3,2010=unpublished,2020=mesh 2020,3000=unpublished",
            "node {}",
            node.id
        );
    }
    assert_eq!(mesh.nodes[0].sql("SELECT mm_conflict.repair('mm')"), "0");
    // wait_for_sync in a transaction that has written (as repair waits): the peers confirm this
    // node's WAL at once, not when the server next logs its running transactions (every 15 s,
    // so of three waits in a row at least two took 15 s before the fix).
    mesh.nodes[0].sql("CREATE TABLE not_replicated(a int)");
    for round in 1..=3 {
        let started = std::time::Instant::now();
        let synced = mesh.nodes[0].sql(
            "WITH written AS (INSERT INTO not_replicated VALUES (1) RETURNING a)
             SELECT mm_conflict.wait_for_sync('60 s') FROM written",
        );
        let took = started.elapsed();
        assert_eq!(synced, "t", "round {round}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "round {round}: wait_for_sync after a write in its own transaction took {took:?}"
        );
    }

    // Under load: node 3 writes 50 rows unpublished and changes one behind the trigger (keys
    // the workload never writes), then the article's workload runs on every node while node 2
    // repairs: the changes the workload has on their way are left to replication.
    mesh.nodes[0].sql("INSERT INTO mm(id, info) VALUES (40051, 'mesh')");
    mesh.wait_synced();
    mesh.nodes[2].sql(
        r#"DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I DROP TABLE mm', mm_conflict.publication_name()); END$$;
           INSERT INTO mm(id, info) SELECT g, 'unpublished' FROM generate_series(40001, 40050) g;
           DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I ADD TABLE mm', mm_conflict.publication_name()); END$$;
           ALTER TABLE mm DISABLE TRIGGER "!mm_resolve";
           UPDATE mm SET info = 'changed behind the trigger' WHERE id = 40051;
           ALTER TABLE mm ENABLE ALWAYS TRIGGER "!mm_resolve""#,
    );
    let seconds = load_seconds();
    let children = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds) / 2));
    let repaired: i64 = mesh.nodes[1]
        .sql("SELECT mm_conflict.repair('mm')")
        .parse()
        .unwrap();
    let tps: Vec<f64> = children.into_iter().map(pgbench_tps).collect();
    assert!(repaired >= 51, "repaired under load: {repaired} keys");
    let c = mesh.assert_converged("mm");
    assert_eq!(
        mesh.nodes[0].sql(
            "SELECT count(*) || ' ' || min(info) FILTER (WHERE id = 40051) FROM mm WHERE id BETWEEN 40001 AND 40051"
        ),
        "51 mesh"
    );
    report(
        &format!("repair under load ({repaired} keys)"),
        &mesh,
        &tps,
        &c,
    );
}

/// `create_mesh(..., repair => true)` reconciles rows the nodes held before: no warning, and
/// identical tables at once.
#[test]
fn create_mesh_repairs_existing_rows() {
    let mut mesh = Mesh::start("mesh_repair", 3);
    for (i, node) in mesh.nodes.iter().enumerate() {
        node.sql(ARTICLE_TABLE);
        node.sql(&format!(
            "INSERT INTO mm(id, info) SELECT g, 'node {}' FROM generate_series({}, {}) g",
            i + 1,
            i * 100 + 1,
            i * 100 + 150
        ));
    }
    mesh.create_mesh_repairing(&["mm"], "last_xacttime", "last", None, true);
    let c = mesh.assert_converged("mm");
    assert_eq!(c.rows, 350);
    // Where two nodes held a key, the first node's row (rows without a version: its content wins).
    assert_eq!(
        mesh.nodes[2].sql("SELECT string_agg(DISTINCT info, ',' ORDER BY info) FROM mm WHERE id BETWEEN 101 AND 150"),
        "node 1"
    );
}

/// A repair carries every value exactly: rows of a table with columns of many types (json with
/// its spacing, JSON `null` apart from SQL NULL, numeric scale, float edge values, arrays,
/// composites, domains, enums, ranges, large values in line and out of line, an identity column,
/// a generated one) written
/// on node 1 while the table was out of its publication, repaired onto node 2, and float edge
/// values (-0, subnormals, 0.1 + 0.2, NaN) written on each node, repaired onto the other, with the
/// float digits cut in the calling session (`extra_float_digits = -15`) and on the peer (`0` for
/// its database): identical checksums, the same text of every float, nothing left for
/// `table_diff`, nothing for a second repair.
#[test]
fn repair_carries_every_type_exactly() {
    let mut mesh = Mesh::start("repair_types", 2);
    mesh.create_mesh(
        "t",
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TYPE pair AS (a int, b text);
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE t(id int PRIMARY KEY, n numeric, f float8, r real, s text, b bytea, j json,
             jb jsonb, ia int[], ta text[], tz timestamptz, ts timestamp, d date, iv interval, u uuid,
             ip inet, ok boolean, p pair, dm posint, m mood, tv tsvector, pt point, rg int4range,
             seq bigint GENERATED ALWAYS AS IDENTITY, g int GENERATED ALWAYS AS (id * 2) STORED)",
        "last_xacttime",
        "last",
        None,
    );
    mesh.nodes[0].sql(
        r#"DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I DROP TABLE t', mm_conflict.publication_name()); END$$;
           INSERT INTO t(id, n, f, r, s, b, j, jb, ia, ta, tz, ts, d, iv, u, ip, ok, p, dm, m, tv, pt, rg) VALUES
           (1, 1.500, 0.1, 0.1, 'héllo "q" \ x', '\x00ff10', '{ "a" :  [1, 2.50] }', '{"b": 1.0}', '{1,NULL,3}',
            '{"a b",NULL,"c,d"}', '2026-01-01 12:34:56.789012+05', '2026-01-01 12:34:56.789012', '2026-02-03',
            '1 day 02:03:04.5', gen_random_uuid(), '10.0.0.1/24', true, ROW(1, 'x y'), 5, 'ok',
            to_tsvector('simple', 'the quick fox'), point(1.5, -2.25), int4range(1, 10)),
           (2, 12345678901234567890.123456789012, 'NaN', '-Infinity', '', '\x', 'null', 'null', '{}', '{}',
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'empty'),
           (3, -0.000001, 1e300, 3.4e38, repeat('long value ', 10000), decode(repeat('ab', 5000), 'hex'), '[]',
            '[]', '{{1,2},{3,4}}', '{}', 'infinity', '-infinity', 'infinity', '-1 mons',
            '00000000-0000-0000-0000-000000000000', '::1', false, ROW(NULL, NULL), 1, 'sad', '', '(0,0)', '[,)');
           INSERT INTO t(id, f, r) VALUES (4, '-0', '-0'), (5, 1e-310, 1e-40), (6, 0.1::float8 + 0.2, 1::real / 3),
               (7, 'NaN', 'NaN');
           UPDATE t SET s = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g) WHERE id = 5;
           DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I ADD TABLE t', mm_conflict.publication_name()); END$$"#,
    );
    mesh.nodes[1].sql(
        r#"DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I DROP TABLE t', mm_conflict.publication_name()); END$$;
           INSERT INTO t(id, f, r) VALUES (11, '-0', '-0'), (12, 0.1::float8 + 0.2, 1::real / 3), (13, 1e-310, 'NaN');
           UPDATE t SET b = (SELECT decode(string_agg(md5(g::text), ''), 'hex') FROM generate_series(1, 4000) g) WHERE id = 12;
           DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I ADD TABLE t', mm_conflict.publication_name()); END$$;
           ALTER DATABASE postgres SET extra_float_digits = 0"#,
    );
    let cut = "SET extra_float_digits = -15;";
    assert_eq!(
        mesh.nodes[0].sql(&format!("{cut} SELECT string_agg(key->>'id' || ':' || winner, ',' ORDER BY (key->>'id')::int) FROM mm_conflict.table_diff('t', 2)")),
        "1:local,2:local,3:local,4:local,5:local,6:local,7:local,11:peer,12:peer,13:peer"
    );
    assert_eq!(
        mesh.nodes[0].sql(&format!("{cut} SELECT mm_conflict.repair('t')")),
        "10"
    );
    let c = mesh.assert_converged("t");
    assert_eq!(c.rows, 10);
    for column in ["j", "jb", "n", "f", "r"] {
        let values = |node: &Node| {
            node.sql(&format!(
                "SET extra_float_digits = 3;
                 SELECT string_agg(coalesce({column}::text, '<NULL>'), '|' ORDER BY id) FROM t"
            ))
        };
        assert_eq!(
            values(&mesh.nodes[0]),
            values(&mesh.nodes[1]),
            "column {column}"
        );
    }
    assert_eq!(
        mesh.nodes[0].sql(
            "SET extra_float_digits = 3;
             SELECT string_agg(id || '=' || f || '/' || r, ',' ORDER BY id) FROM t WHERE id IN (4, 5, 6, 7, 11, 12, 13)"
        ),
        "4=-0/-0,5=1e-310/1e-40,6=0.30000000000000004/0.33333334,7=NaN/NaN,11=-0/-0,12=0.30000000000000004/0.33333334,13=1e-310/NaN"
    );
    assert_eq!(
        mesh.nodes[0].sql(&format!("{cut} SELECT mm_conflict.repair('t')")),
        "0"
    );
}

/// Types whose in-memory form carries node-local OIDs (an enum, a composite, arrays of them, a
/// range and its multirange, domains over them) created in another order on each node, and the
/// nodes' sessions with other settings (time zone, date style, float digits): identical rows still
/// compare equal. Same `table_checksum` on both nodes, nothing for `table_diff` either way,
/// nothing for `repair`.
#[test]
fn types_created_in_another_order_compare_equal() {
    let mut mesh = Mesh::start("type_oids", 2);
    let mood = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')";
    let pair = "CREATE TYPE pair AS (a int, m mood, f float8, at timestamptz, t text)";
    let span = "CREATE TYPE span AS RANGE (subtype = float8, multirange_type_name = spans)";
    let moods = "CREATE DOMAIN moods AS mood[] CHECK (cardinality(VALUE) < 10)";
    let known = "CREATE DOMAIN known AS pair CHECK ((VALUE).a > 0)";
    let table = "CREATE TABLE t(id int PRIMARY KEY, m mood, ms mood[], p pair, ps pair[], s span,
        sm spans, d moods, k known, ir int4range, ia int[], f float8)";
    mesh.nodes[0].sql(&[mood, pair, span, moods, known, table].join(";"));
    // Node 2: other types first, and ours in another order, so that every OID differs.
    mesh.nodes[1].sql(
        &[
            "CREATE TYPE filler AS ENUM ('x'); CREATE TYPE filler2 AS (x int)",
            span,
            mood,
            moods,
            "CREATE TYPE filler3 AS RANGE (subtype = int8)",
            pair,
            known,
            table,
        ]
        .join(";"),
    );
    let oids = |node: &Node| {
        node.sql("SELECT string_agg(oid::text, ',' ORDER BY typname) FROM pg_type WHERE typname IN ('mood', 'pair', 'span', 'spans')")
    };
    assert_ne!(oids(&mesh.nodes[0]), oids(&mesh.nodes[1]));
    mesh.create_mesh_on(&["t"], "last_xacttime", "last", None);
    // Node 2's sessions (dblink's from node 1 included) show times and floats another way.
    mesh.nodes[1].sql(
        "ALTER DATABASE postgres SET TimeZone = 'Asia/Tokyo';
         ALTER DATABASE postgres SET extra_float_digits = 0",
    );
    mesh.nodes[0].sql(
        r#"INSERT INTO t VALUES
           (1, 'ok', '{sad,happy}', ROW(1, 'ok', 0.1 + 0.2, '2026-01-01 12:00:00.5+05', 'x y'),
            ARRAY[ROW(2, 'sad', -0.0, NULL, NULL)::pair, NULL], '[1.5,2.5)', '{[1,2),[3,4)}', '{ok,ok}',
            ROW(3, 'happy', 1e-310, 'infinity', ''), '[1,5)', '{1,2}', 0.1 + 0.2),
           (2, NULL, '{}', ROW(NULL, NULL, NULL, NULL, NULL), '{}', 'empty', '{}', '{}', NULL, 'empty', '{}', NULL),
           (3, 'sad', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'NaN')"#,
    );
    mesh.wait_synced();
    let checksum = |node: &Node, settings: &str| {
        node.sql(&format!(
            "{settings} SELECT count(*) || ' ' || mm_conflict.table_checksum('t') FROM t"
        ))
    };
    let on_1 = checksum(
        &mesh.nodes[0],
        "SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -15; SET IntervalStyle = sql_standard;",
    );
    assert!(on_1.starts_with("3 "), "{on_1}");
    assert_eq!(on_1, checksum(&mesh.nodes[1], ""));
    mesh.assert_no_diff("t");
    mesh.nodes[1].sql("CREATE EXTENSION IF NOT EXISTS dblink");
    assert_eq!(
        mesh.nodes[1].sql("SELECT count(*) FROM mm_conflict.table_diff('t', 1)"),
        "0"
    );
    assert_eq!(mesh.nodes[0].sql("SELECT mm_conflict.repair('t')"), "0");
    assert_eq!(mesh.nodes[1].sql("SELECT mm_conflict.repair('t')"), "0");
    mesh.assert_converged("t");
}

/// Primary keys of types whose binary form names node-local types (an array of an enum, a
/// composite with an enum field), on two nodes that created those types in another order: the
/// key's tombstone form is the same on both (its text under pinned settings), so deletes and
/// updates from either node reach the other, and nothing is ignored.
#[test]
fn keys_of_user_types_converge() {
    let mut mesh = Mesh::start("key_type_oids", 2);
    let mood = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')";
    let pair = "CREATE TYPE pair AS (a int, m mood)";
    let tables = "CREATE TABLE ka(tags mood[] PRIMARY KEY, v text);
                  CREATE TABLE kc(p pair PRIMARY KEY, v text)";
    mesh.nodes[0].sql(&[mood, pair, tables].join(";"));
    mesh.nodes[1].sql(
        &[
            "CREATE TYPE filler AS ENUM ('x'); CREATE TYPE filler2 AS (x int)",
            mood,
            "CREATE TYPE filler3 AS ENUM ('y')",
            pair,
            tables,
        ]
        .join(";"),
    );
    let oids = |node: &Node| {
        node.sql("SELECT string_agg(oid::text, ',' ORDER BY typname) FROM pg_type WHERE typname IN ('mood', 'pair')")
    };
    assert_ne!(oids(&mesh.nodes[0]), oids(&mesh.nodes[1]));
    mesh.create_mesh_on(&["ka", "kc"], "last_xacttime", "last", None);
    mesh.nodes[0].sql(
        "INSERT INTO ka VALUES ('{sad}', 'a'), ('{ok,happy}', 'b'), ('{happy}', 'c');
         INSERT INTO kc VALUES (ROW(1, 'sad'), 'a'), (ROW(2, 'ok'), 'b'), (ROW(3, 'happy'), 'c')",
    );
    mesh.wait_synced();
    // Deletes from node 1, an update and a delete from node 2, a re-insert of a deleted key.
    mesh.nodes[0]
        .sql("DELETE FROM ka WHERE tags = '{sad}'; DELETE FROM kc WHERE p = ROW(1, 'sad')::pair");
    mesh.nodes[1].sql(
        "UPDATE ka SET v = 'b2' WHERE tags = '{ok,happy}'; DELETE FROM ka WHERE tags = '{happy}';
         UPDATE kc SET v = 'b2' WHERE p = ROW(2, 'ok')::pair; DELETE FROM kc WHERE p = ROW(3, 'happy')::pair",
    );
    mesh.wait_synced();
    mesh.nodes[1].sql("INSERT INTO ka VALUES ('{sad}', 'again')");
    mesh.wait_synced();
    for table in ["ka", "kc"] {
        mesh.assert_converged(table);
    }
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT string_agg(tags::text || '=' || v, ' ' ORDER BY v) FROM ka"),
            "{sad}=again {ok,happy}=b2"
        );
        assert_eq!(
            node.sql("SELECT string_agg(p::text || '=' || v, ' ' ORDER BY v) FROM kc"),
            "(2,ok)=b2"
        );
        // Every tombstone was resolved (none ignored), and both nodes name the keys alike.
        assert_eq!(
            node.sql("SELECT count(*) FROM mm_conflict.conflict_log WHERE decision = 'tombstone_ignored'"),
            "0"
        );
    }
    let tombstones = |node: &Node| {
        node.sql("SELECT string_agg(table_name || ':' || encode(pk, 'hex'), ' ' ORDER BY table_name, pk) FROM mm_conflict.tombstone")
    };
    assert_eq!(tombstones(&mesh.nodes[0]), tombstones(&mesh.nodes[1]));
    mesh.assert_no_diff("ka");
    mesh.assert_no_diff("kc");
}

/// `purge_tombstones` keeps a tombstone that a change still on its way from a peer could need,
/// even while that peer's keepalives say it is current. Node 2's walsender works through a large
/// transaction of a table it does not publish (sending keepalives with its clock, every half
/// second here), and behind it node 2 deleted and re-inserted key 1. Node 1 deletes key 1 later
/// and purges with no retention: the send time of node 2's last message (the bound before) has
/// passed node 1's delete, but node 2's last applied transaction has not, so the tombstone stays,
/// beats node 2's older re-insert when it lands, and both nodes end without key 1.
#[test]
fn purge_keeps_tombstones_a_lagging_peer_may_need() {
    use std::time::{Duration, Instant};
    let mut mesh = Mesh::start("purge_lag", 2);
    for node in &mesh.nodes {
        node.sql("CREATE TABLE p(id int PRIMARY KEY, v text); CREATE TABLE bulk(x int)");
    }
    mesh.create_mesh_on(&["p"], "last_xacttime", "last", None);
    mesh.nodes[0].sql("INSERT INTO p VALUES (1, 'a'), (2, 'b')");
    mesh.wait_synced();
    // Keepalives every half second, so that the old bound (a peer's last send time) passes the
    // delete below while node 2 is busy. On a loaded machine a 1 s timeout also ends a walsender
    // whose subscriber was slow to answer (node 1's worker logs `08006` and reconnects): the
    // connection errors are this set-up's, what matters is the data afterwards.
    mesh.nodes_go_down = true;
    let (one, two) = (&mesh.nodes[0], &mesh.nodes[1]);
    two.sql("ALTER SYSTEM SET wal_sender_timeout = '1s'");
    two.sql("SELECT pg_reload_conf()");
    two.sql("INSERT INTO bulk SELECT generate_series(1, 4000000)");
    two.sql("BEGIN; DELETE FROM p WHERE id = 1; INSERT INTO p VALUES (1, 'from node 2'); COMMIT");
    let x_lsn = two.sql("SELECT pg_current_wal_lsn()");
    std::thread::sleep(Duration::from_millis(100));
    one.sql("DELETE FROM p WHERE id = 1");
    let deleted_at = one.sql("SELECT deleted_at FROM mm_conflict.tombstone");
    // What the bound was before: the send time of node 2's last message. Wait until it passes the
    // delete while node 2's transaction has still not been applied here.
    let old_bound_passed = format!(
        "SELECT (SELECT min(w.last_msg_send_time) FROM pg_stat_subscription w
                  WHERE w.relid IS NULL AND w.pid IS NOT NULL) > '{deleted_at}'
            AND (SELECT min(remote_lsn) FROM pg_replication_origin_status) < '{x_lsn}'"
    );
    let until = Instant::now() + Duration::from_secs(60);
    while one.sql(&old_bound_passed) != "t" {
        assert!(
            Instant::now() < until,
            "node 2 caught up before a keepalive passed the delete: the lag this test needs did not happen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        one.sql("SELECT mm_conflict.purge_tombstones('0 seconds')"),
        "0"
    );
    assert_eq!(one.sql("SELECT count(*) FROM mm_conflict.tombstone"), "1");
    mesh.wait_synced();
    mesh.assert_converged("p");
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM p"),
            "2"
        );
    }
    // Once node 2's transactions after the delete have been applied, the tombstone may go.
    two.sql("UPDATE p SET v = 'c' WHERE id = 2");
    mesh.wait_synced();
    assert_eq!(
        one.sql("SELECT mm_conflict.purge_tombstones('0 seconds')"),
        "1"
    );
    two.sql("ALTER SYSTEM RESET wal_sender_timeout");
    two.sql("SELECT pg_reload_conf()");
}

/// The conflict counters' 1024 slots are taken back from dropped tables when a new table needs
/// one: a server whose tables (or databases) come and go keeps counting.
#[test]
fn counter_slots_of_dropped_tables_are_reused() {
    let mesh = Mesh::start("counter_slots", 1);
    let node = &mesh.nodes[0];
    let row = r#"[{"row": {"id": 1, "mm_islocal": false, "mm_nodeid": 2,
        "mm_last_xacttime": "2100-01-01 00:00:00+00", "mm_last_stattime": "2100-01-01 00:00:00+00"}}]"#;
    let create_and_count = |first: u32, last: u32| {
        node.sql(&format!(
            "DO $$ BEGIN FOR i IN {first}..{last} LOOP
                 EXECUTE format('CREATE TABLE c%s(id int PRIMARY KEY, mm_islocal boolean, mm_nodeid int2,
                                 mm_last_xacttime timestamptz, mm_last_stattime timestamptz);
                                 CREATE TRIGGER r BEFORE INSERT OR UPDATE OR DELETE ON c%s FOR EACH ROW
                                 EXECUTE FUNCTION mm_resolve(1, ''last_xacttime'', ''last'')', i, i);
                 COMMIT;
                 -- a write resolved as a replicated one (repair's), counted at commit
                 PERFORM mm_conflict._repair_apply(format('c%s', i)::regclass, '{row}', false);
                 COMMIT;
             END LOOP; END $$"
        ))
    };
    create_and_count(1, 1030);
    assert_eq!(
        node.sql("SELECT mm_conflict._conflict_counters_state()"),
        "full"
    );
    assert_eq!(
        node.sql("SELECT count(*) FROM mm_conflict.conflict_stats WHERE applied = 1"),
        "1024"
    );
    node.sql(
        "DO $$ BEGIN FOR i IN 1..100 LOOP EXECUTE format('DROP TABLE c%s', i); END LOOP; END $$",
    );
    create_and_count(2001, 2010);
    assert_eq!(
        node.sql(
            "SELECT count(*) FROM mm_conflict.conflict_stats
              WHERE table_name::text LIKE 'c20__' AND applied = 1 AND note IS NULL"
        ),
        "10"
    );
    assert_eq!(
        node.sql("SELECT mm_conflict._conflict_counters_state()"),
        "ok"
    );
}

/// What is left on `node` of node `gone`: subscriptions from it, slots it read, peer rows.
fn traces_of(node: &Node, gone: i16) -> String {
    node.sql(&format!(
        "SELECT (SELECT count(*) FROM pg_subscription WHERE subname = mm_conflict.channel_name({gone}, mm_conflict.this_node()))
              + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = mm_conflict.channel_name(mm_conflict.this_node(), {gone}))
              + (SELECT count(*) FROM mm_conflict.peer WHERE node_id = {gone})"
    ))
}

/// Takes `mesh.nodes[index]` out of the struct (it is stopped already) and deletes its data
/// directory: the node is gone for good.
fn destroy(mesh: &mut Mesh, index: usize) -> i16 {
    let node = mesh.nodes.remove(index);
    node.stop("immediate");
    std::fs::remove_dir_all(&node.dir).unwrap();
    node.id
}

/// Nodes come and go: under the article's load on three nodes, node 3 is killed for good and its
/// data directory deleted; `remove_node(3)` on node 1 leaves no subscription, slot or peer row of
/// it on either survivor, their status shows no problem and they are identical; then a fourth
/// node joins (README "Add a node") while they write, and all three are identical.
#[test]
fn dead_node_is_removed_and_a_new_one_joins() {
    let mut mesh = Mesh::start("remove_dead", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    let seconds = load_seconds();
    let mut runs = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds) / 2));
    mesh.nodes[2].stop("immediate");
    let dead = runs.pop().unwrap();
    let gone = destroy(&mut mesh, 2);
    // Its peers say so in status: the WAL they keep for it, and (17+, which record when a slot
    // went idle) that it has been gone longer than mm_conflict.peer_down_after.
    assert_ne!(
        mesh.nodes[0].sql(&format!(
            "SELECT retained_wal_bytes > 0 FROM mm_conflict.status WHERE node_id = {gone}"
        )),
        "f"
    );
    if mm_conflict_mesh_tests::pg_major() >= 17 {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let problem = mesh.nodes[0].sql(&format!(
            "SET mm_conflict.peer_down_after = '1s'; SELECT problem FROM mm_conflict.status WHERE node_id = {gone}"
        ));
        assert!(
            problem.contains(&format!("node {gone} has not read from this node since")),
            "{problem}"
        );
    }
    let removed = mesh.nodes[0].sql(&format!(
        "SELECT string_agg(node || ':' || removed || ':' || detail, E'\\n' ORDER BY node) FROM mm_conflict.remove_node({gone})"
    ));
    eprintln!("[remove_dead] remove_node({gone}):\n{removed}");
    assert!(
        removed.contains(&format!("{gone}:false:not reached")),
        "{removed}"
    );
    let mut tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    tps.push(pgbench_tps_until_crash(dead));
    for node in &mesh.nodes {
        assert_eq!(
            traces_of(node, gone),
            "0",
            "node {} still serves node {gone}",
            node.id
        );
        assert_eq!(
            node.sql("SELECT count(*) FROM mm_conflict.status WHERE problem IS NOT NULL"),
            "0",
            "node {}: {}",
            node.id,
            node.sql("SELECT string_agg(node_id || ': ' || problem, '; ') FROM mm_conflict.status")
        );
    }
    let c = mesh.assert_converged("mm");
    report("remove_dead", &mesh, &tps, &c);
    // A fresh node joins the two with add_node while they write.
    let runs = start_article_load(&mesh.nodes, seconds);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (said, took) = mesh.add_node("remove_dead", 4, ARTICLE_TABLE);
    eprintln!(
        "[remove_dead] add_node(4) took {:.1} s:\n{said}",
        took.as_secs_f64()
    );
    let tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let c = mesh.assert_converged("mm");
    assert_eq!(mesh.nodes.len(), 3);
    report("remove_dead_then_join", &mesh, &tps, &c);
}

/// Before dying, node 3's last changes reached node 1 only (node 2's subscription from it was
/// stopped): after `remove_node(3)` on node 2, node 2 has them too, relayed by node 1 before
/// anything was dropped.
#[test]
fn changes_only_one_survivor_had_reach_the_others() {
    let mut mesh = Mesh::start("remove_partial", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    // Cut the link from node 3 to node 2, and hold node 1's relays to node 2.
    mesh.nodes[1].sql("ALTER SUBSCRIPTION mm_conflict_3_to_2 DISABLE");
    mesh.nodes[1].sql("ALTER SUBSCRIPTION mm_conflict_1_to_2 DISABLE");
    mesh.nodes[2].sql(
        "INSERT INTO mm(id, info) SELECT g, 'last words of node 3' FROM generate_series(900001, 900500) g",
    );
    let arrived = |node: &Node| node.sql("SELECT count(*) FROM mm WHERE id > 900000");
    let start = std::time::Instant::now();
    while arrived(&mesh.nodes[0]) != "500" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "node 1 did not get node 3's rows"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        arrived(&mesh.nodes[1]),
        "0",
        "node 2 was cut off from node 3"
    );
    mesh.nodes[2].stop("immediate");
    let gone = destroy(&mut mesh, 2);
    let removed = std::thread::scope(|scope| {
        let call = scope.spawn(|| {
            mesh.nodes[1].sql(&format!(
                "SELECT string_agg(node || ':' || removed || ':' || detail, E'\\n' ORDER BY node) FROM mm_conflict.remove_node({gone})"
            ))
        });
        std::thread::sleep(std::time::Duration::from_secs(3));
        // remove_node waits for node 2 to have what node 1 has, and has dropped nothing yet.
        assert!(
            !call.is_finished(),
            "remove_node returned while node 2 lacked node 3's rows"
        );
        assert_eq!(arrived(&mesh.nodes[1]), "0");
        assert_ne!(traces_of(&mesh.nodes[0], gone), "0");
        mesh.nodes[1].sql("ALTER SUBSCRIPTION mm_conflict_1_to_2 ENABLE");
        call.join().unwrap()
    });
    eprintln!("[remove_partial] remove_node({gone}) on node 2:\n{removed}");
    // remove_node returned only once node 2 had everything node 1 had.
    assert_eq!(
        arrived(&mesh.nodes[1]),
        "500",
        "node 2 lacks node 3's last rows after remove_node"
    );
    for node in &mesh.nodes {
        assert_eq!(
            traces_of(node, gone),
            "0",
            "node {} still serves node {gone}",
            node.id
        );
    }
    mesh.assert_converged("mm");
}

/// A node stopped for a while loses its slots on its peers to `max_slot_wal_keep_size` while rows
/// it holds are deleted and updated elsewhere: `status` says the slots are lost; `add_node` brings
/// it back with the rows it held; no deleted row comes back and every node is identical.
#[test]
fn node_whose_slots_were_lost_comes_back_with_add_node() {
    let mut mesh = Mesh::start("lost_slot", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    // Node 3's workers meet their lost slots when it starts again, until add_node replaces them.
    // (Each major words it its own way; all name the slot.)
    mesh.expected_errors = vec![
        "replication slot \"mm_conflict_1_to_3\"",
        "replication slot \"mm_conflict_2_to_3\"",
    ];
    mesh.nodes[0].sql("INSERT INTO mm(id, info) SELECT g, 'v1' FROM generate_series(1, 1000) g");
    mesh.assert_converged("mm");
    mesh.nodes[2].stop("fast");
    mesh.nodes[0].sql("DELETE FROM mm WHERE id <= 300");
    mesh.nodes[1].sql("UPDATE mm SET info = 'v2' WHERE id > 900");
    // WAL (in a table that is not replicated) past what node 3's slots may keep; the slots between
    // nodes 1 and 2 follow it (checkpoints log what lets them advance), node 3's cannot.
    for node in &mesh.nodes[..2] {
        node.sql("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g");
    }
    for _ in 0..2 {
        for (node, other) in [(0, 2), (1, 1)] {
            mesh.nodes[node].sql("CHECKPOINT");
            assert_eq!(
                mesh.nodes[node].sql(&format!(
                    "SELECT mm_conflict._wait_for_peers(ARRAY[{other}], '60 s')"
                )),
                "t"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    for node in &mesh.nodes[..2] {
        node.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
        node.sql("SELECT pg_reload_conf()");
    }
    let start = std::time::Instant::now();
    let lost = |node: &Node| {
        node.sql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE wal_status = 'lost'")
    };
    while lost(&mesh.nodes[0]) != "mm_conflict_1_to_3"
        || lost(&mesh.nodes[1]) != "mm_conflict_2_to_3"
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "lost slots: {} on node 1, {} on node 2",
            lost(&mesh.nodes[0]),
            lost(&mesh.nodes[1])
        );
        for node in &mesh.nodes[..2] {
            node.sql("CHECKPOINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for node in &mesh.nodes[..2] {
        node.sql("ALTER SYSTEM RESET max_slot_wal_keep_size");
        node.sql("SELECT pg_reload_conf()");
    }
    let problem = mesh.nodes[0].sql("SELECT problem FROM mm_conflict.status WHERE node_id = 3");
    assert!(problem.contains("is lost"), "{problem}");
    mesh.nodes[2].restart();
    let said = mesh.nodes[0].sql(&format!(
        "SELECT string_agg(node || ': ' || step, E'\\n') FROM mm_conflict.add_node(3, '{}')",
        mesh.nodes[2].conninfo()
    ));
    eprintln!("[lost_slot] add_node(3):\n{said}");
    // add_node returns once the copy is in: the deleted rows are gone, the updated ones new.
    assert_eq!(
        mesh.nodes[2].sql("SELECT count(*) || ' ' || count(*) FILTER (WHERE info = 'v2') FROM mm"),
        "700 100"
    );
    mesh.wait_subscriptions_streaming(std::time::Duration::from_secs(60));
    let c = mesh.assert_converged("mm");
    assert_eq!(c.rows, 700, "deleted rows came back");
    assert_eq!(
        mesh.nodes[2].sql("SELECT count(*) FILTER (WHERE id <= 300) || ' ' || count(*) FILTER (WHERE info = 'v2') FROM mm"),
        "0 100"
    );
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT count(*) FROM mm_conflict.status WHERE problem IS NOT NULL OR wal_status = 'lost'"),
            "0",
            "node {}",
            node.id
        );
    }
}

/// remove_node with a survivor down: refused (08001 naming it) and nothing changed anywhere; with
/// `force => true` done where it can be, and the result says where not; once the survivor is back,
/// a second call finishes there.
#[test]
fn remove_node_with_a_survivor_down() {
    let mut mesh = Mesh::start("remove_force", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    mesh.nodes[1].stop("fast");
    let refused = mesh.nodes[0]
        .try_sql("SELECT count(*) FROM mm_conflict.remove_node(3)")
        .unwrap_err();
    assert!(
        refused.contains("cannot connect to node 2") && refused.contains("Nothing was changed"),
        "{refused}"
    );
    assert_eq!(traces_of(&mesh.nodes[0], 3), "3");
    assert_eq!(traces_of(&mesh.nodes[2], 1), "3");
    let forced = mesh.nodes[0].sql(
        "SELECT string_agg(node || ':' || removed || ':' || detail, E'\\n' ORDER BY node) FROM mm_conflict.remove_node(3, force => true)",
    );
    eprintln!("[remove_force] remove_node(3, force => true) with node 2 down:\n{forced}");
    assert!(
        forced.contains("2:false:not reached, nothing changed there"),
        "{forced}"
    );
    assert!(forced.contains("3:true:left the mesh"), "{forced}");
    assert_eq!(traces_of(&mesh.nodes[0], 3), "0");
    // Node 3 left: nothing of the mesh there.
    assert_eq!(
        mesh.nodes[2].sql("SELECT count(*) FROM mm_conflict.node"),
        "0"
    );
    // Node 2 comes back still subscribed to node 3, which left: its worker from there fails until
    // the second call drops that subscription.
    mesh.expected_errors = vec![
        "replication slot \"mm_conflict_3_to_2\"",
        "publication \"mm_conflict\" does not exist",
    ];
    mesh.nodes[1].restart();
    assert_ne!(traces_of(&mesh.nodes[1], 3), "0");
    let again = mesh.nodes[0].sql(
        "SELECT string_agg(node || ':' || removed, ',' ORDER BY node) FROM mm_conflict.remove_node(3)",
    );
    assert_eq!(again, "1:true,2:true,3:false", "{again}");
    assert_eq!(traces_of(&mesh.nodes[1], 3), "0");
    let gone = mesh.nodes.remove(2);
    gone.stop("fast");
    mesh.wait_subscriptions_streaming(std::time::Duration::from_secs(60));
    mesh.nodes[0].sql("INSERT INTO mm(id, info) VALUES (1, 'after')");
    mesh.assert_converged("mm");
}

/// `drop_mesh(everywhere => true)` on one node leaves no subscription, slot, publication, trigger
/// or node id on any node, and every node keeps its rows; a second call has nothing to do.
#[test]
fn drop_mesh_everywhere_leaves_nothing_but_the_rows() {
    let mut mesh = Mesh::start("drop_everywhere", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    for node in &mesh.nodes {
        node.sql(&format!(
            "INSERT INTO mm(id, info) SELECT g, 'from {}' FROM generate_series({}, {}) g",
            node.id,
            i32::from(node.id) * 1000,
            i32::from(node.id) * 1000 + 99
        ));
    }
    mesh.assert_converged("mm");
    mesh.nodes[0].sql("SELECT mm_conflict.drop_mesh(everywhere => true)");
    for node in &mesh.nodes {
        assert_eq!(
            node.sql(
                "SELECT (SELECT count(*) FROM pg_subscription) || ' ' || (SELECT count(*) FROM pg_replication_slots)
                   || ' ' || (SELECT count(*) FROM pg_publication) || ' ' || (SELECT count(*) FROM mm_conflict.node)
                   || ' ' || (SELECT count(*) FROM mm_conflict.peer) || ' ' || (SELECT count(*) FROM mm_conflict.replicated_tables)
                   || ' ' || (SELECT count(*) FROM mm)"
            ),
            "0 0 0 0 0 0 300",
            "node {}",
            node.id
        );
    }
    // Not in a mesh any more: a NOTICE, nothing else.
    mesh.nodes[1].sql("SELECT mm_conflict.drop_mesh(everywhere => true)");
}

/// Lets every node of `mesh` prepare transactions (replicate_ddl then commits with two-phase
/// commit): set, then each node restarted.
fn allow_two_phase(mesh: &Mesh) {
    for node in &mesh.nodes {
        node.sql("ALTER SYSTEM SET max_prepared_transactions = 10");
        node.stop("fast");
        node.restart();
    }
}

/// `replicate_ddl(command)` on `node`, its rows as `node: detail` lines; and the longest time
/// writes waited on any node, in milliseconds, read from them.
fn replicate_ddl(node: &Node, command: &str) -> (String, u64) {
    let rows = node.sql(&format!(
        "SELECT string_agg(node || ': ' || detail, E'\\n' ORDER BY node) FROM mm_conflict.replicate_ddl($ddl${command}$ddl$)"
    ));
    let waited = rows
        .lines()
        .filter_map(|l| l.split("waited at most ").nth(1))
        .filter_map(|w| w.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or_else(|| panic!("replicate_ddl said no wait: {rows}"));
    (rows, waited)
}

/// The columns of `table` on `node`, in order, as `name type`.
fn columns_of(node: &Node, table: &str) -> String {
    node.sql(&format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
           FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
    ))
}

/// Schema changes through `replicate_ddl` while the article's load writes on every node: a column
/// with a default, two at once, one retyped, one dropped, a unique key, and a new table that
/// then takes writes on every node. No apply error, no client error, every node identical over
/// all columns, and every node has every change; how long writes waited is reported.
#[test]
fn schema_changes_on_a_loaded_mesh() {
    let mut mesh = Mesh::start("ddl_load", 3);
    allow_two_phase(&mesh);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    let seconds = load_seconds().max(12);
    let runs = start_article_load(&mesh.nodes, seconds);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(700));
    pause();
    let changes = [
        "ALTER TABLE mm ADD COLUMN note text NOT NULL DEFAULT 'none'",
        "ALTER TABLE mm ADD COLUMN a int DEFAULT 0, ADD COLUMN b int",
        "ALTER TABLE mm ALTER COLUMN a TYPE bigint",
        "ALTER TABLE mm DROP COLUMN b",
        "ALTER TABLE mm ADD COLUMN code text; CREATE UNIQUE INDEX mm_code ON mm(code)",
        "CREATE TABLE t2(id int PRIMARY KEY, v text)",
    ];
    let mut waits = Vec::new();
    for (k, command) in changes.iter().enumerate() {
        // Each change from another node in turn.
        let node = &mesh.nodes[k % 3];
        let started = std::time::Instant::now();
        let (rows, waited) = replicate_ddl(node, command);
        eprintln!(
            "[ddl_load] node {}: {command} ({} ms in all):\n{rows}",
            node.id,
            started.elapsed().as_millis()
        );
        assert_eq!(rows.lines().count(), 3, "{rows}");
        waits.push(waited);
        // Writes of the new shape, on every node, while the load goes on.
        for n in &mesh.nodes {
            match k {
                0 => n.sql(&format!(
                    "UPDATE mm SET note = 'node {}' WHERE id % 7 = {}",
                    n.id, n.id
                )),
                1 | 2 => n.sql(&format!(
                    "UPDATE mm SET a = a + {} WHERE id % 11 = {}",
                    n.id, n.id
                )),
                4 => n.sql(&format!(
                    "UPDATE mm SET code = 'c' || id WHERE id % 13 = {}",
                    n.id
                )),
                _ => String::new(),
            };
        }
        pause();
    }
    assert!(
        changes.len()
            == mesh.nodes[0]
                .sql("SELECT count(*) FROM mm_conflict.schema_change")
                .parse::<usize>()
                .unwrap()
    );
    // The new table takes writes on every node: keys of its own, and keys every node writes.
    for n in &mesh.nodes {
        n.sql(&format!(
            "INSERT INTO t2(id, v) SELECT g * 10 + {id}, 'own' FROM generate_series(1, 200) g;
             INSERT INTO t2(id, v) SELECT 100000 + g, 'node {id}' FROM generate_series(1, 50) g
                 ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            id = n.id
        ));
    }
    let tps: Vec<f64> = runs.into_iter().map(pgbench_tps).collect();
    let c = mesh.assert_converged("mm");
    let t2 = mesh.assert_converged("t2");
    assert_eq!(t2.rows, 3 * 200 + 50);
    for node in &mesh.nodes {
        assert_eq!(
            columns_of(node, "mm"),
            "id integer, info text, mod_time timestamp without time zone, mm_islocal boolean, \
             mm_nodeid smallint, mm_last_xacttime timestamp without time zone, \
             mm_last_stattime timestamp without time zone, note text, a bigint, code text",
            "node {}",
            node.id
        );
        // Every change is recorded on every node, with every node, and the publication sends
        // every column again.
        assert_eq!(
            node.sql(
                "SELECT count(*) FILTER (WHERE nodes = '{1,2,3}') FROM mm_conflict.schema_change"
            ),
            changes.len().to_string()
        );
        assert_eq!(
            node.sql("SELECT count(*) FROM pg_publication_rel WHERE prattrs IS NOT NULL"),
            "0"
        );
        assert_eq!(node.sql("SELECT count(*) FROM pg_prepared_xacts"), "0");
        assert_eq!(
            node.sql("SELECT count(*) FROM mm WHERE note LIKE 'node %'") != "0",
            true
        );
    }
    report("ddl_load", &mesh, &tps, &c);
    eprintln!(
        "[ddl_load] writes to the changed tables waited at most {waits:?} ms per change (the longest on any node)"
    );
}

/// `replicate_ddl` with a node down: refused before anything changes, naming the node; with every
/// node up again the same call goes through, committed node by node (no two-phase commit here).
/// Commands it refuses, and a schema change made without it, on a mesh.
#[test]
fn schema_change_with_a_node_down_changes_nothing() {
    let mut mesh = Mesh::start("ddl_down", 3);
    mesh.create_mesh("mm", ARTICLE_TABLE, "last_xacttime", "last", Some(2));
    mesh.nodes_go_down = true;
    mesh.nodes[0].sql(
        "CREATE FUNCTION public.state_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$",
    );
    let state = |q: &str| mesh.nodes[0].sql(&format!("SELECT public.state_of($q${q}$q$)"));
    // Refused, each with its SQLSTATE, before anything changes.
    for (call, expected) in [
        ("ALTER TABLE mm RENAME COLUMN info TO details", "0A000"),
        ("ALTER TABLE mm RENAME TO mm2", "0A000"),
        ("ALTER TABLE mm DROP COLUMN id", "2BP01"),
        ("CREATE INDEX CONCURRENTLY mm_info ON mm(info)", "25001"),
        ("ALTER TABLE mm ADD COLUMN", "42601"),
        ("ALTER TABLE nosuch ADD COLUMN x int", "42P01"),
    ] {
        let said = state(&format!(
            "SELECT * FROM mm_conflict.replicate_ddl($c${call}$c$)"
        ));
        assert!(said.starts_with(expected), "{call}: {said}");
    }
    mesh.nodes[2].stop("fast");
    let said = state("SELECT * FROM mm_conflict.replicate_ddl('ALTER TABLE mm ADD COLUMN x int')");
    assert!(
        said.starts_with("08001") && said.contains("node 3"),
        "{said}"
    );
    for node in &mesh.nodes[..2] {
        assert_eq!(
            node.sql("SELECT count(*) FROM mm_conflict.schema_change"),
            "0"
        );
        assert!(!columns_of(node, "mm").contains(" x "));
    }
    mesh.nodes[2].restart();
    mesh.wait_subscriptions_streaming(std::time::Duration::from_secs(60));
    let (rows, waited) = replicate_ddl(&mesh.nodes[0], "ALTER TABLE mm ADD COLUMN x int DEFAULT 7");
    eprintln!("[ddl_down] every node up again ({waited} ms):\n{rows}");
    assert!(!rows.contains("two-phase"), "{rows}");
    mesh.nodes[1].sql("INSERT INTO mm(id, info, x) VALUES (1000001, 'after', 8)");
    let c = mesh.assert_converged("mm");
    assert!(c.rows >= 1);
    for node in &mesh.nodes {
        assert_eq!(node.sql("SELECT x FROM mm WHERE id = 1000001"), "8");
    }
    // A schema change made without it is refused under mm_conflict.bare_ddl = error (pg_regress
    // shows the default's WARNING); mm_conflict's own columns cannot be dropped.
    let refused = mesh.nodes[0]
        .try_sql("SET mm_conflict.bare_ddl = error; ALTER TABLE mm ADD COLUMN z int")
        .unwrap_err();
    assert!(
        refused.contains("outside replicate_ddl() is refused"),
        "{refused}"
    );
    assert_eq!(
        state("ALTER TABLE mm DROP COLUMN mm_nodeid")
            .split(':')
            .next(),
        Some("2BP01")
    );
}

/// Counters that keep every increment: pgbench's own TPC-B (`-b tpcb-like`, not a script of
/// ours) on every node at once, its three balances declared delta columns by `create_mesh`. After
/// sync, on every node sum(abalance) = sum(tbalance) = sum(bbalance) = the sum over all nodes of
/// `pgbench_history.delta` (which has no primary key and stays local: each node's holds exactly
/// its own transactions), and the nodes are identical. Under last-writer-wins alone most branch
/// increments are lost (see issue 28).
#[test]
fn tpcb_balances_keep_every_increment() {
    let mut mesh = Mesh::start("tpcb_delta", 3);
    for node in &mesh.nodes {
        node.pgbench_init(1);
    }
    mesh.create_mesh_delta(
        &["pgbench_accounts", "pgbench_tellers", "pgbench_branches"],
        r#"{"pgbench_accounts": ["abalance"], "pgbench_tellers": ["tbalance"], "pgbench_branches": ["bbalance"]}"#,
    );
    let children: Vec<_> = mesh
        .nodes
        .iter()
        .map(|n| n.pgbench_builtin("tpcb-like", 2, load_seconds()))
        .collect();
    let counts: Vec<(f64, u64)> = children.into_iter().map(pgbench_counts).collect();
    let mut c = None;
    for table in ["pgbench_branches", "pgbench_tellers", "pgbench_accounts"] {
        c = Some(mesh.assert_converged(table));
    }
    let history: i64 = mesh
        .nodes
        .iter()
        .map(|n| {
            n.sql("SELECT coalesce(sum(delta), 0) FROM pgbench_history")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    let transactions: u64 = counts.iter().map(|c| c.1).sum();
    let history_rows: u64 = mesh
        .nodes
        .iter()
        .map(|n| {
            n.sql("SELECT count(*) FROM pgbench_history")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        history_rows, transactions,
        "one history row per transaction"
    );
    for node in &mesh.nodes {
        let sums = node.sql(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' ||
                    (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
                    (SELECT sum(bbalance) FROM pgbench_branches)",
        );
        assert_eq!(
            sums,
            format!("{history} {history} {history}"),
            "node {}: sum(abalance) sum(tbalance) sum(bbalance) against the history's {history}",
            node.id
        );
    }
    let merged: String = mesh.nodes[0].sql(
        "SELECT string_agg(table_name || ' ' || deltas_merged, ', ' ORDER BY table_name::text)
           FROM mm_conflict.conflict_stats",
    );
    let tps: Vec<f64> = counts.iter().map(|c| c.0).collect();
    report("tpcb delta", &mesh, &tps, c.as_ref().unwrap());
    eprintln!(
        "[tpcb delta] {transactions} transactions, every balance sum {history} on every node; \
         deltas merged on node 1: {merged}"
    );
    let branch_merges: i64 = mesh.nodes[0]
        .sql("SELECT deltas_merged FROM mm_conflict.conflict_stats WHERE table_name = 'pgbench_branches'::regclass")
        .parse()
        .unwrap();
    assert!(
        branch_merges > 0,
        "the one branch row took concurrent increments from every node: {merged}"
    );
}

/// `repair` merges delta columns instead of overwriting one node's counters with another's:
/// nodes 1 and 3 each increment the same rows while the table is out of their publication (the
/// increments never travel), then one repair from node 2 leaves every node with both.
#[test]
fn repair_merges_delta_increments() {
    let mut mesh = Mesh::start("delta_repair", 3);
    for node in &mesh.nodes {
        node.sql("CREATE TABLE acct(id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0)");
    }
    mesh.create_mesh_delta(&["acct"], r#"{"acct": ["balance"]}"#);
    mesh.nodes[0].sql("INSERT INTO acct SELECT g, 100 FROM generate_series(1, 50) g");
    mesh.assert_converged("acct");
    for (node, by) in [(0, 1), (2, 5)] {
        mesh.nodes[node].sql(&format!(
            "DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I DROP TABLE acct', mm_conflict.publication_name()); END$$;
             UPDATE acct SET balance = balance + {by} WHERE id <= 25;
             DO $$BEGIN EXECUTE format('ALTER PUBLICATION %I ADD TABLE acct', mm_conflict.publication_name()); END$$"
        ));
    }
    mesh.wait_synced();
    let sums: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| n.sql("SELECT sum(balance) FROM acct"))
        .collect();
    assert_eq!(
        sums,
        ["5025", "5000", "5125"],
        "the increments did not travel"
    );
    let repaired = mesh.nodes[1].sql("SELECT mm_conflict.repair('acct')");
    mesh.wait_synced();
    let c = mesh.assert_converged("acct");
    for node in &mesh.nodes {
        assert_eq!(
            node.sql("SELECT sum(balance) FROM acct"),
            (50 * 100 + 25 * 6).to_string(),
            "node {}: both nodes' increments, after repair",
            node.id
        );
    }
    assert_eq!(mesh.nodes[1].sql("SELECT mm_conflict.repair('acct')"), "0");
    eprintln!(
        "[delta repair] repair from node 2 wrote {repaired} keys; {} rows identical on every node, each with both nodes' increments",
        c.rows
    );
}

//! Partition trees: a partitioned table is replicated as its root (its leaves hold the rows).

use pgrx::pg_sys;

/// The root of the partition tree that partition `relid` belongs to (itself when it is not a
/// partition). A partitioned table is replicated as its root: tombstones, key locks and reports
/// name the root, so that nodes may partition it differently.
pub fn partition_root(relid: pg_sys::Oid) -> pg_sys::Oid {
    super::spi::read_one::<pg_sys::Oid>("SELECT pg_catalog.pg_partition_root($1)", &[relid.into()])
        .ok()
        .flatten()
        .unwrap_or(relid)
}

/// The leaf partitions (tables that hold rows) of partitioned table `relid`.
pub fn leaf_partitions(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    oids(
        "SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE isleaf ORDER BY level, relid",
        relid,
    )
}

/// Partition `relid` and every partitioned table above it, up to the root.
pub fn ancestors(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    let mut out = oids(
        "SELECT relid FROM pg_catalog.pg_partition_ancestors($1)",
        relid,
    );
    if !out.contains(&relid) {
        out.push(relid);
    }
    out
}

/// The oids `query` (one oid column, parameter `$1` = `relid`) returns.
fn oids(query: &str, relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    pgrx::spi::Spi::connect(|client| {
        let rows = client.select(query, None, &[relid.into()])?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
                out.push(oid);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default()
}

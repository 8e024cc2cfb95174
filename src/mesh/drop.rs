//! `mm_conflict.drop_mesh`: this node's side of the mesh, and with `everywhere` every peer's
//! first, planned by `mm_conflict_core::membership::drop_plan` and run best-effort
//! (`members::run_best_effort`): a peer that cannot be reached or fails is reported in one WARNING
//! and skipped. This node's steps run in the calling transaction.

use mm_conflict_core::membership::drop_plan;

use super::members::{run_best_effort, Handle};
use super::remote::{self, Connection};
use crate::error::MmError;
use crate::pg::subxact::catching;

pub fn drop_mesh(everywhere: bool) -> Result<(), MmError> {
    crate::pg::security::require_superuser("drop_mesh()")?;
    let Ok(me) = super::local::this_node() else {
        MmError::NotInMesh.notice();
        return Ok(());
    };
    let me = i64::from(me);
    let peers = if everywhere {
        remote::peers()
    } else {
        Vec::new()
    };
    if !peers.is_empty() {
        remote::require_dblink("drop_mesh()");
    }
    let mut problems = Vec::new();
    let mut handles = vec![(me, Handle::Here)];
    let mut reached = Vec::new();
    for peer in &peers {
        let node = i64::from(peer.node_id);
        let label = format!("node {node}");
        match catching(|| {
            Connection::open(format!("mm_conflict_drop_{node}"), &peer.conninfo, &label)
        }) {
            Ok(conn) => {
                handles.push((node, Handle::Remote(conn)));
                reached.push(node);
            }
            Err(message) => problems.push(format!("node {node}: {message}")),
        }
    }
    let tables: Vec<String> = super::local::mesh_tables()
        .into_iter()
        .map(|(table, _)| table)
        .collect();
    problems.extend(run_best_effort(&drop_plan(me, &reached, &tables), handles));
    if !problems.is_empty() {
        MmError::DroppedWithProblems { problems }.warn();
    }
    Ok(())
}

//! `mm_conflict.add_node`: observe every member of the mesh and the node to add, plan
//! (`mm_conflict_core::membership::add_plan`), run the steps over connections (this node's too:
//! a slot the new node creates here waits for every transaction that has written, the calling one
//! included), undoing them newest first on a failure (`members::run_plan`).

use std::time::{Duration, Instant};

use mm_conflict_core::membership::{add_plan, conninfo_query, SurvivorState};
use mm_conflict_core::mesh::NodeSpec;

use super::local::{check_node_id, this_node};
use super::members::{
    check_identity, close, connect_here, nothing_changed, observe, observe_here, run_plan, Handle,
};
use super::plan::{check_node, Remote};
use super::remote::{self, Connection};
use crate::error::MmError;
use crate::pg::subxact::catching_error;

const FUNCTION: &str = "add_node()";

/// What `add_node` was asked.
pub struct Request<'a> {
    pub node_id: i32,
    pub conninfo: &'a str,
    pub copy_from: Option<i32>,
    pub node_name: Option<&'a str>,
    /// The timeout's text (for messages) and milliseconds.
    pub timeout: (String, i64),
}

/// `mm_conflict.add_node`; returns each step run (node, what), and last how long it took.
pub fn add_node(request: Request) -> Result<Vec<(i32, String)>, MmError> {
    crate::pg::security::require_superuser(FUNCTION)?;
    let id = i64::from(check_node_id(Some(i64::from(request.node_id)))?);
    let conninfo = request.conninfo;
    if let Some(name) = request.node_name {
        if name.trim().is_empty() {
            return Err(MmError::EmptyNodeName);
        }
    }
    let me = i64::from(this_node()?);
    let copy_from = request.copy_from.map_or(me, i64::from);
    let (timeout, timeout_ms) = request.timeout;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    let peers = remote::peers();
    if peers.is_empty() {
        return Err(MmError::NoPeers {
            function: FUNCTION.into(),
        });
    }
    if id == me {
        return Err(MmError::NodeIdInUse { node: id });
    }
    // A peer of that id may be the node itself, coming back (its slots lost): it is then checked
    // to be that node, and re-added.
    let known = peers.iter().any(|p| i64::from(p.node_id) == id);
    let peers: Vec<&remote::Peer> = peers
        .iter()
        .filter(|p| i64::from(p.node_id) != id)
        .collect();
    if copy_from == id
        || (copy_from != me && !peers.iter().any(|p| i64::from(p.node_id) == copy_from))
    {
        return Err(MmError::NotANode { node: copy_from });
    }
    // The new node creates slots here: this transaction must not hold them up, nor write to
    // create dblink.
    remote::refuse_written_transaction(FUNCTION)?;
    remote::require_dblink_creating(FUNCTION, false);
    let tables = super::local::mesh_tables();
    if tables.is_empty() {
        return Err(MmError::MeshWithoutTables);
    }
    let names: Vec<String> = tables.iter().map(|(t, _)| t.clone()).collect();

    // 1. Observe every member (this node as its peers reach it), then the new node.
    let mut handles: Vec<(i64, Handle)> = Vec::new();
    let mut members: Vec<(i64, String, SurvivorState)> = Vec::new();
    for peer in peers {
        let node = i64::from(peer.node_id);
        match observe("mm_conflict_add", node, &peer.conninfo, id, me) {
            Ok((conn, state)) => {
                handles.push((node, Handle::Remote(conn)));
                if let Err(e) = check_identity(node, state.node_id) {
                    close(handles);
                    return Err(e);
                }
                members.push((node, peer.conninfo.clone(), state));
            }
            Err(caught) => {
                close(handles);
                nothing_changed(FUNCTION, &format!("node {node}"), "connect", caught)
            }
        }
    }
    let label = format!("node {id} (new)");
    let (conn, state) = match catching_error(|| {
        let conn = Connection::open(format!("mm_conflict_add_{id}"), conninfo, &label);
        let state = super::create::inspect(&conn, &names);
        (conn, state)
    }) {
        Ok(found) => found,
        Err(caught) => {
            close(handles);
            nothing_changed(FUNCTION, &label, "connect", caught)
        }
    };
    // A node that comes back tells how it reached this one.
    let from_new = conn.run(&Remote::query(conninfo_query(me, id)));
    handles.push((id, Handle::Remote(conn)));
    // The conninfo must reach the node the id says (or one without an id yet).
    let checked = match state.node_id {
        Some(found) if found != id => Err(MmError::PeerIsAnotherNode {
            found,
            expected: id,
        }),
        None if known => Err(MmError::NodeIdInUse { node: id }),
        _ => check_node(&state, id),
    };
    if let Err(e) = checked {
        close(handles);
        return Err(e);
    }

    // How the others reach this node: a member's subscription from it, or the new node's (one
    // that comes back).
    let Some(own_conninfo) = members
        .iter()
        .find_map(|(_, _, s)| s.conninfo_of_caller.clone())
        .or(from_new)
    else {
        let node = members.first().map_or(id, |m| m.0);
        close(handles);
        return Err(MmError::NotFullMesh { node, peer: me });
    };
    let own = observe_here(id, me);
    let (conn, kept) = connect_here(FUNCTION, "mm_conflict_add", me, &own_conninfo, handles);
    let mut handles = kept;
    handles.insert(0, (me, Handle::Remote(conn)));
    members.insert(0, (me, own_conninfo, own));
    // 2. Plan, 3. run.
    let new = NodeSpec {
        id,
        name: request.node_name.map(str::to_string),
        conninfo: conninfo.to_string(),
    };
    let plan = add_plan(&new, &state, &members, copy_from, &tables);
    let started = Instant::now();
    run_plan(FUNCTION, &plan, handles, (&timeout, deadline), "");
    let mut lines: Vec<(i32, String)> = plan
        .iter()
        .map(|step| (step.node as i32, step.name.clone()))
        .collect();
    lines.push((
        id as i32,
        format!(
            "joined, with the rows of node {copy_from}, in {} ms",
            started.elapsed().as_millis()
        ),
    ));
    Ok(lines)
}

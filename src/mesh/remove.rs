//! `mm_conflict.remove_node`: observe every survivor (and the node removed, if it can be
//! reached), plan (`mm_conflict_core::membership::removal_plan`), run the plan's steps over
//! connections, each committed on its node; on a failure before the first drop, undo what was
//! done (subscriptions stopped are enabled again), newest first.
//!
//! The steps of this node run over a connection to itself too (each must commit before the next
//! waits for its effect), reached with the conninfo a survivor's subscription from it holds. With
//! no other survivor there is nothing to wait for, and they run in the calling transaction.

use std::time::{Duration, Instant};

use mm_conflict_core::membership::{removal_plan, SurvivorState};

use super::local::{check_node_id, this_node};
use super::members::{
    check_identity, close, connect_here, nothing_changed, observe, observe_here, run_plan, Handle,
};
use super::plan::Remote;
use super::remote::{self, Connection};
use crate::error::MmError;
use crate::pg::subxact::catching;

const FUNCTION: &str = "remove_node()";

/// A row of `remove_node`'s result: a node, whether everything that served the removed node is
/// gone there, and what was done or not.
pub type Row = (i32, bool, String);

/// `mm_conflict.remove_node(node_id, force, timeout)`: `timeout` (its text, for messages, and in
/// milliseconds) bounds the waits.
pub fn remove_node(
    node_id: i32,
    force: bool,
    (timeout, timeout_ms): (String, i64),
) -> Result<Vec<Row>, MmError> {
    crate::pg::security::require_superuser(FUNCTION)?;
    let target = i64::from(check_node_id(Some(i64::from(node_id)))?);
    let me = i64::from(this_node()?);
    if target == me {
        return Err(MmError::RemoveSelf { node: target });
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    let peers = remote::peers();
    remote::require_dblink(FUNCTION);
    let mut rows: Vec<Row> = Vec::new();

    // 1. Observe: every survivor this node subscribes to, then the node removed.
    let mut handles: Vec<(i64, Handle)> = Vec::new();
    let mut states: Vec<(i64, SurvivorState)> = Vec::new();
    for peer in peers.iter().filter(|p| i64::from(p.node_id) != target) {
        let node = i64::from(peer.node_id);
        match observe("mm_conflict_remove", node, &peer.conninfo, target, me) {
            Ok((conn, state)) => {
                handles.push((node, Handle::Remote(conn)));
                if let Err(e) = check_identity(node, state.node_id) {
                    close(handles);
                    return Err(e);
                }
                states.push((node, state));
            }
            Err(caught) if force => rows.push((
                peer.node_id,
                false,
                format!("not reached, nothing changed there: {}", caught.message),
            )),
            Err(caught) => {
                close(handles);
                nothing_changed(FUNCTION, &format!("node {node}"), "connect", caught)
            }
        }
    }
    // This node, as it is now (read here; nothing is changed yet).
    let own = observe_here(target, me);
    states.insert(0, (me, own));
    let target_conn = peers
        .iter()
        .find(|p| i64::from(p.node_id) == target)
        .and_then(|p| {
            catching(|| {
                let conn = Connection::open(
                    format!("mm_conflict_remove_{target}"),
                    &p.conninfo,
                    &format!("node {target}"),
                );
                let id = conn.run(&Remote::query(
                    "SELECT node_id FROM mm_conflict.node".into(),
                ));
                (conn, id)
            })
            .ok()
        });
    let target_reached = match target_conn {
        Some((conn, id)) if id.as_deref() == Some(&target.to_string()) => {
            handles.push((target, Handle::Remote(conn)));
            true
        }
        Some((conn, _)) => {
            // Its conninfo reaches another node (or one that left already): leave it alone.
            conn.close();
            false
        }
        None => false,
    };
    if !target_reached && !states.iter().any(|(_, s)| s.serves_target()) {
        close(handles);
        return Err(MmError::NotANode { node: target });
    }
    // This node's steps: over a connection to itself when there is someone to wait for (each
    // must commit before the next waits for its effect), reached as the survivors reach it.
    let here = if states.len() == 1 {
        Handle::Here
    } else {
        let missing = states
            .iter()
            .skip(1)
            .find(|(_, s)| s.conninfo_of_caller.is_none());
        if let Some((node, _)) = missing {
            let node = *node;
            close(handles);
            return Err(MmError::NotFullMesh { node, peer: me });
        }
        let conninfo = states[1].1.conninfo_of_caller.clone().unwrap_or_default();
        let (conn, kept) = connect_here(FUNCTION, "mm_conflict_remove", me, &conninfo, handles);
        handles = kept;
        Handle::Remote(conn)
    };
    handles.insert(0, (me, here));

    // 2. Plan, 3. run.
    let plan = removal_plan(target, &states, target_reached);
    let caught_up = run_plan(
        FUNCTION,
        &plan,
        handles,
        (&timeout, deadline),
        &format!("Some of node {target}'s subscriptions, slots or peer rows were dropped already: call remove_node({target}) again to finish."),
    )
    .caught_up;

    // 4. What each node did.
    let waited = caught_up
        .map(|d| {
            format!(
                "; the survivors had each other's changes after {} ms",
                d.as_millis()
            )
        })
        .unwrap_or_default();
    for (node, state) in &states {
        let detail = if !state.serves_target() {
            "nothing served it here".to_string()
        } else {
            let dropped: Vec<&str> = [
                (state.receiving.is_some(), "the subscription from it"),
                (state.slot, "the slot it read"),
                (state.peer, "its peer row"),
            ]
            .iter()
            .filter(|(had, _)| *had)
            .map(|(_, what)| *what)
            .collect();
            format!("dropped {}{waited}", dropped.join(", "))
        };
        rows.push((*node as i32, true, detail));
    }
    rows.push((
        target as i32,
        target_reached,
        if target_reached {
            "left the mesh with its rows (drop_mesh() ran there)".into()
        } else {
            "not reached: its own subscriptions and slots stay there; run SELECT mm_conflict.drop_mesh() on it before it runs again".into()
        },
    ));
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

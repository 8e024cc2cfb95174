//! `mm_conflict.replicate_ddl`: observe every node (reachable, a full mesh, able to run it), try
//! the command here (rolled back: what it makes disappear, or why it is refused), plan
//! (`mm_conflict_core::ddl::ddl_plan`), run the plan's steps over connections (this node's too:
//! each node's change is a transaction of its own, committed together at the end); on a failure
//! before the first commit, everything is undone, newest first.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mm_conflict_core::ddl::{
    check_full_mesh, ddl_plan, ddl_query, two_phase, DdlChange, DdlNodeState,
};

use super::local::this_node;
use super::members::{
    answer_here, check_identity, close, connect_here, nothing_changed, observe_with, run_plan,
    Handle,
};
use super::remote;
use crate::error::MmError;
use crate::pg::subxact::catching_error;

const FUNCTION: &str = "replicate_ddl()";
const PREFIX: &str = "mm_conflict_ddl";

/// A row of `replicate_ddl`'s result: a node and what happened there.
pub type Row = (i32, String);

/// `mm_conflict.replicate_ddl(command, timeout)`: `search_path` is the caller's; `timeout` (its
/// text, for messages, and in milliseconds) bounds each wait.
pub fn replicate_ddl(
    command: &str,
    search_path: &str,
    (timeout, timeout_ms): (String, i64),
) -> Result<Vec<Row>, MmError> {
    crate::pg::security::require_superuser(FUNCTION)?;
    if command.trim().is_empty() {
        return Err(MmError::EmptyArgument {
            function: FUNCTION.into(),
            argument: "command".into(),
        });
    }
    let me = i64::from(this_node()?);
    remote::refuse_written_transaction(FUNCTION)?;
    let peers = remote::peers();
    if peers.is_empty() {
        return Err(MmError::NoPeers {
            function: FUNCTION.into(),
        });
    }
    remote::require_dblink(FUNCTION);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);

    // 1. Observe: every peer, then this node.
    let mut handles: Vec<(i64, Handle)> = Vec::new();
    let mut states: Vec<(i64, DdlNodeState)> = Vec::new();
    for peer in &peers {
        let node = i64::from(peer.node_id);
        let observed =
            observe_with::<DdlNodeState>(PREFIX, node, &peer.conninfo, ddl_query(node, me));
        match observed {
            Ok((conn, state)) => {
                handles.push((node, Handle::Remote(conn)));
                let refused = check_identity(node, state.node_id)
                    .err()
                    .or_else(|| (!state.can_apply).then_some(MmError::PeerWithoutDdl { node }));
                if let Some(e) = refused {
                    close(handles);
                    return Err(e);
                }
                states.push((node, state));
            }
            Err(caught) => {
                close(handles);
                nothing_changed(FUNCTION, &format!("node {node}"), "connect", caught)
            }
        }
    }
    let own: DdlNodeState = answer_here(&ddl_query(me, me), me);
    states.insert(0, (me, own));
    if let Err((node, peer)) = check_full_mesh(&states) {
        close(handles);
        return Err(MmError::NotFullMesh { node, peer });
    }

    // 2. Try the command here (rolled back): the command's own errors, and the refusals, come
    // before anything changes anywhere.
    let restrictions =
        match catching_error(|| super::schema::probe(command, search_path, timeout_ms)) {
            Ok(Ok(restrictions)) => restrictions,
            Ok(Err(e)) => {
                close(handles);
                return Err(e);
            }
            Err(caught) => {
                close(handles);
                caught.reraise()
            }
        };

    // This node's steps run over a connection to itself: its change commits with the others'.
    let conninfo = states[1].1.conninfo_of_caller.clone().unwrap_or_default();
    let (conn, mut handles) = connect_here(FUNCTION, PREFIX, me, &conninfo, handles);
    handles.insert(0, (me, Handle::Remote(conn)));

    // 3. Plan, 4. run.
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let id = format!("{me}-{micros}");
    let change = DdlChange {
        command,
        search_path,
        origin: me,
        id: &id,
        lock_timeout_ms: timeout_ms.max(1),
    };
    let plan = ddl_plan(&states, &change, &restrictions);
    let gid = change.gid();
    let after_commit = if two_phase(&states) {
        format!("Some nodes committed the change already. On each node that did not, look for the prepared transaction '{gid}' (pg_prepared_xacts) and COMMIT PREPARED it there.")
    } else {
        format!("Some nodes committed the change already (change {id} in mm_conflict.schema_change): run the command by hand on each node that did not.")
    };
    let ran = run_plan(
        FUNCTION,
        &plan,
        handles,
        (&timeout, deadline),
        &after_commit,
    );

    // 5. What each node did: what its change answered, and how long the tables it changed were
    // locked there (from its change to its commit).
    let mut rows = Vec::new();
    for (node, _) in &states {
        let at = |name: &str| {
            plan.iter()
                .position(|s| s.node == *node && s.name == name)
                .unwrap_or(0)
        };
        let (applied, commit) = (at("apply the change"), at("commit the change"));
        let locked: Duration = ran.steps[applied..=commit].iter().map(|(_, d)| *d).sum();
        let answer: serde_json::Value = ran.steps[applied]
            .0
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let list = |key: &str| -> Vec<String> {
            answer[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut detail = format!(
            "changed{}; writes to the tables it changed waited at most {} ms",
            if two_phase(&states) {
                " (two-phase commit)"
            } else {
                ""
            },
            locked.as_millis()
        );
        if let Some(waited) = ran.caught_up.filter(|_| !restrictions.is_empty()) {
            detail.push_str(&format!(
                "; what it removes stopped travelling after {} ms",
                waited.as_millis()
            ));
        }
        for (key, what) in [
            ("joined", "joined the mesh"),
            ("skipped", "not replicated (no primary key)"),
        ] {
            let tables = list(key);
            if !tables.is_empty() {
                detail.push_str(&format!("; {what}: {}", tables.join(", ")));
            }
        }
        rows.push((*node as i32, detail));
    }
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

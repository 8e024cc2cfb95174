//! `mm_conflict.remove_node`: observe every survivor (and the node removed, if it can be
//! reached), plan (`mm_conflict_core::membership::removal_plan`), run the plan's steps over
//! connections, each committed on its node; on a failure before the first drop, undo what was
//! done (subscriptions stopped are enabled again), newest first.
//!
//! The steps of this node run over a connection to itself too (each must commit before the next
//! waits for its effect), reached with the conninfo a survivor's subscription from it holds. With
//! no other survivor there is nothing to wait for, and they run in the calling transaction.

use std::time::{Duration, Instant};

use mm_conflict_core::membership::{
    removal_plan, survivor_query, Action, MemberStep, SurvivorState,
};

use super::local::{check_node_id, this_node};
use super::plan::{failure_of, Remote};
use super::remote::{self, Connection, Value};
use crate::error::MmError;
use crate::pg::spi::read_one;
use crate::pg::spi::sleep_ms;
use crate::pg::subxact::{catching, catching_error, Caught};

const FUNCTION: &str = "remove_node()";

/// A row of `remove_node`'s result: a node, whether everything that served the removed node is
/// gone there, and what was done or not.
pub type Row = (i32, bool, String);

/// Where a node's steps run.
pub(super) enum Handle {
    Remote(Connection),
    /// In the calling transaction (this node, when no other survivor was reached).
    Here,
}

impl Handle {
    fn run(&self, remote: &Remote) -> Option<String> {
        match self {
            Handle::Remote(conn) => conn.run(remote),
            Handle::Here if remote.query => {
                read_one::<String>(&remote.sql, &[]).unwrap_or_else(|e| spi_failed(&e))
            }
            Handle::Here => {
                pgrx::spi::Spi::run(&remote.sql).unwrap_or_else(|e| spi_failed(&e));
                None
            }
        }
    }

    fn drop_slot(&self, slot: &str) {
        match self {
            Handle::Remote(conn) => conn.drop_slot(slot),
            Handle::Here => super::local::drop_slot(slot).unwrap_or_else(|e| e.raise()),
        }
    }
}

pub(super) fn spi_failed(e: &dyn std::fmt::Display) -> ! {
    MmError::Internal {
        what: format!("SPI: {e}"),
    }
    .raise()
}

pub(super) fn parse_state(text: Option<String>, node: i64) -> SurvivorState {
    serde_json::from_str(&text.unwrap_or_default()).unwrap_or_else(|e| {
        MmError::Internal {
            what: format!("node {node}'s answer to remove_node() does not parse: {e}"),
        }
        .raise()
    })
}

/// A failure before anything was changed: re-raised with where it happened.
pub(super) fn nothing_changed(function: &str, node: &str, step: &str, caught: Caught) -> ! {
    let (message, detail) = failure_of(
        function,
        node,
        step,
        &caught.message,
        caught.detail.as_deref(),
        &[],
        &[],
    );
    caught.raise_as(message, Some(detail))
}

/// `mm_conflict.remove_node(node_id, force, timeout)`: `timeout` (its text, for messages, and in
/// milliseconds) bounds the waits.
pub fn remove_node(
    node_id: Option<i32>,
    force: bool,
    (timeout, timeout_ms): (String, i64),
) -> Result<Vec<Row>, MmError> {
    crate::pg::security::require_superuser(FUNCTION)?;
    let target = match node_id {
        None => {
            return Err(MmError::NullArgument {
                function: FUNCTION.into(),
                argument: "node_id".into(),
            })
        }
        Some(id) => i64::from(check_node_id(Some(i64::from(id)))?),
    };
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
        let label = format!("node {node}");
        let opened = catching_error(|| {
            let conn =
                Connection::open(format!("mm_conflict_remove_{node}"), &peer.conninfo, &label);
            let state = parse_state(
                conn.run(&Remote::query(survivor_query(target, node, me))),
                node,
            );
            (conn, state)
        });
        match opened {
            Ok((conn, state)) => {
                if state.node_id != Some(node) {
                    conn.close();
                    close(handles);
                    return Err(MmError::PeerIsAnotherNode {
                        found: state.node_id.unwrap_or(0),
                        expected: node,
                    });
                }
                handles.push((node, Handle::Remote(conn)));
                states.push((node, state));
            }
            Err(caught) if force => rows.push((
                peer.node_id,
                false,
                format!("not reached, nothing changed there: {}", caught.message),
            )),
            Err(caught) => {
                close(handles);
                nothing_changed(FUNCTION, &label, "connect", caught)
            }
        }
    }
    // This node, as it is now (read here; nothing is changed yet).
    let own = parse_state(
        read_one::<String>(&survivor_query(target, me, me), &[]).unwrap_or_else(|e| spi_failed(&e)),
        me,
    );
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
    let others: Vec<i64> = states.iter().skip(1).map(|(n, _)| *n).collect();
    let here = if others.is_empty() {
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
        let label = format!("node {me} (this node)");
        match catching_error(|| {
            Connection::open(format!("mm_conflict_remove_{me}"), &conninfo, &label)
        }) {
            Ok(conn) => Handle::Remote(conn),
            Err(caught) => {
                close(handles);
                nothing_changed(FUNCTION, &label, "connect", caught)
            }
        }
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
    );

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

/// Runs `plan`'s steps in order, each on its node's handle, and closes the handles. On an error:
/// if no step that `drops` ran yet, undoes the steps run so far, newest first; raises the error
/// with its SQLSTATE and hint, saying where it happened and what was undone (and `after_drop`
/// when something was dropped already). Returns how long the catch-up waits took, if any ran.
pub(super) fn run_plan(
    function: &str,
    plan: &[MemberStep],
    handles: Vec<(i64, Handle)>,
    (timeout, deadline): (&str, Instant),
    after_drop: &str,
) -> Option<Duration> {
    let handle = |node: i64| -> &Handle {
        &handles
            .iter()
            .find(|(n, _)| *n == node)
            .expect("every node of the plan was reached")
            .1
    };
    let mut done: Vec<usize> = Vec::new();
    let catch_up_began = std::cell::Cell::new(None::<Instant>);
    let outcome = catching_error(|| {
        for (k, step) in plan.iter().enumerate() {
            run_step(
                step,
                handle(step.node),
                (timeout, deadline),
                &catch_up_began,
            );
            done.push(k);
        }
    });
    let caught_up = catch_up_began.get().map(|began| began.elapsed());
    if let Err(caught) = outcome {
        let failed = &plan[done.len()];
        let (mut undone, mut not_undone) = (Vec::new(), Vec::new());
        let dropped = done.iter().any(|&k| plan[k].drops);
        if !dropped {
            for &k in done.iter().rev() {
                let step = &plan[k];
                let Some(undo) = &step.undo else { continue };
                let what = format!("{} on node {}", step.name, step.node);
                match catching(|| handle(step.node).run(undo)) {
                    Ok(_) => undone.push(what),
                    Err(message) => not_undone.push(format!("{what} ({message})")),
                }
            }
        }
        let (message, mut detail) = failure_of(
            function,
            &format!("node {}", failed.node),
            &failed.name,
            &caught.message,
            caught.detail.as_deref(),
            &undone,
            &not_undone,
        );
        if dropped {
            detail.push('\n');
            detail.push_str(after_drop);
        }
        close(handles);
        caught.raise_as(message, Some(detail));
    }
    close(handles);
    caught_up
}

pub(super) fn close(handles: Vec<(i64, Handle)>) {
    for (_, handle) in handles {
        if let Handle::Remote(conn) = handle {
            let _ = catching(|| conn.close());
        }
    }
}

/// Runs one step of the plan on its node.
fn run_step(
    step: &MemberStep,
    on: &Handle,
    (timeout, deadline): (&str, Instant),
    catch_up_began: &std::cell::Cell<Option<Instant>>,
) {
    let left_ms = || {
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i64
    };
    match &step.action {
        Action::Exec(remote) => {
            on.run(remote);
        }
        Action::Until(query) => {
            while on.run(query).as_deref() != Some("t") {
                if left_ms() == 0 {
                    MmError::StepTimeout {
                        step: step.name.clone(),
                        node: step.node,
                        timeout: timeout.into(),
                    }
                    .raise();
                }
                sleep_ms(20);
            }
        }
        Action::CatchUp(others) => {
            if catch_up_began.get().is_none() {
                catch_up_began.set(Some(Instant::now()));
            }
            let Handle::Remote(conn) = on else {
                unreachable!("a lone survivor has no one to wait for")
            };
            let answer = conn.call(
                "_wait_for_peers",
                &[
                    Value::Ints(Some(&others[..])),
                    Value::Interval(&format!("{} milliseconds", left_ms())),
                ],
            );
            if answer.as_deref() != Some("t") {
                MmError::CatchUpTimeout {
                    node: format!(
                        "node {}",
                        others
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    from: format!("node {}", step.node),
                    timeout: timeout.into(),
                }
                .raise();
            }
        }
        Action::DropSlot(slot) => on.drop_slot(slot),
    }
}

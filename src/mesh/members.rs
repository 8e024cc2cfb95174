//! The runner of the membership plans (`mm_conflict_core::membership`: `remove_node`,
//! `add_node`, `drop_mesh`) and of `replicate_ddl`'s (`mm_conflict_core::ddl`), and what they observe of each node first: each step on its node, over a dblink connection (`Handle::Remote`) or in the
//! calling transaction (`Handle::Here`), in order; on a failure, undo newest first and raise the
//! error with where it happened.

use std::time::{Duration, Instant};

use mm_conflict_core::membership::{survivor_query, Action, MemberStep, SurvivorState};

use super::plan::{failure_of, Remote};
use super::remote::{spi_failed, Connection, Value};
use crate::error::MmError;
use crate::pg::spi::{read_one, sleep_ms};
use crate::pg::subxact::{catching, catching_error, Caught};

/// Where a node's steps run.
pub enum Handle {
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

/// A node's one-value JSON answer to an observation query, read as `T`.
pub fn parse_answer<T: serde::de::DeserializeOwned>(text: Option<String>, node: i64) -> T {
    serde_json::from_str(&text.unwrap_or_default()).unwrap_or_else(|e| {
        MmError::Internal {
            what: format!("node {node}'s answer does not parse: {e}"),
        }
        .raise()
    })
}

/// Opens connection `{prefix}_{node}` to node `node` and reads its answer to `query` (one JSON
/// value). The error of a node that cannot be reached or read.
pub fn observe_with<T: serde::de::DeserializeOwned>(
    prefix: &str,
    node: i64,
    conninfo: &str,
    query: String,
) -> Result<(Connection, T), Caught> {
    catching_error(|| {
        let conn = Connection::open(
            format!("{prefix}_{node}"),
            conninfo,
            &format!("node {node}"),
        );
        let state = parse_answer(conn.run(&Remote::query(query)), node);
        (conn, state)
    })
}

/// [`observe_with`] `survivor_query`: what node `node` says of node `subject` (asked by node
/// `me`).
pub fn observe(
    prefix: &str,
    node: i64,
    conninfo: &str,
    subject: i64,
    me: i64,
) -> Result<(Connection, SurvivorState), Caught> {
    observe_with(prefix, node, conninfo, survivor_query(subject, node, me))
}

/// What this node, `me`, says of node `subject`: [`observe`] here, in the calling transaction.
pub fn observe_here(subject: i64, me: i64) -> SurvivorState {
    answer_here(&survivor_query(subject, me, me), me)
}

/// This node's (`me`) answer to an observation query, read here in the calling transaction.
pub fn answer_here<T: serde::de::DeserializeOwned>(query: &str, me: i64) -> T {
    parse_answer(
        read_one::<String>(query, &[]).unwrap_or_else(|e| spi_failed(&e)),
        me,
    )
}

/// `22023` unless `node_id`, what a node said its id is, is `node` (its conninfo reaches another
/// node).
pub fn check_identity(node: i64, node_id: Option<i64>) -> Result<(), MmError> {
    match node_id {
        Some(found) if found == node => Ok(()),
        found => Err(MmError::PeerIsAnotherNode {
            found: found.unwrap_or(0),
            expected: node,
        }),
    }
}

/// Opens connection `{prefix}_{me}` to this node, `me`, with `conninfo` (how its peers reach it):
/// its steps must commit one by one. On a failure, closes `handles` and raises the error as
/// `function`'s, with nothing changed.
pub fn connect_here(
    function: &str,
    prefix: &str,
    me: i64,
    conninfo: &str,
    handles: Vec<(i64, Handle)>,
) -> (Connection, Vec<(i64, Handle)>) {
    let label = format!("node {me} (this node)");
    match catching_error(|| Connection::open(format!("{prefix}_{me}"), conninfo, &label)) {
        Ok(conn) => (conn, handles),
        Err(caught) => {
            close(handles);
            nothing_changed(function, &label, "connect", caught)
        }
    }
}

/// A failure before anything was changed: re-raised with where it happened.
pub fn nothing_changed(function: &str, node: &str, step: &str, caught: Caught) -> ! {
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

/// What running a plan gave.
pub struct Ran {
    /// How long the catch-up waits took in all, if any ran.
    pub caught_up: Option<Duration>,
    /// For each step, in the plan's order: its answer (the value of a query run by `Exec`), and
    /// how long it took.
    pub steps: Vec<(Option<String>, Duration)>,
}

/// Runs `plan`'s steps in order, each on its node's handle, and closes the handles. On an error:
/// if no step that `drops` ran yet, undoes the steps run so far, newest first; raises the error
/// with its SQLSTATE and hint, saying where it happened and what was undone (and `after_drop`
/// when something was dropped already).
pub fn run_plan(
    function: &str,
    plan: &[MemberStep],
    handles: Vec<(i64, Handle)>,
    (timeout, deadline): (&str, Instant),
    after_drop: &str,
) -> Ran {
    let handle = |node: i64| -> &Handle {
        &handles
            .iter()
            .find(|(n, _)| *n == node)
            .expect("every node of the plan was reached")
            .1
    };
    let mut done: Vec<usize> = Vec::new();
    let mut answers: Vec<(Option<String>, Duration)> = Vec::new();
    let waited = std::cell::Cell::new(None::<Duration>);
    let outcome = catching_error(|| {
        for (k, step) in plan.iter().enumerate() {
            let began = Instant::now();
            let answer = run_step(step, handle(step.node), (timeout, deadline), &waited);
            answers.push((answer, began.elapsed()));
            done.push(k);
        }
    });
    let caught_up = waited.get();
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
    Ran {
        caught_up,
        steps: answers,
    }
}

/// Runs `plan`'s steps in order and closes the handles: a step on another node that fails, or
/// that returns a JSON array of problems, adds to the problems returned ("node 2: ..."); a step
/// here (`Handle::Here`) that fails raises its error.
pub fn run_best_effort(plan: &[MemberStep], handles: Vec<(i64, Handle)>) -> Vec<String> {
    let mut problems = Vec::new();
    for step in plan {
        let Some((_, handle)) = handles.iter().find(|(n, _)| *n == step.node) else {
            continue;
        };
        let Action::Exec(remote) = &step.action else {
            unreachable!("best-effort plans only execute statements")
        };
        let answer = match handle {
            Handle::Here => handle.run(remote),
            Handle::Remote(_) => match catching(|| handle.run(remote)) {
                Ok(answer) => answer,
                Err(message) => {
                    problems.push(format!("node {}: {message}", step.node));
                    continue;
                }
            },
        };
        if let Some(list) = answer.filter(|a| a.starts_with('[')) {
            problems.extend(serde_json::from_str::<Vec<String>>(&list).unwrap_or_default());
        }
    }
    close(handles);
    problems
}

pub fn close(handles: Vec<(i64, Handle)>) {
    for (_, handle) in handles {
        if let Handle::Remote(conn) = handle {
            let _ = catching(|| conn.close());
        }
    }
}

/// Runs one step of the plan on its node; the value of a query run by `Exec`.
fn run_step(
    step: &MemberStep,
    on: &Handle,
    (timeout, deadline): (&str, Instant),
    waited: &std::cell::Cell<Option<Duration>>,
) -> Option<String> {
    let left_ms = || {
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i64
    };
    match &step.action {
        Action::Exec(remote) => return on.run(remote),
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
            let began = Instant::now();
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
            waited.set(Some(waited.get().unwrap_or_default() + began.elapsed()));
        }
        Action::DropSlot(slot) => on.drop_slot(slot),
    }
    None
}

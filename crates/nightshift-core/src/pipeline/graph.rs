//! The task graph's algorithms: the order tasks run in and the cycle a bad file has.
//!
//! Hand-written rather than petgraph's: the order must be stable in file order (it is what
//! `explain`, the UI and `tasks` list), and a cycle is reported as its whole path, where
//! petgraph's `toposort` names one node of it. Both are a few dozen lines over a graph of at
//! most a few hundred tasks.

use std::collections::HashMap;

use super::model::Task;

/// Each task's index by id, the topological order (indices), and each task's rank in it.
pub(super) fn derive(tasks: &[Task]) -> (HashMap<String, usize>, Vec<usize>, Vec<usize>) {
    let index: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    let topo = topo_indices(tasks, &index);
    let mut rank = vec![usize::MAX; tasks.len()];
    for (r, &i) in topo.iter().enumerate() {
        rank[i] = r;
    }
    (index, topo, rank)
}

/// Kahn-style layering in file order; tasks left out form a cycle (reported at validation).
fn topo_indices(tasks: &[Task], index: &HashMap<String, usize>) -> Vec<usize> {
    let mut placed = vec![false; tasks.len()];
    let mut out = Vec::with_capacity(tasks.len());
    loop {
        let before = out.len();
        for (i, t) in tasks.iter().enumerate() {
            if !placed[i]
                && t.depends_on
                    .iter()
                    .all(|d| index.get(d).is_some_and(|&j| placed[j]))
            {
                placed[i] = true;
                out.push(i);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}
/// A cycle as a list of task ids (first repeated at the end), if the graph has one.
pub(super) fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut mark = vec![0u8; tasks.len()];
    let mut stack: Vec<usize> = vec![];
    fn visit(
        i: usize,
        tasks: &[Task],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        mark[i] = 1;
        stack.push(i);
        for d in &tasks[i].depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            if mark[j] == 1 {
                let pos = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[pos..].iter().map(|&s| tasks[s].id.clone()).collect();
                cycle.push(tasks[j].id.clone());
                return Some(cycle);
            }
            if mark[j] == 0
                && let Some(c) = visit(j, tasks, index, mark, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    for i in 0..tasks.len() {
        if mark[i] == 0
            && let Some(c) = visit(i, tasks, &index, &mut mark, &mut stack)
        {
            return Some(c);
        }
    }
    None
}

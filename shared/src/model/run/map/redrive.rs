//! Redriving a map: only the children that did not succeed run again, each at the size the redrive asks for or the one it last ran at, and the map is judged whole.
//!
//! A map attempt that was closed has its results (`results.jsonl`, one line per child
//! with its status, items and size). When its stage is redriven, the new attempt is a
//! [`MapRedrive`] of it: the map worker's expansion reads those results instead of the
//! map's source, takes the lines that are not `SUCCEEDED` (failed, and never run), and
//! writes them — each keeping its map index — as the new attempt's item lists, grouped by
//! size ([`RedriveExpanded`]). Its close writes the whole map's results again: the
//! redriven children's lines and the earlier successes carried over, so a later redrive
//! reads them all. The map is judged on all its children: those that succeeded before
//! count as successes. A map attempt that was never closed (cancelled, or failed before
//! its children ran) has no results: its redrive runs the whole map again.

use serde::{Deserialize, Serialize};

use super::super::effects::{Input, Step};
use super::super::{Attempt, Context, Run};
use crate::model::fargate::Size;

/// A redriven map attempt: which attempt's unsuccessful children it runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapRedrive {
    /// The attempt whose results it reads.
    pub of: u32,
    /// How many children the map has in all (this attempt runs some of them).
    pub map_children: usize,
    /// The size the redrive asked for, for every child; otherwise each runs at its last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

impl MapRedrive {
    /// The redrive of `previous`, when it is a map attempt whose results were written.
    pub(in crate::model::run) fn of_attempt(previous: &Attempt, size: Option<Size>) -> Option<MapRedrive> {
        let map = previous.map.as_ref().filter(|m| m.closed && m.children.is_some_and(|n| n > 0))?;
        Some(MapRedrive { of: previous.number, map_children: map.map_children(), size })
    }
}

/// Children that run at one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildrenAt {
    pub size: Size,
    pub children: usize,
}

/// The map worker read a redriven map attempt's earlier results and wrote the item lists
/// of the children that did not succeed under `lists`: `groups`, in the order their lines
/// were written (each group's arrays after the one before's), or why it could not (`Err`,
/// which fails the stage).
pub struct RedriveExpanded<'a> {
    pub stage: &'a str,
    pub attempt: u32,
    pub groups: Result<Vec<ChildrenAt>, String>,
    pub lists: String,
}

impl Input for RedriveExpanded<'_> {
    type Answer = bool;

    fn take(&self, run: &mut Run, ctx: &Context) -> Step<bool> {
        let groups = self.groups.as_ref().map(|groups| groups.iter().map(|g| (Some(g.size), g.children)).collect());
        let changed =
            run.record_children(self.stage, self.attempt, groups.map_err(Clone::clone), &self.lists, ctx.now_ms);
        Step { changed, answer: changed, effects: vec![] }
    }
}

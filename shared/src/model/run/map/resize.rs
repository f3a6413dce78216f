//! Children out of memory: which ended arrays are checked, what a check's answer adds (an array of just those children, one size up), and the sizes and limits that govern it.

use serde::{Deserialize, Serialize};

use super::super::{Run, RunStatus};
use super::{ArrayChecked, ArrayRun};
use crate::model::fargate::Size;
use crate::model::map::{MAX_MAP_ARRAYS, MAX_RESUBMITTED_ARRAYS};

/// What an array that resubmits children runs: its own size, its own item list (the
/// children's lines, each keeping its map index), and how many times they were resized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resubmission {
    /// The array whose children it runs again.
    pub of: usize,
    pub size: Size,
    pub list: String,
    /// 1 for children resized once, 2 for twice, ...
    pub step: u32,
}

/// What a stage allows when its jobs run out of memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResizeRule {
    pub(super) max_resizes: u32,
    pub(super) max_vcpus: Option<u32>,
}

/// The size children at `size`, resized `step` times already, are resubmitted at when they
/// run out of memory: none past the stage's `MaxResizes`, at the largest size, or past what
/// its queue can run.
pub(super) fn resize_of(rule: ResizeRule, step: u32, size: Size) -> Option<Size> {
    let next = size.next_for_memory()?;
    (step < rule.max_resizes && rule.max_vcpus.is_none_or(|max| next.fits_vcpus(max))).then_some(next)
}

impl Run {
    /// Ended arrays whose failed children are to be checked for running out of memory:
    /// `(stage, attempt number, array)`.
    pub fn arrays_to_check(&self) -> Vec<(String, u32, usize)> {
        let mut out = Vec::new();
        for (stage, stage_run) in self.stage_runs() {
            let Some((attempt, map)) = stage_run.current().and_then(|a| Some((a, a.map.as_ref()?))) else { continue };
            let awaiting = map.arrays.iter().enumerate().filter(|(_, a)| a.awaiting_check);
            out.extend(awaiting.map(|(k, _)| (stage.to_owned(), attempt.number, k)));
        }
        out
    }

    /// The stage's out-of-memory resizing: its `MaxResizes` and the most vCPU its queue runs.
    pub(super) fn resize_rule(&self, stage: &str) -> ResizeRule {
        let stage = self.stage(stage);
        ResizeRule { max_resizes: stage.map_or(0, |s| s.max_resizes), max_vcpus: stage.and_then(|s| s.max_vcpus) }
    }

    /// Records which of an array's failed children ran out of memory (see
    /// [`ArrayChecked`]): they are resubmitted as a new array one size up. False when the
    /// array does not await its check.
    pub(super) fn record_check(&mut self, checked: &ArrayChecked, _now_ms: i64) -> bool {
        let (stage, attempt, k) = (checked.stage, checked.attempt, checked.array);
        let run_id = self.run_id.clone();
        let rule = self.resize_rule(stage);
        let running = self.status == RunStatus::Running;
        let Some(mut at) = self.map_at(stage, attempt) else { return false };
        let attempt_size = at.attempt().size;
        let spec = at.spec.clone();
        let map = at.map();
        let room = map.arrays.len() < MAX_MAP_ARRAYS + MAX_RESUBMITTED_ARRAYS;
        let Some(array) = map.arrays.get_mut(k).filter(|a| a.awaiting_check && running) else { return false };
        array.awaiting_check = false;
        let out_of_memory = checked.out_of_memory.min(array.failed);
        let (step, size) = (array.resubmits.as_ref().map_or(0, |r| r.step), array.child_size(attempt_size));
        let Some(next) = resize_of(rule, step, size).filter(|_| out_of_memory > 0 && room) else { return true };
        array.resized = out_of_memory;
        if map.past_tolerance(&spec) {
            // Its other failures already fail the map: resizing cannot save it.
            map.arrays[k].resized = 0;
            return true;
        }
        let number = map.arrays.len();
        let mut resubmission = ArrayRun::planned(&run_id, stage, attempt, number, 0..out_of_memory);
        resubmission.resubmits = Some(Resubmission { of: k, size: next, list: checked.list.clone(), step: step + 1 });
        map.arrays.push(resubmission);
        true
    }
}

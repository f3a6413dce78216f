//! A redriven map's expansion: the earlier attempt's results read, and the children that did not succeed written as the new attempt's item lists, grouped by the size each runs at.
//!
//! Each line keeps its child's map index, so a child reads the same items as before. A
//! child runs at the size the redrive asked for, else at the one it last ran at (a child
//! resized for memory stays at its larger size), else at the attempt's. Each size's
//! children are cut into arrays of their own, written as `array-<k>.jsonl` in the order
//! of [`ChildrenAt`] (see [`batchline::model::run::map::RedriveExpanded`]).

use batchline::model::fargate::Size;
use batchline::model::map::{item_lists_folder, results_uri, ChildLine, ChildResult, S3Location};
use batchline::model::run::map::ChildrenAt;
use batchline::model::run::Run;
use batchline::model::stack::StackConfig;
use batchline::Error;

use crate::close::read_if_there;
use crate::expand::{write_item_lists, Piece};
use crate::objects::Objects;
use crate::Outcome;

/// What a redrive's expansion wrote: its children by size, and the folder of their lists.
#[derive(Debug, Clone, PartialEq)]
pub struct RedriveLists {
    pub groups: Vec<ChildrenAt>,
    pub lists: String,
}

/// Writes the item lists of a redriven map attempt's children: those of the map's
/// results that did not succeed. `Ok(Err(why))`: the results are gone or unreadable, so
/// the stage fails saying why.
pub async fn expand_redrive(
    objects: &dyn Objects,
    config: &StackConfig,
    run: &Run,
    piece: &Piece<'_>,
) -> Outcome<RedriveLists> {
    let stage = piece.stage;
    let attempt = run.current_attempt(stage).filter(|a| a.number == piece.attempt);
    let Some((attempt, redrive)) = attempt.and_then(|a| Some((a, a.map.as_ref()?.redrive.clone()?))) else {
        return Ok(Err(format!("attempt {} of stage {stage} is not a map's redrive", piece.attempt)));
    };
    let Some(spec) = run.stage(stage).and_then(|s| s.map.clone()) else {
        return Ok(Err(format!("stage {stage} is not a map stage")));
    };
    let Some(run_data) = config.roles.names.run_data_uri(&run.run_id) else {
        return Ok(Err("a map stage needs the configuration's InputBucket and RunDataPrefix".into()));
    };
    let results_at = S3Location::parse(&results_uri(&run_data, stage)).map_err(Error::InvalidEvent)?;
    let Some(text) = read_if_there(objects, &results_at).await? else {
        return Ok(Err(format!("{} is gone: the map cannot be redriven child by child", results_at.uri())));
    };
    let mut groups: Vec<(Size, Vec<ChildLine>)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let result: ChildResult = match serde_json::from_str(line) {
            Ok(result) => result,
            Err(e) => return Ok(Err(format!("{} is not a map's results: {e}", results_at.uri()))),
        };
        if result.status == "SUCCEEDED" {
            continue;
        }
        let size = redrive.size.or(result.size).unwrap_or(attempt.size);
        let child = ChildLine { index: result.index, items: result.items };
        match groups.iter_mut().find(|(s, _)| *s == size) {
            Some((_, children)) => children.push(child),
            None => groups.push((size, vec![child])),
        }
    }
    let lists = item_lists_folder(&run_data, stage, attempt.number, piece.token);
    write_item_lists(objects, &lists, groups.iter().map(|(_, children)| children.as_slice()), spec.max_concurrency)
        .await?;
    let groups = groups.iter().map(|(size, children)| ChildrenAt { size: *size, children: children.len() }).collect();
    Ok(Ok(RedriveLists { groups, lists }))
}

//! Request bodies read with every problem found: wrong types and unknown fields each named by their JSON path, then the values checked.
//!
//! serde stops at the first error, so a body is read again without the field at fault
//! until it reads (each field at fault a problem); the value checks of each route then
//! add theirs, and the caller hears every problem in one 400.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::http::{ApiError, Problem};

/// At most this many fields at fault are named (and the body read again as often).
const MAX_FIELD_PROBLEMS: usize = 20;

/// A body read into `T`, and the problems of the fields that had to be left out for it to
/// read: the value of a field with a problem is its default. A body that is not a JSON
/// object is refused at once; an empty body is an empty object.
pub fn read_body<T: DeserializeOwned>(body: &[u8]) -> Result<(T, Vec<Problem>), ApiError> {
    let text = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let mut value: Value = serde_json::from_slice(text)
        .map_err(|e| ApiError::refused(vec![Problem::new("", format!("the body is not valid JSON: {e}"))], false))?;
    let mut problems = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(read) => return Ok((read, problems)),
            Err(error) => error,
        };
        let mut segments: Vec<Segment> = error.path().iter().map(Segment::from).collect();
        let mut path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // An unknown field is reported at the object that holds it: the field is named
        // in the message only.
        let named = |field: &str| matches!(segments.last(), Some(Segment::Key(key)) if key == field);
        if let Some(field) = unknown_field(&inner).filter(|field| !named(field)) {
            path = if segments.is_empty() || path == "." { field.clone() } else { format!("{path}.{field}") };
            segments.push(Segment::Key(field));
        }
        let removed = problems.len() < MAX_FIELD_PROBLEMS && remove(&mut value, &segments);
        if segments.is_empty() || path == "." {
            problems.push(Problem::new("", format!("invalid body: {inner}")));
        } else {
            problems.push(Problem::new(path.clone(), format!("{path}: {inner}")));
        }
        if !removed {
            return Err(ApiError::refused(problems, false));
        }
    }
}

/// [`read_body`] for a body with no checks of its own: every problem refused at once.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let (read, problems) = read_body(body)?;
    refuse_any(problems)?;
    Ok(read)
}

/// The field serde's "unknown field `x`, expected ..." names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}

/// The problems of a body's values added to those of its fields, leaving out a value's
/// problem that only follows from a field inside it having been left out (a size whose
/// `vcpu` had the wrong type "gives neither vcpu nor memory").
pub fn with_value_problems(mut read: Vec<Problem>, values: impl IntoIterator<Item = Problem>) -> Vec<Problem> {
    let follows = |value: &Problem, field: &Problem| {
        !value.path.is_empty() && field.path.starts_with(&format!("{}.", value.path))
    };
    let values: Vec<Problem> = values.into_iter().filter(|v| !read.iter().any(|field| follows(v, field))).collect();
    read.extend(values);
    read
}

/// `Ok` when there is no problem, a 400 with them all otherwise.
pub fn refuse_any(problems: Vec<Problem>) -> Result<(), ApiError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::refused(problems, false))
    }
}

/// One step of a JSON path.
enum Segment {
    Key(String),
    Index(usize),
    Other,
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            _ => Segment::Other,
        }
    }
}

/// Removes the value at `path` from `value`; false if there was none to remove.
fn remove(value: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut at = value;
    for segment in parents {
        let next = match (segment, at) {
            (Segment::Key(key), Value::Object(map)) => map.get_mut(key),
            (Segment::Index(index), Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Key(key), Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Index(index), Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

/// A number written as a JSON number or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a number, or a string of one")]
pub enum Number {
    Number(serde_json::Number),
    Text(String),
}

impl Number {
    pub fn text(&self) -> String {
        match self {
            Number::Number(n) => n.to_string(),
            Number::Text(t) => t.clone(),
        }
    }
}

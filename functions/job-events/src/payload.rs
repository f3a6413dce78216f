//! The invocation payload, read in one pass: an SQS batch's bodies go straight into typed events, anything else stays JSON.
//!
//! A batch of 1,000 Batch events is 3 to 5 MB of JSON (3.4 MB in the benchmark's). Read as a `serde_json::Value` and
//! then as `aws_lambda_events`' `SqsEvent`, it was held twice over, every body and attribute
//! included; here each record's body is parsed into a [`JobStateChangeEvent`] while the
//! payload is read, its text dropped at once, and the record's other attributes skipped.
//! Parsing is lenient per record: a body that is not a Batch event fails that record alone
//! (it is reported back for redelivery), not the batch.
//!
//! A body is either the Batch event itself or the event inside the envelope template.yaml's
//! rules put around it, `{"lane": "metrics" | "runs", "event": ...}`, which says which of
//! job-events' two jobs the message is for ([`Lane`]).

use std::fmt;

use batchline::model::batch_event::JobStateChangeEvent;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// What job-events was invoked with.
#[derive(Debug)]
pub enum Payload {
    /// An SQS batch: its records, or what `Records` held instead of a list.
    Batch(Result<Vec<QueuedEvent>, String>),
    /// Anything else (one EventBridge event, the schedule's event, a mistake), as JSON.
    Other(Value),
}

/// Which of job-events' jobs a message is for: every Batch event reaches the metrics lane
/// (`JobEventsQueue`, batched to pack PutMetricData calls) and the events of pipeline jobs
/// also reach the runs lane (`RunEventsQueue`, no batching window, so a stage's end
/// submits the next stage at once). A bare event (a direct invocation, a hand-made batch,
/// a rule from before the lanes) is for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Count the event in the metrics; leave its run alone.
    Metrics,
    /// Apply the event to its run; leave the counting to the metrics lane.
    Runs,
}

/// What a message asks for: its event and, from its envelope, its lane.
#[derive(Debug)]
pub struct LaneEvent {
    /// `None` for a bare event: both jobs.
    pub lane: Option<Lane>,
    pub event: JobStateChangeEvent,
}

impl LaneEvent {
    /// Whether the event is counted here.
    pub fn counts_metrics(&self) -> bool {
        self.lane != Some(Lane::Runs)
    }

    /// Whether the event is applied to its run here.
    pub fn advances_runs(&self) -> bool {
        self.lane != Some(Lane::Metrics)
    }
}

/// The body template.yaml's rules write: `{"lane": ..., "event": <the event>}`.
#[derive(Deserialize)]
struct Envelope {
    lane: Lane,
    event: JobStateChangeEvent,
}

impl LaneEvent {
    /// Reads a message body: an envelope, else a bare event.
    pub fn from_json(text: &str) -> Result<LaneEvent, String> {
        // The envelope is what production delivers, so it is tried first; a bare event
        // fails it at its first field and is then read as before.
        if let Ok(envelope) = serde_json::from_str::<Envelope>(text) {
            return Ok(LaneEvent { lane: Some(envelope.lane), event: envelope.event });
        }
        JobStateChangeEvent::from_json(text).map(|event| LaneEvent { lane: None, event }).map_err(|e| e.to_string())
    }
}

/// One SQS record: its message id and its body, parsed.
#[derive(Debug, Deserialize)]
pub struct QueuedEvent {
    #[serde(rename = "messageId", default)]
    pub message_id: Option<String>,
    #[serde(rename = "body", default = "no_body", deserialize_with = "event_in_body")]
    pub event: Result<LaneEvent, String>,
}

fn no_body() -> Result<LaneEvent, String> {
    Err("the SQS record has no body".to_owned())
}

fn event_in_body<'de, D: Deserializer<'de>>(body: D) -> Result<Result<LaneEvent, String>, D::Error> {
    let text: Option<String> = Deserialize::deserialize(body)?;
    Ok(match text {
        Some(text) => LaneEvent::from_json(&text),
        None => no_body(),
    })
}

impl Payload {
    /// The payload as the tests (and other callers holding JSON) have it.
    pub fn from_value(value: Value) -> Result<Payload, serde_json::Error> {
        serde_json::from_value(value)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut records = None;
        let mut rest = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "Records" {
                records = Some(map.next_value::<Records>()?.0);
            } else {
                rest.insert(key, map.next_value()?);
            }
        }
        Ok(match records {
            Some(records) => Payload::Batch(records),
            None => Payload::Other(Value::Object(rest)),
        })
    }

    // Not an object: kept as it is, for the error to say what it was.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Payload::Other(Value::Array(items)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::Other(Value::String(v.to_owned())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Payload, E> {
        Ok(Payload::Other(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Payload, E> {
        Ok(Payload::Other(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Payload, E> {
        Ok(Payload::Other(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Payload, E> {
        Ok(Payload::Other(Value::from(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Other(Value::Null))
    }
}

/// `Records`: a list of records, or a description of what it held instead.
struct Records(Result<Vec<QueuedEvent>, String>);

impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordsVisitor)
    }
}

struct RecordsVisitor;

impl RecordsVisitor {
    fn not_a_list<E>(what: &str) -> Result<Records, E> {
        Ok(Records(Err(format!("Records is {what}, not a list of SQS records"))))
    }
}

impl<'de> Visitor<'de> for RecordsVisitor {
    type Value = Records;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of SQS records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Records, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(record) = seq.next_element()? {
            records.push(record);
        }
        Ok(Records(Ok(records)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Records, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Self::not_a_list("an object")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Records, E> {
        Self::not_a_list("a string")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Records, E> {
        Self::not_a_list("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Records, E> {
        Self::not_a_list("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Records, E> {
        Self::not_a_list("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Records, E> {
        Self::not_a_list("a number")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Records, E> {
        Self::not_a_list("null")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: &str, body: &str) -> Value {
        json!({"messageId": id, "receiptHandle": "r", "body": body, "attributes": {"ApproximateReceiveCount": "1"},
               "messageAttributes": {}, "md5OfBody": "x", "eventSource": "aws:sqs", "eventSourceARN": "arn", "awsRegion": "us-east-1"})
    }

    #[test]
    fn a_batch_is_read_into_typed_events_record_by_record() {
        let event = include_str!("../../../tests/fixtures/batch/succeeded-fargate.json");
        let text = json!({"Records": [record("a", event), record("b", "not json"), {"messageId": "c"}]}).to_string();
        let Payload::Batch(Ok(records)) = serde_json::from_str(&text).unwrap() else { panic!("not a batch") };
        let ids: Vec<_> = records.iter().map(|r| r.message_id.as_deref().unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(records[0].event.as_ref().unwrap().event.detail.status.as_str(), "SUCCEEDED");
        assert_eq!(records[0].event.as_ref().unwrap().lane, None, "a bare event is for both lanes");
        assert!(records[1].event.as_ref().unwrap_err().contains("not JSON"), "{:?}", records[1].event);
        assert_eq!(records[2].event.as_ref().unwrap_err(), "the SQS record has no body");
    }

    #[test]
    fn an_envelope_names_the_lane_and_a_bad_lane_or_event_in_it_fails_the_record() {
        let event: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/batch/succeeded-fargate.json")).unwrap();
        let read = |body: Value| LaneEvent::from_json(&body.to_string());
        let runs = read(json!({"lane": "runs", "event": event})).unwrap();
        assert_eq!((runs.lane, runs.advances_runs(), runs.counts_metrics()), (Some(Lane::Runs), true, false));
        let metrics = read(json!({"event": event, "lane": "metrics"})).unwrap();
        assert_eq!(
            (metrics.lane, metrics.advances_runs(), metrics.counts_metrics()),
            (Some(Lane::Metrics), false, true)
        );
        assert_eq!(metrics.event.id, event["id"].as_str().unwrap());
        assert!(read(json!({"lane": "elsewhere", "event": event})).is_err());
        assert!(read(json!({"lane": "runs", "event": {"detail-type": "Scheduled Event"}})).is_err());
    }

    #[test]
    fn anything_else_stays_json_and_a_records_field_that_is_no_list_says_what_it_was() {
        let event = json!({"detail-type": "Scheduled Event", "source": "aws.events"});
        assert!(matches!(Payload::from_value(event.clone()).unwrap(), Payload::Other(v) if v == event));
        assert!(matches!(Payload::from_value(json!("text")).unwrap(), Payload::Other(Value::String(_))));
        let Payload::Batch(Err(why)) = Payload::from_value(json!({"Records": {"a": 1}})).unwrap() else { panic!() };
        assert_eq!(why, "Records is an object, not a list of SQS records");
    }
}

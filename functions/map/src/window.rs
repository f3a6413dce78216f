//! Coalescing windows, worked by the map worker: objects appended to their trigger's open window, a window closed into one list and one run.
//!
//! The coalesce lane (`CoalesceQueue`) brings two kinds of message (see
//! `batchline::model::coalesce`): the objects submit forwarded, and the close of a window,
//! which the worker that opened it sent itself, delayed by `WindowSeconds`.
//!
//! **Appending.** A batch's objects are grouped by trigger and appended to the trigger's
//! newest window while it is open, before its close and under `MaxObjects`, one
//! transaction per chunk (the head's count, conditional on the head as read, and the
//! chunk); otherwise the next window is opened with them. Before opening a window the
//! worker sends its delayed close, so no window is ever left without one. A window an
//! append fills to `MaxObjects` is closed at once.
//!
//! **Closing** seals the window (no append gets in after), reads its objects, drops repeated
//! deliveries, and claims each object for the window's run (`OBJECT#` items; an object
//! another window claimed first stays there, its place here taken by one from the end; the
//! window's run id, which holds the moment it opened, names it, so a window number used
//! again after its items expired is another window). Only then
//! is the list written — the same bytes however often the close is redone, since the
//! claims it rests on are settled — and the run started, once per window
//! (`coalesce:<trigger>:<window>` is its idempotency key). A close that fails comes again
//! (its message is not deleted); a close for a window that is already running is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use batchline::model::coalesce::{
    candidates, list_text, list_uri, positions, window_pipeline, window_run_key, CloseWindow, CoalesceMessage,
    CoalescedObject, OBJECTS_PARAMETER,
};
use batchline::model::fargate::sized_for_object;
use batchline::model::map::S3Location;
use batchline::model::run::RunInput;
use batchline::model::stack::{StackConfig, Target};
use batchline::services::ports::{Clock, TriggerMetrics};
use batchline::services::runs::run_id;
use batchline::store::dynamo::CHUNK_BYTES;
use batchline::store::{Appended, Holder, WindowHead, WindowStore, RUN_RETENTION_SECONDS};
use batchline::Error;
use futures::StreamExt;
use tracing::{info, warn};

use crate::Clients;

/// Claims in flight at once while a window closes.
const CLAIMS_AT_ONCE: usize = 32;
/// How often an append reads the window again after someone else changed it first.
const APPEND_TRIES: u32 = 50;
/// How long after its opener's deadline a close for a window never opened is kept waiting.
const OPENER_GRACE_MS: i64 = 10_000;
/// How long a close waits for a window still being opened.
const RETRY_CLOSE_SECONDS: u32 = 30;

/// Where a window's close is sent, delayed.
#[async_trait]
pub trait CloseLater: Send + Sync {
    /// Sends `close` to the queue `queue_arn`, to be delivered `delay_seconds` (at most 900) from now.
    async fn close_later(&self, queue_arn: &str, close: &CloseWindow, delay_seconds: u32) -> Result<(), Error>;
}

/// SQS through the SDK: the queue's URL looked up once by its name and account.
pub struct SqsCloseLater {
    client: aws_sdk_sqs::Client,
    urls: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl SqsCloseLater {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        SqsCloseLater { client, urls: Default::default() }
    }

    async fn url(&self, queue_arn: &str) -> Result<String, Error> {
        let mut urls = self.urls.lock().await;
        if let Some(url) = urls.get(queue_arn) {
            return Ok(url.clone());
        }
        // arn:aws:sqs:REGION:ACCOUNT:NAME
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts.as_slice() else {
            return Err(Error::InvalidEvent(format!("{queue_arn:?} is not an SQS queue's ARN")));
        };
        let reply = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| Error::aws("GetQueueUrl", e))?;
        let url = reply.queue_url().unwrap_or_default().to_owned();
        urls.insert(queue_arn.to_owned(), url.clone());
        Ok(url)
    }
}

#[async_trait]
impl CloseLater for SqsCloseLater {
    async fn close_later(&self, queue_arn: &str, close: &CloseWindow, delay_seconds: u32) -> Result<(), Error> {
        let url = self.url(queue_arn).await?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(CoalesceMessage::close_body(close))
            .delay_seconds(delay_seconds.min(900) as i32)
            .send()
            .await
            .map_err(|e| Error::aws("SendMessage", e))?;
        Ok(())
    }
}

/// Works a batch of coalesce-lane messages (all from the queue `queue_arn`): appends the
/// objects, trigger by trigger, and answers the closes. Returns the ids of the messages
/// whose work failed, to come again.
pub async fn work_messages(
    clients: &Clients,
    holder: &Holder,
    token: &str,
    queue_arn: &str,
    messages: Vec<(String, CoalesceMessage)>,
) -> Vec<String> {
    let mut failed = Vec::new();
    let mut by_trigger: BTreeMap<String, Vec<(String, CoalescedObject)>> = BTreeMap::new();
    let mut closes = Vec::new();
    for (id, message) in messages {
        match message {
            CoalesceMessage::Object(object) => by_trigger.entry(object.trigger.clone()).or_default().push((id, object)),
            CoalesceMessage::Close(close) => closes.push((id, close)),
        }
    }
    for (piece, (trigger, messages)) in by_trigger.into_iter().enumerate() {
        let messages = match sort_out(clients, &trigger, messages).await {
            Ok((taken, refused)) => {
                failed.extend(refused);
                taken
            }
            Err((err, ids)) => {
                warn!(trigger, error = %err, "objects not sorted out; they come again");
                failed.extend(ids);
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let objects: Vec<CoalescedObject> = messages.iter().map(|(_, o)| o.clone()).collect();
        let chunk_token = format!("{token}-{piece}");
        if let Err(err) = append(clients, holder, &chunk_token, queue_arn, &trigger, objects).await {
            warn!(trigger, objects = messages.len(), error = %err, "objects not appended to a window; they come again");
            failed.extend(messages.into_iter().map(|(id, _)| id));
        }
    }
    for (id, close) in closes {
        if let Err(err) = answer_close(clients, holder, queue_arn, &close).await {
            warn!(trigger = close.trigger, window = close.window, error = %err, "window not closed; its close comes again");
            failed.push(id);
        }
    }
    failed
}

/// The messages whose objects `trigger`'s rule takes, and the ids of those whose objects it
/// does not. Only submit forwards objects, and only those its rules match, so a mismatch is
/// a rule a deploy changed (this worker's configuration may be a minute old: it is read anew)
/// or a message not of submit's. An object of another stack is not this stack's to keep:
/// left out. One of this stack's the rule still does not take comes again, and after five
/// tries waits in the dead-letter queue (its alarm fires): never dropped silently.
async fn sort_out(
    clients: &Clients,
    trigger: &str,
    messages: Vec<(String, CoalescedObject)>,
) -> Result<(Vec<(String, CoalescedObject)>, Vec<String>), (Error, Vec<String>)> {
    let ids = |messages: &[(String, CoalescedObject)]| messages.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let mut config = clients.ports.configs.get().await.map_err(|e| (e, ids(&messages)))?;
    let takes = |config: &StackConfig, object: &CoalescedObject| {
        config.triggers.s3.get(trigger).is_some_and(|r| r.matches(&object.bucket, &object.key))
    };
    if messages.iter().any(|(_, o)| o.stack == config.name_prefix && !takes(&config, o)) {
        config = clients.ports.configs.fresh().await.map_err(|e| (e, ids(&messages)))?;
    }
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for (id, object) in messages {
        if object.stack != config.name_prefix {
            warn!(trigger, stack = object.stack, key = %object.key, "an object of another stack: left out");
        } else if takes(&config, &object) {
            taken.push((id, object));
        } else {
            warn!(trigger, bucket = %object.bucket, key = %object.key, "an object the rule does not take: it comes again");
            refused.push(id);
        }
    }
    Ok((taken, refused))
}

/// Appends a trigger's objects to its windows, opening and closing them as they fill.
async fn append(
    clients: &Clients,
    holder: &Holder,
    token: &str,
    queue_arn: &str,
    trigger: &str,
    objects: Vec<CoalescedObject>,
) -> Result<(), Error> {
    let config = clients.ports.configs.get().await?;
    let coalesce = config.triggers.s3.get(trigger).and_then(|t| t.coalesce).ok_or_else(|| {
        Error::InvalidEvent(format!("the S3 trigger {trigger:?} does not coalesce (any more): its objects wait"))
    })?;
    let store = clients.ports.store.as_ref();
    // Deliveries of one object in one batch collapse here; across batches, at the close.
    let mut seen = BTreeSet::new();
    let mut rest: Vec<CoalescedObject> =
        objects.into_iter().filter(|o| seen.insert((o.bucket.clone(), o.key.clone(), o.version.clone()))).collect();
    let (mut tries, mut piece) = (0, 0);
    while !rest.is_empty() {
        if tries == APPEND_TRIES {
            return Err(Error::Contention(format!("the windows of trigger {trigger:?}")));
        }
        let now = clients.ports.clock.now_ms();
        let expires_at = now / 1000 + RUN_RETENTION_SECONDS;
        let latest = store.latest_window(trigger).await?;
        let open = latest.as_ref().filter(|h| h.open && h.close_at > now && h.count < coalesce.max_objects);
        let room = open.map_or(coalesce.max_objects, |h| coalesce.max_objects - h.count) as usize;
        let take = fitting(&rest, room);
        let chunk = format!("{token}-{piece}");
        let (appended, window, filled) = match open {
            Some(head) => {
                let appended =
                    store.append_to_window(head, &chunk, &rest[..take], now, coalesce.max_objects, expires_at).await?;
                (appended, head.window, head.count as usize + take == coalesce.max_objects as usize)
            }
            None => {
                let head = WindowHead {
                    trigger: trigger.to_owned(),
                    window: latest.as_ref().map_or(1, |h| h.window + 1),
                    open: true,
                    opened_at: now,
                    close_at: now + i64::from(coalesce.window_seconds) * 1000,
                    count: take as u32,
                    run_id: None,
                };
                // Its close first: a window is never left without one.
                let close = CloseWindow {
                    trigger: trigger.to_owned(),
                    window: head.window,
                    opener_deadline_ms: holder.deadline_ms,
                };
                clients.closer.close_later(queue_arn, &close, coalesce.window_seconds).await?;
                let appended = store.open_window(&head, &chunk, &rest[..take], expires_at).await?;
                if appended == Appended::Appended {
                    info!(trigger, window = head.window, "window opened");
                }
                (appended, head.window, take == coalesce.max_objects as usize)
            }
        };
        match appended {
            Appended::Appended => {
                rest.drain(..take);
                piece += 1;
                if filled {
                    info!(trigger, window, "window full; closing it");
                    close_window(clients, holder, trigger, window).await?;
                }
            }
            Appended::NotAsRead => {
                // Someone else appended, opened or sealed first: a short, growing pause, then again.
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10 * u64::from(tries.min(20)))).await;
            }
        }
    }
    Ok(())
}

/// How many of `objects`, from the first, go in one chunk: at most `room`, and at most
/// [`CHUNK_BYTES`] of entries (at least one).
fn fitting(objects: &[CoalescedObject], room: usize) -> usize {
    let mut bytes = 0;
    let mut count = 0;
    for object in objects.iter().take(room) {
        bytes += batchline::store::dynamo::chunk_entry(object).len() + 1;
        if bytes > CHUNK_BYTES && count > 0 {
            break;
        }
        count += 1;
    }
    count
}

/// Answers a window's close: closes it when it is due, waits for one still being opened,
/// drops one that was never opened (its opener is gone) or is running already.
async fn answer_close(clients: &Clients, holder: &Holder, queue_arn: &str, close: &CloseWindow) -> Result<(), Error> {
    let store = clients.ports.store.as_ref();
    let now = clients.ports.clock.now_ms();
    match store.window(&close.trigger, close.window).await? {
        None if now > close.opener_deadline_ms + OPENER_GRACE_MS => {
            info!(trigger = close.trigger, window = close.window, "a close for a window never opened; dropped");
            Ok(())
        }
        None => clients.closer.close_later(queue_arn, close, RETRY_CLOSE_SECONDS).await,
        Some(head) if head.run_id.is_some() => Ok(()),
        Some(head) if head.open && head.close_at > now => {
            let wait = ((head.close_at - now + 999) / 1000).clamp(1, 900) as u32;
            clients.closer.close_later(queue_arn, close, wait).await
        }
        Some(_) => close_window(clients, holder, &close.trigger, close.window).await,
    }
}

/// Closes a window: seals it, claims its objects, writes its list and starts its run.
pub async fn close_window(clients: &Clients, holder: &Holder, trigger: &str, window: u64) -> Result<(), Error> {
    let store = clients.ports.store.as_ref();
    let config = clients.ports.configs.get().await?;
    let mut pipeline = window_pipeline(&config, trigger).map_err(Error::InvalidEvent)?;
    store.seal_window(trigger, window).await?;
    let head = store
        .window(trigger, window)
        .await?
        .ok_or_else(|| Error::InvalidEvent(format!("window {window} of trigger {trigger:?} is gone")))?;
    let objects = candidates(store.window_objects(&head).await?);
    let key = window_run_key(trigger, window, head.opened_at);
    let run = run_id(&pipeline.name, &key);
    let run_data = config
        .roles
        .names
        .run_data_uri(&run)
        .ok_or_else(|| Error::InvalidEvent("coalescing needs Roles.InputBucket and Roles.RunDataPrefix".into()))?;
    let expires_at = clients.ports.clock.now_ms() / 1000 + RUN_RETENTION_SECONDS;

    // Each object claimed for this window at its rank; those another window holds dropped.
    let claims = objects.iter().enumerate().map(|(rank, object)| {
        let run = run.as_str();
        async move { store.claim_object(object, window, run, rank, expires_at).await.map(|claimed| (rank, claimed)) }
    });
    let claimed: Vec<Result<(usize, bool), Error>> =
        futures::stream::iter(claims).buffer_unordered(CLAIMS_AT_ONCE).collect().await;
    let mut dropped = BTreeSet::new();
    for outcome in claimed {
        let (rank, claimed) = outcome?;
        if !claimed {
            dropped.insert(rank);
        }
    }
    let placed = positions(objects.len(), &dropped);
    for &(rank, position) in placed.iter().filter(|(rank, position)| rank != position) {
        if !store.place_object(&objects[rank], &run, position).await? {
            return Err(Error::Contention(format!("object {} of window {window}", objects[rank].uri())));
        }
    }
    if !dropped.is_empty() {
        info!(trigger, window, dropped = dropped.len(), "objects already in another window left out");
    }
    let kept: Vec<&CoalescedObject> = placed.iter().map(|(rank, _)| &objects[*rank]).collect();
    if kept.is_empty() {
        store.record_window_run(trigger, window, "").await?;
        info!(trigger, window, "every object of the window is in another: no run");
        return Ok(());
    }

    let list = list_uri(&run_data);
    let at = S3Location::parse(&list).map_err(Error::InvalidEvent)?;
    clients.objects.write(&at, list_text(kept.iter().copied())).await?;
    size_for_largest(&config, trigger, &mut pipeline, &kept).map_err(Error::InvalidEvent)?;
    let mut parameters = config.triggers.s3.get(trigger).map(|t| t.parameters.clone()).unwrap_or_default();
    parameters.insert(OBJECTS_PARAMETER.to_owned(), list);
    let input = RunInput { parameters, environment: BTreeMap::new() };
    let now = clients.ports.clock.now_ms();
    let (started, created) = clients.ports.driver(holder).start_pipeline(&pipeline, "s3", &key, input, now).await?;
    store.record_window_run(trigger, window, &started.run_id).await?;
    if created {
        let (run_id, pipeline) = (&started.run_id, &started.pipeline.name);
        info!(trigger, window, run_id, pipeline, objects = kept.len(), "window closed; its run started");
        let arrays =
            usize::from(matches!(config.triggers.s3.get(trigger).map(|t| &t.target), Some(Target::JobDefinition(_))));
        clients.ports.announcer.window_closed(trigger, kept.len(), arrays).await;
    }
    Ok(())
}

/// With `MemoryPerInputByte`, a job definition's window runs at the size its largest object
/// needs: one size for the whole array.
fn size_for_largest(
    config: &StackConfig,
    trigger: &str,
    pipeline: &mut batchline::model::pipeline::Pipeline,
    kept: &[&CoalescedObject],
) -> Result<(), String> {
    let Some(rule) = config.triggers.s3.get(trigger) else { return Ok(()) };
    let (Target::JobDefinition(_), Some(factor)) = (&rule.target, rule.memory_per_input_byte) else { return Ok(()) };
    let largest = kept.iter().map(|o| o.size).max().unwrap_or(0);
    for stage in pipeline.stages.values_mut() {
        stage.size = sized_for_object(stage.size, factor, largest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> CoalescedObject {
        CoalescedObject {
            stack: "s".into(),
            trigger: "t".into(),
            bucket: "b".into(),
            key: key.into(),
            version: "v".into(),
            size: 1,
        }
    }

    #[test]
    fn a_chunk_fits_its_room_and_its_bytes() {
        let small: Vec<_> = (0..10).map(|i| object(&format!("k{i}"))).collect();
        assert_eq!(fitting(&small, 4), 4);
        assert_eq!(fitting(&small, 100), 10);
        let long_key = "x".repeat(1000);
        let large: Vec<_> = (0..1000).map(|i| object(&format!("{long_key}{i}"))).collect();
        let fits = fitting(&large, 1000);
        assert!(fits > 300 && fits < 400, "{fits}");
    }
}

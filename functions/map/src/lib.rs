//! `batchline-map`: the map worker — the S3 work of map stages, done outside the run driver and the API's 30 seconds.
//!
//! The run engine asks for it with a "Batchline Map Work" event (`ExpandMap`, `CloseMap`
//! effects, put on the stack's own bus, `<stack>-lanes`, by whichever function drives the
//! run; only the stack's functions may put events there); a rule sends
//! those to this function's queue. For each message it loads the run, does the work only
//! if the run still awaits it — an expansion ([`expand`]: list the items, write the item
//! lists) or a close ([`close`]: read the failed children, write `results.jsonl`) — and
//! answers the run through the run driver, which records the answer once (conditionally
//! on the version it read) and carries out what follows: the arrays submitted, the next
//! stages planned and submitted, the run announced.
//!
//! Why a fourth function: the S3 client would not fit the other functions' zip goals, and
//! the work may take longer than the API allows. Exactly once however often it is asked:
//! work the run no longer awaits is dropped; two workers racing both write (each its own
//! item lists), and the run keeps the first answer. What resumes work that failed or ran
//! out of time is the message itself: it was not deleted, so SQS delivers it again after
//! its visibility timeout, and after five tries it goes to the dead-letter queue (whose
//! alarm says so) while the run stays where it was, to be redriven or cancelled.

pub mod billing;
pub mod check;
pub mod children;
pub mod close;
pub mod expand;
pub mod objects;
pub mod redrive;
pub mod window;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use batchline::model::coalesce::CoalesceMessage;
use batchline::model::job_request::digest;
use batchline::model::map::{MapAction, MapWork, MAP_WORK_DETAIL_TYPE};
use batchline::model::run::map::{ArrayChecked, MapClosed, MapExpanded, RedriveExpanded};
use batchline::model::run::Run;
use batchline::services::ports::{Clock, RunAnnouncer};
use batchline::store::Holder;
use batchline::telemetry::{run_span, stage_span};
use batchline::wiring::{invocation_holder, AwsPorts};
use batchline::{Error, Settings};
use lambda_runtime::LambdaEvent;
use tracing::{info, warn, Instrument};

use children::{ArrayChildren, SdkArrayChildren};
use expand::{Budget, Expanded, Piece};
use objects::{Objects, S3Objects};
use window::{CloseLater, SqsCloseLater};

/// What a piece of work came to: done (`Ok(Ok)`), impossible for good (`Ok(Err(why))`,
/// which fails the stage), or worth another try (`Err`).
pub type Outcome<T> = Result<Result<T, String>, Error>;

/// The AWS adapters, built once per container.
pub struct Clients {
    pub ports: AwsPorts,
    pub objects: Box<dyn Objects>,
    pub children: Box<dyn ArrayChildren>,
    /// Where a coalescing window's delayed close is sent.
    pub closer: Box<dyn CloseLater>,
}

impl Clients {
    pub fn new(sdk: &SdkConfig, settings: &Settings) -> Self {
        Clients {
            ports: AwsPorts::new(sdk, settings),
            objects: Box::new(S3Objects::new(s3_client(sdk))),
            children: Box::new(SdkArrayChildren::new(aws_sdk_batch::Client::new(sdk))),
            closer: Box::new(SqsCloseLater::new(aws_sdk_sqs::Client::new(sdk))),
        }
    }
}

/// The S3 client: addressing buckets by path when an endpoint is given (an emulator's, which
/// has no per-bucket host names), by host name on AWS.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(sdk.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Handles an SQS batch of "Batchline Map Work" events: the messages whose work failed, or
/// that are not such events, are reported for redelivery (and, in the end, the
/// dead-letter queue); the rest are done.
pub async fn handle(
    event: LambdaEvent<SqsEvent>,
    clients: &Clients,
    _settings: &Settings,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let holder = invocation_holder(&event.context);
    // Tells this invocation's item lists apart from another's (see `expand`).
    let token = digest(&event.context.request_id, 12);
    let mut response = SqsBatchResponse::default();
    let mut failed = Vec::new();
    // The coalesce lane's messages, worked together (a batch's objects, trigger by trigger).
    let mut coalesce_lane: Option<(String, Vec<_>)> = None;
    for message in &event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        let done = match lane_message(message) {
            Ok(Lane::MapWork(work)) => do_work(clients, &holder, &token, &work).await,
            Ok(Lane::Coalesce(coalesce)) => {
                let queue = message.event_source_arn.clone().unwrap_or_default();
                coalesce_lane.get_or_insert_with(|| (queue, Vec::new())).1.push((id.clone(), coalesce));
                Ok(())
            }
            Err(why) => Err(Error::InvalidEvent(why)),
        };
        if let Err(err) = done {
            warn!(message_id = id, error = %err, "map work not done; it comes back");
            failed.push(id);
        }
    }
    if let Some((queue, messages)) = coalesce_lane {
        failed.extend(window::work_messages(clients, &holder, &token, &queue, messages).await);
    }
    for id in failed {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}

/// What a message of either lane asks for.
pub enum Lane {
    MapWork(MapWork),
    Coalesce(CoalesceMessage),
}

/// Reads a message of the map lane ("Batchline Map Work") or of the coalesce lane.
pub fn lane_message(message: &SqsMessage) -> Result<Lane, String> {
    let body = message.body.as_deref().ok_or("a message without a body")?;
    let event: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if event.get("detail-type").and_then(|d| d.as_str()) == Some(MAP_WORK_DETAIL_TYPE) {
        return work_of(message).map(Lane::MapWork);
    }
    CoalesceMessage::parse(body).map(Lane::Coalesce)
}

/// The work a message asks for: its body is the EventBridge event, the work its detail.
pub fn work_of(message: &SqsMessage) -> Result<MapWork, String> {
    let body = message.body.as_deref().ok_or("a message without a body")?;
    let event: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    serde_json::from_value(event["detail"].clone()).map_err(|e| format!("not a Batchline Map Work event: {e}"))
}

/// Does one piece of map work if the run still awaits it, and answers the run.
pub async fn do_work(clients: &Clients, holder: &Holder, token: &str, work: &MapWork) -> Result<(), Error> {
    let driver = clients.ports.driver(holder);
    let Some(record) = driver.load(&work.run_id).await? else {
        info!(run_id = work.run_id, stage = work.stage, "the run is gone; nothing to do");
        return Ok(());
    };
    let run = &record.run;
    // Every line about the work carries its run, stage and attempt.
    work_on(clients, holder, token, work, run)
        .instrument(stage_span(&run_span(&run.run_id, &run.pipeline.name), &work.stage, Some(work.attempt), None))
        .await
}

/// Does one piece of map work on the run as read.
async fn work_on(clients: &Clients, holder: &Holder, token: &str, work: &MapWork, run: &Run) -> Result<(), Error> {
    let driver = clients.ports.driver(holder);
    let this = (work.stage.clone(), work.attempt);
    let answered = match work.action {
        MapAction::Expand => match expand_map(clients, holder, run, token, work).await? {
            Some(answered) => answered,
            None => return Ok(()),
        },
        MapAction::Check => check_array(clients, holder, run, token, work).await?,
        MapAction::Close => {
            let current = run.current_attempt(&work.stage).and_then(|a| Some((a.map.clone()?, a.size)));
            let Some((map, attempt_size)) = current.filter(|_| run.maps_to_close().contains(&this)) else {
                info!(run_id = run.run_id, stage = work.stage, "the map is closed already, or given up");
                return Ok(());
            };
            let objects = clients.objects.as_ref();
            let config = clients.ports.configs.get().await?;
            let closing = close::close(
                objects,
                clients.children.as_ref(),
                &config,
                &run.run_id,
                &work.stage,
                (&map, attempt_size),
            );
            let (failed_items, failed_items_uri) = match closing.await? {
                Ok(closing) => {
                    // The results' place is the stage's, not the attempt's: written only while
                    // the run still awaits this close, so a slow duplicate of an earlier
                    // attempt's close does not overwrite a redriven attempt's results.
                    let still = driver.load(&work.run_id).await?;
                    if !still.is_some_and(|r| r.run.maps_to_close().contains(&this)) {
                        info!(run_id = run.run_id, stage = work.stage, "the map was closed meanwhile");
                        return Ok(());
                    }
                    let uri = closing.write(objects).await?;
                    (closing.failed_items, uri)
                }
                // Without results the map is still judged by its counts.
                Err(why) => {
                    warn!(run_id = run.run_id, stage = work.stage, why, "the map's results could not be written");
                    (vec![], None)
                }
            };
            // What its children cost: their tasks, summed per array, for the run's cost.
            let billed = billing::children_billed(&clients.ports.batch, &map).await?;
            info!(run_id = run.run_id, stage = work.stage, failed = map.failed(), "map closed");
            let answer =
                MapClosed { stage: &work.stage, attempt: work.attempt, failed_items, failed_items_uri, billed };
            driver.answer_map_work(&run.run_id, &answer, clients.ports.clock.now_ms()).await?
        }
    };
    if !answered {
        info!(run_id = run.run_id, stage = work.stage, "another worker answered first");
    }
    Ok(())
}

/// Expands a map attempt if the run still awaits it — its items listed, or a redrive's
/// children read from the map's results — and answers the run: whether the answer was
/// recorded, or `None` when there is nothing to answer yet (the listing goes on in another
/// invocation) or any more.
async fn expand_map(
    clients: &Clients,
    holder: &Holder,
    run: &Run,
    token: &str,
    work: &MapWork,
) -> Result<Option<bool>, Error> {
    if !run.maps_to_expand().contains(&(work.stage.clone(), work.attempt)) {
        info!(run_id = run.run_id, stage = work.stage, "the map is expanded already, or given up");
        return Ok(None);
    }
    let config = clients.ports.configs.get().await?;
    let driver = clients.ports.driver(holder);
    let now = || clients.ports.clock.now_ms();
    let piece = Piece { stage: &work.stage, attempt: work.attempt, token, resume: work.resume.as_deref() };
    let redriven = run.current_attempt(&work.stage).and_then(|a| a.map.as_ref()).is_some_and(|m| m.redrive.is_some());
    if redriven {
        let (groups, lists) = match redrive::expand_redrive(clients.objects.as_ref(), &config, run, &piece).await? {
            Ok(written) => (Ok(written.groups), written.lists),
            Err(why) => (Err(why), String::new()),
        };
        info!(run_id = run.run_id, stage = work.stage, attempt = work.attempt, ?groups, "redriven map expanded");
        let answer = RedriveExpanded { stage: &work.stage, attempt: work.attempt, groups, lists };
        return driver.answer_map_work(&run.run_id, &answer, now()).await.map(Some);
    }
    let budget = Budget { deadline_ms: holder.deadline_ms, clock: &clients.ports.clock };
    let expanded = expand::expand(clients.objects.as_ref(), &config, run, &piece, &budget).await?;
    let (children, lists) = match expanded {
        Ok(Expanded::Done(expansion)) => (Ok(expansion.children), expansion.lists),
        Ok(Expanded::Unfinished { listing }) => {
            // Goes on in another invocation, through this worker's own queue.
            info!(run_id = run.run_id, stage = work.stage, listing, "out of time listing; resuming");
            let next = MapWork { resume: Some(listing), ..work.clone() };
            clients.ports.announcer.map_work(&next).await?;
            return Ok(None);
        }
        Err(why) => (Err(why), String::new()),
    };
    info!(run_id = run.run_id, stage = work.stage, attempt = work.attempt, ?children, "map expanded");
    let answer = MapExpanded { stage: &work.stage, attempt: work.attempt, children, lists };
    driver.answer_map_work(&run.run_id, &answer, now()).await.map(Some)
}

/// Checks an ended array's failed children for those out of memory, if the run still
/// awaits it, and answers the run; whether the answer was recorded (or none was owed).
async fn check_array(
    clients: &Clients,
    holder: &Holder,
    run: &Run,
    token: &str,
    work: &MapWork,
) -> Result<bool, Error> {
    let Some(k) = work.array else { return Err(Error::InvalidEvent("a check names no array".into())) };
    let map = run.current_attempt(&work.stage).and_then(|a| a.map.clone());
    let Some(map) = map.filter(|_| run.arrays_to_check().contains(&(work.stage.clone(), work.attempt, k))) else {
        info!(run_id = run.run_id, stage = work.stage, array = k, "the array is checked already, or given up");
        return Ok(true);
    };
    let checked = check::check(clients.objects.as_ref(), clients.children.as_ref(), &map, k, token).await?;
    info!(run_id = run.run_id, stage = work.stage, array = k, out_of_memory = checked.out_of_memory, "array checked");
    let answer = ArrayChecked {
        stage: &work.stage,
        attempt: work.attempt,
        array: k,
        out_of_memory: checked.out_of_memory,
        list: checked.list,
    };
    clients.ports.driver(holder).answer_map_work(&run.run_id, &answer, clients.ports.clock.now_ms()).await
}

//! The Batch event player: plays AWS Batch's runtime and EventBridge for jobs in the local emulator.
//!
//! moto's Batch (without Docker) marks a job SUCCEEDED the moment it is submitted and emits
//! no events. The player stands in for what AWS does after SubmitJob: it finds the jobs in
//! a queue (ListJobs, then DescribeJobs through the emulator adapter, which reports them as
//! AWS does), decides each job's outcome by the rule below, and produces the "Batch Job
//! State Change" events AWS would send — RUNNABLE, STARTING, RUNNING, then SUCCEEDED or
//! FAILED — in EventBridge's envelope, with timestamps on a simulated clock that starts at
//! the job's real `createdAt`.
//!
//! # The outcome rule
//! For each job, the first of these that applies:
//! 1. a [`Script`] the test gave for the job's id or name with [`Player::script`];
//! 2. the job's parameters, then its tags (so a test or the demo can steer a job it submits
//!    through Batchline's own functions):
//!    - `play`: `succeed` (default), `oom` (always out of memory) or `exit:N` (exit code N);
//!    - `play_needs_memory`: MiB the job needs; with less, it fails out of memory — the
//!      way a real job does, so a resubmission at a larger size succeeds;
//!    - `play_wait_seconds`: time in the queue, createdAt → startedAt (default 10);
//!    - `play_run_seconds`: running time, startedAt → stoppedAt (default 30);
//!    - `play_children`: an array's children whose outcome differs (`3=exit:2,7=oom`);
//!    - `play_on`: `FARGATE` or `FARGATE_SPOT`, the capacity its tasks run on: their
//!      `taskArn` names the ECS cluster of the queue's first compute environment of that
//!      type (the queue's first compute environment when not given), as on AWS;
//! 3. a job that was terminated or cancelled in the emulator (moto reports FAILED with a
//!    reason) fails with that reason and never runs;
//! 4. a job this player holds in RUNNABLE ([`Player::hold`]: one that cannot start) plays
//!    its RUNNABLE event once and nothing more while it is held;
//! 5. a job whose Batch `dependsOn` job failed fails with `Dependent Job failed`; one whose
//!    dependencies succeeded starts only after they stopped.
//!
//! A failed attempt is retried as Batch would: while the job's retry strategy (its own, else
//! its job definition's, as DescribeJobs reports it) has attempts left and its
//! `evaluateOnExit` rules say RETRY for that exit (the first rule that matches decides; an
//! exit none matches is retried). Each attempt plays the same script, and the events carry
//! the earlier attempts.
//!
//! Out of memory is reported the way AWS does on Fargate: exit code 137 and reason
//! `OutOfMemoryError: Container killed due to memory usage`, status reason `Essential
//! container in task exited`. Array jobs produce events for every child (`<parent id>:<index>`,
//! `arrayProperties.index`), each child playing its own outcome — the script's `children`,
//! or the `play_children` setting (`3=exit:2,7=oom`), else the job's — and the parent's: it
//! goes RUNNABLE and RUNNING with them and ends after its last child, FAILED (`Array Child
//! Job failed`) if any child failed, its `arrayProperties.statusSummary` counting them.
//! Children's events carry the parent's tags unless [`Player::untagged_children`].
//!
//! [`Player::settle`] records played jobs' ends in the emulator, so DescribeJobs reports
//! them as AWS reports a job that ran (status, reason, times, attempts with their `taskArn`).
//!
//! # Delivery
//! [`Delivery`] takes the events and hands them on: as plain events or SQS batches for a
//! handler called directly, into an SQS queue exactly as an EventBridge SQS target
//! delivers them (so redelivered duplicates keep their `id`), or onto an EventBridge bus in
//! the emulator with `PutEvents` (the bus assigns new ids), so a rule routes them as in
//! production. Duplication and seeded shuffling make reliability tests short.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_batch::types::{JobDetail, KeyValuesPair, RetryStrategy};
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use batchline::adapters::batch::SdkBatch;
use batchline::services::ports::QueueInspector;
use batchline::Error;
use serde_json::{json, Map, Value};

/// What happens to a job when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeed,
    /// Killed for exceeding its memory: exit code 137, as AWS reports it.
    OutOfMemory,
    /// The container exits with this (non-zero) code.
    Exit(i32),
}

impl Outcome {
    /// `succeed`, `oom` or `exit:N` (N not 0).
    pub fn parse(text: &str) -> Result<Outcome, String> {
        match text {
            "succeed" => Ok(Outcome::Succeed),
            "oom" => Ok(Outcome::OutOfMemory),
            other => match other.strip_prefix("exit:").map(str::parse::<i32>) {
                Some(Ok(code)) if code != 0 => Ok(Outcome::Exit(code)),
                _ => Err(format!("{other:?}: expected succeed, oom or exit:N (N not 0)")),
            },
        }
    }
}

/// How a job plays out: its outcome and its simulated times.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub outcome: Outcome,
    /// createdAt → startedAt.
    pub queue_wait: Duration,
    /// startedAt → stoppedAt.
    pub run_time: Duration,
    /// With less memory than this (MiB) the job fails out of memory.
    pub needs_memory_mib: Option<u64>,
    /// The capacity its tasks run on (`FARGATE` or `FARGATE_SPOT`): the first compute
    /// environment of that type in its queue; the queue's first when not given.
    pub capacity: Option<String>,
    /// An array job's children whose outcome differs from `outcome`, by index.
    pub children: BTreeMap<usize, Outcome>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            outcome: Outcome::Succeed,
            queue_wait: Duration::from_secs(10),
            run_time: Duration::from_secs(30),
            needs_memory_mib: None,
            capacity: None,
            children: BTreeMap::new(),
        }
    }
}

impl Script {
    pub fn succeed() -> Self {
        Script::default()
    }
    pub fn out_of_memory() -> Self {
        Script { outcome: Outcome::OutOfMemory, ..Script::default() }
    }
    pub fn exit(code: i32) -> Self {
        Script { outcome: Outcome::Exit(code), ..Script::default() }
    }
    pub fn waiting(mut self, queue_wait: Duration) -> Self {
        self.queue_wait = queue_wait;
        self
    }
    pub fn running(mut self, run_time: Duration) -> Self {
        self.run_time = run_time;
        self
    }
    pub fn needing_memory(mut self, mib: u64) -> Self {
        self.needs_memory_mib = Some(mib);
        self
    }
    /// Runs its tasks on the queue's first compute environment of this type
    /// (`FARGATE` or `FARGATE_SPOT`).
    pub fn on(mut self, capacity: &str) -> Self {
        self.capacity = Some(capacity.to_owned());
        self
    }

    /// The array child `index` plays `outcome` (the others the script's own).
    pub fn child(mut self, index: usize, outcome: Outcome) -> Self {
        self.children.insert(index, outcome);
        self
    }

    /// The script a job asks for in its parameters or tags (see the module docs).
    pub fn from_job_settings(setting: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut script = Script::default();
        if let Some(play) = setting("play") {
            script.outcome = Outcome::parse(&play).map_err(|why| format!("play={why}"))?;
        }
        // `play_children`: `INDEX=OUTCOME` pairs, comma-separated (`3=exit:2,7=oom`).
        for pair in setting("play_children").iter().flat_map(|v| v.split(',')).filter(|p| !p.trim().is_empty()) {
            let parsed = pair.split_once('=').and_then(|(index, outcome)| {
                Some((index.trim().parse::<usize>().ok()?, Outcome::parse(outcome.trim()).ok()?))
            });
            let (index, outcome) = parsed
                .ok_or_else(|| format!("play_children={pair:?}: expected INDEX=succeed|oom|exit:N, comma-separated"))?;
            script.children.insert(index, outcome);
        }
        let number = |name: &str| -> Result<Option<u64>, String> {
            setting(name)
                .map(|value| value.parse::<u64>().map_err(|_| format!("{name}={value:?}: expected a whole number")))
                .transpose()
        };
        if let Some(mib) = number("play_needs_memory")? {
            script.needs_memory_mib = Some(mib);
        }
        if let Some(seconds) = number("play_wait_seconds")? {
            script.queue_wait = Duration::from_secs(seconds);
        }
        if let Some(seconds) = number("play_run_seconds")? {
            script.run_time = Duration::from_secs(seconds);
        }
        if let Some(capacity) = setting("play_on") {
            match capacity.as_str() {
                "FARGATE" | "FARGATE_SPOT" => script.capacity = Some(capacity),
                other => return Err(format!("play_on={other:?}: expected FARGATE or FARGATE_SPOT")),
            }
        }
        Ok(script)
    }
}

/// One state-change event the player produced.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub job_id: String,
    pub job_name: String,
    pub status: &'static str,
    /// When the transition happened, in epoch milliseconds (the event's `time`).
    pub at_millis: i64,
    /// The whole EventBridge event, as AWS sends it.
    pub event: Value,
}

pub const OUT_OF_MEMORY_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";
pub const ESSENTIAL_CONTAINER_EXITED: &str = "Essential container in task exited";
pub const DEPENDENT_JOB_FAILED: &str = "Dependent Job failed";

/// Plays Batch for the jobs in the emulator. Remembers what it played, so each call plays
/// only jobs it has not seen (for example the next stages a function just submitted).
pub struct Player {
    batch: aws_sdk_batch::Client,
    region: String,
    scripts: HashMap<String, Script>,
    played: HashMap<String, PlayedJob>,
    /// Jobs this player holds in RUNNABLE, and whether their RUNNABLE event was played.
    held: HashMap<String, bool>,
    /// Per queue (ARN), its compute environments in order: type and ECS cluster name.
    clusters: HashMap<String, Vec<(String, String)>>,
    /// Per job definition (ARN), the tags Batch propagates to its jobs (none without
    /// `propagateTags`): moto does not, so the player adds them to the events, as Batch does.
    definition_tags: HashMap<String, HashMap<String, String>>,
    /// Whether array children's events go without the parent's tags (AWS's documentation
    /// does not say whether they carry them: Batchline handles both).
    untagged_children: bool,
}

/// What the player remembers of a job it played, for jobs that depend on it.
#[derive(Debug, Clone, Copy)]
struct PlayedJob {
    stopped_at: i64,
    succeeded: bool,
}

impl Player {
    pub fn new(sdk: &SdkConfig) -> Self {
        Player {
            batch: aws_sdk_batch::Client::new(sdk),
            region: sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into()),
            scripts: HashMap::new(),
            played: HashMap::new(),
            held: HashMap::new(),
            clusters: HashMap::new(),
            definition_tags: HashMap::new(),
            untagged_children: false,
        }
    }

    /// Plays array children's events without their parent's tags (with them by default).
    pub fn untagged_children(&mut self, untagged: bool) -> &mut Self {
        self.untagged_children = untagged;
        self
    }

    /// Sets how the job with this id or name plays out, over its parameters and tags.
    pub fn script(&mut self, job_id_or_name: impl Into<String>, script: Script) -> &mut Self {
        self.scripts.insert(job_id_or_name.into(), script);
        self
    }

    /// Plays every job in `queue` (name or ARN) that it has not played yet, and returns
    /// their events ordered by time.
    pub async fn play_queue(&mut self, queue: &str) -> Result<Vec<StateChange>, Error> {
        let ids = self.job_ids_in(queue).await?;
        let new: Vec<String> = ids.into_iter().filter(|id| !self.played.contains_key(id)).collect();
        self.play_jobs(&new).await
    }

    /// Plays these jobs (ids), in the order they were created, and returns their events
    /// ordered by time.
    pub async fn play_jobs(&mut self, job_ids: &[String]) -> Result<Vec<StateChange>, Error> {
        let mut jobs = Vec::with_capacity(job_ids.len());
        for chunk in job_ids.chunks(100) {
            let reply = self
                .batch
                .describe_jobs()
                .set_jobs(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| Error::aws("DescribeJobs", e))?;
            jobs.extend(reply.jobs().iter().cloned());
        }
        jobs.sort_by_key(|job| (job.created_at().unwrap_or_default(), job.job_id().unwrap_or_default().to_owned()));
        for queue in jobs.iter().filter_map(|job| job.job_queue()) {
            if !self.clusters.contains_key(queue) {
                let clusters = self.clusters_of(queue).await?;
                self.clusters.insert(queue.to_owned(), clusters);
            }
        }
        for definition in jobs.iter().filter_map(|job| job.job_definition()) {
            if !self.definition_tags.contains_key(definition) {
                let tags = self.propagated_tags(definition).await?;
                self.definition_tags.insert(definition.to_owned(), tags);
            }
        }

        let mut changes = Vec::new();
        for job in &jobs {
            changes.extend(self.play_job(job)?);
        }
        changes.sort_by(|a, b| a.at_millis.cmp(&b.at_millis).then(status_rank(a.status).cmp(&status_rank(b.status))));
        Ok(changes)
    }

    /// The tags a job definition (ARN) gives its jobs: its own, when it propagates them.
    async fn propagated_tags(&self, definition: &str) -> Result<HashMap<String, String>, Error> {
        let reply = self
            .batch
            .describe_job_definitions()
            .job_definitions(definition)
            .send()
            .await
            .map_err(|e| Error::aws("DescribeJobDefinitions", e))?;
        let found = reply.job_definitions().first().filter(|d| d.propagate_tags() == Some(true));
        Ok(found.and_then(|d| d.tags()).cloned().unwrap_or_default())
    }

    /// Ids of every job in the queue, whatever its status. `AFTER_CREATED_AT` lists jobs in
    /// all statuses on AWS; moto lists a queue's jobs for any filter it does not know.
    async fn job_ids_in(&self, queue: &str) -> Result<Vec<String>, Error> {
        let filter = KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build();
        let mut ids = Vec::new();
        let mut token = None;
        loop {
            let reply = self
                .batch
                .list_jobs()
                .job_queue(queue)
                .filters(filter.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| Error::aws("ListJobs", e))?;
            // Array children (`parent:index`) are played with their parent.
            ids.extend(
                reply
                    .job_summary_list()
                    .iter()
                    .filter_map(|s| s.job_id())
                    .filter(|id| !id.contains(':'))
                    .map(str::to_owned),
            );
            token = reply.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(ids);
            }
        }
    }

    /// Makes jobs submitted to these queues (ARNs) from now on wait in RUNNABLE in the
    /// emulator until played and settled, instead of moto's immediate SUCCEEDED: for a
    /// player that plays continuously, so a client polling a job sees what it will see on AWS.
    pub async fn leave_unplayed(&self, queues: &[String]) -> Result<(), Error> {
        emulator_admin("unplayed", &json!({"queues": queues}), "leaving queues unplayed").await
    }

    /// Tells the emulator that these played jobs ended as played, so Batch reports them as
    /// they ran (DescribeJobs' attempts with their `taskArn`, times and exit; ListJobs'
    /// status) and stopping them changes nothing. Not done by playing: a test may deliver
    /// only part of what was played (a job still RUNNING for it), and terminate it.
    pub async fn settle(&self, changes: &[StateChange]) -> Result<(), Error> {
        let ended: Vec<&Value> =
            changes.iter().filter(|c| matches!(c.status, "SUCCEEDED" | "FAILED")).map(|c| &c.event["detail"]).collect();
        if ended.is_empty() {
            return Ok(());
        }
        let body = json!({"region": self.region, "jobs": ended});
        emulator_admin("played", &body, "recording played jobs").await
    }

    /// A queue's compute environments in order, as (type, ECS cluster name): where its
    /// jobs' tasks run (a task's ARN names its cluster). Read as the stuck-job watch reads
    /// a queue.
    async fn clusters_of(&self, queue: &str) -> Result<Vec<(String, String)>, Error> {
        let state = SdkBatch::new(self.batch.clone()).queue_state(queue).await?;
        Ok(state
            .map(|state| state.environments)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ce| {
                let kind = if ce.spot { "FARGATE_SPOT" } else { "FARGATE" };
                Some((kind.to_owned(), ce.ecs_cluster?))
            })
            .collect())
    }

    /// The cluster a job's tasks run on: the first of its queue's compute environments of
    /// the capacity the script asks for, else the first.
    fn cluster_for(&self, job: &JobDetail, script: &Script) -> String {
        let clusters = job.job_queue().and_then(|q| self.clusters.get(q)).map(Vec::as_slice).unwrap_or_default();
        let wanted = script.capacity.as_deref();
        clusters
            .iter()
            .find(|(kind, _)| wanted.is_none_or(|w| w == kind))
            .or(clusters.first())
            .map(|(_, cluster)| cluster.clone())
            .unwrap_or_else(|| "AWSBatch-batchline".to_owned())
    }

    fn script_for(&self, job: &JobDetail) -> Result<Script, Error> {
        let id = job.job_id().unwrap_or_default();
        let name = job.job_name().unwrap_or_default();
        if let Some(script) = self.scripts.get(id).or_else(|| self.scripts.get(name)) {
            return Ok(script.clone());
        }
        let setting = |key: &str| {
            job.parameters().and_then(|p| p.get(key)).or_else(|| job.tags().and_then(|t| t.get(key))).cloned()
        };
        Script::from_job_settings(setting).map_err(|why| Error::InvalidEvent(format!("job {id}: {why}")))
    }

    /// Holds a job in RUNNABLE in the emulator, as if it had waited `waited` there and
    /// could not start: the player then plays only its RUNNABLE event, until the job is
    /// cancelled or terminated (then it fails with that reason, as rule 3 says).
    pub async fn hold(&mut self, job_id: &str, waited: Duration) -> Result<(), Error> {
        let body = json!({"jobId": job_id, "waitedSeconds": waited.as_secs_f64(), "region": self.region});
        emulator_admin("hold", &body, &format!("holding job {job_id}")).await?;
        self.played.remove(job_id);
        self.held.insert(job_id.to_owned(), false);
        Ok(())
    }

    fn play_job(&mut self, job: &JobDetail) -> Result<Vec<StateChange>, Error> {
        let id = job.job_id().unwrap_or_default().to_owned();
        let mut script = self.script_for(job)?;
        let mut base = JobFacts::from_detail(job, &self.region, self.cluster_for(job, &script));
        // The tags Batch adds to a job's events: its definition's, and the job's own ARN.
        let propagated = job.job_definition().and_then(|d| self.definition_tags.get(d)).into_iter().flatten();
        for (key, value) in propagated {
            base.tags.entry(key.clone()).or_insert_with(|| json!(value));
        }
        base.tags.insert("resourceArn".into(), json!(base.job_arn));
        let created_at = base.created_at;

        // A job held (see `hold`) becomes RUNNABLE and goes no further; it is announced
        // once, and played again once it was stopped.
        if job.status().map(|s| s.as_str()) == Some("RUNNABLE") {
            if let Some(announced) = self.held.get_mut(&id) {
                if std::mem::replace(announced, true) {
                    return Ok(vec![]);
                }
                let mut timeline = Timeline::new(base, retry_strategy_json(job.retry_strategy()));
                timeline.push("RUNNABLE", created_at + 1_000, None);
                return Ok(timeline.into_changes(None));
            }
        }
        self.held.remove(&id);

        // Batch starts a job only after the jobs it depends on stopped; if one failed, the
        // job fails without running.
        let mut earliest_start = created_at;
        let mut dependency_failed = false;
        for dependency in job.depends_on().iter().filter_map(|d| d.job_id()) {
            match self.played.get(dependency) {
                Some(played) => {
                    earliest_start = earliest_start.max(played.stopped_at);
                    dependency_failed |= !played.succeeded;
                }
                None => {
                    return Err(Error::InvalidEvent(format!(
                        "job {id} depends on {dependency}, which was not played first"
                    )))
                }
            }
        }

        let terminated = (job.status().map(|s| s.as_str()) == Some("FAILED"))
            .then(|| job.status_reason().unwrap_or("Terminated by the user").to_owned());
        let memory = base.memory_mib();
        if let (Some(needed), Some(memory)) = (script.needs_memory_mib, memory) {
            if memory < needed {
                let outcomes = std::iter::once(&mut script.outcome).chain(script.children.values_mut());
                outcomes.filter(|o| **o == Outcome::Succeed).for_each(|o| *o = Outcome::OutOfMemory);
            }
        }

        let strategy = job.retry_strategy();
        let runnable_at = created_at + 1_000.min(duration_ms(script.queue_wait) / 4);
        let stopped = terminated.or_else(|| dependency_failed.then(|| DEPENDENT_JOB_FAILED.to_owned()));
        let array_size = job.array_properties().and_then(|a| a.size()).filter(|size| *size > 0);
        let (changes, stopped_at, succeeded) = match (stopped, array_size) {
            (Some(reason), None) => {
                let mut timeline = Timeline::new(base, retry_strategy_json(strategy));
                timeline.push("RUNNABLE", runnable_at, None);
                let stopped_at = runnable_at.max(earliest_start) + 1_000;
                timeline.push("FAILED", stopped_at, Some(Stop { reason, exit: None }));
                (timeline.into_changes(None), stopped_at, false)
            }
            (Some(reason), Some(size)) => {
                let stopped_at = runnable_at.max(earliest_start) + 1_000;
                (self.stopped_array(base, strategy, size as usize, &reason, runnable_at, stopped_at), stopped_at, false)
            }
            (None, None) => {
                let mut timeline = Timeline::new(base, retry_strategy_json(strategy));
                timeline.push("RUNNABLE", runnable_at, None);
                let (stopped_at, succeeded) =
                    play_attempts(&mut timeline, &script, &script.outcome, strategy, earliest_start);
                (timeline.into_changes(None), stopped_at, succeeded)
            }
            (None, Some(size)) => self.play_array(base, &script, strategy, size as usize, earliest_start),
        };
        self.played.insert(id, PlayedJob { stopped_at, succeeded });
        Ok(changes)
    }

    /// An array job: every child plays its own outcome (its index's in the script, else
    /// the script's) as a job of its own, `<parent>:<index>` with `arrayProperties.index`
    /// (without the parent's tags when [`Player::untagged_children`] says so); the parent
    /// goes RUNNABLE and RUNNING with them, and ends after its last child: SUCCEEDED if
    /// every child did, else FAILED, its `statusSummary` counting them.
    fn play_array(
        &self,
        base: JobFacts,
        script: &Script,
        strategy: Option<&RetryStrategy>,
        size: usize,
        earliest_start: i64,
    ) -> (Vec<StateChange>, i64, bool) {
        let runnable_at = base.created_at + 1_000.min(duration_ms(script.queue_wait) / 4);
        let (mut changes, mut failed, mut first_start, mut last_stop) = (Vec::new(), 0, i64::MAX, runnable_at);
        for index in 0..size {
            let facts = self.child_facts(&base, index);
            let outcome = script.children.get(&index).unwrap_or(&script.outcome);
            let mut timeline = Timeline::new(facts, retry_strategy_json(strategy));
            timeline.push("RUNNABLE", runnable_at, None);
            let (stopped_at, succeeded) = play_attempts(&mut timeline, script, outcome, strategy, earliest_start);
            failed += usize::from(!succeeded);
            last_stop = last_stop.max(stopped_at);
            for mut change in timeline.into_changes(None) {
                if change.status == "RUNNING" {
                    first_start = first_start.min(change.at_millis);
                }
                change.event["detail"]["arrayProperties"] = json!({"index": index});
                changes.push(change);
            }
        }
        let succeeded = failed == 0;
        let parent_stop = last_stop + 1_000;
        let mut parent = Timeline::new(base, retry_strategy_json(strategy));
        parent.push("RUNNABLE", runnable_at, None);
        parent.push("RUNNING", first_start.min(parent_stop), None);
        let (status, reason) = if succeeded { ("SUCCEEDED", "") } else { ("FAILED", "Array Child Job failed") };
        parent.push(status, parent_stop, Some(Stop { reason: reason.to_owned(), exit: None }));
        for mut change in parent_changes(parent, size, &[("SUCCEEDED", size - failed), ("FAILED", failed)]) {
            if succeeded {
                change.event["detail"].as_object_mut().expect("detail is an object").remove("statusReason");
            }
            changes.push(change);
        }
        (changes, parent_stop, succeeded)
    }

    /// Child `index` of the array `base` describes: `<parent>:<index>`, with the parent's
    /// tags (and its own ARN as `resourceArn`) unless children are played untagged.
    fn child_facts(&self, base: &JobFacts, index: usize) -> JobFacts {
        let mut facts = base.clone();
        facts.job_id = format!("{}:{index}", base.job_id);
        facts.job_arn = format!("{}:{index}", base.job_arn);
        if self.untagged_children {
            facts.tags.clear();
        } else {
            facts.tags.insert("resourceArn".into(), json!(facts.job_arn));
        }
        facts
    }

    /// An array stopped before it ran (terminated, or a dependency failed): every child
    /// goes RUNNABLE then FAILED with `reason`, and so does the parent, counting them.
    fn stopped_array(
        &self,
        base: JobFacts,
        strategy: Option<&RetryStrategy>,
        size: usize,
        reason: &str,
        runnable_at: i64,
        stopped_at: i64,
    ) -> Vec<StateChange> {
        let mut changes = Vec::new();
        for index in 0..size {
            let facts = self.child_facts(&base, index);
            let mut timeline = Timeline::new(facts, retry_strategy_json(strategy));
            timeline.push("RUNNABLE", runnable_at, None);
            timeline.push("FAILED", stopped_at, Some(Stop { reason: reason.to_owned(), exit: None }));
            for mut change in timeline.into_changes(None) {
                change.event["detail"]["arrayProperties"] = json!({"index": index});
                changes.push(change);
            }
        }
        let mut parent = Timeline::new(base, retry_strategy_json(strategy));
        parent.push("RUNNABLE", runnable_at, None);
        parent.push("FAILED", stopped_at + 1, Some(Stop { reason: reason.to_owned(), exit: None }));
        changes.extend(parent_changes(parent, size, &[("FAILED", size)]));
        changes
    }
}

/// An array parent's events: no container or attempts of its own, and an
/// `arrayProperties.statusSummary` with every child RUNNABLE or RUNNING while it is, and
/// counted as `ended` once it ended.
fn parent_changes(parent: Timeline, size: usize, ended: &[(&str, usize)]) -> Vec<StateChange> {
    let mut changes = parent.into_changes(Some(size as i32));
    for change in &mut changes {
        let summary = match change.status {
            status @ ("RUNNABLE" | "RUNNING") => status_summary(&[(status, size)]),
            _ => status_summary(ended),
        };
        let detail = &mut change.event["detail"];
        detail["arrayProperties"] = json!({"size": size, "statusSummary": summary});
        detail["attempts"] = json!([]);
    }
    changes
}

/// An array's `statusSummary`: every status, with these counts.
fn status_summary(counts: &[(&str, usize)]) -> Value {
    let mut summary =
        json!({"STARTING": 0, "FAILED": 0, "RUNNING": 0, "SUCCEEDED": 0, "RUNNABLE": 0, "SUBMITTED": 0, "PENDING": 0});
    for (status, count) in counts {
        summary[*status] = json!(count);
    }
    summary
}

/// Plays a job's attempts of `outcome` onto `timeline` (which is RUNNABLE), retrying as
/// Batch would: while its retry strategy has attempts left and its rules say RETRY for the
/// exit. Returns when it stopped and whether it succeeded.
fn play_attempts(
    timeline: &mut Timeline,
    script: &Script,
    outcome: &Outcome,
    strategy: Option<&RetryStrategy>,
    earliest_start: i64,
) -> (i64, bool) {
    let attempts_allowed = strategy.and_then(|s| s.attempts()).unwrap_or(1).max(1);
    let created_at = timeline.facts.created_at;
    let mut ready_at = timeline.steps.last().map(|s| s.at).unwrap_or(created_at);
    let mut attempt = 1;
    loop {
        let waits_from = if attempt == 1 { created_at } else { ready_at };
        let started_at = earliest_start.max(waits_from + duration_ms(script.queue_wait)).max(ready_at + 2);
        let starting_at = (started_at - 4_000).max(ready_at + 1);
        let stopped = started_at + duration_ms(script.run_time);
        timeline.push("STARTING", starting_at, None);
        timeline.started_at = Some(started_at);
        timeline.push("RUNNING", started_at, None);
        let exit = match outcome {
            Outcome::Succeed => ExitFacts { code: 0, reason: None },
            Outcome::OutOfMemory => ExitFacts { code: 137, reason: Some(OUT_OF_MEMORY_REASON.to_owned()) },
            Outcome::Exit(code) => ExitFacts { code: *code, reason: None },
        };
        if exit.code != 0 && attempt < attempts_allowed && batch_retries(strategy, &exit) {
            timeline.retry(stopped, exit);
            ready_at = stopped + 1_000;
            timeline.push("RUNNABLE", ready_at, None);
            attempt += 1;
            continue;
        }
        let succeeded = exit.code == 0;
        let status = if succeeded { "SUCCEEDED" } else { "FAILED" };
        timeline.push(status, stopped, Some(Stop { reason: ESSENTIAL_CONTAINER_EXITED.to_owned(), exit: Some(exit) }));
        return (stopped, succeeded);
    }
}

/// One of the emulator's Batch admin calls (`POST /_batchline/batch/NAME`, not an AWS
/// API); `what` names it in an error.
async fn emulator_admin(name: &str, body: &Value, what: &str) -> Result<(), Error> {
    let reply = reqwest::Client::new()
        .post(format!("{}/_batchline/batch/{name}", crate::emulator::endpoint()))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| Error::InvalidEvent(format!("{what}: {e}")))?;
    if !reply.status().is_success() {
        return Err(Error::InvalidEvent(format!("{what}: HTTP {}", reply.status())));
    }
    Ok(())
}

/// Whether Batch retries an attempt that ended as `exit`: the first `evaluateOnExit` rule
/// whose patterns all match decides; an exit no rule matches is retried.
fn batch_retries(strategy: Option<&RetryStrategy>, exit: &ExitFacts) -> bool {
    let matches = |pattern: Option<&str>, text: &str| match pattern {
        None => true,
        Some(pattern) => match pattern.strip_suffix('*') {
            Some(prefix) => text.starts_with(prefix),
            None => text == pattern,
        },
    };
    let code = exit.code.to_string();
    let reason = exit.reason.clone().unwrap_or_default();
    let rules = strategy.map(|s| s.evaluate_on_exit()).unwrap_or_default();
    let decided = rules.iter().find(|rule| {
        matches(rule.on_exit_code(), &code)
            && matches(rule.on_status_reason(), ESSENTIAL_CONTAINER_EXITED)
            && matches(rule.on_reason(), &reason)
    });
    // Batch takes the action in any case (and moto keeps it lower-cased).
    decided.is_none_or(|rule| rule.action().is_some_and(|a| a.as_str().eq_ignore_ascii_case("RETRY")))
}

/// A job's retry strategy as its events show it.
fn retry_strategy_json(strategy: Option<&RetryStrategy>) -> Value {
    let Some(strategy) = strategy else { return json!({"attempts": 1, "evaluateOnExit": []}) };
    let rules: Vec<Value> = strategy
        .evaluate_on_exit()
        .iter()
        .map(|rule| {
            let mut value = json!({"action": rule.action().map(|a| a.as_str().to_ascii_lowercase())});
            for (name, pattern) in [
                ("onExitCode", rule.on_exit_code()),
                ("onStatusReason", rule.on_status_reason()),
                ("onReason", rule.on_reason()),
            ] {
                if let Some(pattern) = pattern {
                    value[name] = json!(pattern);
                }
            }
            value
        })
        .collect();
    json!({"attempts": strategy.attempts().unwrap_or(1), "evaluateOnExit": rules})
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

fn status_rank(status: &str) -> u8 {
    match status {
        "RUNNABLE" => 0,
        "STARTING" => 1,
        "RUNNING" => 2,
        _ => 3,
    }
}

/// How a container stopped.
#[derive(Debug, Clone)]
struct ExitFacts {
    code: i32,
    reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Stop {
    reason: String,
    exit: Option<ExitFacts>,
}

/// What the events of one job share: its description as DescribeJobs reports it.
#[derive(Debug, Clone)]
struct JobFacts {
    region: String,
    account: String,
    job_id: String,
    job_arn: String,
    job_name: String,
    job_queue: String,
    job_definition: String,
    created_at: i64,
    parameters: Map<String, Value>,
    tags: Map<String, Value>,
    container: Map<String, Value>,
    depends_on: Vec<Value>,
    platform_capabilities: Vec<Value>,
    /// The ECS cluster its tasks run on.
    cluster: String,
}

impl JobFacts {
    fn from_detail(job: &JobDetail, region: &str, cluster: String) -> Self {
        let job_arn = job.job_arn().unwrap_or_default().to_owned();
        let account = job_arn.split(':').nth(4).unwrap_or(crate::emulator::ACCOUNT_ID).to_owned();
        let strings = |map: Option<&HashMap<String, String>>| -> Map<String, Value> {
            map.map(|m| m.iter().map(|(k, v)| (k.clone(), json!(v))).collect()).unwrap_or_default()
        };
        let mut container = Map::new();
        if let Some(detail) = job.container() {
            if let Some(image) = detail.image() {
                container.insert("image".into(), json!(image));
            }
            container.insert("command".into(), json!(detail.command()));
            if let Some(role) = detail.job_role_arn() {
                container.insert("jobRoleArn".into(), json!(role));
            }
            if let Some(role) = detail.execution_role_arn() {
                container.insert("executionRoleArn".into(), json!(role));
            }
            container.insert("volumes".into(), json!([]));
            let environment: Vec<Value> =
                detail.environment().iter().map(|e| json!({"name": e.name(), "value": e.value()})).collect();
            container.insert("environment".into(), json!(environment));
            container.insert("mountPoints".into(), json!([]));
            container.insert("ulimits".into(), json!([]));
            let requirements: Vec<Value> = detail
                .resource_requirements()
                .iter()
                .map(|r| json!({"value": r.value(), "type": r.r#type().map(|t| t.as_str())}))
                .collect();
            container.insert("resourceRequirements".into(), json!(requirements));
            container.insert("secrets".into(), json!([]));
            let public_ip = detail
                .network_configuration()
                .and_then(|n| n.assign_public_ip())
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|| "DISABLED".to_owned());
            container.insert("networkConfiguration".into(), json!({"assignPublicIp": public_ip}));
            container.insert("fargatePlatformConfiguration".into(), json!({"platformVersion": "LATEST"}));
        }
        JobFacts {
            region: region.to_owned(),
            account,
            job_id: job.job_id().unwrap_or_default().to_owned(),
            job_arn,
            job_name: job.job_name().unwrap_or_default().to_owned(),
            job_queue: job.job_queue().unwrap_or_default().to_owned(),
            job_definition: job.job_definition().unwrap_or_default().to_owned(),
            created_at: job.created_at().unwrap_or_default(),
            parameters: strings(job.parameters()),
            tags: strings(job.tags()),
            container,
            depends_on: job
                .depends_on()
                .iter()
                .map(|d| json!({"jobId": d.job_id(), "type": d.r#type().map(|t| t.as_str())}))
                .collect(),
            platform_capabilities: job.platform_capabilities().iter().map(|p| json!(p.as_str())).collect(),
            cluster,
        }
    }

    fn memory_mib(&self) -> Option<u64> {
        self.container.get("resourceRequirements")?.as_array()?.iter().find_map(|r| {
            (r.get("type")?.as_str()? == "MEMORY").then(|| r.get("value")?.as_str()?.parse().ok()).flatten()
        })
    }

    /// A task id as ECS makes them (32 hex digits), stable for the job.
    fn task_id(&self) -> String {
        let mut hash: u128 = 0xcbf29ce484222325;
        for byte in self.job_id.bytes() {
            hash = (hash ^ byte as u128).wrapping_mul(0x0000000001000000000000000000013B);
        }
        format!("{hash:032x}")
    }
}

/// The transitions of one job, turned into events at the end.
struct Timeline {
    facts: JobFacts,
    /// When the current attempt's container started.
    started_at: Option<i64>,
    /// Attempts that ended and were retried: (started, stopped, how).
    retried: Vec<(i64, i64, ExitFacts)>,
    retry_strategy: Value,
    steps: Vec<Step>,
}

/// One transition, with the attempt it belongs to.
struct Step {
    status: &'static str,
    at: i64,
    stop: Option<Stop>,
    started_at: Option<i64>,
    retried: Vec<(i64, i64, ExitFacts)>,
}

impl Timeline {
    fn new(facts: JobFacts, retry_strategy: Value) -> Self {
        Timeline { facts, started_at: None, retried: Vec::new(), retry_strategy, steps: Vec::new() }
    }

    fn push(&mut self, status: &'static str, at: i64, stop: Option<Stop>) {
        let (started_at, retried) = (self.started_at, self.retried.clone());
        self.steps.push(Step { status, at, stop, started_at, retried });
    }

    /// An attempt that ended as `exit` and that Batch retries: the job goes back to RUNNABLE.
    fn retry(&mut self, stopped_at: i64, exit: ExitFacts) {
        if let Some(started_at) = self.started_at.take() {
            self.retried.push((started_at, stopped_at, exit));
        }
    }

    fn into_changes(self, array_size: Option<i32>) -> Vec<StateChange> {
        let facts = &self.facts;
        let task_id = facts.task_id();
        let definition_name = facts
            .job_definition
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let log_stream = format!("{definition_name}/default/{task_id}");
        let task_arn = format!("arn:aws:ecs:{}:{}:task/{}/{task_id}", facts.region, facts.account, facts.cluster);
        let attempt = |started_at: i64, stopped_at: i64, exit: &ExitFacts, status_reason: &str| {
            let mut container = json!({
                "taskArn": task_arn, "exitCode": exit.code, "logStreamName": log_stream,
                "networkInterfaces": [{"attachmentId": format!("{}-eni", &task_id[..8]), "privateIpv4Address": "10.0.1.23"}],
            });
            if let Some(reason) = &exit.reason {
                container["reason"] = json!(reason);
            }
            json!({"container": container, "startedAt": started_at, "stoppedAt": stopped_at, "statusReason": status_reason})
        };
        self.steps
            .iter()
            .map(|Step { status, at, stop, started_at, retried }| {
                let earlier: Vec<Value> = retried
                    .iter()
                    .map(|(start, end, exit)| attempt(*start, *end, exit, ESSENTIAL_CONTAINER_EXITED))
                    .collect();
                let mut detail = Map::new();
                detail.insert("jobArn".into(), json!(facts.job_arn));
                detail.insert("jobName".into(), json!(facts.job_name));
                detail.insert("jobId".into(), json!(facts.job_id));
                detail.insert("jobQueue".into(), json!(facts.job_queue));
                detail.insert("status".into(), json!(status));
                detail.insert("attempts".into(), json!(earlier));
                detail.insert("createdAt".into(), json!(facts.created_at));
                detail.insert("retryStrategy".into(), self.retry_strategy.clone());
                detail.insert("dependsOn".into(), json!(facts.depends_on));
                detail.insert("jobDefinition".into(), json!(facts.job_definition));
                detail.insert("parameters".into(), Value::Object(facts.parameters.clone()));
                let mut container = facts.container.clone();
                let ran = started_at.is_some() && *status != "RUNNABLE" && *status != "STARTING";
                if ran {
                    detail.insert("startedAt".into(), json!(started_at));
                    container.insert("taskArn".into(), json!(task_arn));
                    container.insert("logStreamName".into(), json!(log_stream));
                    container.insert(
                        "networkInterfaces".into(),
                        json!([{"attachmentId": format!("{}-eni", &task_id[..8]), "privateIpv4Address": "10.0.1.23"}]),
                    );
                } else {
                    container.insert("networkInterfaces".into(), json!([]));
                }
                if let Some(stop) = stop {
                    detail.insert("stoppedAt".into(), json!(at));
                    detail.insert("statusReason".into(), json!(stop.reason));
                    if let (Some(exit), Some(started_at)) = (&stop.exit, started_at) {
                        container.insert("exitCode".into(), json!(exit.code));
                        if let Some(reason) = &exit.reason {
                            container.insert("reason".into(), json!(reason));
                        }
                        let mut attempts = earlier.clone();
                        attempts.push(attempt(*started_at, *at, exit, &stop.reason));
                        detail.insert("attempts".into(), json!(attempts));
                    }
                }
                if array_size.is_none() {
                    detail.insert("container".into(), Value::Object(container));
                }
                detail.insert("tags".into(), Value::Object(facts.tags.clone()));
                detail.insert("propagateTags".into(), json!(false));
                detail.insert("platformCapabilities".into(), json!(facts.platform_capabilities));
                detail.insert("eksAttempts".into(), json!([]));
                StateChange {
                    job_id: facts.job_id.clone(),
                    job_name: facts.job_name.clone(),
                    status,
                    at_millis: *at,
                    event: envelope(&facts.region, &facts.account, *at, &facts.job_arn, Value::Object(detail)),
                }
            })
            .collect()
    }
}

/// EventBridge's envelope around a Batch event.
fn envelope(region: &str, account: &str, at_millis: i64, job_arn: &str, detail: Value) -> Value {
    json!({
        "version": "0",
        "id": event_id(),
        "detail-type": "Batch Job State Change",
        "source": "aws.batch",
        "account": account,
        "time": iso_time(at_millis),
        "region": region,
        "resources": [job_arn],
        "detail": detail,
    })
}

/// An EventBridge event id: a random UUID.
pub fn event_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// `2026-11-27T08:09:02Z`, as EventBridge writes `time` (whole seconds).
pub fn iso_time(at_millis: i64) -> String {
    DateTime::from_secs(at_millis.div_euclid(1000)).fmt(Format::DateTime).unwrap_or_default()
}

/// Events on their way to a consumer: duplicated, shuffled, batched, delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    events: Vec<Value>,
}

impl Delivery {
    pub fn of(changes: &[StateChange]) -> Self {
        Delivery { events: changes.iter().map(|c| c.event.clone()).collect() }
    }

    /// Every event `times` times, each copy with the same EventBridge `id`, as an
    /// at-least-once delivery repeats it.
    pub fn repeated(mut self, times: usize) -> Self {
        self.events = self.events.iter().flat_map(|e| std::iter::repeat_n(e.clone(), times)).collect();
        self
    }

    /// The events in an order drawn from `seed` (the same seed, the same order).
    pub fn shuffled(mut self, seed: u64) -> Self {
        fastrand::Rng::with_seed(seed).shuffle(&mut self.events);
        self
    }

    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Events already in EventBridge's shape (from a fixture, say), to deliver the same way.
    pub fn from_events(events: Vec<Value>) -> Self {
        Delivery { events }
    }

    /// The events as the SQS event payloads Lambda hands a function, `batch_size` records
    /// each, with the event JSON as each record's body (what an EventBridge SQS target sends).
    pub fn sqs_batches(&self, queue_arn: &str, batch_size: usize) -> Vec<Value> {
        self.events
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let records: Vec<Value> =
                    chunk.iter().map(|event| sqs_record(&event_id(), &event.to_string(), queue_arn)).collect();
                json!({ "Records": records })
            })
            .collect()
    }

    /// Sends the events into an SQS queue as an EventBridge SQS target does (the body is
    /// the event JSON), so duplicates keep their `id`.
    pub async fn to_queue(&self, sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<(), Error> {
        for event in &self.events {
            sqs.send_message()
                .queue_url(queue_url)
                .message_body(event.to_string())
                .send()
                .await
                .map_err(|e| Error::aws("SendMessage", e))?;
        }
        Ok(())
    }

    /// Puts the events on an EventBridge bus in the emulator, as Batch does: source
    /// `aws.batch`, the job ARN as the resource, the transition time as `Time`. The bus
    /// assigns each event a new `id` (a repeated event is a new event there).
    pub async fn to_event_bus(&self, events: &aws_sdk_eventbridge::Client, bus: &str) -> Result<(), Error> {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        for chunk in self.events.chunks(10) {
            let entries = chunk
                .iter()
                .map(|event| {
                    let time = event["time"].as_str().unwrap_or_default();
                    let time = DateTime::from_str(time, Format::DateTime).unwrap_or(DateTime::from_secs(0));
                    PutEventsRequestEntry::builder()
                        .event_bus_name(bus)
                        .source("aws.batch")
                        .detail_type("Batch Job State Change")
                        .resources(event["resources"][0].as_str().unwrap_or_default())
                        .time(time)
                        .detail(event["detail"].to_string())
                        .build()
                })
                .collect();
            let reply =
                events.put_events().set_entries(Some(entries)).send().await.map_err(|e| Error::aws("PutEvents", e))?;
            if reply.failed_entry_count() > 0 {
                return Err(Error::InvalidEvent(format!("PutEvents refused entries: {:?}", reply.entries())));
            }
        }
        Ok(())
    }
}

/// One SQS record as Lambda's SQS event source hands it to a function.
pub fn sqs_record(message_id: &str, body: &str, queue_arn: &str) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("receipt-{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1700000000000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1700000000001"
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(':').nth(3).unwrap_or("us-east-1"),
    })
}

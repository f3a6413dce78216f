//! Logging set-up shared by every function binary: one JSON object per line on Lambda, with Powertools' keys and the run a line is about at the top level.
//!
//! Under the template's `LoggingConfig: {LogFormat: JSON}` (Lambda sets
//! `AWS_LAMBDA_LOG_FORMAT=JSON`) every line is one JSON object whose top-level keys are:
//!
//! - `timestamp` (RFC 3339, milliseconds, UTC), `level`, `message`;
//! - `service`: the function's binary (`batchline-submit`, …), the same in every stack, and
//!   `function_name`: the Lambda function's own name;
//! - `cold_start`: true on the lines of a process's first invocation (and of its init);
//! - `function_request_id` and `xray_trace_id` (when Lambda gives one): read from the span
//!   lambda_runtime opens around each invocation, whose own names (`requestId`,
//!   `xrayTraceId`) are not repeated;
//! - every field of the spans the line is inside, outermost first, then the event's own
//!   fields (an inner value wins). The run engine opens spans with `run_id` and `pipeline`
//!   around a run's work, and `stage`, `attempt` and `job_id` around a stage's, so every line
//!   about a run carries the run fields that apply to it (a line about the whole run has no
//!   `stage`). These are the names the template's saved Logs Insights queries filter on.
//!
//! These names are Lambda Powertools' (there is no Powertools for Rust). Without
//! `AWS_LAMBDA_LOG_FORMAT=JSON`, as when a binary is run by hand, lines are tracing's
//! readable text. The level is `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else INFO.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// lambda_runtime's names for the invocation's ids, and the names a line gives them.
const RENAMED: [(&str, &str); 2] = [("requestId", "function_request_id"), ("xrayTraceId", "xray_trace_id")];

/// Installs the subscriber once, at start-up; `service` is the binary's name.
pub fn init(service: &'static str) {
    let level = log_level(std::env::var("AWS_LAMBDA_LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")).ok());
    let filter = events_at(level);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let installed = if json {
        let lines = JsonLines::new(service, std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(), stdout);
        tracing_subscriber::registry().with(lines.with_filter(filter)).try_init()
    } else {
        let text = tracing_subscriber::fmt::layer().with_target(false);
        tracing_subscriber::registry().with(text.with_filter(filter)).try_init()
    };
    // Already installed (a test that started two functions in one process): keep the first.
    let _ = installed;
}

/// Lets through events at `level` or more severe, and the spans whose fields a line
/// carries — Batchline's and lambda_runtime's invocation span — at any level: so a WARN line
/// under `AWS_LAMBDA_LOG_LEVEL=WARN` still names its request and run. Other crates' spans
/// (the SDK's, hyper's) are left out: their fields are not a line's, and each costs.
fn events_at(level: Level) -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(move |metadata| {
        if metadata.is_span() {
            let target = metadata.target();
            target.starts_with("batchline") || target.starts_with("lambda_runtime")
        } else {
            *metadata.level() <= level
        }
    })
}

/// The level Lambda's log-level setting names (TRACE … ERROR, and FATAL, which tracing calls
/// ERROR); INFO when unset or not a level (a `RUST_LOG` filter such as `batchline=debug` is
/// not read: a level name only).
fn log_level(setting: Option<String>) -> Level {
    match setting.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("TRACE") => Level::TRACE,
        Some("DEBUG") => Level::DEBUG,
        Some("WARN") => Level::WARN,
        Some("ERROR" | "FATAL") => Level::ERROR,
        _ => Level::INFO,
    }
}

/// The span of a run's work: every line inside carries `run_id` and `pipeline`.
pub fn run_span(run_id: &str, pipeline: &str) -> tracing::Span {
    tracing::info_span!("run", run_id, pipeline)
}

/// The span of one stage's work in a run, inside `run` (the span of its run): every line
/// inside carries `stage`, and `attempt` and `job_id` when they are known, and none of an
/// enclosing stage's.
pub fn stage_span(run: &tracing::Span, stage: &str, attempt: Option<u32>, job_id: Option<&str>) -> tracing::Span {
    tracing::info_span!(parent: run, "stage", stage, attempt, job_id)
}

/// The span of work about a whole run, inside a stage's span: its lines carry no stage.
pub fn whole_run_span() -> tracing::Span {
    tracing::info_span!("whole run", stage = tracing::field::Empty)
}

fn stdout() -> Box<dyn Write> {
    Box::new(std::io::stdout())
}

/// The fields a span was given, kept in its extensions; and whether it declares `stage`.
#[derive(Default)]
struct SpanFields {
    fields: Vec<(String, Value)>,
    /// A span about a stage (or one declaring `stage` empty: about the whole run) starts the
    /// stage fields afresh, so a line never carries an enclosing stage's attempt or job.
    resets_stage: bool,
}

/// The fields a span about a stage declares: an enclosing span's values of them are not a
/// line's inside it.
const STAGE_FIELDS: [&str; 3] = ["stage", "attempt", "job_id"];

/// A tracing layer writing each event as one JSON object (see the module's documentation).
pub struct JsonLines<W> {
    service: &'static str,
    function_name: Option<String>,
    /// The first invocation's request id and span: lines of any other are warm, and so are
    /// lines of no invocation once the first has ended.
    first_request: OnceLock<String>,
    first_invocation: OnceLock<Id>,
    first_ended: AtomicBool,
    writer: W,
}

impl<W: Fn() -> Box<dyn Write> + Send + Sync + 'static> JsonLines<W> {
    /// A layer for `service`, writing each line to a fresh `writer()`.
    pub fn new(service: &'static str, function_name: Option<String>, writer: W) -> Self {
        let (first_request, first_invocation, first_ended) = (OnceLock::new(), OnceLock::new(), AtomicBool::new(false));
        JsonLines { service, function_name, first_request, first_invocation, first_ended, writer }
    }

    /// The line of `event` with `fields` (its spans', merged), at `at_ms`.
    fn line(&self, event: &Event<'_>, mut fields: Map<String, Value>, at_ms: i64) -> String {
        let mut own = FieldVisitor::default();
        event.record(&mut own);
        for (name, value) in own.0 {
            fields.insert(name, value);
        }
        for (from, to) in RENAMED {
            if let Some(value) = fields.remove(from) {
                fields.insert(to.to_owned(), value);
            }
        }
        // Powertools' form of the trace id: the root's `1-…`, not Lambda's whole header.
        if let Some(Value::String(header)) = fields.get_mut("xray_trace_id") {
            let root = header.split(';').find_map(|part| part.strip_prefix("Root=")).map(str::to_owned);
            if let Some(root) = root {
                *header = root;
            }
        }
        let cold_start = match fields.get("function_request_id").and_then(Value::as_str) {
            Some(id) => self.first_request.get().is_none_or(|first| first == id),
            None => !self.first_ended.load(Ordering::Relaxed),
        };
        let timestamp = chrono::DateTime::from_timestamp_millis(at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let message = fields.remove("message").unwrap_or(Value::String(String::new()));
        // The fixed keys are this layer's to write: a field of the same name would repeat one.
        for fixed in ["timestamp", "level", "service", "cold_start", "function_name"] {
            fields.remove(fixed);
        }
        // The fixed keys first, in Powertools' order, so a line reads well in the console.
        let mut head: Vec<(&str, Value)> = vec![
            ("timestamp", Value::String(timestamp)),
            ("level", Value::String(event.metadata().level().as_str().to_owned())),
            ("message", message),
            ("service", Value::String(self.service.to_owned())),
            ("cold_start", Value::Bool(cold_start)),
        ];
        if let Some(name) = &self.function_name {
            head.push(("function_name", Value::String(name.clone())));
        }
        for key in ["function_request_id", "xray_trace_id"] {
            if let Some(value) = fields.remove(key) {
                head.push((key, value));
            }
        }
        let mut text = String::from("{");
        let pairs = head.iter().map(|(k, v)| (*k, v)).chain(fields.iter().map(|(k, v)| (k.as_str(), v)));
        for (i, (name, value)) in pairs.enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&Value::String(name.to_owned()).to_string());
            text.push(':');
            text.push_str(&value.to_string());
        }
        text.push_str("}\n");
        text
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Fn() -> Box<dyn Write> + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = FieldVisitor::default();
        attrs.record(&mut fields);
        // The first invocation's span makes its request the cold one, whether or not
        // anything in it is logged at the level set.
        if let Some((_, Value::String(request))) = fields.0.iter().find(|(name, _)| name == "requestId") {
            if self.first_request.set(request.clone()).is_ok() {
                let _ = self.first_invocation.set(id.clone());
            }
        }
        let resets_stage = attrs.metadata().fields().field("stage").is_some();
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields { fields: fields.0, resets_stage });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut recorded = FieldVisitor::default();
        values.record(&mut recorded);
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields { fields, .. }) = extensions.get_mut::<SpanFields>() {
            for (name, value) in recorded.0 {
                fields.retain(|(n, _)| *n != name);
                fields.push((name, value));
            }
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if self.first_invocation.get() == Some(&id) {
            self.first_ended.store(true, Ordering::Relaxed);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The spans' fields, outermost first, each copied once.
        let mut fields = Map::new();
        for span in ctx.event_scope(event).into_iter().flat_map(|scope| scope.from_root()) {
            let extensions = span.extensions();
            let Some(found) = extensions.get::<SpanFields>() else { continue };
            if found.resets_stage {
                STAGE_FIELDS.iter().for_each(|name| drop(fields.remove(*name)));
            }
            for (name, value) in &found.fields {
                fields.insert(name.clone(), value.clone());
            }
        }
        let line = self.line(event, fields, now_ms());
        // One write per line, so lines of concurrent tasks never interleave.
        let _ = (self.writer)().write_all(line.as_bytes());
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// Field values as JSON: numbers and booleans as themselves, anything else as its text.
#[derive(Default)]
struct FieldVisitor(Vec<(String, Value)>);

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        self.0.push((field.name().to_owned(), value));
    }
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};

    use super::*;

    /// A writer into a shared buffer, so the test reads what the layer wrote.
    fn capture() -> (Arc<Mutex<Vec<u8>>>, impl Fn() -> Box<dyn Write> + Send + Sync + 'static) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared(buffer.clone());
        (buffer, move || Box::new(shared.clone()) as Box<dyn Write>)
    }

    fn lines(buffer: &Mutex<Vec<u8>>) -> Vec<Value> {
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    #[test]
    fn a_line_has_powertools_keys_the_invocations_ids_and_the_run_fields_of_its_spans_at_the_top() {
        let (buffer, writer) = capture();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new("batchline-x", Some("fn".into()), writer));
        tracing::subscriber::with_default(subscriber, || {
            info!("starting");
            for request in ["r-1", "r-2"] {
                let trace = "Root=1-abc;Parent=def;Sampled=1";
                let invoke = info_span!("Lambda runtime invoke", requestId = request, xrayTraceId = trace);
                let _invoke = invoke.enter();
                let run = info_span!("run", run_id = "orders-1", pipeline = "orders");
                let _run = run.enter();
                let outer = stage_span(&run, "extract", Some(1), Some("j-1"));
                let _outer = outer.enter();
                let stage = info_span!("effect", stage = "load", attempt = 2u32, job_id = tracing::field::Empty);
                let _stage = stage.enter();
                stage.record("job_id", "j-9");
                warn!(exit_code = 137, "stage failed");
                whole_run_span().in_scope(|| info!("run completed"));
            }
            info!("after the invocations");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[5]["cold_start"], false, "outside any invocation once the first has ended");
        assert_eq!(lines[0]["message"], "starting");
        assert_eq!(lines[0]["cold_start"], true, "init is part of the cold start");
        assert!(lines[0].get("run_id").is_none());
        let first = &lines[1];
        let stamp = first["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.len() == 24, "{stamp}");
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "stage failed");
        assert_eq!(first["service"], "batchline-x");
        assert_eq!(first["function_name"], "fn");
        assert_eq!(first["cold_start"], true);
        assert_eq!(first["function_request_id"], "r-1");
        assert_eq!(first["xray_trace_id"], "1-abc");
        assert!(first.get("requestId").is_none() && first.get("xrayTraceId").is_none());
        for (key, value) in
            [("run_id", json("orders-1")), ("pipeline", json("orders")), ("stage", json("load")), ("attempt", 2.into())]
        {
            assert_eq!(first[key], value, "{key}");
        }
        assert_eq!(first["job_id"], "j-9", "a field recorded after the span opened");
        let inner_without_job = lines[1].clone();
        assert_eq!(inner_without_job["attempt"], 2, "the inner stage's attempt, not the outer's");
        assert_eq!(first["exit_code"], 137);
        let whole = &lines[2];
        assert_eq!((whole["message"].as_str(), whole["run_id"].as_str()), (Some("run completed"), Some("orders-1")));
        assert!(whole.get("stage").is_none() && whole.get("job_id").is_none(), "a whole run's line: {whole}");
        assert_eq!(lines[3]["cold_start"], false, "the second invocation is warm");
        assert_eq!(lines[3]["function_request_id"], "r-2");
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let second_line = text.lines().nth(1).unwrap();
        let order = ["\"timestamp\"", "\"level\"", "\"message\"", "\"service\"", "\"cold_start\""];
        let at: Vec<usize> = order.iter().map(|key| second_line.find(key).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]) && at[0] == 1, "{second_line}");
    }

    #[test]
    fn under_a_higher_level_info_lines_go_and_a_warn_line_keeps_its_spans_fields() {
        let (buffer, writer) = capture();
        let lines_layer =
            JsonLines::new("batchline-x", None, writer).with_filter(events_at(log_level(Some("warn".into()))));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(lines_layer), || {
            let run = info_span!("run", run_id = "orders-1", pipeline = "orders");
            let _run = run.enter();
            info!("left out");
            warn!("kept");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0]["message"].as_str(), lines[0]["run_id"].as_str()), (Some("kept"), Some("orders-1")));
        assert_eq!(log_level(Some("FATAL".into())), Level::ERROR);
        assert_eq!(log_level(None), Level::INFO);
    }

    fn json(text: &str) -> Value {
        Value::String(text.to_owned())
    }
}

//! The sample events in `events/`, each sent the way `scripts/invoke` sends it to its function on the local stack; and the book's "Write your own job" followed to the letter.

use batchline_demo::configuration::Source;
use batchline_demo::local_stack::{LocalStack, PREFIX};
use batchline_testkit::emulator::{repo_root, unique_name};
use batchline_testkit::local_lambda::Outcome;
use serde_json::Value;

/// The local stack the tests use, from the checkout's `template.yaml` with the book's
/// "Write your own job" followed: its worked example added to the `Environment`'s job
/// definitions (its names are fixed, so it is made once per test run).
async fn local_stack() -> &'static (LocalStack, std::path::PathBuf) {
    static STACK: tokio::sync::OnceCell<(LocalStack, std::path::PathBuf)> = tokio::sync::OnceCell::const_new();
    STACK
        .get_or_init(|| async {
            let dir = repo_root().join("target/test-local-stack").join(unique_name("stack"));
            std::fs::create_dir_all(&dir).unwrap();
            let template = dir.join("template.yaml");
            std::fs::write(&template, template_with_the_worked_example()).unwrap();
            let source = Source::Template { path: template, overrides: Vec::new() };
            (LocalStack::ensure_from(&dir, PREFIX, &source, &mut |_| {}).await.unwrap(), dir)
        })
        .await
}

/// `template.yaml` with the guide's worked example declared beside `default`, as the guide says.
fn template_with_the_worked_example() -> String {
    let text = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    let block = block_after(&guide(), "**The worked example.**", "yaml");
    let anchor = "      JobDefinitions:\n";
    let at = text.find(anchor).expect("the template declares JobDefinitions") + anchor.len();
    let indented: String = block.lines().map(|line| format!("        {line}\n")).collect();
    format!("{}{indented}{}", &text[..at], &text[at..])
}

#[tokio::test]
async fn every_sample_event_is_handled_by_its_function_on_the_local_stack() {
    // GIVEN the local stack, made on first use and reused after
    let (stack, dir) = local_stack().await;
    let dir = dir.clone();
    let mut again = Vec::new();
    let source = Source::Template { path: dir.join("template.yaml"), overrides: Vec::new() };
    LocalStack::ensure_from(&dir, PREFIX, &source, &mut |line| again.push(line)).await.unwrap();
    assert!(again.len() == 1 && again[0].contains("is reused"), "reused: {again:?}");
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(env.lines().any(|l| l == format!("BATCHLINE_TABLE={}", stack.table)), "{env}");

    // WHEN each sample event is sent to its function, THEN it is handled
    let mut seen = 0;
    for function in ["submit", "job-events"] {
        let mut files: Vec<_> = std::fs::read_dir(repo_root().join("events").join(function))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let event: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let answer = match stack.invoke(function, &event).await.unwrap() {
                Outcome::Response(answer) => answer,
                Outcome::Error(error) => panic!("{}: {error}", file.display()),
            };
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(status) = answer["statusCode"].as_u64() {
                assert!((200..300).contains(&status), "{name}: {answer}");
            }
            if let Some(failures) = answer["batchItemFailures"].as_array() {
                assert!(failures.is_empty(), "{name}: {answer}");
            }
            match name.as_str() {
                "api-submit-job.json" => {
                    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
                    assert!(body["jobId"].is_string(), "{body}");
                    // 1,500 MiB alone: the definition's 0.25 vCPU kept, the memory snapped up.
                    assert_eq!(body["size"], serde_json::json!({"vcpu": "0.25", "memoryMib": 2048}), "{body}");
                    assert_eq!(body["sizeAdjusted"], true, "{body}");
                }
                "api-start-run.json" => {
                    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
                    assert!(body["runId"].is_string(), "{body}");
                }
                "sqs-s3-object-created.json" => {
                    // The template's S3 trigger starts one job of `default` for the object.
                    let sdk = batchline_testkit::emulator::sdk_config().await;
                    let batch = aws_sdk_batch::Client::new(&sdk);
                    let queue = format!("{PREFIX}-default");
                    let listed =
                        batch.list_jobs().job_queue(&queue).job_status("SUCCEEDED".into()).send().await.unwrap();
                    let ids: Vec<String> =
                        listed.job_summary_list().iter().filter_map(|j| j.job_id().map(str::to_owned)).collect();
                    let described = batch.describe_jobs().set_jobs(Some(ids)).send().await.unwrap();
                    let for_the_object = described.jobs().iter().any(|job| {
                        job.parameters().and_then(|p| p.get("inputKey")).map(String::as_str)
                            == Some("incoming/orders-2026-11-30.csv")
                    });
                    assert!(for_the_object, "no job of {queue} ran the object: {described:?}");
                }
                "sweep.json" => assert!(answer["sweep"].is_object(), "{answer}"),
                _ => {}
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 8, "every sample was sent");
}

/// The book's guide page "Write your own job".
fn guide() -> String {
    std::fs::read_to_string(repo_root().join("docs/src/guide/your-first-job.md")).expect("the guide is in the book")
}

/// The first fenced block of `language` after `marker` in `text`.
fn block_after(text: &str, marker: &str, language: &str) -> String {
    let from = text.find(marker).unwrap_or_else(|| panic!("{marker:?} is not in the guide"));
    let opening = format!("```{language}\n");
    let start = from + text[from..].find(&opening).unwrap() + opening.len();
    let end = start + text[start..].find("```").unwrap();
    text[start..end].to_owned()
}

#[tokio::test]
async fn the_write_your_own_job_guide_followed_to_the_letter_runs_its_example_job() {
    let guide = guide();
    // GIVEN the example job as the guide declares it, which is what the local stack deploys
    let declared: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&block_after(&guide, "**The worked example.**", "yaml")).unwrap(),
    )
    .unwrap();
    let demo = batchline_demo::properties("demo", "demo-input").unwrap();
    assert_eq!(declared, serde_json::json!({ batchline_demo::WORDCOUNT: demo["JobDefinitions"]["wordcount"] }));
    assert_eq!(
        local_stack().await.0.properties["JobDefinitions"][batchline_demo::WORDCOUNT],
        declared[batchline_demo::WORDCOUNT],
        "the local stack runs the template with the guide's block added"
    );
    let (stack, _) = local_stack().await;

    // WHEN the guide's command is run: scripts/invoke FUNCTION EVENT
    let command = block_after(&guide, "Try it locally", "sh");
    let words: Vec<&str> = command.split_whitespace().collect();
    let ["scripts/invoke", function, event_file] = words.as_slice() else { panic!("the guide runs {command:?}") };
    let event: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join(event_file)).unwrap()).unwrap();
    let Outcome::Response(answer) = stack.invoke(function, &event).await.unwrap() else { panic!("{event_file}") };

    // THEN submit answers as the guide says: 202, the job, the definition's size
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["size"], serde_json::json!({"vcpu": "0.25", "memoryMib": 512}), "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();

    // AND the job carries the parameters the command's Ref::s name, on the guide's definition
    let sdk = batchline_testkit::emulator::sdk_config().await;
    let batch = aws_sdk_batch::Client::new(&sdk);
    let jobs = batch.describe_jobs().jobs(&job_id).send().await.unwrap();
    let job = &jobs.jobs()[0];
    let parameters = job.parameters().unwrap();
    assert_eq!(parameters.get("inputBucket").map(String::as_str), Some(batchline_demo::local_stack::BUCKET));
    assert_eq!(parameters.get("inputKey").map(String::as_str), Some("incoming/orders.csv"));
    let definitions =
        batch.describe_job_definitions().job_definitions(job.job_definition().unwrap()).send().await.unwrap();
    let command = definitions.job_definitions()[0].container_properties().unwrap().command();
    assert_eq!(&command[3..], ["Ref::inputBucket", "Ref::inputKey"], "{command:?}");

    // AND played to its end, job-events counts it under its own definition's name
    let mut player = batchline_testkit::player::Player::new(&sdk);
    let changes = player.play_jobs(std::slice::from_ref(&job_id)).await.unwrap();
    assert_eq!(changes.last().map(|c| c.status), Some("SUCCEEDED"));
    let batch_of_events =
        batchline_testkit::player::Delivery::of(&changes).sqs_batches("arn:aws:sqs:us-east-1:123456789012:local", 10);
    for events in batch_of_events {
        let Outcome::Response(answer) = stack.invoke("job-events", &events).await.unwrap() else {
            panic!("job-events")
        };
        assert_eq!(answer["batchItemFailures"], serde_json::json!([]), "{answer}");
    }
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    let listed = cloudwatch.list_metrics().namespace("Batchline").metric_name("JobsSucceeded").send().await.unwrap();
    let by_definition = listed.metrics().iter().any(|m| {
        let name = format!("{}-{}", batchline_demo::local_stack::PREFIX, batchline_demo::WORDCOUNT);
        m.dimensions().iter().any(|d| d.name() == Some("JobDefinition") && d.value() == Some(name.as_str()))
    });
    assert!(by_definition, "{:?}", listed.metrics());
}

#[tokio::test]
async fn a_pipeline_stage_is_told_its_runs_data_folder_which_its_role_may_write() {
    // GIVEN the local stack (input bucket local-input, run data under runs/ by default)
    let (stack, _) = local_stack().await;
    let sdk = batchline_testkit::emulator::sdk_config().await;
    // WHEN a run is started and read back through the API
    let start: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("events/submit/api-start-run.json")).unwrap())
            .unwrap();
    let Outcome::Response(started) = stack.invoke("submit", &start).await.unwrap() else { panic!("start") };
    let run_id =
        serde_json::from_str::<Value>(started["body"].as_str().unwrap()).unwrap()["runId"].as_str().unwrap().to_owned();
    let path = format!("/runs/{run_id}");
    let get = serde_json::json!({"version": "2.0", "rawPath": path, "isBase64Encoded": false,
                                 "requestContext": {"http": {"method": "GET", "path": path}}});
    let Outcome::Response(answer) = stack.invoke("submit", &get).await.unwrap() else { panic!("GET {path}") };
    let run: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    // THEN the run names its folder, and its first stage's job carries it
    let folder = format!("s3://{}/runs/{run_id}/", batchline_demo::local_stack::BUCKET);
    assert_eq!(run["runData"], folder.as_str(), "{run}");
    let job_id = run["stages"].as_object().unwrap().values().find_map(|s| s["attempts"][0]["jobId"].as_str()).unwrap();
    let batch = aws_sdk_batch::Client::new(&sdk);
    let jobs = batch.describe_jobs().jobs(job_id).send().await.unwrap();
    let environment = jobs.jobs()[0].container().unwrap().environment();
    let given = environment.iter().find(|v| v.name() == Some("BATCHLINE_RUN_DATA")).and_then(|v| v.value());
    assert_eq!(given, Some(folder.as_str()), "{environment:?}");
    // AND the job role may put objects there (and under no other prefix)
    let role = format!("{}-job", batchline_demo::local_stack::PREFIX);
    let policy = aws_sdk_iam::Client::new(&sdk)
        .get_role_policy()
        .role_name(&role)
        .policy_name("batchline-input-read")
        .send()
        .await
        .unwrap();
    let document: Value = serde_json::from_str(&urlencoding::decode(policy.policy_document()).unwrap()).unwrap();
    let writes: Vec<&Value> =
        document["Statement"].as_array().unwrap().iter().filter(|s| s["Action"] == "s3:PutObject").collect();
    let resource = format!("arn:aws:s3:::{}/runs/*", batchline_demo::local_stack::BUCKET);
    assert_eq!(writes.iter().map(|s| &s["Resource"]).collect::<Vec<_>>(), [&Value::from(resource)], "{document}");
}

//! The sample events in `events/`: each one, sent the way `scripts/invoke` sends it, is handled by its function on the local stack.

use batchline_demo::local_stack::LocalStack;
use batchline_testkit::emulator::{repo_root, unique_name};
use batchline_testkit::local_lambda::Outcome;
use serde_json::Value;

#[tokio::test]
async fn every_sample_event_is_handled_by_its_function_on_the_local_stack() {
    // GIVEN the local stack, made on first use and reused after
    let dir = repo_root().join("target/test-local-stack").join(unique_name("stack"));
    let stack = LocalStack::ensure(&dir, &mut |_| {}).await.unwrap();
    let mut again = Vec::new();
    LocalStack::ensure(&dir, &mut |line| again.push(line)).await.unwrap();
    assert!(again.is_empty(), "reused: {again:?}");
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(env.lines().any(|l| l == format!("BATCHLINE_TABLE={}", stack.table)), "{env}");

    // WHEN each sample event is sent to its function, THEN it is handled
    let mut seen = 0;
    let mut started_by_api: Option<String> = None;
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
                    started_by_api = Some(body["runId"].as_str().unwrap().to_owned());
                }
                "sqs-s3-object-created.json" => {
                    let list = serde_json::from_str(
                        &std::fs::read_to_string(file.with_file_name("api-list-runs.json")).unwrap(),
                    )
                    .unwrap();
                    let Outcome::Response(listed) = stack.invoke(function, &list).await.unwrap() else {
                        panic!("GET /runs")
                    };
                    // The object started a run of its own, beside the one the API started.
                    let body: Value = serde_json::from_str(listed["body"].as_str().unwrap()).unwrap();
                    let runs: Vec<&str> =
                        body["runs"].as_array().unwrap().iter().map(|r| r["runId"].as_str().unwrap()).collect();
                    let by_api = started_by_api.as_deref().expect("api-start-run.json went first");
                    assert!(runs.contains(&by_api) && runs.len() >= 2, "{body}");
                }
                "sweep.json" => assert!(answer["sweep"].is_object(), "{answer}"),
                _ => {}
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 7, "every sample was sent");
}

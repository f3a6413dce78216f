//! The local end-to-end run as a test: the built binaries, the emulator, the event player, one pipeline run.

use batchline_demo as demo;

#[tokio::test]
async fn the_whole_stack_runs_a_pipeline_with_an_out_of_memory_resize_and_tears_down() {
    // GIVEN the three function binaries under a local Lambda Runtime API (built by scripts/test)
    let mut say = |_: String| {};

    // WHEN the demo flow runs: bootstrap Create, an S3 object, Batch played, bootstrap Delete
    let report = demo::run(&mut say).await.unwrap_or_else(|e| panic!("{e}"));

    // THEN bootstrap answered CloudFormation SUCCESS both ways
    assert_eq!(report.bootstrap_create["Status"], "SUCCESS", "{}", report.bootstrap_create);
    assert_eq!(report.bootstrap_delete["Status"], "SUCCESS", "{}", report.bootstrap_delete);

    // AND the run succeeded through its stages in order, transform resized once
    assert_eq!(report.run["status"], "SUCCEEDED", "{}", report.run);
    let stages: Vec<&str> = report.jobs.iter().map(|j| j.stage.as_str()).collect();
    assert_eq!(stages, ["prepare", "transform", "transform", "report"], "{:?}", report.jobs);
    assert_eq!(report.jobs.len(), 4, "exactly four jobs");
    let sizes: Vec<&str> = report.jobs.iter().map(|j| j.size.as_str()).collect();
    assert_eq!(sizes, ["0.25 vCPU / 512 MiB", "0.25 vCPU / 512 MiB", "0.25 vCPU / 1024 MiB", "0.25 vCPU / 512 MiB"]);
    assert_eq!(report.jobs[2].attempt, "2");
    assert_eq!(report.jobs[1].status, "FAILED");
    let transform = &report.run["stages"]["transform"]["attempts"];
    assert!(transform[0]["reason"].as_str().unwrap().starts_with("OutOfMemoryError"));
    assert_eq!(transform[1]["size"]["memoryMib"], 1024);
    // every job started only after the one before it ended (stage order)
    for pair in report.jobs.windows(2) {
        assert!(pair[0].created_at <= pair[1].created_at);
    }

    // AND the metrics read back from CloudWatch count every transition once
    assert_eq!(report.metrics["JobsSucceeded"], (3.0, 3.0));
    assert_eq!(report.metrics["JobsFailed"], (1.0, 1.0));
    assert_eq!(report.metrics["JobsRunnable"].0, 4.0);
    // run times: prepare 20 s, transform 45 s twice, report 10 s (the demo's scripts)
    assert_eq!(report.metrics["RunTime"], (120_000.0, 4.0));
    assert!(report.metrics["EstimatedCost"].0 > 0.0);

    // AND the environment is gone
    assert!(report.left_after_delete.is_empty(), "{:?}", report.left_after_delete);
}

#[test]
fn the_local_run_sets_exactly_the_variables_the_template_gives_the_functions() {
    let names = demo::template_variable_names().unwrap();
    let local = demo::function_environment(&names, "table").unwrap();
    let local_names: Vec<&str> = local.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(local_names, names.iter().map(String::as_str).collect::<Vec<_>>());
    // and a variable the local run does not know is an error, not silently skipped
    assert!(demo::function_environment(&["BATCHLINE_SOMETHING_NEW".to_owned()], "t").is_err());
}

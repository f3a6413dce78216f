//! The template's IAM policies, evaluated: what bootstrap may create, and what a stage's container may do as the job role.
//!
//! Every function's calls in the integration tests are evaluated against the template's
//! policies by the emulator (devtools/iam) and refused as AWS would refuse them; these tests
//! show it bites where no function call of the suite would go.

use batchline_testkit::emulator::{
    iam_check, iam_check_other, iam_check_with, sdk_config, signing_as, template_properties, test_settings,
    unique_name, Principal,
};
use batchline_testkit::table::create_table;
use serde_json::json;

use crate::common::{bootstrap_answer, denials_of, fixture_template, register, register_expecting, Deployed};

/// A stack of the test's own, not deployed yet: the emulator's SDK configuration, its
/// settings and table, its name, and the properties CloudFormation would send bootstrap
/// with only the network (a test adds what it is about, `Roles` included, before deploying).
async fn undeployed(test: &str) -> (aws_config::SdkConfig, batchline::Settings, String, serde_json::Value) {
    let sdk = sdk_config().await;
    let settings = test_settings(test);
    create_table(&sdk, &settings.table_name).await.unwrap();
    let name = unique_name(test);
    let network = batchline_testkit::emulator::default_network();
    let properties = json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:batchline-bootstrap",
        "NamePrefix": name,
        "Network": {"Subnets": network.subnets, "SecurityGroups": network.security_groups},
    });
    (sdk, settings, name, properties)
}

#[tokio::test]
async fn a_stage_may_read_the_input_bucket_and_write_its_run_data_folder_as_the_job_role_and_nothing_else() {
    // GIVEN a stack with an input bucket (and the default run-data folder, runs/), its job
    // role made by bootstrap under the template's RoleBoundary
    let env = Deployed::new("iam-jobrole", json!({"Roles": {"InputBucket": "iam-jobrole-input"}})).await;
    let check = |action: &str, resource: &str| iam_check(&env.name, Principal::JobRole, action, resource);
    // THEN reading the bucket's objects is allowed
    let read = check("s3:GetObject", "arn:aws:s3:::iam-jobrole-input/incoming/orders.csv");
    assert_eq!(read["allowed"], true, "{read}");
    // AND writing under a run's folder is allowed
    let write = check("s3:PutObject", "arn:aws:s3:::iam-jobrole-input/runs/pipeline-1/stage/result.json");
    assert_eq!(write["allowed"], true, "{write}");
    // AND Batchline's own files of a stage are read, never written nor deleted
    let own = "arn:aws:s3:::iam-jobrole-input/runs/pipeline-1/stage/_batchline/items-0.jsonl";
    assert_eq!(check("s3:GetObject", own)["allowed"], true);
    for action in ["s3:PutObject", "s3:DeleteObject"] {
        let denied = check(action, own);
        assert_eq!(denied["allowed"], false, "{action}: {denied}");
    }
    // AND writing anywhere else in the bucket, or to another bucket, is denied
    for elsewhere in ["arn:aws:s3:::iam-jobrole-input/incoming/forged.csv", "arn:aws:s3:::another-bucket/runs/x"] {
        let denied = check("s3:PutObject", elsewhere);
        assert_eq!(denied["allowed"], false, "{elsewhere}: {denied}");
    }
}

#[tokio::test]
async fn bootstrap_creating_its_roles_without_the_stacks_boundary_is_denied_and_the_deploy_fails_naming_it() {
    // GIVEN a template whose Environment forgot to pass the RoleBoundary, and the properties
    // CloudFormation would send bootstrap from it (read through the template resolver)
    let (sdk, settings, name, _) = undeployed("iam-nobound").await;
    let template = fixture_template("no-boundary", "        PermissionsBoundary: !Ref RoleBoundary\n", "");
    let network = batchline_testkit::emulator::default_network();
    let stack = json!({"name": name, "parameters": {"SubnetIds": network.subnets, "SecurityGroupIds": network.security_groups}});
    let properties = template_properties(&template, "Environment", &stack).unwrap_or_else(|e| panic!("{e}"));
    assert!(properties["Roles"].get("PermissionsBoundary").is_none(), "{properties}");
    register_expecting(&name, &settings, &properties, Some(&template), true);
    // WHEN CloudFormation sends bootstrap the Create
    let request = json!({"RequestType": "Create", "ResourceProperties": properties});
    let answer = bootstrap_answer(&signing_as(&sdk, Principal::Bootstrap, &name), &settings, request).await;
    // THEN it answered FAILED, saying why
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert!(answer["Reason"].as_str().unwrap_or_default().contains("iam:CreateRole"), "{answer}");
    // AND the evaluation denied bootstrap's CreateRole, whose request carried no boundary
    let denials = denials_of(&name);
    let create = denials.iter().find(|d| d["principal"] == "bootstrap" && d["action"] == "iam:CreateRole");
    let create = create.unwrap_or_else(|| panic!("no CreateRole denied: {denials:?}"));
    assert!(create["context"].get("iam:PermissionsBoundary").is_none(), "{create}");
}

#[tokio::test]
async fn bootstrap_creates_changes_and_deletes_a_stack_within_the_templates_policies() {
    // GIVEN a stack with two queues, two job definitions and an input bucket
    let mut env = Deployed::new(
        "iam-lifecycle",
        json!({
            "Roles": {"InputBucket": "iam-lifecycle-input"},
            "Repository": {"DeleteOnStackDelete": "true"},
            "ComputeEnvironments": {"default": {"Type": "FARGATE"}, "spot": {"Type": "FARGATE_SPOT"}},
            "JobQueues": {"default": {"ComputeEnvironments": ["default"]}, "economy": {"ComputeEnvironments": ["spot"]}},
            "JobDefinitions": {"default": {}, "report": {"Queue": "economy"}}
        }),
    )
    .await;
    // WHEN an update changes a definition, its repository's scanning and a queue's priority,
    // and drops the other queue, its compute environment and job definition
    env.update(json!({
        "Repository": {"DeleteOnStackDelete": "true", "ScanOnPush": "false"},
        "ComputeEnvironments": {"default": {"Type": "FARGATE", "MaxVcpus": "128"}},
        "JobQueues": {"default": {"ComputeEnvironments": ["default"], "Priority": "5"}},
        "JobDefinitions": {"default": {"Memory": "1024"}}
    }))
    .await;
    // AND a job is still waiting when the stack is deleted
    let player = batchline_testkit::player::Player::new(&env.sdk);
    player.leave_unplayed(&[env.queue_arn("default")]).await.unwrap();
    let submit = batchline_submit::Clients::new(&env.sdk_as(Principal::Submit), &env.settings);
    let request = batchline_demo::api_request("POST", "/jobs", Some(&json!({"jobDefinition": "default"})));
    let answer = batchline_submit::handle(batchline_testkit::invocation(request), &submit).await.unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let answer = env.delete().await;
    // THEN every step succeeded, and nothing bootstrap asked for was denied
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(denials_of(&env.name), Vec::<serde_json::Value>::new());
}

#[tokio::test]
async fn only_each_queues_rule_may_send_to_it_not_a_principal_allowed_sqs_on_everything() {
    // GIVEN a stack, and another principal of the account allowed sqs:SendMessage on every queue
    let env = Deployed::new("iam-queues", json!({})).await;
    let anything = json!([{"name": "SendAnywhere", "policy": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]}}]);
    let queue = |logical: &str| format!("arn:aws:sqs:us-east-1:123456789012:{}-{logical}", env.name);
    let rule = |logical: &str| format!("arn:aws:events:us-east-1:123456789012:rule/{}-{logical}", env.name);
    for (logical, its_rule) in [
        ("TriggerQueue", "ObjectCreatedRule"),
        ("RunEventsQueue", "RunStateChangeRule"),
        ("JobEventsQueue", "BatchStateChangeRule"),
        ("MapWorkQueue", "MapWorkRule"),
        ("CoalesceQueue", "CoalesceRule"),
    ] {
        // WHEN it sends a forged event to the queue
        let forged =
            iam_check_other(&env.name, "intruder", anything.clone(), "sqs:SendMessage", &queue(logical), json!({}));
        // THEN the queue's policy denies it
        assert_eq!(forged["allowed"], false, "{logical}: {forged}");
        // AND the queue's own rule still delivers
        let delivered = iam_check_other(
            &env.name,
            "events.amazonaws.com",
            json!([]),
            "sqs:SendMessage",
            &queue(logical),
            json!({"aws:SourceArn": rule(its_rule), "aws:SourceAccount": "123456789012"}),
        );
        assert_eq!(delivered["allowed"], true, "{logical}: {delivered}");
        // AND another rule of the account does not
        let other = iam_check_other(
            &env.name,
            "events.amazonaws.com",
            json!([]),
            "sqs:SendMessage",
            &queue(logical),
            json!({"aws:SourceArn": rule("SomeoneElsesRule"), "aws:SourceAccount": "123456789012"}),
        );
        assert_eq!(other["allowed"], false, "{logical}: {other}");
    }
    // AND the coalesce lane also takes the windows' closes from the map worker, and from
    // no other function
    let close = |principal| iam_check(&env.name, principal, "sqs:SendMessage", &queue("CoalesceQueue"));
    assert_eq!(close(Principal::Map)["allowed"], true, "{}", close(Principal::Map));
    assert_eq!(close(Principal::Submit)["allowed"], false, "{}", close(Principal::Submit));
}

#[tokio::test]
async fn only_the_stacks_functions_may_put_work_on_its_lane_bus_not_a_principal_allowed_events_on_everything() {
    // GIVEN a stack, and another principal of the account allowed events:PutEvents on every bus
    let env = Deployed::new("iam-lanebus", json!({})).await;
    let anything = json!([{"name": "PutAnywhere", "policy": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "events:PutEvents", "Resource": "*"}]}}]);
    let bus = |name: &str| format!("arn:aws:events:us-east-1:123456789012:event-bus/{name}");
    let lanes = bus(&batchline::services::announce::lane_bus(&env.name));
    // WHEN it puts map work or a coalesced object on the stack's lane bus
    let forged = iam_check_other(&env.name, "intruder", anything.clone(), "events:PutEvents", &lanes, json!({}));
    // THEN the bus's policy denies it (on the default bus, any such principal could: the
    // lanes' rules match what an event says, not who put it)
    assert_eq!(forged["allowed"], false, "{forged}");
    let elsewhere = iam_check_other(&env.name, "intruder", anything, "events:PutEvents", &bus("default"), json!({}));
    assert_eq!(elsewhere["allowed"], true, "{elsewhere}");
    // AND the functions that hand each other work may, bootstrap (which hands none) may not
    for principal in [Principal::Submit, Principal::JobEvents, Principal::Map] {
        let put = iam_check(&env.name, principal, "events:PutEvents", &lanes);
        assert_eq!(put["allowed"], true, "{principal:?}: {put}");
    }
    let put = iam_check(&env.name, Principal::Bootstrap, "events:PutEvents", &lanes);
    assert_eq!(put["allowed"], false, "{put}");
}

#[tokio::test]
async fn only_bootstrap_may_write_the_published_configuration_the_functions_trust() {
    // GIVEN a stack
    let env = Deployed::new("iam-config", json!({})).await;
    let table = format!("arn:aws:dynamodb:us-east-1:123456789012:table/{}", env.settings.table_name);
    let write = |principal, action: &str, key: &str| {
        iam_check_with(&env.name, principal, action, &table, json!({"dynamodb:LeadingKeys": [key]}))
    };
    for principal in [Principal::Submit, Principal::JobEvents, Principal::Map] {
        // THEN no function may write, change or delete the CONFIG item
        for action in ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"] {
            let verdict = write(principal, action, "CONFIG");
            assert_eq!(verdict["allowed"], false, "{principal:?} {action}: {verdict}");
        }
        // AND each still writes its own items (a run's, say)
        let verdict = write(principal, "dynamodb:PutItem", "RUN#r-1");
        assert_eq!(verdict["allowed"], true, "{principal:?}: {verdict}");
    }
    // AND bootstrap, which publishes it, may
    let verdict = write(Principal::Bootstrap, "dynamodb:PutItem", "CONFIG");
    assert_eq!(verdict["allowed"], true, "{verdict}");
}

#[tokio::test]
async fn nobody_may_plant_a_message_on_a_lanes_dead_letter_queue_for_the_replay_to_carry_in() {
    // GIVEN a stack naming a replay role, which moves a lane's dead letters back to its queue,
    // and a principal of the account allowed sqs:SendMessage on every queue
    let settings = test_settings("iam-dlq");
    let name = unique_name("iam-dlq");
    let mut stack = batchline_testkit::emulator::iam_stack(&name, &settings.table_name, None, None);
    stack["parameters"]["QueueReplayRoleArn"] = json!(format!("arn:aws:iam::123456789012:role/{name}-replay"));
    batchline_testkit::emulator::register_iam_stack(&stack, None, false).unwrap();
    let anything = json!([{"name": "SendAnywhere", "policy": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]}}]);
    for logical in
        ["TriggerDeadLetterQueue", "JobEventsDeadLetterQueue", "MapWorkDeadLetterQueue", "CoalesceDeadLetterQueue"]
    {
        let queue = format!("arn:aws:sqs:us-east-1:123456789012:{name}-{logical}");
        // WHEN it, or even the replay role, sends to a lane's dead-letter queue
        for principal in ["intruder", "replay"] {
            let planted = iam_check_other(&name, principal, anything.clone(), "sqs:SendMessage", &queue, json!({}));
            // THEN the queue's policy denies it: only SQS itself moves a message there
            assert_eq!(planted["allowed"], false, "{logical} by {principal}: {planted}");
        }
    }
}

#[tokio::test]
async fn the_operators_replay_role_may_move_dead_letters_back_to_the_queues_and_no_one_else() {
    // GIVEN a stack deployed naming a replay role (QueueReplayRoleArn), and two principals of
    // the account allowed sqs:SendMessage on every queue: that role and another
    let settings = test_settings("iam-replay");
    let name = unique_name("iam-replay");
    let replay = format!("arn:aws:iam::123456789012:role/{name}-replay");
    let mut stack = batchline_testkit::emulator::iam_stack(&name, &settings.table_name, None, None);
    stack["parameters"]["QueueReplayRoleArn"] = json!(replay);
    batchline_testkit::emulator::register_iam_stack(&stack, None, false).unwrap();
    let anything = json!([{"name": "SendAnywhere", "policy": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]}}]);
    for logical in ["TriggerQueue", "RunEventsQueue", "JobEventsQueue", "MapWorkQueue", "CoalesceQueue"] {
        let queue = format!("arn:aws:sqs:us-east-1:123456789012:{name}-{logical}");
        let send = |principal: &str| {
            let arn = format!("arn:aws:iam::123456789012:role/{name}-{principal}");
            iam_check_other(
                &name,
                principal,
                anything.clone(),
                "sqs:SendMessage",
                &queue,
                json!({"aws:PrincipalArn": arn}),
            )
        };
        // THEN the replay role's move task may send to the queue
        assert_eq!(send("replay")["allowed"], true, "{logical}: {}", send("replay"));
        // AND anyone else is still denied
        assert_eq!(send("intruder")["allowed"], false, "{logical}");
    }
}

#[tokio::test]
async fn bootstrap_tags_a_repository_as_its_own_only_by_creating_it_so_it_cannot_adopt_and_delete_another() {
    // GIVEN a stack, and a repository of the account that is not the stack's
    let settings = test_settings("iam-retag");
    let name = unique_name("iam-retag");
    register(&name, &settings, &json!({}), None);
    let others = "arn:aws:ecr:us-east-1:123456789012:repository/someone-elses-images";
    let own_tag = json!({"aws:RequestTag/batchline:stack": name, "aws:TagKeys": ["batchline:stack"]});
    // THEN bootstrap may not tag it as the stack's (which would let it delete it)
    let retag = iam_check_with(&name, Principal::Bootstrap, "ecr:TagResource", others, own_tag.clone());
    assert_eq!(retag["allowed"], false, "{retag}");
    // AND may not delete it untagged, nor tagged as another stack's
    let delete = iam_check(&name, Principal::Bootstrap, "ecr:DeleteRepository", others);
    assert_eq!(delete["allowed"], false, "{delete}");
    let theirs = json!({"aws:ResourceTag/batchline:stack": format!("{name}-other")});
    let delete = iam_check_with(&name, Principal::Bootstrap, "ecr:DeleteRepository", others, theirs);
    assert_eq!(delete["allowed"], false, "{delete}");
    // AND may create a repository tagged as the stack's, and not otherwise
    let own = format!("arn:aws:ecr:us-east-1:123456789012:repository/{name}-jobs");
    let create = iam_check_with(&name, Principal::Bootstrap, "ecr:CreateRepository", &own, own_tag);
    assert_eq!(create["allowed"], true, "{create}");
    let untagged = iam_check(&name, Principal::Bootstrap, "ecr:CreateRepository", &own);
    assert_eq!(untagged["allowed"], false, "{untagged}");
}

#[tokio::test]
async fn the_execution_role_reads_exactly_the_secrets_the_job_definitions_name_and_only_the_stacks() {
    // GIVEN a stack whose job definition takes a secret named after the stack
    let (sdk, settings, name, mut properties) = undeployed("iam-secrets").await;
    let secret = format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}/db");
    properties["Roles"] =
        json!({"PermissionsBoundary": format!("arn:aws:iam::123456789012:policy/{name}-RoleBoundary")});
    properties["JobDefinitions"] = json!({"default": {"Secrets": {"DB_PASSWORD": format!("{secret}:password::")}}});
    register(&name, &settings, &properties, None);
    let bootstrap = signing_as(&sdk, Principal::Bootstrap, &name);
    let request = json!({"RequestType": "Create", "ResourceProperties": properties});
    let answer = bootstrap_answer(&bootstrap, &settings, request).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    let check =
        |principal, action: &str, resource: &str, context| iam_check_with(&name, principal, action, resource, context);
    // THEN the execution role may read that secret (as ECS does when the job starts) ...
    let read = check(Principal::ExecutionRole, "secretsmanager:GetSecretValue", &format!("{secret}-AbCdEf"), json!({}));
    assert_eq!(read["allowed"], true, "{read}");
    // ... and no other: not another of the stack's, not another stack's; nor may the job role
    for (principal, other) in [
        (Principal::ExecutionRole, format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}/other-AbCdEf")),
        (Principal::ExecutionRole, "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf".to_owned()),
        (Principal::JobRole, format!("{secret}-AbCdEf")),
    ] {
        let denied = check(principal, "secretsmanager:GetSecretValue", &other, json!({}));
        assert_eq!(denied["allowed"], false, "{principal:?} {other}: {denied}");
    }
    // AND it pulls images from the stack's repositories only, and writes to its log groups only
    let repository = |tagged: &str| json!({"aws:ResourceTag/batchline:stack": tagged});
    let pull = |owner: &str| {
        let arn = "arn:aws:ecr:us-east-1:123456789012:repository/some-images";
        check(Principal::ExecutionRole, "ecr:BatchGetImage", arn, repository(owner))["allowed"].clone()
    };
    assert_eq!((pull(&name), pull("another-stack")), (json!(true), json!(false)));
    let log = |group: &str| {
        let arn = format!("arn:aws:logs:us-east-1:123456789012:log-group:{group}:log-stream:default/x/1");
        check(Principal::ExecutionRole, "logs:PutLogEvents", &arn, json!({}))["allowed"].clone()
    };
    assert_eq!((log("/aws/batch/job"), log("/aws/lambda/payments")), (json!(true), json!(false)));

    // WHEN a job definition names a secret that is not the stack's
    properties["JobDefinitions"]["default"]["Secrets"]["DB_PASSWORD"] =
        json!("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db");
    let request = json!({"RequestType": "Update", "PhysicalResourceId": format!("{name}-environment"),
                         "ResourceProperties": properties});
    let answer = bootstrap_answer(&bootstrap, &settings, request).await;
    // THEN the deploy fails naming it, before the job would fail to start
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.contains("JobDefinitions.default.Secrets.DB_PASSWORD") && reason.contains(&format!("{name}/")),
        "{reason}"
    );
}

//! The local stack as a user runs it (`batchline-local`, which `scripts/local-stack` starts): from their own template, changed and restarted as an Update, and from a checkout copied elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use batchline_testkit::emulator::{endpoint, repo_root, unique_name, REGION};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `batchline-local`: its process, the API's URL and what it printed up to then.
struct Served {
    child: Child,
    url: String,
    said: Vec<String>,
}

/// Starts `binary` (a `batchline-local`) with `args` against the test's emulator and waits
/// for its banner's first line, which names the API.
async fn serve(binary: &Path, args: &[&str]) -> Served {
    serve_with(binary, args, Some(endpoint())).await
}

/// [`serve`], against the emulator at `emulator`, or (`None`) one it starts itself.
async fn serve_with(binary: &Path, args: &[&str], emulator: Option<&str>) -> Served {
    let mut command = Command::new(binary);
    match emulator {
        Some(url) => command.env("AWS_ENDPOINT_URL", url),
        None => command.env_remove("AWS_ENDPOINT_URL"),
    };
    let mut child = command
        .args(args)
        .args(["--port", "0"])
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("BATCHLINE_REPO")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let mut said = Vec::new();
    let url = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push(line.clone());
            if let Some((_, url)) = line.split_once("): ").filter(|_| line.starts_with("Batchline's API")) {
                return url.to_owned();
            }
        }
        let mut why = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut why).await.unwrap();
        panic!("batchline-local ended: {said:?} {why}")
    })
    .await
    .unwrap_or_else(|_| panic!("no API after 120 s: {said:?}"));
    // The banner goes on; keep reading so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    Served { child, url, said }
}

impl Served {
    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Runs `batchline ARGS` against `url`: exit status and stdout.
async fn cli(url: &str, args: &[&str]) -> (i32, String) {
    let output = crate::common::batchline_command(Some(url)).args(args).output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the CLI ends").unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// `template` with `lines` added right after the line `anchor` (as a user edits it).
fn add_after(template: &str, anchor: &str, lines: &str) -> String {
    let at = template.find(anchor).unwrap_or_else(|| panic!("{anchor:?} is not in the template")) + anchor.len();
    format!("{}{lines}{}", &template[..at], &template[at..])
}

#[tokio::test]
async fn your_own_template_runs_locally_and_a_changed_pipeline_is_applied_as_an_update() {
    // GIVEN a copy of template.yaml with a job definition and a pipeline of the user's own
    let dir = repo_root().join("target/test-local-stack").join(unique_name("own"));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read_to_string(repo_root().join("template.yaml")).unwrap();
    let definitions = "      JobDefinitions:\n";
    let pipelines = "      Pipelines:\n";
    let mine = add_after(&original, definitions, "        thumbnail: {Vcpu: \"0.5\", Memory: \"1024\"}\n");
    let mine = add_after(
        &mine,
        pipelines,
        "        mine:\n          Stages:\n            resize: {JobDefinition: thumbnail}\n\
         \x20           publish: {JobDefinition: default, After: resize}\n",
    );
    let template = dir.join("template.yaml");
    std::fs::write(&template, &mine).unwrap();
    let name = unique_name("own");
    let binary = batchline_demo::binary("batchline-local").unwrap();
    let state = dir.join("state");
    let args =
        ["--template", template.to_str().unwrap(), "--stack-name", &name, "--state-dir", state.to_str().unwrap()];

    // WHEN the local stack starts from it and the pipeline is run with the command line
    let served = serve(&binary, &args).await;
    assert!(served.said.iter().any(|l| l.starts_with(&format!("making the local stack {name}"))), "{:?}", served.said);
    let (status, out) = cli(&served.url, &["run", "mine", "--watch"]).await;
    // THEN it runs the user's stages at the user's sizes
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("resize") && out.contains("0.5 vCPU / 1024 MiB") && out.contains("publish"), "{out}");
    let stage_rows = |out: &str, stage: &str| {
        out.lines().filter(|l| l.trim_start_matches(['├', '└', '│', ' ']).starts_with(&format!("{stage} "))).count()
    };
    assert_eq!(stage_rows(&out, "check"), 0, "{out}");
    served.stop().await;

    // WHEN the pipeline is changed (a third stage) and the stack started again
    let changed = add_after(
        &mine,
        "            publish: {JobDefinition: default, After: resize}\n",
        "            check: {JobDefinition: default, After: publish}\n",
    );
    std::fs::write(&template, &changed).unwrap();
    let served = serve(&binary, &args).await;
    // THEN the change is applied through an Update, and printed
    let said = served.said.join("\n");
    let from = served.said.iter().position(|l| l.starts_with(&format!("updating the local stack {name} from")));
    let to = served.said.iter().position(|l| l.starts_with("updated the local stack"));
    let (Some(from), Some(to)) = (from, to) else { panic!("an Update, said: {said}") };
    assert_eq!(served.said[from + 1..to], ["  changed pipeline mine"], "{said}");
    // AND the next run runs the new stage
    let (status, out) = cli(&served.url, &["run", "mine", "--watch"]).await;
    assert_eq!(status, 0, "{out}");
    assert!(stage_rows(&out, "check") >= 1, "{out}");
    served.stop().await;

    // AND started again unchanged, it says the stack is reused
    let served = serve(&binary, &args).await;
    assert!(served.said.iter().any(|l| l.contains("is reused")), "{:?}", served.said);
    served.stop().await;
}

/// Files and folders under `dir` with their modification times (nothing when it is missing).
fn listing(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        out.push((path.clone(), entry.metadata().ok().and_then(|m| m.modified().ok())));
        if path.is_dir() {
            out.extend(listing(&path));
        }
    }
    out.sort();
    out
}

/// The program each running process was started from.
fn running_programs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries.flatten().filter_map(|e| std::fs::read_link(e.path().join("exe")).ok()).collect()
}

/// The command line of each running process, its arguments joined by spaces.
fn running_commands() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    let read = |e: std::fs::DirEntry| std::fs::read(e.path().join("cmdline")).ok();
    entries.flatten().filter_map(read).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).collect()
}

#[tokio::test]
async fn a_checkout_copied_elsewhere_serves_its_own_stack_with_its_own_files_and_binaries() {
    // GIVEN a copy of the checkout in another folder: its template, the emulator and its IAM
    // evaluation, the template resolver and the built binaries (the Python environment and
    // the evaluator's node modules are shared, as tools)
    let root = repo_root();
    let copy = root.join("target/test-local-stack").join(unique_name("copy")).join("checkout");
    let files = [
        "Cargo.toml",
        "template.yaml",
        "devtools/demo/stack.yaml",
        "devtools/emulator/server.py",
        "devtools/emulator/local_functions.py",
        "devtools/emulator/lambda_runtime.py",
        "devtools/iam/policies.py",
        "devtools/iam/enforce.py",
        "devtools/iam/iam_requests.py",
        "devtools/iam/evaluate.js",
        "devtools/iam/package.json",
    ];
    for file in files {
        std::fs::create_dir_all(copy.join(file).parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), copy.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(root.join(".venv"), copy.join(".venv")).unwrap();
    std::os::unix::fs::symlink(root.join("devtools/iam/node_modules"), copy.join("devtools/iam/node_modules")).unwrap();
    std::fs::create_dir_all(copy.join("target/debug")).unwrap();
    for binary in
        ["batchline-local", "batchline-submit", "batchline-job-events", "batchline-map", "batchline-bootstrap"]
    {
        let from = root.join("target/debug").join(binary);
        let to = copy.join("target/debug").join(binary);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let original_state = listing(&root.join(".local-stack"));

    // WHEN the copy's local stack is started, with no emulator given
    let name = unique_name("copy");
    let served = serve_with(&copy.join("target/debug/batchline-local"), &["--stack-name", &name], None).await;

    // THEN it runs an emulator of its own, from the copy's files
    let server = copy.join("devtools/emulator/server.py");
    let emulators: Vec<String> = running_commands().into_iter().filter(|c| c.contains("server.py")).collect();
    assert!(emulators.iter().any(|c| c.contains(server.to_str().unwrap())), "{emulators:?}");
    // AND it keeps its files in the copy, and runs the copy's binaries
    let state = copy.join(".local-stack").join(&name);
    assert!(state.join("applied.json").is_file() && state.join("env").is_file(), "{:?}", listing(&state));
    assert!(state.join("logs").is_dir(), "{:?}", listing(&state));
    let ours: Vec<PathBuf> = running_programs().into_iter().filter(|p| p.starts_with(&copy)).collect();
    assert!(ours.iter().any(|p| p.ends_with("batchline-submit")), "{ours:?}");
    // AND a job runs on it
    let (status, out) = cli(&served.url, &["submit", "default", "--wait"]).await;
    assert_eq!(status, 0, "{out}");
    served.stop().await;
    // AND the original checkout's local stack files were not touched
    assert_eq!(listing(&root.join(".local-stack")), original_state);
}

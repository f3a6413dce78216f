//! The command line run as a process for the ordinary mistakes: each ends with one line that names the cause and what to do, and the exit status `--help` documents.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};

/// Runs `batchline` with `args` and the environment `env` (nothing else of this process's,
/// but PATH, so that no credentials or profile of the machine leak in): exit code, stdout,
/// stderr.
fn batchline(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let home = std::env::temp_dir().join(format!("batchline-cli-errors-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_batchline"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        // No instance metadata to ask on a laptop or CI machine.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the batchline binary runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

const CREDENTIALS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_REGION", "us-east-1")];

/// A port that answers every connection with a plain HTTP 400, as a plain-HTTP server
/// answers a TLS handshake.
fn plain_http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    port
}

fn one_line(stderr: &str) -> &str {
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr.trim()
}

#[test]
fn https_against_a_plain_http_endpoint_says_to_use_http() {
    let port = plain_http_server();
    let (code, _, stderr) =
        batchline(&["--endpoint-url", &format!("https://127.0.0.1:{port}"), "status"], &CREDENTIALS);
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains(&format!("answered plain HTTP, not TLS: use http://127.0.0.1:{port}")), "{line}");
}

#[test]
fn an_endpoint_without_a_scheme_says_what_to_write() {
    let (code, _, stderr) = batchline(&["--endpoint-url", "127.0.0.1:4280", "status"], &CREDENTIALS);
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("has no scheme: write http://127.0.0.1:4280"), "{line}");
    // The old name of the option, and the variable, are held to the same rule.
    let (code, _, stderr) = batchline(&["--endpoint", "127.0.0.1:4280", "status"], &CREDENTIALS);
    assert_eq!(code, Some(1), "{stderr}");
    let mut env = CREDENTIALS.to_vec();
    env.push(("BATCHLINE_API_URL", "localhost:4280"));
    let (code, _, stderr) = batchline(&["status"], &env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(one_line(&stderr).contains("BATCHLINE_API_URL \"localhost:4280\" has no scheme"), "{stderr}");
}

#[test]
fn a_port_nobody_listens_on_is_said_to_be_refused() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, _, stderr) =
        batchline(&["--endpoint-url", &format!("http://127.0.0.1:{unused}"), "status"], &CREDENTIALS);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(one_line(&stderr).contains("nothing listens there (connection refused)"), "{stderr}");
}

#[test]
fn no_credentials_names_where_they_were_looked_for_and_what_to_do() {
    let port = plain_http_server();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, _, stderr) = batchline(&["--endpoint-url", &endpoint, "status"], &[("AWS_REGION", "us-east-1")]);
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&stderr);
    for named in
        ["no credentials: looked at the default profile", "AWS_ACCESS_KEY_ID", "~/.aws/credentials", "aws configure"]
    {
        assert!(line.contains(named), "{named} in {line}");
    }
    let (_, _, stderr) = batchline(&["--profile", "ops", "--endpoint-url", &endpoint, "status"], &[]);
    assert!(one_line(&stderr).contains("looked at --profile ops"), "{stderr}");
}

#[test]
fn a_usage_error_exits_2_and_help_lists_the_exit_codes_and_environment() {
    let (code, _, stderr) = batchline(&["runs", "frobnicate"], &CREDENTIALS);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
    let (code, help, _) = batchline(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for named in
        ["Exit status:", "3    the watched run or waited job ended FAILED", "130", "BATCHLINE_API_URL", "AWS_PROFILE"]
    {
        assert!(help.contains(named), "{named} in {help}");
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef batchline"), ("fish", "complete -c batchline")] {
        let (code, script, stderr) = batchline(&["completions", shell], &[]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(script.contains(marker) && script.contains("redrive"), "{shell}: {script}");
    }
}

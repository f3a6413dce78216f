//! The command line run as a process against an endpoint that never answers: it gives up within its read timeout with one line naming the endpoint, the limit and what to do.
//!
//! (The connect timeout is not tested here: whether an unreachable address hangs or is
//! refused at once depends on the machine's network, and a proxy may answer for it.)

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `batchline` with `args` (and test credentials), returning exit code, stderr and
/// how long it took.
fn batchline(args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchline"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("BATCHLINE_API_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the batchline binary starts");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    (status.code(), stderr, started.elapsed())
}

#[test]
fn an_endpoint_that_accepts_and_never_answers_is_given_up_after_the_read_timeout_in_one_line() {
    // GIVEN a port that accepts connections and never answers
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let connections: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(connections);
    });
    // WHEN a command asks it with a read timeout of 2 s
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, stderr, took) = batchline(&["--endpoint", &endpoint, "--cli-read-timeout", "2", "status"]);
    // THEN it gives up in about that time, once (no retries), exit 1, in one line naming the
    // endpoint, the limit and the option
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for named in [endpoint.as_str(), "no answer within 2 s", "--cli-read-timeout"] {
        assert!(stderr.contains(named), "{named} in {stderr}");
    }
    drop(held);
}

//! `batchline-demo`: the whole stack on this machine, end to end, with a readable report (see the `batchline_demo` library).

use std::io::Write;

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();
    let mut say = |line: String| {
        println!("{:>6.1}s  {line}", started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a != "--keep") {
        eprintln!("usage: scripts/demo [--keep]   (--keep leaves the stack up in the emulator)");
        std::process::exit(2);
    }
    let keep = !args.is_empty();
    match batchline_demo::run_with(&mut say, batchline_demo::Options { keep }).await {
        Ok(report) => {
            println!("{}", batchline_demo::render(&report));
            let ok = report.run["status"] == "SUCCEEDED" && report.left_after_delete.is_empty();
            println!(
                "{}",
                match (ok, keep) {
                    (true, false) => "Demo finished: the run succeeded and the environment is gone.",
                    (true, true) => "Demo finished: the run succeeded; the stack is still up in the emulator.",
                    (false, _) => "Demo finished with problems (see above).",
                }
            );
            std::process::exit(if ok { 0 } else { 1 });
        }
        Err(why) => {
            eprintln!("demo failed: {why}");
            std::process::exit(1);
        }
    }
}

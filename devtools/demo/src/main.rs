//! `batchline-demo`: the whole stack on this machine, end to end, with a readable report (see the `batchline_demo` library).

use std::io::Write;

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();
    let mut say = |line: String| {
        println!("{:>6.1}s  {line}", started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    };
    match batchline_demo::run(&mut say).await {
        Ok(report) => {
            println!("{}", batchline_demo::render(&report));
            let ok = report.run["status"] == "SUCCEEDED" && report.left_after_delete.is_empty();
            println!(
                "{}",
                if ok {
                    "Demo finished: the run succeeded and the environment is gone."
                } else {
                    "Demo finished with problems (see above)."
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

//! `batchline-bench`: Rust functions beside Python + boto3 baselines; prints the table and writes target/bench/results.md.

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();
    let mut say = |line: String| println!("{:>6.1}s  {line}", started.elapsed().as_secs_f64());
    match batchline_bench::measure::run_all(&mut say).await {
        Ok(table) => {
            let path = batchline_testkit::emulator::repo_root().join("target/bench/results.md");
            if let Err(why) = std::fs::write(&path, &table) {
                eprintln!("could not write {}: {why}", path.display());
            }
            println!("\n{table}\n(written to {})", path.display());
        }
        Err(why) => {
            eprintln!("benchmark failed: {why}");
            std::process::exit(1);
        }
    }
}

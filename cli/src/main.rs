//! The `batchline` binary: parses the command line and runs it (see the crate's docs); Ctrl-C ends it with status 130 and a last line saying how to resume.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = batchline_cli::Cli::parse();
    let status = tokio::select! {
        status = batchline_cli::main_with(cli) => status,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("{}", batchline_cli::interrupted());
            batchline_cli::EXIT_INTERRUPTED
        }
    };
    std::process::exit(status);
}

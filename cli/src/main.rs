//! The `batchline` binary: parses the command line and runs it (see the crate's docs).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = batchline_cli::Cli::parse();
    std::process::exit(batchline_cli::main_with(cli).await);
}

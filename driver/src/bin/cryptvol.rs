//! The `cryptvol` admin CLI binary: flags in, library call out.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cryptvol::cli::run(cryptvol::cli::Cli::parse()).await
}

//! The node plugin binary: flags in, library call out.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match cryptvol::plugin::run_node(cryptvol::plugin::NodeArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cryptvol-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

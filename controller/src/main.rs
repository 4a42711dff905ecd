//! The controller plugin binary: flags in, library call out.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match cryptvol::plugin::run_controller(cryptvol::plugin::ControllerArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cryptvol-controller: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

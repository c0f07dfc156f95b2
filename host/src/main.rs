use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice::allocator::tune();
    let cli = sluice::cli::Cli::parse();
    sluice::logging::init(cli.log_format);
    match sluice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

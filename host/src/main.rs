#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (cli, layers) = match sluice::settings::parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    sluice::allocator::tune(cli.command.workload());
    sluice::logging::init(cli.log_format);
    match sluice::cli::run(cli, &layers).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

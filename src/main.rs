//! The `sidelog` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use sidelog::{
    agent::Agent,
    cli::{self, Cli, Command},
    config::Config,
    shutdown, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with 2
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidelog: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Agent(args) => {
            let config = match Config::resolve(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sidelog: {e}");
                    return ExitCode::from(2);
                }
            };
            let metrics = telemetry::Metrics::new();
            let _rt = runtime.enter();
            let telemetry = telemetry::init(config.log_format, &config.log_level, metrics.clone());
            tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
            let result = runtime.block_on(async {
                let agent = Agent::start_with(config, metrics).await?;
                agent.run_until(shutdown::signal()).await?;
                Ok::<_, anyhow::Error>(())
            });
            // Spans are flushed last, after the agent's own shutdown spans.
            telemetry.shutdown();
            result
        }
        Command::Produce(a) => runtime.block_on(cli::produce(a)),
        Command::Consume(a) => runtime.block_on(cli::consume(a)),
        Command::Perf(a) => runtime.block_on(cli::perf::run(a)),
        Command::DevCerts(a) => cli::dev_certs(a),
        Command::Cluster(a) => runtime.block_on(cli::cluster(a)),
        Command::Log(a) => runtime.block_on(cli::log_command(a)),
    };
    // The log is synced and closed by now: do not wait for a blocking task
    // still in flight (a DNS lookup of a peer that is gone, say) to exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`sidelog consume | head -1`): done, as
        // every other command-line tool is.
        Err(e) if e.downcast_ref::<cli::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            let cause = describe(&e);
            tracing::error!(cause = %cause, "exiting");
            eprintln!("sidelog: {cause}");
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, each said once: an error whose text already
/// holds its source's (as most do) does not repeat it. A gRPC status is
/// told in the user's terms.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => sidelog::client::describe_status(status, None),
            None => cause.to_string(),
        };
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

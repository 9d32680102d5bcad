//! `kubevirt-metrics-operator`: `run` (the controller), `crd` (print the CRD) and `render`
//! (print offline what the controller would write).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kubevirt-metrics-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (uses KUBECONFIG or the in-cluster configuration).
    Run,
    /// Print the MetricsSidecarPolicy CRD as YAML.
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            eprintln!("kubevirt-metrics-operator run: not implemented yet");
            ExitCode::FAILURE
        }
        Command::Crd => match kubevirt_metrics_operator::api::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("kubevirt-metrics-operator crd: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

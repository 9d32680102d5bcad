//! `kubevirt-metrics-operator`: `run` (the controller), `crd` (print the CRD) and `render`
//! (print offline what the controller would write).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubevirt_metrics_operator::controller::RunConfig;
use kubevirt_metrics_operator::plan::PlanDefaults;
use kubevirt_metrics_operator::render::{self, OutputFormat};

#[derive(Debug, Parser)]
#[command(name = "kubevirt-metrics-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (uses KUBECONFIG or the in-cluster configuration).
    Run(RunConfig),
    /// Print the MetricsSidecarPolicy CRD as YAML.
    Crd,
    /// Print, offline, the KubeVirt CR change (and virt-operator Deployment apply body) the
    /// operator would write for a policy. Unknown policy fields and a KubeVirt CR the policy
    /// cannot apply to are errors; a paused policy prints nothing and exits with status 3.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The MetricsSidecarPolicy YAML file (`-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    policy: PathBuf,
    /// The current KubeVirt CR (or the HyperConverged CR on OpenShift Virtualization); its
    /// existing patches are kept and ours merged in, as the controller does.
    #[arg(long = "kubevirt", value_name = "FILE")]
    target: Option<PathBuf>,
    /// `yaml`: commit-ready objects; `json`: the exact request bodies, one per line.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Yaml)]
    output: OutputFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(config) => run_controller(config),
        Command::Crd => print_or_fail("crd", kubevirt_metrics_operator::api::crd_yaml()),
        Command::Render(args) => run_render(&args),
    }
}

fn run_controller(config: RunConfig) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubevirt-metrics-operator run: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubevirt_metrics_operator::controller::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubevirt-metrics-operator run: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `render` for a paused policy: nothing printed, on purpose.
const EXIT_PAUSED: u8 = 3;

/// Prints the documents on stdout and the warnings on stderr. Exit status: 0 rendered,
/// 1 error, 3 the policy is paused (nothing to render; stdout stays empty).
fn run_render(args: &RenderArgs) -> ExitCode {
    let inputs = read(&args.policy).and_then(|policy| {
        let target = args.target.as_deref().map(read).transpose()?;
        Ok((policy, target))
    });
    let (policy, target) = match inputs {
        Ok(inputs) => inputs,
        Err(error) => return print_or_fail::<String>("render", Err(error)),
    };
    match render::render_text(
        &policy,
        target.as_deref(),
        &PlanDefaults::default(),
        args.output,
    ) {
        Ok(output) => {
            for warning in &output.warnings {
                eprintln!("kubevirt-metrics-operator render: warning: {warning}");
            }
            print_or_fail::<String>("render", Ok(output.text))
        }
        Err(error @ render::RenderError::Paused(_)) => {
            eprintln!("kubevirt-metrics-operator render: {error}");
            ExitCode::from(EXIT_PAUSED)
        }
        Err(error) => print_or_fail("render", Err(error)),
    }
}

fn read(path: &std::path::Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn print_or_fail<E: std::fmt::Display>(command: &str, result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kubevirt-metrics-operator {command}: {error}");
            ExitCode::FAILURE
        }
    }
}

//! virt-api-metrics: relays virt-api's own /metrics through the sidecar's export paths, plus
//! opt-in backports; see `--help`.

use std::sync::Arc;

use clap::Parser;
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::component::{ComponentClient, ComponentEndpoint};
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::relay::{Backport, RelayCollector};
use kubevirt_metrics_flags::{ApiArgs, ApiBackport};

const NAME: &str = "virt-api-metrics";

fn main() {
    let args = ApiArgs::parse();
    kubevirt_metrics_flags::telemetry::init(args.common.log_format, "info");
    runtime::block_on(NAME, args.common.worker_threads, serve(args));
}

async fn serve(args: ApiArgs) {
    let component = match ComponentClient::new(&ComponentEndpoint::from_args(&args.common)) {
        Ok(component) => component,
        Err(error) => {
            tracing::error!(%error, "{NAME}: cannot reach virt-api's metrics");
            std::process::exit(1);
        }
    };
    let backports = args
        .backports
        .iter()
        .map(|backport| match backport {
            ApiBackport::ReadyStatus => Backport::ApiReadyStatus,
        })
        .collect();
    let collector: Arc<dyn Collector> = Arc::new(RelayCollector::new(component, backports));
    if let Err(error) = runtime::run(NAME, &args.common, collector).await {
        tracing::error!(%error, "{NAME} failed");
        std::process::exit(1);
    }
}

//! virt-operator-metrics: relays virt-operator's own /metrics through the sidecar's export
//! paths, plus opt-in backports; see `--help`.

use std::sync::Arc;

use clap::Parser;
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::component::{ComponentClient, ComponentEndpoint};
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::k8s::lease::{self, LeaseReader};
use kubevirt_metrics_collectors::relay::{Backport, RelayCollector};
use kubevirt_metrics_flags::{OperatorArgs, OperatorBackport};

const NAME: &str = "virt-operator-metrics";

fn main() {
    let args = OperatorArgs::parse();
    kubevirt_metrics_flags::telemetry::init(args.common.log_format, "info");
    runtime::block_on(NAME, args.common.worker_threads, serve(args));
}

async fn serve(args: OperatorArgs) {
    let component = match ComponentClient::new(&ComponentEndpoint::from_args(&args.common)) {
        Ok(component) => component,
        Err(error) => {
            tracing::error!(%error, "{NAME}: cannot reach virt-operator's metrics");
            std::process::exit(1);
        }
    };
    let mut backports = Vec::new();
    // Kubernetes is only needed by the Lease backport.
    if args.backports.contains(&OperatorBackport::LeadingStatus) {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "{NAME}: --backport leading-status needs Kubernetes access");
                std::process::exit(1);
            }
        };
        let identity = lease::identity(&args.pod_name);
        backports.push(Backport::OperatorLeadingStatus(Box::new(LeaseReader::new(
            client,
            &args.namespace,
            &args.leader_lease,
            identity,
        ))));
    }
    let collector: Arc<dyn Collector> = Arc::new(RelayCollector::new(component, backports));
    if let Err(error) = runtime::run(NAME, &args.common, collector).await {
        tracing::error!(%error, "{NAME} failed");
        std::process::exit(1);
    }
}

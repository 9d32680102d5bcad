//! virt-controller-metrics: KubeVirt's virt-controller cluster metrics (`kubevirt_vm_*`,
//! `kubevirt_vmi_info`, migrations, snapshots, ...) rebuilt from the objects virt-controller
//! watches, exported only next to the leading virt-controller; see `--help`.

use std::sync::Arc;

use clap::Parser;
use kubevirt_metrics_collectors::controller::{ControllerCollector, ControllerOptions};
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_flags::ControllerArgs;

const NAME: &str = "virt-controller-metrics";

fn main() {
    let args = ControllerArgs::parse();
    kubevirt_metrics_flags::telemetry::init(args.common.log_format, "info");
    runtime::block_on(NAME, args.common.worker_threads, serve(args));
}

async fn serve(args: ControllerArgs) {
    // KUBECONFIG, else the in-cluster service account.
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "{NAME}: no Kubernetes configuration");
            std::process::exit(1);
        }
    };
    let options = ControllerOptions::from_args(&args);
    tracing::info!(
        namespace = options.namespace,
        identity = options.identity,
        lease = options.leader_lease,
        ignore_leadership = options.ignore_leadership,
        "leader rule"
    );
    let collector: Arc<dyn Collector> = Arc::new(ControllerCollector::new(client, options));
    if let Err(error) = runtime::run(NAME, &args.common, collector).await {
        tracing::error!(%error, "{NAME} failed");
        std::process::exit(1);
    }
}

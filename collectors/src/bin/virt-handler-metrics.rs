//! virt-handler-metrics: KubeVirt's per-VMI runtime metrics (`kubevirt_vmi_*`), served next
//! to virt-handler. Statistics come from the node's virt-launchers (`--source launcher`, the
//! default) or from libvirt (`--source libvirt`); see `--help`.

use std::sync::Arc;

use clap::Parser;
use kubevirt_metrics_collectors::core::collect::Collector;
use kubevirt_metrics_collectors::core::runtime;
use kubevirt_metrics_collectors::handler::StatsSource;
use kubevirt_metrics_collectors::handler::VmiCollector;
use kubevirt_metrics_collectors::handler::launcher::LauncherSource;
use kubevirt_metrics_collectors::handler::libvirt::LibvirtSource;
use kubevirt_metrics_flags::{HandlerArgs, Source};

const NAME: &str = "virt-handler-metrics";

fn main() {
    let args = HandlerArgs::parse();
    kubevirt_metrics_flags::telemetry::init(args.common.log_format, "info");
    runtime::block_on(NAME, args.common.worker_threads, serve(args));
}

async fn serve(args: HandlerArgs) {
    let source: Arc<dyn StatsSource> = match args.source {
        Source::Libvirt => Arc::new(LibvirtSource::from_args(&args)),
        Source::Launcher => match LauncherSource::start(&args).await {
            Ok(source) => Arc::new(source),
            Err(error) => {
                tracing::error!(%error, "{NAME}: cannot start the launcher source");
                std::process::exit(1);
            }
        },
    };
    let collector: Arc<dyn Collector> = Arc::new(VmiCollector::new(source, args.common.interval));
    if let Err(error) = runtime::run(NAME, &args.common, collector).await {
        tracing::error!(%error, "{NAME} failed");
        std::process::exit(1);
    }
}

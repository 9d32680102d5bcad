//! virt-handler-metrics: KubeVirt's per-VMI runtime metrics (`kubevirt_vmi_*`), served next
//! to virt-handler. Statistics come from the node's virt-launchers (`--source launcher`, the
//! default) or from libvirt (`--source libvirt`); see `--help`.

use std::sync::Arc;

use clap::Parser;
use kubevirt_metrics_collectors::collect::{Collector, StatsSource};
use kubevirt_metrics_collectors::config::{HandlerArgs, Source};
use kubevirt_metrics_collectors::runtime;
use kubevirt_metrics_collectors::sources::launcher::LauncherSource;
use kubevirt_metrics_collectors::sources::libvirt::LibvirtSource;
use kubevirt_metrics_collectors::vmi_collector::VmiCollector;

const NAME: &str = "virt-handler-metrics";

#[tokio::main]
async fn main() {
    let args = HandlerArgs::parse();
    runtime::init_tracing(args.common.log_format);
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

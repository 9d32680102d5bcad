//! The launcher source against KubeVirt itself: KubeVirt v1.9.0's real virt-launcher command
//! server (K launchers, one socket each) and KubeVirt's real virt-handler `/metrics` for the
//! same VMIs, from `../shared/kubevirt-peer` (see `support/kubevirt_peer.rs`). The VMIs the
//! peer prints are created in a real API server with the real KubeVirt CRDs; our
//! virt-handler collector runs in-process with `--source launcher`, watching them.
//!
//! - full mode: our `kubevirt_vmi_*` series equal KubeVirt's own, name, labels and value,
//!   and no problem is counted (in particular no `kind="version"`);
//! - complement mode against KubeVirt's page: we withhold every family KubeVirt serves, so
//!   the union of both pages has no duplicate series;
//! - the protocol fixture's v1.9 rows equal the file descriptors compiled into KubeVirt.
//!
//! Skips loudly without an API server or without the peer.

mod support;

#[path = "../../collectors/tests/support/launcher_fixture.rs"]
mod launcher_fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use kubevirt_metrics_collectors::core::component;
use kubevirt_metrics_collectors::core::metric::Family;
use kubevirt_metrics_collectors::core::runtime::{self, Running};
use kubevirt_metrics_collectors::handler::VmiCollector;
use kubevirt_metrics_collectors::handler::launcher::{
    LauncherSettings, LauncherSource, RpcTimeouts, WatchedVmis,
};
use kubevirt_metrics_flags::{CommonArgs, Mode};
use support::kubevirt_peer::{self, NODE};
use support::*;

const WAIT: Duration = Duration::from_secs(90);
const SELF_PREFIX: &str = "kubevirt_metrics_sidecar_";

/// Creates the VMIs `kv-domainstats print-vmis` printed. KubeVirt's VMI CRD has no status
/// subresource: the status (phase, node, active pods) travels with the object.
async fn create_vmis(client: &Client, namespace: &str, vmis: &[Value]) -> anyhow::Result<()> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    for vmi in vmis {
        let object: DynamicObject = serde_json::from_value(vmi.clone())?;
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating VMI {}", vmi["metadata"]["name"]))?;
        anyhow::ensure!(
            created.data["status"]["activePods"] == vmi["status"]["activePods"],
            "the API server dropped the VMI status"
        );
    }
    Ok(())
}

/// Our virt-handler collector, in-process: `--source launcher --pods-dir <peer>/pods
/// --node-name node01`, watching VMIs through `client`.
async fn start_sidecar(
    client: &Client,
    pods_dir: &std::path::Path,
    mode: Mode,
    component_url: Option<&str>,
) -> anyhow::Result<Running> {
    let settings = LauncherSettings {
        node_name: NODE.to_owned(),
        pods_dir: pods_dir.to_path_buf(),
        max_concurrency: 4,
        vmi_timeout: Duration::from_secs(5),
        rpc: RpcTimeouts::default(),
    };
    let lister = WatchedVmis::start(client.clone(), NODE);
    let source = LauncherSource::with_lister(Arc::new(lister), settings);
    let mut common = CommonArgs {
        listen: Some("127.0.0.1:0".parse()?),
        mode,
        interval: Duration::from_secs(1),
        collection_timeout: Duration::from_secs(15),
        ..CommonArgs::default()
    };
    if let Some(url) = component_url {
        common.component_metrics_url = url.to_owned();
    }
    let collector = VmiCollector::new(Arc::new(source), common.interval);
    Ok(runtime::start("virt-handler-metrics", &common, Arc::new(collector)).await?)
}

async fn page(url: &str) -> anyhow::Result<Vec<Family>> {
    let body = reqwest::get(url).await?.text().await?;
    Ok(component::parse(&body)?)
}

/// `name{label="value",...}` (labels sorted) → value, for families matching `keep`.
fn series(families: &[Family], keep: impl Fn(&str) -> bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for family in families.iter().filter(|f| keep(&f.name)) {
        for sample in &family.samples {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(n, v)| format!("{n}={v:?}"))
                .collect();
            labels.sort();
            let key = format!("{}{}{{{}}}", family.name, sample.suffix, labels.join(","));
            out.insert(key, sample.value);
        }
    }
    out
}

fn is_vmi_family(name: &str) -> bool {
    name.starts_with("kubevirt_vmi_")
}

/// Every line where the two sides differ, for a readable failure.
fn differences(ours: &BTreeMap<String, f64>, kubevirt: &BTreeMap<String, f64>) -> Vec<String> {
    let keys: BTreeSet<&String> = ours.keys().chain(kubevirt.keys()).collect();
    keys.into_iter()
        .filter_map(|key| match (ours.get(key), kubevirt.get(key)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!("{key}: ours {a}, KubeVirt {b}")),
            (Some(a), None) => Some(format!("{key}: ours {a}, KubeVirt has no such series")),
            (None, Some(b)) => Some(format!("{key}: KubeVirt {b}, ours missing")),
            (None, None) => None,
        })
        .collect()
}

/// The sidecar's problem counters, e.g. `{kind="version",source="launcher"}` → 3, without
/// the one kind expected here: `not_synced` from passes that ran before the VMI watch's
/// first list arrived (the sidecar starts right after the VMIs are created).
fn problems(families: &[Family]) -> BTreeMap<String, f64> {
    series(families, |n| n == "kubevirt_metrics_sidecar_problems_total")
        .into_iter()
        .filter(|(k, v)| *v != 0.0 && !k.contains(r#"kind="not_synced",source="kubernetes""#))
        .collect()
}

async fn full_mode_equals_kubevirt(test: &str, vmis: usize) -> anyhow::Result<()> {
    let Some(server) = apiserver::start(test).await? else {
        return Ok(());
    };
    let Some(program) = kubevirt_peer::find(test)? else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;
    let ns = namespace(&client, "kvp").await?;
    create_vmis(
        &client,
        &ns,
        &kubevirt_peer::print_vmis(&program, vmis, &ns)?,
    )
    .await?;
    let peer = kubevirt_peer::serve(&program, vmis, &ns).await?;
    let sidecar = start_sidecar(&client, &peer.pods_dir(), Mode::Full, None).await?;
    let ours_url = format!("http://{}/metrics", sidecar.local_addr());

    let result = async {
        let kubevirt = series(&component::parse(&peer.metrics().await?)?, is_vmi_family);
        let vmi_names: BTreeSet<&str> = kubevirt
            .keys()
            .filter_map(|k| k.split("name=\"").nth(1)?.split('"').next())
            .collect();
        anyhow::ensure!(
            vmi_names.len() == vmis,
            "KubeVirt's own handler reports {} VMIs, not {vmis}: {vmi_names:?}",
            vmi_names.len()
        );
        // Wait for a collection that has seen every VMI, then compare it whole. The stats
        // are static (the peer serves one payload, scaled per VMI), so no value may differ.
        let complete = eventually("our sidecar to report every VMI", WAIT, || async {
            let served = page(&ours_url).await?;
            let targets = series(&served, |n| n == "kubevirt_metrics_sidecar_targets");
            let seen = targets.values().next().copied().unwrap_or(0.0);
            let ours = series(&served, is_vmi_family);
            #[allow(clippy::cast_precision_loss)]
            let complete = seen == vmis as f64 && ours.len() >= kubevirt.len();
            Ok(complete.then_some(served))
        })
        .await;
        // Incomplete after the wait: compare what is there, which says why.
        let served = match complete {
            Ok(served) => served,
            Err(_) => page(&ours_url).await?,
        };
        let problems = problems(&served);
        anyhow::ensure!(
            problems.is_empty(),
            "problems counted against KubeVirt's own launcher: {problems:#?}"
        );
        let ours = series(&served, is_vmi_family);
        let diff = differences(&ours, &kubevirt);
        anyhow::ensure!(
            diff.is_empty(),
            "our kubevirt_vmi_* series differ from KubeVirt v1.9.0's own virt-handler ({} of {} series):\n  {}",
            diff.len(),
            kubevirt.len(),
            diff.join("\n  ")
        );
        eprintln!(
            "e2e: {} kubevirt_vmi_* series for {vmis} VMIs equal KubeVirt's own",
            ours.len()
        );
        Ok(())
    }
    .await;
    sidecar.stop().await?;
    delete_namespace(&client, &ns).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_source_equals_kubevirts_own_handler_for_3_vmis() -> anyhow::Result<()> {
    full_mode_equals_kubevirt("launcher_source_equals_kubevirts_own_handler_for_3_vmis", 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_source_equals_kubevirts_own_handler_for_50_vmis() -> anyhow::Result<()> {
    full_mode_equals_kubevirt(
        "launcher_source_equals_kubevirts_own_handler_for_50_vmis",
        50,
    )
    .await
}

/// Complement mode pointed at KubeVirt's own virt-handler page (plain HTTP here; a real
/// virt-handler serves it with TLS on 8443): every family KubeVirt serves is withheld, so
/// a scrape of both pages has no series twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complement_mode_withholds_every_family_kubevirt_serves() -> anyhow::Result<()> {
    const TEST: &str = "complement_mode_withholds_every_family_kubevirt_serves";
    const VMIS: usize = 3;
    let Some(server) = apiserver::start(TEST).await? else {
        return Ok(());
    };
    let Some(program) = kubevirt_peer::find(TEST)? else {
        return Ok(());
    };
    let client = server.client.clone();
    install_crds(&client).await?;
    let ns = namespace(&client, "kvc").await?;
    create_vmis(
        &client,
        &ns,
        &kubevirt_peer::print_vmis(&program, VMIS, &ns)?,
    )
    .await?;
    let peer = kubevirt_peer::serve(&program, VMIS, &ns).await?;
    let sidecar = start_sidecar(
        &client,
        &peer.pods_dir(),
        Mode::Complement,
        Some(&peer.metrics_url),
    )
    .await?;
    let ours_url = format!("http://{}/metrics", sidecar.local_addr());

    let result = async {
        let kubevirt_page = component::parse(&peer.metrics().await?)?;
        let kubevirt_families: BTreeSet<String> =
            kubevirt_page.iter().map(|f| f.name.to_string()).collect();
        anyhow::ensure!(
            kubevirt_families
                .iter()
                .filter(|n| is_vmi_family(n))
                .count()
                > 10,
            "KubeVirt's page has too few kubevirt_vmi_* families: {kubevirt_families:?}"
        );
        // A collection has run once the sidecar has looked at every VMI.
        let served = eventually("a complement-mode collection", WAIT, || async {
            let served = page(&ours_url).await?;
            let targets = series(&served, |n| n == "kubevirt_metrics_sidecar_targets");
            let collections = series(&served, |n| {
                n == "kubevirt_metrics_sidecar_collections_total"
            });
            #[allow(clippy::cast_precision_loss)]
            let done = targets.values().any(|v| *v == VMIS as f64)
                && collections.values().sum::<f64>() >= 2.0;
            Ok(done.then_some(served))
        })
        .await?;
        let withheld_not: Vec<&str> = served
            .iter()
            .map(|f| f.name.as_ref())
            .filter(|n| kubevirt_families.contains(*n))
            .collect();
        anyhow::ensure!(
            withheld_not.is_empty(),
            "complement mode exports families KubeVirt already serves: {withheld_not:?}"
        );
        let ours = series(&served, |_| true);
        let theirs = series(&kubevirt_page, |_| true);
        let twice: Vec<&String> = ours.keys().filter(|k| theirs.contains_key(*k)).collect();
        anyhow::ensure!(twice.is_empty(), "series on both pages: {twice:?}");
        // Withheld, not missing: our collector produced every kubevirt_vmi_* family KubeVirt
        // serves (full mode proves they are equal) and the check of KubeVirt's page held it back.
        let gauge = |name: &str| series(&served, |n| n == name).values().sum::<f64>();
        let vmi_families = kubevirt_families
            .iter()
            .filter(|n| is_vmi_family(n))
            .count();
        #[allow(clippy::cast_precision_loss)]
        let expected_withheld = vmi_families as f64;
        anyhow::ensure!(
            gauge("kubevirt_metrics_sidecar_withheld_families") == expected_withheld,
            "withheld {} families, KubeVirt serves {vmi_families} kubevirt_vmi_* families",
            gauge("kubevirt_metrics_sidecar_withheld_families")
        );
        anyhow::ensure!(gauge("kubevirt_metrics_sidecar_component_check_failures_total") == 0.0);
        // What we do export is our own self-metrics and anything KubeVirt lacks.
        let ours_families: Vec<&str> = served
            .iter()
            .map(|f| f.name.as_ref())
            .filter(|n| !n.starts_with(SELF_PREFIX))
            .collect();
        eprintln!("e2e: complement mode adds {ours_families:?} to KubeVirt's page");
        let problems = problems(&served);
        anyhow::ensure!(
            problems.is_empty(),
            "problems counted in complement mode: {problems:#?}"
        );
        Ok(())
    }
    .await;
    sidecar.stop().await?;
    delete_namespace(&client, &ns).await;
    result
}

/// The fixture's v1.9 rows against the `FileDescriptorProto`s KubeVirt v1.9.0's generated Go
/// code registers (gzipped, in the peer program): the fixture is KubeVirt's, not ours.
#[test]
fn protocol_fixture_equals_kubevirts_compiled_descriptors() -> anyhow::Result<()> {
    use protox::prost::Message as _;
    use protox::prost_reflect::prost_types::{
        FileDescriptorProto, field_descriptor_proto::Label, field_descriptor_proto::Type,
    };
    use std::io::Read as _;

    const TEST: &str = "protocol_fixture_equals_kubevirts_compiled_descriptors";
    let Some(program) = kubevirt_peer::find(TEST)? else {
        return Ok(());
    };
    let binary = std::fs::read(&program)?;
    let mut files = BTreeMap::new();
    let gzip = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];
    let mut at = 0;
    while let Some(offset) = binary[at..].windows(gzip.len()).position(|w| w == gzip) {
        let start = at + offset;
        at = start + 1;
        let mut raw = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&binary[start..]);
        if decoder.read_to_end(&mut raw).is_err() {
            continue;
        }
        if let Ok(file) = FileDescriptorProto::decode(raw.as_slice())
            && file.name().starts_with("pkg/handler-launcher-com/cmd/")
        {
            files.insert(file.name().to_owned(), file);
        }
    }
    let names: Vec<&String> = files.keys().collect();
    anyhow::ensure!(
        names
            == [
                "pkg/handler-launcher-com/cmd/info/info.proto",
                "pkg/handler-launcher-com/cmd/v1/cmd.proto"
            ],
        "descriptors found in {}: {names:?}",
        program.display()
    );

    let fixture = launcher_fixture::release(launcher_fixture::NEWEST);
    let mut compiled = launcher_fixture::Protocol::default();
    for file in files.values() {
        let package = file.package();
        for message in &file.message_type {
            let full = format!("{package}.{}", message.name());
            if !fixture.messages.contains_key(&full) {
                continue;
            }
            let fields = message
                .field
                .iter()
                .map(|f| {
                    let proto_type = match f.r#type() {
                        Type::Message | Type::Enum => f.type_name().to_owned(),
                        other => other
                            .as_str_name()
                            .trim_start_matches("TYPE_")
                            .to_lowercase(),
                    };
                    let label = match f.label() {
                        Label::Repeated => "repeated",
                        Label::Optional if f.proto3_optional() => "proto3-optional",
                        _ => "singular",
                    };
                    launcher_fixture::Field {
                        name: f.name().to_owned(),
                        number: u32::try_from(f.number()).unwrap_or(0),
                        wire: launcher_fixture::wire_of(&proto_type, label).to_owned(),
                        proto_type,
                        label: label.to_owned(),
                    }
                })
                .collect();
            compiled.messages.insert(full, fields);
        }
        for service in &file.service {
            for method in &service.method {
                let method = launcher_fixture::Method {
                    service: format!("{package}.{}", service.name()),
                    method: method.name().to_owned(),
                    input: method.input_type().to_owned(),
                    output: method.output_type().to_owned(),
                };
                if fixture.methods.contains(&method)
                    || fixture
                        .methods
                        .iter()
                        .any(|m| m.service == method.service && m.method == method.method)
                {
                    compiled.methods.insert(method);
                }
            }
        }
    }
    assert_eq!(compiled.messages, fixture.messages);
    assert_eq!(compiled.methods, fixture.methods);
    Ok(())
}

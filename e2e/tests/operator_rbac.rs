//! The operator's RBAC on a real API server (RBAC authorization on, the operator authenticated
//! as its ServiceAccount with a TokenRequest token):
//! - `kubectl apply -k config/default --server-side` (and `--dry-run=server`) applies with no
//!   error or warning, and the operator runs cluster-wide as the ServiceAccount it installs;
//! - a rule taken out of the ClusterRole is noticed: the policy shows `Forbidden` with the
//!   server's sentence, a Warning event says so, the operator keeps running and retries, and
//!   putting the rule back heals it without a restart.
//!
//! One API server for the whole file. Skips loudly when no server is available.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use serde_json::{Value, json};

use support::apiserver::ApiServer;
use support::user_view::{condition, policy_events, summary};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rbac_against_a_real_api_server() -> anyhow::Result<()> {
    let Some(server) =
        apiserver::start("operator_rbac::operator_rbac_against_a_real_api_server").await?
    else {
        return Ok(());
    };
    eprintln!(
        "e2e scenario: kubectl apply -k config/default, operator as the installed ServiceAccount"
    );
    apply_config_default_then_run_as_its_service_account(&server).await?;
    eprintln!(
        "e2e scenario: a missing rule is reported and healed (patch kubevirts; list daemonsets)"
    );
    let (patch, list) = tokio::join!(
        missing_rule_is_reported(
            &server,
            "no-patch-kv",
            |rules| take_verb(rules, "kubevirts", "patch"),
            "cannot patch resource \"kubevirts\" in API group \"kubevirt.io\"",
            "writing the KubeVirt CR",
        ),
        missing_rule_is_reported(
            &server,
            "no-list-ds",
            |rules| take_resource(rules, "daemonsets"),
            "cannot list resource \"daemonsets\" in API group \"apps\"",
            "reading component workloads",
        ),
    );
    patch?;
    list?;
    drop(server);
    Ok(())
}

/// What a user runs first, then the operator exactly as the installed manifests let it run.
async fn apply_config_default_then_run_as_its_service_account(
    server: &ApiServer,
) -> anyhow::Result<()> {
    let client = &server.client;
    let kubeconfig = &server.kubeconfig;
    // First install: the namespace does not exist yet, so a server dry run cannot check
    // the objects inside it (kubectl sends them one by one). The real apply must be clean,
    // and a dry run against the installed tree too (what a user does before an upgrade).
    let applied = kubectl::ok(
        kubeconfig,
        &["apply", "-k", "config/default", "--server-side"],
    )
    .await?;
    for object in [
        "namespace/kubevirt-metrics-operator serverside-applied",
        "customresourcedefinition.apiextensions.k8s.io/metricssidecarpolicies.metrics.kubevirt.io serverside-applied",
        "serviceaccount/kubevirt-metrics-operator serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/kubevirt-metrics-operator serverside-applied",
        "deployment.apps/kubevirt-metrics-operator serverside-applied",
    ] {
        assert!(applied.contains(object), "{object} missing in:\n{applied}");
    }
    let dry = kubectl::ok(
        kubeconfig,
        &[
            "apply",
            "-k",
            "config/default",
            "--server-side",
            "--dry-run=server",
        ],
    )
    .await?;
    assert!(
        dry.lines().count() >= 8 && dry.lines().all(|l| l.ends_with("(server dry run)")),
        "{dry}"
    );

    // The Deployment runs the operator as that ServiceAccount, cluster-wide, with its Lease
    // in its own namespace: do the same here with a token of the installed ServiceAccount.
    let installed_ns = "kubevirt-metrics-operator";
    let deployment = Api::<Deployment>::namespaced(client.clone(), installed_ns)
        .get("kubevirt-metrics-operator")
        .await?;
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(rbac::SERVICE_ACCOUNT)
    );
    Api::<ServiceAccount>::namespaced(client.clone(), installed_ns)
        .get(rbac::SERVICE_ACCOUNT)
        .await?;

    install_crds(client).await?;
    let ns = namespace(client, "kustomized").await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}, "virtOperator": {}}}),
    )
    .await?;
    let operator_client = rbac::service_account_client(client, kubeconfig, installed_ns).await?;
    let operator = start_operator_cluster_wide(&operator_client, installed_ns).await?;
    eventually(
        "entries written by the kustomize-installed identity",
        WAIT,
        || async {
            let kv = get_kubevirt(client, &ns, "kubevirt").await?;
            Ok((kv.patches().len() == 1).then_some(()))
        },
    )
    .await?;
    let policy = eventually("status RolloutInProgress", WAIT, || async {
        let p = get_policy(client, &ns, "metrics").await?.expect("policy");
        Ok((ready_reason(&p).as_deref() == Some("RolloutInProgress")).then_some(p))
    })
    .await?;
    assert_eq!(policy.status.unwrap().components.len(), 2);
    operator.stop().await?;
    // Every other scenario of this server runs its own namespaced operator.
    delete_namespace(client, &ns).await;
    Ok(())
}

/// Takes `verb` out of the rule on `resource`.
fn take_verb(rules: &mut [Value], resource: &str, verb: &str) {
    let rule = rules
        .iter_mut()
        .find(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == resource)
                && r.get("resourceNames").is_none()
        })
        .expect("a rule on the resource");
    let verbs = rule["verbs"].as_array_mut().unwrap();
    let before = verbs.len();
    verbs.retain(|v| v != verb);
    assert_eq!(
        verbs.len(),
        before - 1,
        "config/rbac grants {verb} {resource}"
    );
}

/// Takes `resource` out of every rule (and drops rules left empty).
fn take_resource(rules: &mut Vec<Value>, resource: &str) {
    let before = rules.clone();
    for rule in rules.iter_mut() {
        rule["resources"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r != resource);
    }
    rules.retain(|r| !r["resources"].as_array().unwrap().is_empty());
    assert_ne!(&before, rules, "config/rbac grants access to {resource}");
}

async fn missing_rule_is_reported(
    server: &ApiServer,
    prefix: &str,
    cut: impl FnOnce(&mut Vec<Value>),
    server_says: &str,
    doing: &str,
) -> anyhow::Result<()> {
    let client = &server.client;
    let ns = namespace(client, prefix).await?;
    create_kubevirt(client, &ns, None, "Deployed").await?;
    create_workloads(client, &ns).await?;
    create_policy(
        client,
        &ns,
        "metrics",
        json!({"defaults": {"image": IMAGE}, "components": {"virtHandler": {}}}),
    )
    .await?;
    let full = rbac::for_namespace(rbac::config_rbac()?, &ns)?;
    let mut broken = full.clone();
    cut(rbac::cluster_role_rules(&mut broken)?);
    rbac::install(client, &broken).await?;
    let operator_client = rbac::service_account_client(client, &server.kubeconfig, &ns).await?;
    let operator = start_operator_with(&operator_client, &ns).await?;

    // What the user sees: the conditions and a Warning event.
    let policy = eventually("Ready=False reason Forbidden", WAIT, || async {
        let p = get_policy(client, &ns, "metrics").await?.expect("policy");
        Ok((ready_reason(&p).as_deref() == Some("Forbidden")).then_some(p))
    })
    .await?;
    let ready = condition(&policy, "Ready").unwrap();
    let degraded = condition(&policy, "Degraded").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "Forbidden")
    );
    let user = format!(
        "User \"system:serviceaccount:{ns}:{}\"",
        rbac::SERVICE_ACCOUNT
    );
    for part in [
        format!("403 Forbidden while {doing}"),
        user.clone(),
        server_says.to_owned(),
        "config/rbac".to_owned(),
    ] {
        assert!(
            ready.message.contains(&part),
            "{part:?} not in {:?}",
            ready.message
        );
    }
    let events = eventually("a Warning event Forbidden", WAIT, || async {
        let events = policy_events(client, &ns, "metrics").await?;
        let found = summary(&events)
            .into_iter()
            .any(|(t, r, note)| t == "Warning" && r == "Forbidden" && note.contains(server_says));
        Ok(found.then_some(events))
    })
    .await?;
    assert!(
        get_kubevirt(client, &ns, "kubevirt")
            .await?
            .patches()
            .is_empty(),
        "nothing written"
    );

    // No crash loop: the operator keeps running and retries with its error backoff (15s),
    // not in a hot loop, and publishes the event once, not on every retry.
    let first = operator
        .metric("kubevirt_metrics_operator_reconcile_errors_total{error=\"forbidden\"}")
        .await?;
    tokio::time::sleep(Duration::from_secs(17)).await;
    assert!(operator.is_running(), "the operator must not exit on a 403");
    assert_eq!(operator.http_get("/healthz").await?.0, 200);
    let later = operator
        .metric("kubevirt_metrics_operator_reconcile_errors_total{error=\"forbidden\"}")
        .await?;
    assert!(later > first, "retried: {first} -> {later}");
    assert!(
        later <= first + 4.0,
        "backoff, not a hot loop: {first} -> {later}"
    );
    let forbidden_events: Vec<_> = policy_events(client, &ns, "metrics")
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Forbidden"))
        .collect();
    assert_eq!(forbidden_events.len(), 1, "{:?}", summary(&events));
    assert!(
        forbidden_events[0].series.is_none(),
        "published once, not on every retry: {:?}",
        forbidden_events[0].series
    );

    // The rule comes back: the next retry heals, without a restart.
    rbac::install(client, &full).await?;
    eventually("entries after the rule is restored", WAIT, || async {
        let kv = get_kubevirt(client, &ns, "kubevirt").await?;
        Ok((kv.patches().len() == 1).then_some(()))
    })
    .await?;
    eventually("Ready reason no longer Forbidden", WAIT, || async {
        let p = get_policy(client, &ns, "metrics").await?.expect("policy");
        Ok((ready_reason(&p).as_deref() == Some("RolloutInProgress")).then_some(()))
    })
    .await?;
    operator.stop().await?;
    delete_namespace(client, &ns).await;
    Ok(())
}

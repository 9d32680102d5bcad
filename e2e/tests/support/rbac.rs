//! The operator's own identity in the e2e tests: the ServiceAccount, roles and bindings of
//! `config/rbac` (exactly the files kustomize lists there), installed into the test
//! namespace, and a client that authenticates as that ServiceAccount with a token from the
//! TokenRequest API. The operator under test never runs as cluster-admin.
//!
//! Namespace adjustment is what `kubectl apply -k` with a `namespace:` does: namespaced
//! objects and ServiceAccount subjects move to the test namespace. Cluster-scoped objects get
//! the namespace appended to their name so several tests can share one API server.

use std::path::Path;

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use super::documents;

/// The ServiceAccount `config/rbac` defines.
pub const SERVICE_ACCOUNT: &str = "kubevirt-metrics-operator";
/// The ClusterRole `config/rbac/role.yaml` defines (before the per-namespace suffix).
pub const CLUSTER_ROLE: &str = "kubevirt-metrics-operator";
const MANAGER: &str = "kmo-e2e-rbac";

/// Every object of `config/rbac`, in the order its kustomization lists the files.
pub fn config_rbac() -> anyhow::Result<Vec<Value>> {
    let kustomization = documents("config/rbac/kustomization.yaml")?.remove(0);
    let files = kustomization["resources"]
        .as_array()
        .context("config/rbac/kustomization.yaml has no resources")?;
    let mut out = Vec::new();
    for file in files {
        let file = file.as_str().context("resource is not a path")?;
        out.extend(documents(&format!("config/rbac/{file}"))?);
    }
    Ok(out)
}

/// `config/rbac` moved into namespace `ns` (see the module docs).
pub fn for_namespace(objects: Vec<Value>, ns: &str) -> anyhow::Result<Vec<Value>> {
    objects
        .into_iter()
        .map(|mut object| {
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "ServiceAccount" | "Role" | "RoleBinding" => {
                    object["metadata"]["namespace"] = json!(ns);
                }
                "ClusterRole" | "ClusterRoleBinding" => {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    object["metadata"]["name"] = json!(format!("{name}-{ns}"));
                }
                other => bail!("config/rbac holds a {other}; teach e2e/tests/support/rbac.rs"),
            }
            // `get_mut`, not `[]`: indexing a missing key mutably would insert a null.
            if let Some(role_ref) = object.get_mut("roleRef")
                && role_ref["kind"] == "ClusterRole"
            {
                let name = role_ref["name"].as_str().unwrap_or_default();
                role_ref["name"] = json!(format!("{name}-{ns}"));
            }
            if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
                for subject in subjects
                    .iter_mut()
                    .filter(|s| s["kind"] == "ServiceAccount")
                {
                    subject["namespace"] = json!(ns);
                }
            }
            Ok(object)
        })
        .collect()
}

/// The rules of the ClusterRole among `objects`, for tests that take one away.
pub fn cluster_role_rules(objects: &mut [Value]) -> anyhow::Result<&mut Vec<Value>> {
    objects
        .iter_mut()
        .find(|o| o["kind"] == "ClusterRole")
        .and_then(|o| o["rules"].as_array_mut())
        .context("config/rbac has no ClusterRole with rules")
}

async fn apply<K>(api: Api<K>, object: &Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"]
        .as_str()
        .context("object without a name")?;
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| anyhow::anyhow!("applying {} {name}: {e}", object["kind"]))?;
    Ok(())
}

/// Applies `objects` (already namespace-adjusted) with the admin client.
pub async fn install(admin: &Client, objects: &[Value]) -> anyhow::Result<()> {
    for object in objects {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        match object["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                apply(Api::<ServiceAccount>::namespaced(admin.clone(), ns), object).await?
            }
            "Role" => apply(Api::<Role>::namespaced(admin.clone(), ns), object).await?,
            "RoleBinding" => {
                apply(Api::<RoleBinding>::namespaced(admin.clone(), ns), object).await?
            }
            "ClusterRole" => apply(Api::<ClusterRole>::all(admin.clone()), object).await?,
            "ClusterRoleBinding" => {
                apply(Api::<ClusterRoleBinding>::all(admin.clone()), object).await?
            }
            other => bail!("cannot install a {other}"),
        }
    }
    Ok(())
}

/// A client for the same server as `kubeconfig`, authenticated as ServiceAccount
/// `ns/SERVICE_ACCOUNT` with a bound token from the TokenRequest API (as a pod gets).
pub async fn service_account_client(
    admin: &Client,
    kubeconfig: &Path,
    ns: &str,
) -> anyhow::Result<Client> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .context("TokenRequest for the operator's ServiceAccount")?
        .status
        .context("TokenRequest without status")?
        .token;
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    // Only the token: no client certificate or exec plugin of the admin user survives.
    config.auth_info = serde_json::from_value(json!({ "token": token }))?;
    let client = Client::try_from(config)?;
    let user = whoami(&client).await?;
    let want = format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}");
    if user != want {
        bail!("the token authenticates as {user:?}, not {want:?}");
    }
    Ok(client)
}

/// The user name the server sees for `client` (SelfSubjectReview).
pub async fn whoami(client: &Client) -> anyhow::Result<String> {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
    }))?;
    let request = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("Content-Type", "application/json")
        .body(body)?;
    let review: Value = client.request(request).await?;
    review["status"]["userInfo"]["username"]
        .as_str()
        .map(str::to_owned)
        .context("SelfSubjectReview without a username")
}

/// `config/rbac` installed for namespace `ns`, and a client of its ServiceAccount.
pub async fn operator_client(
    admin: &Client,
    kubeconfig: &Path,
    ns: &str,
) -> anyhow::Result<Client> {
    install(admin, &for_namespace(config_rbac()?, ns)?).await?;
    service_account_client(admin, kubeconfig, ns).await
}

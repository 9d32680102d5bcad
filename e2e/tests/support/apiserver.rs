//! A Kubernetes API server for the operator e2e tests.
//!
//! Either the cluster `KUBECONFIG` names, or — envtest convention — `etcd` and
//! `kube-apiserver` from `KUBEBUILDER_ASSETS`, started here on 127.0.0.1 in a temp dir with
//! generated certificates (a CA, a serving certificate, a service-account key) and a static
//! admin token, and stopped (killed and reaped) when the [`ApiServer`] is dropped.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub const SKIP_MESSAGE: &str =
    "no Kubernetes API server (set KUBECONFIG or KUBEBUILDER_ASSETS with kube-apiserver and etcd)";

/// A reachable API server and a client with cluster-admin rights on it.
pub struct ApiServer {
    pub client: Client,
    /// Path of a kubeconfig for this server (for debugging with kubectl).
    pub kubeconfig: PathBuf,
    /// `true` when the harness started etcd and kube-apiserver itself.
    pub local: bool,
    processes: Vec<(String, Child)>,
    _dir: Option<tempfile::TempDir>,
}

/// Where the tests find a server, decided from the environment alone.
pub enum Source {
    Kubeconfig(PathBuf),
    Assets(PathBuf),
    None,
}

pub fn source() -> Source {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Source::Kubeconfig(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|p| !p.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.join("kube-apiserver").is_file() && dir.join("etcd").is_file() {
            return Source::Assets(dir);
        }
    }
    Source::None
}

/// The server for test `test_name`, or `None` after printing a loud SKIPPED line.
pub async fn start(test_name: &str) -> anyhow::Result<Option<ApiServer>> {
    let server = match source() {
        Source::Kubeconfig(path) => from_kubeconfig(&path).await?,
        Source::Assets(dir) => start_local(&dir).await?,
        Source::None => {
            // Straight to the stderr handle: libtest captures eprintln!, and a skip must be
            // seen in a normal `cargo test` run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n=================================================================\n\
                 SKIPPED: {SKIP_MESSAGE}\n\
                 SKIPPED test: {test_name}\n\
                 ================================================================="
            );
            return Ok(None);
        }
    };
    announce(test_name, &server).await;
    Ok(Some(server))
}

/// Says in the test log which API server a test runs against: straight to the stderr handle,
/// since libtest swallows the `eprintln!` output of passing tests and CI's log must show that
/// the e2e ran on a real server.
async fn announce(test_name: &str, server: &ApiServer) {
    use std::io::Write;
    let version = server
        .client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|err| format!("unknown ({err})"));
    let origin = if server.local {
        "started from KUBEBUILDER_ASSETS"
    } else {
        "from KUBECONFIG"
    };
    let _ = writeln!(
        std::io::stderr(),
        "e2e: {test_name} runs against kube-apiserver {version} ({origin}, kubeconfig {})",
        server.kubeconfig.display()
    );
}

async fn from_kubeconfig(path: &Path) -> anyhow::Result<ApiServer> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading KUBECONFIG {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .context("KUBECONFIG is set but its API server does not answer")?;
    Ok(ApiServer {
        client,
        kubeconfig: path.to_path_buf(),
        local: false,
        processes: Vec::new(),
        _dir: None,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Certs {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    /// The signing key (PKCS#8, accepted by `--service-account-signing-key-file`).
    service_account_key: PathBuf,
    /// Its public half: `--service-account-key-file` rejects a PKCS#8 EC private key.
    service_account_public_key: PathBuf,
}

fn write_certs(dir: &Path) -> anyhow::Result<Certs> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    serving_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_cert = serving_params.signed_by(&serving_key, &issuer)?;

    let service_account_key = KeyPair::generate()?;

    let certs = Certs {
        ca: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("sa.key"),
        service_account_public_key: dir.join("sa.pub"),
    };
    fs::write(&certs.ca, ca_cert.pem())?;
    fs::write(&certs.serving_cert, serving_cert.pem())?;
    fs::write(&certs.serving_key, serving_key.serialize_pem())?;
    fs::write(
        &certs.service_account_key,
        service_account_key.serialize_pem(),
    )?;
    fs::write(
        &certs.service_account_public_key,
        service_account_key.public_key_pem(),
    )?;
    Ok(certs)
}

/// A kubeconfig for `https://127.0.0.1:<port>` trusting `ca`, authenticating with `token`.
pub fn write_kubeconfig(path: &Path, port: u16, ca: &Path, token: &str) -> anyhow::Result<()> {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: e2e-admin\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e-admin\n    namespace: default\ncurrent-context: e2e\n",
        ca = ca.display()
    );
    fs::write(path, kubeconfig)?;
    Ok(())
}

/// Generates the certificates and a kubeconfig in `dir` and builds a client from them,
/// without starting anything: proves the harness's own files are well formed.
pub async fn self_check(dir: &Path) -> anyhow::Result<Client> {
    let certs = write_certs(dir)?;
    let token = random_token()?;
    let path = dir.join("kubeconfig");
    write_kubeconfig(&path, 6443, &certs.ca, &token)?;
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    anyhow::ensure!(
        config.cluster_url == "https://127.0.0.1:6443/",
        "cluster url {}",
        config.cluster_url
    );
    anyhow::ensure!(
        config.root_cert.as_ref().is_some_and(|c| c.len() == 1),
        "CA not loaded"
    );
    for file in [
        &certs.serving_cert,
        &certs.serving_key,
        &certs.service_account_key,
        &certs.service_account_public_key,
    ] {
        let text = fs::read_to_string(file)?;
        anyhow::ensure!(
            text.starts_with("-----BEGIN "),
            "{} is not PEM",
            file.display()
        );
    }
    Ok(Client::try_from(config)?)
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Starts etcd and kube-apiserver on free ports. A port found free can be taken by a
/// parallel test before the server binds it; that start is retried on new ports.
async fn start_local(assets: &Path) -> anyhow::Result<ApiServer> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match start_local_once(assets).await {
            Err(error)
                if attempt < ATTEMPTS && error.to_string().contains("address already in use") =>
            {
                eprintln!(
                    "e2e: a port was taken before the server bound it; starting again on new ports"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn start_local_once(assets: &Path) -> anyhow::Result<ApiServer> {
    let dir = tempfile::Builder::new()
        .prefix("kmo-e2e-apiserver-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    let certs = write_certs(&root)?;
    let token = random_token()?;
    fs::write(
        root.join("tokens.csv"),
        format!("{token},e2e-admin,e2e-admin-uid,\"system:masters\"\n"),
    )?;

    let etcd_client = free_port()?;
    let etcd_peer = free_port()?;
    let secure_port = free_port()?;

    let mut server = ApiServer {
        // Placeholder replaced below once the server answers; a client to a closed port.
        client: Client::try_from(Config::new("https://127.0.0.1:1".parse()?))?,
        kubeconfig: root.join("kubeconfig"),
        local: true,
        processes: Vec::new(),
        _dir: None,
    };

    let etcd_log = root.join("etcd.log");
    let etcd_args = vec![
        "--name=e2e".to_string(),
        format!("--data-dir={}", root.join("etcd").display()),
        format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
        format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
    ];
    server.processes.push((
        "etcd".into(),
        spawn("etcd", &assets.join("etcd"), &etcd_args, &etcd_log)?,
    ));

    let apiserver_log = root.join("kube-apiserver.log");
    let apiserver_args = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={secure_port}"),
        format!("--cert-dir={}", root.join("certs").display()),
        format!("--tls-cert-file={}", certs.serving_cert.display()),
        format!("--tls-private-key-file={}", certs.serving_key.display()),
        format!("--token-auth-file={}", root.join("tokens.csv").display()),
        "--authorization-mode=RBAC".to_string(),
        format!("--service-account-issuer=https://127.0.0.1:{secure_port}"),
        format!(
            "--service-account-key-file={}",
            certs.service_account_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            certs.service_account_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24".to_string(),
        "--allow-privileged=true".to_string(),
        "--disable-admission-plugins=ServiceAccount".to_string(),
    ];
    server.processes.push((
        "kube-apiserver".into(),
        spawn(
            "kube-apiserver",
            &assets.join("kube-apiserver"),
            &apiserver_args,
            &apiserver_log,
        )?,
    ));

    write_kubeconfig(&server.kubeconfig, secure_port, &certs.ca, &token)?;
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&server.kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    server.client = Client::try_from(config)?;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (name, child) in &mut server.processes {
            if let Some(status) = child.try_wait()? {
                let log = if name == "etcd" {
                    &etcd_log
                } else {
                    &apiserver_log
                };
                bail!(
                    "{name} exited with {status} during startup:\n{}",
                    log_tail(log)
                );
            }
        }
        if server_ready(&server.client).await {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver not ready after 90s:\n{}",
                log_tail(&apiserver_log)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "e2e: kube-apiserver on https://127.0.0.1:{secure_port} (kubeconfig {})",
        server.kubeconfig.display()
    );
    server._dir = Some(dir);
    Ok(server)
}

async fn server_ready(client: &Client) -> bool {
    let request = match http::Request::get("/readyz").body(Vec::new()) {
        Ok(r) => r,
        Err(_) => return false,
    };
    matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // kube-apiserver first, so it does not log etcd errors while stopping.
        while let Some((name, mut child)) = self.processes.pop() {
            #[allow(clippy::cast_possible_wrap)]
            let pid = child.id() as i32;
            // SIGTERM, a short grace, then SIGKILL.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            eprintln!("e2e: stopped {name}");
        }
    }
}

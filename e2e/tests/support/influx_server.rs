//! A real InfluxDB 1.x (`influxd` from Debian's `influxdb` package, 1.6) for the export
//! tests: started on 127.0.0.1 with its data, meta and WAL directories in a temp dir and free
//! ports, ready once `/ping` answers, killed and reaped on drop. InfluxQL answers are read as
//! CSV, whose numbers are Go's shortest round-trip text, so values compare exactly.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub struct Influx {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    client: reqwest::Client,
    child: Child,
    dir: tempfile::TempDir,
}

/// One point as InfluxDB returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    /// In the precision of the query's `epoch`.
    pub time: i64,
    pub value: f64,
}

fn influxd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("INFLUXD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("influxd"))
        .find(|path| path.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_config(dir: &Path, http_port: u16, rpc_port: u16) -> anyhow::Result<PathBuf> {
    let path = dir.join("influxdb.conf");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "reporting-disabled = true\n\
             bind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  log-enabled = false\n\
             [logging]\n  level = \"warn\"\n"
        ),
    )?;
    Ok(path)
}

impl Influx {
    /// A fresh InfluxDB, or `None` after a loud SKIPPED line when `influxd` is not installed
    /// (`scripts/real-peers.sh install` installs it; CI never skips).
    pub async fn start(test_name: &str) -> anyhow::Result<Option<Influx>> {
        let Some(influxd) = influxd() else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n=================================================================\n\
                 SKIPPED: no influxd (apt-get install influxdb, or scripts/real-peers.sh up)\n\
                 SKIPPED test: {test_name}\n\
                 ================================================================="
            );
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let http_port = free_port()?;
        let config = write_config(dir.path(), http_port, free_port()?)?;
        let log = std::fs::File::create(dir.path().join("influxd.log"))?;
        let child = Command::new(&influxd)
            .args(["run", "-config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", influxd.display()))?;
        let mut influx = Influx {
            url: format!("http://127.0.0.1:{http_port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            child,
            dir,
        };
        influx.wait_ready().await?;
        let version = influx.version().await.unwrap_or_default();
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "e2e: {test_name} runs against InfluxDB {version} ({} at {})",
            influxd.display(),
            influx.url
        );
        Ok(Some(influx))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("influxd exited ({status}):\n{}", self.log());
            }
            if let Ok(response) = self.client.get(format!("{}/ping", self.url)).send().await
                && response.status() == reqwest::StatusCode::NO_CONTENT
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("influxd did not answer /ping in 60 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn version(&self) -> anyhow::Result<String> {
        let response = self.client.get(format!("{}/ping", self.url)).send().await?;
        Ok(response
            .headers()
            .get("x-influxdb-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// Runs InfluxQL statements that change things (`CREATE DATABASE ...`).
    pub async fn execute(&self, statement: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/query", self.url))
            .form(&[("q", statement)])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(
            status.is_success() && !body.contains("\"error\""),
            "{statement}: {status} {body}"
        );
        Ok(())
    }

    /// Writes raw line protocol (to set up a conflict), returning status and body.
    pub async fn write_raw(&self, db: &str, lines: &str) -> anyhow::Result<(u16, String)> {
        let response = self
            .client
            .post(format!("{}/write", self.url))
            .query(&[("db", db)])
            .body(lines.to_owned())
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Every point of `db` (`SELECT * FROM /.*/`), times in `epoch` (`ns`, `u`, `ms`, `s`).
    pub async fn points(&self, db: &str, epoch: &str) -> anyhow::Result<Vec<StoredPoint>> {
        let response = self
            .client
            .get(format!("{}/query", self.url))
            .header("Accept", "application/csv")
            .query(&[("db", db), ("epoch", epoch), ("q", "SELECT * FROM /.*/")])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "query: {status} {body}");
        parse_points(&body)
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// InfluxDB 1.x CSV: a header `name,tags,time,<columns>` whenever the columns change, then
/// one row per point. The only field is `value`; every other column is a tag (empty: absent).
fn parse_points(csv: &str) -> anyhow::Result<Vec<StoredPoint>> {
    let mut columns: Vec<String> = Vec::new();
    let mut points = Vec::new();
    for row in parse_csv(csv)? {
        if row.len() >= 3 && row[0] == "name" && row[1] == "tags" && row[2] == "time" {
            columns = row;
            continue;
        }
        anyhow::ensure!(
            !columns.is_empty() && row.len() == columns.len(),
            "CSV row {row:?} does not match the header {columns:?}"
        );
        let mut point = StoredPoint {
            measurement: row[0].clone(),
            tags: BTreeMap::new(),
            time: row[2].parse().with_context(|| format!("time in {row:?}"))?,
            value: f64::NAN,
        };
        for (column, cell) in columns.iter().zip(&row).skip(3) {
            if column == "value" {
                point.value = cell.parse().with_context(|| format!("value in {row:?}"))?;
            } else if !cell.is_empty() {
                point.tags.insert(column.clone(), cell.clone());
            }
        }
        points.push(point);
    }
    Ok(points)
}

/// RFC 4180 as Go's encoding/csv writes it: quoted cells with doubled quotes, which may span
/// lines.
fn parse_csv(text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    anyhow::ensure!(!quoted, "unterminated quote in CSV");
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    Ok(rows)
}

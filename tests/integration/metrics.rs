//! The metrics chain end to end: the program pushes to Debian's real Pushgateway,
//! Debian's real Prometheus scrapes it (honor_labels, 1 s) with the project's alert
//! rules loaded, and every dashboard query and alert expression is checked against
//! what the runs produced.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::fault_proxy::{FaultProxy, Faults};
use crate::support::*;
use axum::http::Method;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn program(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL}"))
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

struct Monitoring {
    pushgateway: Child,
    prometheus: Child,
    push_port: u16,
    prom_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        let _ = self.pushgateway.kill();
        let _ = self.prometheus.kill();
        let _ = self.pushgateway.wait();
        let _ = self.prometheus.wait();
    }
}

impl Monitoring {
    async fn start() -> Monitoring {
        let dir = tempfile::tempdir().expect("dir");
        let push_port = pachyderm_backup::demo::free_port();
        let pushgateway = Command::new(program("prometheus-pushgateway"))
            .arg(format!("--web.listen-address=127.0.0.1:{push_port}"))
            .arg("--persistence.file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Pushgateway");
        let prom_port = pachyderm_backup::demo::free_port();
        let rules = root().join("alerts/pachyderm-backup.rules.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{push_port}']\n",
            rules.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let prometheus = Command::new(program("prometheus"))
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Prometheus");
        let m = Monitoring { pushgateway, prometheus, push_port, prom_port, _dir: dir };
        for port in [push_port, prom_port] {
            wait_until("ready", Duration::from_secs(60), || http_get(port, "/-/ready").0 == 200).await;
        }
        m
    }

    /// The query's result vector, or Err with Prometheus' error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (code, body) = http_get(self.prom_port, &format!("/api/v1/query?query={q}"));
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{expr}: {}", v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until the query returns data (a bound on the wait, not a timed assertion).
    async fn eventually(&self, what: &str, expr: &str) -> Vec<Value> {
        for _ in 0..300 {
            match self.query(expr) {
                Ok(r) if !r.is_empty() => return r,
                Ok(_) => {}
                Err(e) => panic!("{what}: query failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: `{expr}` returned no data within 30s");
    }

    fn value(result: &[Value]) -> f64 {
        result[0]["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a numeric sample")
    }
}

fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(root().join("dashboards/pachyderm-backup.json")).expect("dashboard")).expect("json");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("?").to_string(), expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Grafana's variables as a 1h panel would set them. `$__interval` is 1h, the least the
/// bar panels use, and longer than Prometheus has run: their `offset $__interval`
/// looks before the first push.
fn substitute(expr: &str) -> String {
    expr.replace("${cluster}", "e2e")
        .replace("$cluster", "e2e")
        .replace("$__range_s", "3600")
        .replace("$__range", "1h")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1h")
}

fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("alerts/pachyderm-backup.rules.yaml")).expect("rules");
    let rules: Value = serde_saphyr::from_str(&text).expect("yaml");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r["expr"].as_str()?.to_string())))
        .collect()
}

/// The metric selectors of an expression (`name{…}` or `name`).
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pachyderm_backup_") {
        let tail = &rest[at..];
        let name_len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let mut sel = tail[..name_len].to_string();
        if tail[name_len..].starts_with('{') {
            let close = tail[name_len..].find('}').expect("closing brace");
            sel.push_str(&tail[name_len..name_len + close + 1]);
        }
        out.push(sel);
        rest = &tail[name_len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_dashboard_and_alerts_tell_the_truth() {
    let mon = Monitoring::start().await;
    let mut bed = Bed::new(BedOptions { chunks: 10, ..Default::default() }).await;
    let secrets = ["pg-e2e-password-41", "push-e2e-password-42", "moto-e2e-secret-43"];
    bed.set("PUSHGATEWAY_URL", &format!("http://127.0.0.1:{}", mon.push_port));
    bed.set("PUSHGATEWAY_USERNAME", "backup");
    bed.set("PUSHGATEWAY_PASSWORD", secrets[1]);
    bed.set("PGPASSWORD", secrets[0]);
    bed.set("AWS_SECRET_ACCESS_KEY", secrets[2]);
    bed.set("SCHEDULE", "0 2 * * *");
    bed.set("CLUSTER_NAME", "e2e");

    // `check` reaches the Pushgateway with the credentials (10.5).
    let check = bed.run(&["check"]).await;
    check.expect_code(0);
    assert!(check.stdout.contains("ok    Pushgateway"), "{}", check.stdout);

    // A success, then a verify.
    let ok = bed.run(&["run"]).await;
    ok.expect_code(0);
    // A second run expects what the first one's pause took (15.2), and says so.
    bed.run(&["run"]).await.expect_code(0);
    let first_downtime = bed.manifests().await[0].downtime_seconds;
    let estimate = Monitoring::value(&mon.eventually("the downtime estimate", r#"pachyderm_backup_downtime_estimate_seconds{pachyderm_cluster="e2e"}"#).await);
    assert!((estimate - first_downtime).abs() < 0.01, "estimate {estimate}, the first run's downtime {first_downtime}");
    let mut env = bed.env();
    env.extend([("RESTORE_PGHOST".to_string(), "127.0.0.1".to_string())]);
    run_to_end(binary(&["verify", "--deep"], &env)).await.expect_code(0);
    let success = Monitoring::value(&mon.eventually("last success", r#"pachyderm_backup_last_success_timestamp_seconds{pachyderm_cluster="e2e"}"#).await);
    mon.eventually("a whole verify's time", r#"pachyderm_backup_last_verify_success_timestamp_seconds{pachyderm_cluster="e2e"}"#).await;

    // One group, keyed by job and pachyderm_cluster (never `cluster`, the external label
    // of multi-cluster setups), carrying the version that pushed; no failure reported.
    let (_, groups) = http_get(mon.push_port, "/api/v1/metrics");
    let groups: Value = serde_json::from_str(&groups).expect("groups json");
    let keys: Vec<&Value> = groups["data"].as_array().expect("groups").iter().map(|g| &g["labels"]).collect();
    assert_eq!(keys, [&serde_json::json!({"job": "pachyderm-backup", "pachyderm_cluster": "e2e"})], "{groups}");
    let build = mon.eventually("build info", r#"pachyderm_backup_build_info{job="pachyderm-backup",pachyderm_cluster="e2e"} == 1"#).await;
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(build[0]["metric"].get("cluster").is_none(), "{build:?}");
    assert_eq!(mon.query(r#"{job="pachyderm-backup", cluster!=""}"#).expect("query"), Vec::<Value>::new(), "a series with the label cluster");
    assert_eq!(
        mon.query(r#"pachyderm_backup_last_failure_timestamp_seconds{pachyderm_cluster="e2e"}"#).expect("query"),
        Vec::<Value>::new(),
        "a success pushed a failure metric"
    );

    // A failure: the database is unreachable.
    bed.set("PGPORT", &pachyderm_backup::demo::free_port().to_string());
    let failed = bed.run(&["run"]).await;
    failed.expect_code(1);
    mon.eventually("the failure", r#"pachyderm_backup_last_run_success{pachyderm_cluster="e2e"} == 0"#).await;
    let failure = mon.eventually("the last failure", r#"pachyderm_backup_last_failure_timestamp_seconds{pachyderm_cluster="e2e"}"#).await;
    assert_eq!(failure.len(), 1, "{failure:?}");
    assert_eq!((failure[0]["metric"]["phase"].as_str(), failure[0]["metric"]["reason"].as_str()), (Some("preflight"), Some("database")));
    let ran = Monitoring::value(&mon.query(r#"pachyderm_backup_last_run_timestamp_seconds{pachyderm_cluster="e2e"}"#).expect("query"));
    assert_eq!(Monitoring::value(&failure), ran, "the failure's time is the failed run's");
    let after = Monitoring::value(&mon.query(r#"pachyderm_backup_last_success_timestamp_seconds{pachyderm_cluster="e2e"}"#).expect("query"));
    assert_eq!(after, success, "the failed run erased the last success");
    mon.eventually("the failed-run alert", r#"ALERTS{alertname="PachydermBackupFailed",pachyderm_cluster="e2e",phase="preflight"}"#).await;

    // 13.2: a run that fails before it has a Lease or a report (the backup bucket does
    // not exist) still pushes its failure; before, last_run_success kept the last 1.
    bed.set("PGPORT", &bed.pg.port.to_string());
    bed.run(&["run"]).await.expect_code(0);
    mon.eventually("a success again", r#"pachyderm_backup_last_run_success{pachyderm_cluster="e2e"} == 1"#).await;
    let target = bed.env().into_iter().find(|(k, _)| k == "TARGET_URL").map(|(_, v)| v).expect("TARGET_URL");
    bed.set("TARGET_URL", "s3://no-such-bucket/nightly");
    bed.run(&["run"]).await.expect_code(1);
    mon.eventually("the early failure", r#"pachyderm_backup_last_run_success{pachyderm_cluster="e2e"} == 0"#).await;
    bed.set("TARGET_URL", &target);

    // No secret in any log line of these runs.
    for out in [&ok, &failed] {
        for s in secrets {
            assert!(!out.stderr.contains(s) && !out.stdout.contains(s), "{s} appeared in the logs");
        }
    }

    // Every dashboard query returns data.
    for (title, expr) in dashboard_queries() {
        mon.eventually(&format!("dashboard panel {title:?}"), &substitute(&expr)).await;
    }
    // Every alert expression is valid, and every metric it reads exists.
    for (alert, expr) in alert_rules() {
        mon.query(&expr).unwrap_or_else(|e| panic!("alert {alert}: {e}"));
        for sel in selectors(&expr) {
            let sel = if sel.contains('{') { sel.replacen('{', "{pachyderm_cluster=\"e2e\",", 1) } else { format!("{sel}{{pachyderm_cluster=\"e2e\"}}") };
            mon.eventually(&format!("alert {alert} reads {sel}"), &sel).await;
        }
    }

    // A run killed while paused leaves the paused gauge at 1, and the paused alert's
    // expression (its age threshold set to zero) selects it.
    bed.set("PGPORT", &bed.pg.port.to_string());
    let (running, lock) = bed.start_held(&["run"]).await;
    running.signal("KILL");
    let _ = running.finish().await;
    lock.release().await;
    mon.eventually("paused gauge", r#"pachyderm_backup_cluster_paused{pachyderm_cluster="e2e"} == 1"#).await;
    let (_, paused_expr) = alert_rules().into_iter().find(|(a, _)| a == "PachydermClusterPausedTooLong").expect("the paused alert");
    let zeroed = paused_expr
        .split('>')
        .enumerate()
        .map(|(i, part)| if i == 0 { part.to_string() } else { part.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).to_string() })
        .collect::<Vec<_>>()
        .join("> 0 ");
    let selected = mon.eventually("the paused alert's expression", &zeroed).await;
    assert_eq!(selected[0]["metric"]["pachyderm_cluster"], "e2e");
    bed.kube.hold_lease("pachyderm-backup", "dead", Duration::from_secs(100), 15);
    bed.run(&["resume"]).await.expect_code(0);
    bed.assert_resumed();

    // Prometheus evaluated every rule without error.
    let (_, rules) = http_get(mon.prom_port, "/api/v1/rules");
    let rules: Value = serde_json::from_str(&rules).expect("rules json");
    for g in rules["data"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert_ne!(r["health"], "err", "rule {} failed: {}", r["name"], r["lastError"]);
        }
    }
}

/// What the Pushgateway holds of `metric` in the group of `cluster`: each series' labels
/// and value, as it exposes them.
fn pushed(port: u16, metric: &str, cluster: &str) -> Vec<(String, f64)> {
    let (prefix, group) = (format!("{metric}{{"), format!("pachyderm_cluster=\"{cluster}\""));
    http_get(port, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&group))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn values(series: &[(String, f64)]) -> Vec<f64> {
    series.iter().map(|(_, v)| *v).collect()
}

/// A run succeeds and pushes `last_run_success 1`: what a failure after it must replace.
async fn succeeds(bed: &Bed, port: u16) {
    bed.run(&["run"]).await.expect_code(0);
    assert_eq!(values(&pushed(port, "pachyderm_backup_last_run_success", "e2e")), [1.0]);
}

/// The run with `extra` fails with `code` saying `says`, and pushes `last_run_success 0`
/// with `(phase, reason)` as its last failure, at the failed run's time.
async fn pushes_its_failure(bed: &Bed, port: u16, extra: &[(&str, &str)], code: i32, (phase, reason): (&str, &str), says: &str) {
    let out = run_with(bed, extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), &["run"]).await;
    out.expect_code(code);
    assert!(out.stderr.contains(says), "{phase}/{reason}: the error should say {says:?}:\n{}", out.stderr);
    let success = pushed(port, "pachyderm_backup_last_run_success", "e2e");
    assert_eq!(values(&success), [0.0], "{phase}/{reason}: last_run_success\n{}", out.stderr);
    let failure = pushed(port, "pachyderm_backup_last_failure_timestamp_seconds", "e2e");
    let labels = format!("phase=\"{phase}\",reason=\"{reason}\"");
    assert!(failure.len() == 1 && failure[0].0.contains(&labels), "{phase}/{reason}: last failure {failure:?}\n{}", out.stderr);
    let ran = pushed(port, "pachyderm_backup_last_run_timestamp_seconds", "e2e");
    assert_eq!(values(&ran), values(&failure), "{phase}/{reason}: the failure's time is the failed run's");
}

/// 13.2: every run that fails before it holds the Lease pushes its failure with the
/// phase it failed in. Before, an unreachable or misnamed target bucket, a cluster
/// that could not be reached or a failed listing of the backup ids pushed nothing, so
/// `last_run_success` kept the previous night's 1 and the failed-backup alert never
/// fired. Each failure follows a success, so its 0 is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_before_the_lease_pushes_its_phase() {
    let mon = Monitoring::start().await;
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    bed.set("PUSHGATEWAY_URL", &format!("http://127.0.0.1:{}", mon.push_port));
    bed.set("CLUSTER_NAME", "e2e");
    let port = mon.push_port;

    // The target bucket: unreachable (its endpoint never answers), then misnamed.
    let hanging = format!("http://127.0.0.1:{}", hanging_port().0);
    succeeds(&bed, port).await;
    let unreachable = [("TARGET_AWS_ENDPOINT", hanging.as_str()), ("PREFLIGHT_TIMEOUT", "2s")];
    pushes_its_failure(&bed, port, &unreachable, 1, ("preflight", "timeout"), "opening the target bucket did not finish within PREFLIGHT_TIMEOUT").await;
    succeeds(&bed, port).await;
    pushes_its_failure(&bed, port, &[("TARGET_URL", "s3://no-such-bucket/nightly")], 1, ("preflight", "target_bucket"), "NoSuchBucket").await;

    // Kubernetes: no configuration to connect with; an API server that refuses.
    succeeds(&bed, port).await;
    pushes_its_failure(&bed, port, &[("KUBECONFIG", "/nonexistent/kubeconfig")], 1, ("lock", "kubernetes"), "cannot reach the Kubernetes API").await;
    let refused = bed.dir.path().join("refused-kubeconfig");
    let server = format!("http://127.0.0.1:{}", pachyderm_backup::demo::free_port());
    std::fs::write(
        &refused,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: {server}\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\n    namespace: pachyderm\ncurrent-context: gone\nusers:\n- name: gone\n  user:\n    token: gone\n"
        ),
    )
    .expect("write the kubeconfig");
    let refused = refused.display().to_string();
    succeeds(&bed, port).await;
    pushes_its_failure(&bed, port, &[("KUBECONFIG", refused.as_str())], 1, ("preflight", "kubernetes"), "Connection refused").await;

    // The backup bucket's second listing, the one that claims a backup id (the first
    // lists the backups), cut by a reset: under the bucket lock, released again.
    let proxy = FaultProxy::start(bed.moto.as_ref().expect("an S3 bed").port).await;
    let through = proxy.url();
    succeeds(&bed, port).await;
    proxy.set(Faults { reset_list_pages: vec![2], only_path_prefix: Some("/backups".into()), ..Default::default() });
    pushes_its_failure(&bed, port, &[("TARGET_AWS_ENDPOINT", through.as_str())], 1, ("preflight", "target_bucket"), "listing backups/ to claim a backup id")
        .await;

    // The Lease cannot be read.
    succeeds(&bed, port).await;
    bed.kube.fail(Method::GET, "/leases/", 403, 1);
    pushes_its_failure(&bed, port, &[], 1, ("lock", "kubernetes"), "reading Lease").await;

    // A prefix holding another cluster's backups is refused (exit 2), under this run's
    // own label.
    let out = run_with(&bed, vec![("CLUSTER_NAME".into(), "other".into())], &["run"]).await;
    out.expect_code(2);
    let failure = pushed(port, "pachyderm_backup_last_failure_timestamp_seconds", "other");
    assert!(failure.len() == 1 && failure[0].0.contains("phase=\"preflight\",reason=\"config\""), "{failure:?}\n{}", out.stderr);
    assert_eq!(values(&pushed(port, "pachyderm_backup_last_run_success", "other")), [0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushgateway_down_or_hanging_never_fails_the_backup() {
    let mut bed = Bed::new(BedOptions { chunks: 3, ..Default::default() }).await;
    // Credentials in the URL never reach the logs.
    bed.set("PUSHGATEWAY_URL", &format!("http://backup:hunter2pw@127.0.0.1:{}", pachyderm_backup::demo::free_port()));
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.stderr.contains("could not push metrics"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2pw") && !out.stdout.contains("hunter2pw"), "the password was logged:\n{}", out.stderr);
    // `check` says so (10.5), still without the password; a run does not fail on it.
    let out = bed.run(&["check"]).await;
    out.expect_code(1);
    assert!(out.stdout.contains("FAIL  Pushgateway") && !out.stdout.contains("hunter2pw"), "{}", out.stdout);

    // A gateway that accepts connections and never answers.
    let (port, _) = hanging_port();
    bed.set("PUSHGATEWAY_URL", &format!("http://127.0.0.1:{port}"));
    bed.set("PUSHGATEWAY_TIMEOUT", "1s");
    let out = bed.run(&["run"]).await;
    out.expect_code(0);
    assert!(out.stderr.contains("pushing metrics timed out"), "{}", out.stderr);
    assert_eq!(bed.manifests().await.len(), 2);
}

/// The verify alert hears every failure: a verify that stops on a damaged manifest or
/// listing pushes `last_verify_success 0` like one that finds a bad blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verify_failure_reaches_the_pushgateway() {
    let mon = Monitoring::start().await;
    let mut bed = Bed::new(BedOptions { buckets: Buckets::Local, chunks: 5, ..Default::default() }).await;
    bed.set("PAUSE_MODE", "none");
    bed.set("CLUSTER_NAME", "e2e");
    bed.set("PUSHGATEWAY_URL", &format!("http://127.0.0.1:{}", mon.push_port));
    bed.run(&["run"]).await.expect_code(0);
    let m = bed.manifests().await.pop().expect("backup");
    let pushed = || http_get(mon.push_port, "/metrics").1.lines().find(|l| l.starts_with("pachyderm_backup_last_verify_success{")).map(str::to_string);
    bed.run(&["verify"]).await.expect_code(0);
    assert!(pushed().is_some_and(|l| l.ends_with(" 1")), "{:?}", pushed());

    use object_store::ObjectStoreExt;
    let listing = pachyderm_backup::catalog::BackupFile::Listing.path(&m.backup_id);
    let bytes = read(&bed.target, listing.as_ref()).await;
    bed.target.put(&listing, bytes.slice(..bytes.len() / 2).into()).await.expect("truncate the listing");
    bed.run(&["verify"]).await.expect_code(1);
    assert!(pushed().is_some_and(|l| l.ends_with(" 0")), "a truncated listing: {:?}", pushed());

    bed.target.put(&listing, bytes.into()).await.expect("repair");
    bed.run(&["verify"]).await.expect_code(0);
    let manifest = pachyderm_backup::catalog::BackupFile::Manifest.path(&m.backup_id);
    bed.target.put(&manifest, bytes::Bytes::from_static(b"{ truncated").into()).await.expect("damage the manifest");
    bed.run(&["verify", "--backup", &m.backup_id]).await.expect_code(1);
    assert!(pushed().is_some_and(|l| l.ends_with(" 0") && l.contains("pachyderm_cluster=\"e2e\"")), "a damaged manifest: {:?}", pushed());
}

//! Metrics: a `prometheus-client` registry per push, sent to the Pushgateway over
//! hyper with POST, which replaces only the metric families sent. A failed run sends
//! no last-success family, so the last success survives it; a successful one sends no
//! last-failure family, so the last failure survives it. A Pushgateway that is down
//! or slow costs a warning, never the backup.
//!
//! The grouping key is `job="pachyderm-backup", pachyderm_cluster="<CLUSTER_NAME>"`:
//! not `cluster`, the external label of most multi-cluster Prometheus setups
//! (kube-prometheus, Thanos, Mimir), which a push scraped with `honor_labels` would
//! overwrite or collide with.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::config::PushSettings;
use crate::cycle::Phase;

pub const JOB: &str = "pachyderm-backup";
/// The label (and grouping-key entry) holding CLUSTER_NAME.
pub const CLUSTER_LABEL: &str = "pachyderm_cluster";
const PREFIX: &str = "pachyderm_backup";

type Labels = Vec<(String, String)>;
type G = Family<Labels, Gauge<f64, AtomicU64>>;

/// The metrics of one push. Only the families set here are sent (and replaced).
#[derive(Debug, Default, Clone)]
pub struct Sample {
    families: BTreeMap<&'static str, (&'static str, Vec<(Labels, f64)>)>,
}

impl Sample {
    fn set(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.families.entry(name).or_insert((help, Vec::new())).1.push((labels, value));
    }

    /// Sent at the pause: a run that dies while paused leaves this evidence behind.
    pub fn paused(since: f64) -> Self {
        let mut s = Sample::default();
        s.set("cluster_paused", "1 while a backup run holds the cluster paused", &[], 1.0);
        s.set("paused_since_timestamp_seconds", "When the current pause began (0: not paused)", &[], since);
        s
    }

    #[cfg(test)]
    fn names(&self) -> Vec<String> {
        self.families.keys().map(|k| format!("{PREFIX}_{k}")).collect()
    }

    /// Text exposition of what a push sends: the sample's families and
    /// `build_info{version}` 1, every value a gauge.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        let mut families = self.families.clone();
        families.insert(
            "build_info",
            ("1, with the version of pachyderm-backup that pushed", vec![(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())], 1.0)]),
        );
        for (name, (help, values)) in &families {
            let family = G::default();
            for (labels, value) in values {
                family.get_or_create(labels).set(*value);
            }
            registry.register(*name, *help, family);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Everything a finished run reports.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub finished_at: f64,
    /// The run did everything it should (backup committed, retention applied).
    pub success: bool,
    /// A backup was committed (its success time and sizes are reported even when the
    /// retention after it failed).
    pub committed: bool,
    /// The phase that failed and a short reason (the error's kind).
    pub failure: Option<(String, String)>,
    pub duration: f64,
    pub downtime: Option<f64>,
    /// The downtime expected before the pause (from the last paused runs).
    pub downtime_estimate: Option<f64>,
    pub phases: BTreeMap<Phase, f64>,
    pub databases: Vec<(String, u64)>,
    pub objects_bytes: Option<u64>,
    pub transferred: Option<u64>,
    pub copied: Option<u64>,
    pub reused: Option<u64>,
    pub retained: Option<usize>,
    pub pruned: Option<usize>,
    pub freed: Option<u64>,
    /// Backup folders retention found damaged (kept, reported, pool not swept).
    pub damaged: Option<usize>,
    pub next_due: Option<f64>,
    /// Whether the cluster is known to be resumed (or was never paused).
    pub resumed: bool,
}

impl RunReport {
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        s.set("last_run_timestamp_seconds", "When the last run ended", &[], self.finished_at);
        s.set("last_run_success", "1 if the last run made a complete backup, 0 if it failed", &[], if self.success { 1.0 } else { 0.0 });
        // Only a failed run sends it (replacing the previous failure's series): after a
        // success it still tells when and where the last failure was.
        if !self.success {
            let (phase, reason) = self.failure.as_ref().map(|(p, r)| (p.as_str(), r.as_str())).unwrap_or(("unknown", "unknown"));
            s.set(
                "last_failure_timestamp_seconds",
                "When the last failed run ended, with the phase that failed and why (sent by failed runs only)",
                &[("phase", phase), ("reason", reason)],
                self.finished_at,
            );
        }
        if self.committed {
            s.set("last_success_timestamp_seconds", "When the last complete backup was committed", &[], self.finished_at);
        }
        s.set("duration_seconds", "Duration of the last run, start to end", &[], self.duration);
        // Every run: 0 for one that never paused, so each run has its own value.
        s.set("downtime_seconds", "Time the last run kept the cluster paused: pause + capture + resume (0: not paused)", &[], self.downtime.unwrap_or(0.0));
        if let Some(estimate) = self.downtime_estimate {
            s.set("downtime_estimate_seconds", "Downtime the last run expected before pausing (the last paused runs, scaled by the bucket's growth); above MAX_DOWNTIME the run refuses to pause", &[], estimate);
        }
        for (phase, secs) in &self.phases {
            s.set("phase_duration_seconds", "Duration of each phase of the last run", &[("phase", phase.name())], *secs);
        }
        if self.committed {
            for (db, size) in &self.databases {
                s.set("size_bytes", "Size of the last backup's parts", &[("component", "database"), ("database", db)], *size as f64);
            }
            if let Some(b) = self.objects_bytes {
                s.set("size_bytes", "Size of the last backup's parts", &[("component", "objects")], b as f64);
            }
            if let Some(t) = self.transferred {
                s.set("transferred_bytes", "Bytes written to the backup bucket by the last run (dumps and copied objects)", &[], t as f64);
            }
            if let (Some(c), Some(r)) = (self.copied, self.reused) {
                s.set("objects", "Objects of the last backup, copied by it or reused from the pool", &[("state", "copied")], c as f64);
                s.set("objects", "Objects of the last backup, copied by it or reused from the pool", &[("state", "reused")], r as f64);
            }
        }
        if let Some(r) = self.retained {
            s.set("retained_backups", "Complete backups kept after retention", &[], r as f64);
        }
        if let Some(p) = self.pruned {
            s.set("pruned_backups", "Backups deleted by the last retention", &[], p as f64);
        }
        if let Some(f) = self.freed {
            s.set("freed_bytes", "Bytes of unreferenced blobs deleted by the last retention", &[], f as f64);
        }
        if let Some(d) = self.damaged {
            s.set(
                "damaged_backups",
                "Backup folders whose manifest or listing cannot be trusted (skipped, never deleted; the pool is not swept while any exists)",
                &[],
                d as f64,
            );
        }
        if let Some(n) = self.next_due {
            s.set("next_due_timestamp_seconds", "When the next backup is due, from SCHEDULE", &[], n);
        }
        if self.resumed {
            s.set("cluster_paused", "1 while a backup run holds the cluster paused", &[], 0.0);
            s.set("paused_since_timestamp_seconds", "When the current pause began (0: not paused)", &[], 0.0);
        }
        s
    }
}

/// The result of a `verify`.
pub fn verify_sample(at: f64, ok: bool) -> Sample {
    let mut s = Sample::default();
    s.set("last_verify_timestamp_seconds", "When the last verify or restore drill ended", &[], at);
    s.set("last_verify_success", "1 if the last verify or drill found the backup whole", &[], if ok { 1.0 } else { 0.0 });
    if ok {
        s.set("last_verify_success_timestamp_seconds", "When a verify or restore drill last found the backup whole", &[], at);
    }
    s
}

pub struct Pusher {
    settings: PushSettings,
    cluster: String,
}

impl Pusher {
    pub fn new(settings: PushSettings, cluster: String) -> Self {
        Pusher { settings, cluster }
    }

    /// Pushes with POST; logs a warning on any failure, never returns one.
    pub async fn push(&self, sample: &Sample) {
        let Some(base) = &self.settings.url else { return };
        let shown = redacted(base);
        match tokio::time::timeout(self.settings.timeout, self.send(base, sample)).await {
            Ok(Ok(())) => info!(metrics = sample.families.len(), "metrics pushed"),
            Ok(Err(e)) => warn!(error = %e.replace(base.as_str(), &shown), pushgateway = %shown, "could not push metrics; the backup itself is not affected"),
            Err(_) => warn!(timeout = ?self.settings.timeout, pushgateway = %shown, "pushing metrics timed out; the backup itself is not affected"),
        }
    }

    /// For `check`: whether the Pushgateway answers, with these credentials (its
    /// `/-/ready`); `None` without PUSHGATEWAY_URL.
    pub async fn probe(&self) -> Option<Result<String, String>> {
        let base = self.settings.url.as_ref()?;
        let shown = redacted(base);
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["-", "ready"]);
        }
        Some(match tokio::time::timeout(self.settings.timeout, self.call(hyper::Method::GET, url, None)).await {
            Ok(Ok(())) => Ok(format!("{shown} is ready")),
            Ok(Err(e)) => Err(format!("{shown}: {}", e.replace(base.as_str(), &shown))),
            Err(_) => Err(format!("{shown} did not answer within {}", humantime::format_duration(self.settings.timeout))),
        })
    }

    async fn send(&self, base: &url::Url, sample: &Sample) -> Result<(), String> {
        self.call(hyper::Method::POST, group_url(base, &self.cluster)?, Some(Bytes::from(sample.encode()))).await
    }

    async fn call(&self, method: hyper::Method, mut url: url::Url, body: Option<Bytes>) -> Result<(), String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_native_roots().map_err(|e| e.to_string())?.https_or_http().enable_http1().build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        // Credentials in the URL's userinfo go in the header, never in the request line.
        let (url_user, url_password) = (url.username().to_string(), url.password().map(str::to_string));
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut request = hyper::Request::builder().method(method).uri(url.as_str()).header("content-type", "text/plain; version=0.0.4");
        let user = self.settings.username.clone().or_else(|| (!url_user.is_empty()).then_some(url_user));
        if let Some(user) = &user {
            let password = self.settings.password.as_ref().map(|p| p.expose().to_string()).or(url_password).unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header("authorization", format!("Basic {token}"));
        }
        let request = request.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string()).unwrap_or_default();
            return Err(format!("{status}: {}", body.trim()));
        }
        Ok(())
    }
}

/// The URL of this cluster's group: `<base>/metrics/job/pachyderm-backup/pachyderm_cluster/<cluster>`.
fn group_url(base: &url::Url, cluster: &str) -> Result<url::Url, String> {
    let mut url = base.clone();
    url.path_segments_mut().map_err(|()| "PUSHGATEWAY_URL cannot be a base".to_string())?.pop_if_empty().extend([
        "metrics",
        "job",
        JOB,
        CLUSTER_LABEL,
        cluster,
    ]);
    Ok(url)
}

/// A URL as it may be logged: userinfo replaced by `***`.
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_never_reaches_a_log_line() {
        let url = url::Url::parse("https://backup:s3cr3t@push.example:9091/base").expect("url");
        let shown = redacted(&url);
        assert!(!shown.contains("s3cr3t") && !shown.contains("backup:"), "{shown}");
        assert_eq!(redacted(&url::Url::parse("http://push:9091").expect("url")), "http://push:9091/");
    }

    #[test]
    fn the_grouping_key_is_job_and_pachyderm_cluster() {
        for base in ["http://push:9091", "http://push:9091/", "https://push.example/base/"] {
            let url = group_url(&url::Url::parse(base).expect("url"), "prod-eu").expect("group url");
            assert!(url.path().ends_with("/metrics/job/pachyderm-backup/pachyderm_cluster/prod-eu"), "{url}");
            assert!(!url.path().contains("//"), "{url}");
        }
    }

    #[test]
    fn a_failed_run_never_sends_last_success() {
        let failed =
            RunReport { finished_at: 1700.0, success: false, failure: Some(("capture".into(), "database".into())), resumed: true, ..Default::default() };
        let names = failed.sample().names();
        assert!(!names.contains(&"pachyderm_backup_last_success_timestamp_seconds".to_string()));
        assert!(!names.contains(&"pachyderm_backup_size_bytes".to_string()), "sizes of the last success survive too");
        let text = failed.sample().encode();
        assert!(text.contains("pachyderm_backup_last_failure_timestamp_seconds{phase=\"capture\",reason=\"database\"} 1700.0"), "{text}");
        assert!(text.contains("pachyderm_backup_cluster_paused{} 0.0"), "{text}");
        assert!(text.contains("pachyderm_backup_downtime_seconds{} 0.0"), "a run that never paused reports 0:\n{text}");
        let others = text.replace("pachyderm_backup_build_info{", "");
        assert!(!others.contains("_info{"), "no _info metric but build_info:\n{text}");
    }

    #[test]
    fn a_success_sends_everything_but_the_last_failure() {
        let ok = RunReport {
            success: true,
            committed: true,
            databases: vec![("pachyderm".into(), 10)],
            objects_bytes: Some(5),
            copied: Some(1),
            reused: Some(2),
            transferred: Some(3),
            downtime: Some(4.5),
            resumed: true,
            ..Default::default()
        };
        let text = ok.sample().encode();
        for needle in [
            "pachyderm_backup_last_success_timestamp_seconds",
            "pachyderm_backup_size_bytes{component=\"database\",database=\"pachyderm\"} 10.0",
            "pachyderm_backup_objects{state=\"reused\"} 2.0",
            "pachyderm_backup_downtime_seconds{} 4.5",
            "# TYPE pachyderm_backup_duration_seconds gauge",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("last_failure"), "a success must leave the last failure as it was:\n{text}");
    }

    #[test]
    fn a_committed_run_whose_retention_failed_sends_both() {
        let names =
            RunReport { success: false, committed: true, failure: Some(("retention".into(), "retention".into())), ..Default::default() }.sample().names();
        assert!(names.contains(&"pachyderm_backup_last_success_timestamp_seconds".to_string()), "{names:?}");
        assert!(names.contains(&"pachyderm_backup_last_failure_timestamp_seconds".to_string()), "{names:?}");
    }

    #[test]
    fn every_push_carries_build_info() {
        let line = format!("pachyderm_backup_build_info{{version=\"{}\"}} 1.0", env!("CARGO_PKG_VERSION"));
        for sample in [Sample::paused(1.0), RunReport::default().sample(), verify_sample(1.0, true), verify_sample(1.0, false)] {
            let text = sample.encode();
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn only_a_whole_verify_sends_its_success_time() {
        let ok = verify_sample(42.0, true).encode();
        assert!(ok.contains("pachyderm_backup_last_verify_success_timestamp_seconds{} 42.0"), "{ok}");
        assert!(ok.contains("pachyderm_backup_last_verify_success{} 1.0"), "{ok}");
        let failed = verify_sample(43.0, false).encode();
        assert!(!failed.contains("last_verify_success_timestamp"), "{failed}");
        assert!(failed.contains("pachyderm_backup_last_verify_timestamp_seconds{} 43.0"), "{failed}");
    }
}

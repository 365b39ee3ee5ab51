//! Metrics: a `prometheus-client` registry per push, sent to the Pushgateway over
//! hyper with POST, which replaces only the metric families sent. A failed run sends
//! no last-success family, so the last success survives it. A Pushgateway that is down
//! or slow costs a warning, never the backup.

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

pub const JOB: &str = "pachyderm-backup";
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

    /// Text exposition of the sample, every value a gauge.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        for (name, (help, values)) in &self.families {
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
    pub phases: BTreeMap<String, f64>,
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
        match &self.failure {
            Some((phase, reason)) => {
                s.set("failure_info", "1 on a failed run, with the phase that failed and why", &[("phase", phase), ("reason", reason)], 1.0)
            }
            None => s.set("failure_info", "1 on a failed run, with the phase that failed and why", &[("phase", "none"), ("reason", "none")], 0.0),
        }
        if self.committed {
            s.set("last_success_timestamp_seconds", "When the last complete backup was committed", &[], self.finished_at);
        }
        s.set("duration_seconds", "Duration of the last run, start to end", &[], self.duration);
        if let Some(d) = self.downtime {
            s.set("downtime_seconds", "Time the cluster was paused: pause + capture + resume", &[], d);
        }
        for (phase, secs) in &self.phases {
            s.set("phase_duration_seconds", "Duration of each phase of the last run", &[("phase", phase)], *secs);
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

    async fn send(&self, base: &url::Url, sample: &Sample) -> Result<(), String> {
        let mut url = base.clone();
        url.path_segments_mut().map_err(|()| "PUSHGATEWAY_URL cannot be a base".to_string())?.pop_if_empty().extend([
            "metrics",
            "job",
            JOB,
            "cluster",
            &self.cluster,
        ]);
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_native_roots().map_err(|e| e.to_string())?.https_or_http().enable_http1().build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        // Credentials in the URL's userinfo go in the header, never in the request line.
        let (url_user, url_password) = (url.username().to_string(), url.password().map(str::to_string));
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut request = hyper::Request::post(url.as_str()).header("content-type", "text/plain; version=0.0.4");
        let user = self.settings.username.clone().or_else(|| (!url_user.is_empty()).then_some(url_user));
        if let Some(user) = &user {
            let password = self.settings.password.as_ref().map(|p| p.expose().to_string()).or(url_password).unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header("authorization", format!("Basic {token}"));
        }
        let request = request.body(Full::new(Bytes::from(sample.encode()))).map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string()).unwrap_or_default();
            return Err(format!("{status}: {}", body.trim()));
        }
        Ok(())
    }
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
    fn a_failed_run_never_sends_last_success() {
        let failed = RunReport { success: false, failure: Some(("capture".into(), "database".into())), resumed: true, ..Default::default() };
        let names = failed.sample().names();
        assert!(!names.contains(&"pachyderm_backup_last_success_timestamp_seconds".to_string()));
        assert!(!names.contains(&"pachyderm_backup_size_bytes".to_string()), "sizes of the last success survive too");
        let text = failed.sample().encode();
        assert!(text.contains("pachyderm_backup_failure_info{phase=\"capture\",reason=\"database\"} 1.0"), "{text}");
        assert!(text.contains("pachyderm_backup_cluster_paused{} 0.0"), "{text}");
    }

    #[test]
    fn a_success_sends_everything() {
        let ok = RunReport {
            success: true,
            committed: true,
            databases: vec![("pachyderm".into(), 10)],
            objects_bytes: Some(5),
            copied: Some(1),
            reused: Some(2),
            transferred: Some(3),
            resumed: true,
            ..Default::default()
        };
        let text = ok.sample().encode();
        for needle in [
            "pachyderm_backup_last_success_timestamp_seconds",
            "pachyderm_backup_size_bytes{component=\"database\",database=\"pachyderm\"} 10.0",
            "pachyderm_backup_objects{state=\"reused\"} 2.0",
            "# TYPE pachyderm_backup_duration_seconds gauge",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}

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
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::catalog::Manifest;
use crate::config::PushSettings;
use crate::cycle::{Phase, Timings};
use crate::retention;

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

/// When a run ended, how long it took, and when the next one is due: what every report
/// of it carries, whatever its outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    pub at: DateTime<Utc>,
    pub duration: std::time::Duration,
    pub next_due: Option<DateTime<Utc>>,
}

/// Everything a finished run reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunReport {
    pub finished_at: f64,
    /// The run did everything it should (backup committed, retention applied).
    pub success: bool,
    /// A backup was committed (its success time and sizes are reported even when the
    /// retention after it failed).
    pub committed: bool,
    /// The phase that failed and a short reason (the error's kind).
    pub failure: Option<(Phase, &'static str)>,
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
    /// Each shard of a sharded pre-copy: objects, bytes copied, seconds.
    pub shards: Vec<(u32, u64, u64, f64)>,
}

impl RunReport {
    /// A committed backup: a success, unless the retention after it failed (`Err`, its
    /// message); the backup's success time and sizes are sent either way.
    pub fn success(ended: Ended, timings: &Timings, manifest: &Manifest, written_bytes: u64, retention: Result<&retention::Outcome, &str>) -> RunReport {
        let counts = &manifest.objects.counts;
        let kept = retention.ok();
        RunReport {
            success: retention.is_ok(),
            committed: true,
            failure: retention.err().map(|_| (Phase::Retention, "retention")),
            databases: manifest.databases.iter().map(|d| (d.name.clone(), d.size)).collect(),
            objects_bytes: Some(counts.bytes),
            transferred: Some(written_bytes),
            copied: Some(counts.copied),
            reused: Some(counts.reused),
            retained: kept.map(|r| r.retained),
            pruned: kept.map(|r| r.pruned),
            freed: kept.map(|r| r.bytes_freed),
            damaged: kept.map(|r| r.damaged.len()),
            ..RunReport::ended(ended, timings, true)
        }
    }

    /// A run that failed in `phase` for `reason`, nothing committed. `resumed` is false
    /// only when the resume itself failed: the cluster may still be paused, so the
    /// gauges the pause set are left as they are.
    pub fn failure(ended: Ended, timings: &Timings, phase: Phase, reason: &'static str, resumed: bool) -> RunReport {
        RunReport { success: false, failure: Some((phase, reason)), ..RunReport::ended(ended, timings, resumed) }
    }

    fn ended(ended: Ended, timings: &Timings, resumed: bool) -> RunReport {
        RunReport {
            finished_at: ended.at.timestamp() as f64,
            duration: ended.duration.as_secs_f64(),
            downtime: timings.downtime,
            downtime_estimate: timings.estimate,
            phases: timings.phases.clone(),
            shards: timings.shards.iter().map(|s| (s.task.index, s.objects.count, s.objects.copied_bytes, s.seconds)).collect(),
            next_due: ended.next_due.map(|t| t.timestamp() as f64),
            resumed,
            ..Default::default()
        }
    }

    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        s.set("last_run_timestamp_seconds", "When the last run ended", &[], self.finished_at);
        s.set("last_run_success", "1 if the last run made a complete backup, 0 if it failed", &[], if self.success { 1.0 } else { 0.0 });
        // Only a failed run sends it (replacing the previous failure's series): after a
        // success it still tells when and where the last failure was.
        if !self.success {
            let (phase, reason) = self.failure.map(|(p, r)| (p.name(), r)).unwrap_or(("unknown", "unknown"));
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
        for (index, objects, copied_bytes, seconds) in &self.shards {
            let shard = index.to_string();
            let shard = [("shard", shard.as_str())];
            s.set("shard_objects", "Objects listed by each shard of the last run's sharded pre-copy (COPY_SHARDS)", &shard, *objects as f64);
            s.set("shard_copied_bytes", "Bytes each shard of the last run's sharded pre-copy copied into the pool", &shard, *copied_bytes as f64);
            s.set("shard_duration_seconds", "How long each shard of the last run's sharded pre-copy took, in its pod", &shard, *seconds);
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
        let failed = RunReport { finished_at: 1700.0, success: false, failure: Some((Phase::Capture, "database")), resumed: true, ..Default::default() };
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
        let names = RunReport { success: false, committed: true, failure: Some((Phase::Retention, "retention")), ..Default::default() }.sample().names();
        assert!(names.contains(&"pachyderm_backup_last_success_timestamp_seconds".to_string()), "{names:?}");
        assert!(names.contains(&"pachyderm_backup_last_failure_timestamp_seconds".to_string()), "{names:?}");
    }

    use chrono::TimeZone;

    use crate::catalog::{DatabaseEntry, ObjectCounts, ObjectsEntry};
    use crate::config::PauseMode;

    fn ended() -> Ended {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 30).single().expect("a time");
        Ended { at, duration: std::time::Duration::from_millis(30_500), next_due: Some(at + chrono::Duration::days(1)) }
    }

    fn timings() -> Timings {
        Timings { phases: BTreeMap::from([(Phase::Lock, 0.5), (Phase::Preflight, 1.25)]), estimate: Some(3.0), downtime: None, shards: Vec::new() }
    }

    fn manifest() -> Manifest {
        let at = ended().at;
        Manifest {
            format_version: crate::catalog::FORMAT_VERSION,
            backup_id: "20260101-020000".into(),
            cluster: "prod".into(),
            namespace: None,
            tool_version: "0".into(),
            pachyderm_version: None,
            pause_mode: PauseMode::None,
            paused_by_us: false,
            started_at: at,
            paused_at: None,
            resumed_at: None,
            finished_at: at,
            downtime_seconds: 0.0,
            phases: BTreeMap::new(),
            source_url: None,
            databases: vec![DatabaseEntry {
                name: "pachyderm".into(),
                file: "pachyderm.dump".into(),
                size: 10,
                sha256: String::new(),
                server_version: "17".into(),
                pg_dump_version: "17".into(),
                compression: None,
                encryption: None,
            }],
            objects: ObjectsEntry {
                counts: ObjectCounts { count: 7, bytes: 500, copied: 3, copied_bytes: 200, reused: 4, reused_bytes: 300, pending: 0 },
                ..ObjectsEntry::skipped()
            },
            cluster_objects: Vec::new(),
            original_replicas: BTreeMap::new(),
        }
    }

    #[test]
    fn a_failure_carries_its_phase_its_times_and_the_phases_it_reached() {
        let report = RunReport::failure(ended(), &timings(), Phase::Preflight, "target_bucket", true);
        let expected = RunReport {
            finished_at: 1767232830.0,
            success: false,
            committed: false,
            failure: Some((Phase::Preflight, "target_bucket")),
            duration: 30.5,
            downtime: None,
            downtime_estimate: Some(3.0),
            phases: timings().phases,
            next_due: Some(1767232830.0 + 86400.0),
            resumed: true,
            ..Default::default()
        };
        assert_eq!(report, expected);
        let text = report.sample().encode();
        for needle in [
            "pachyderm_backup_last_run_success{} 0.0",
            "pachyderm_backup_last_failure_timestamp_seconds{phase=\"preflight\",reason=\"target_bucket\"} 1767232830.0",
            "pachyderm_backup_phase_duration_seconds{phase=\"lock\"} 0.5",
            "pachyderm_backup_phase_duration_seconds{phase=\"preflight\"} 1.25",
            "pachyderm_backup_downtime_seconds{} 0.0",
            "pachyderm_backup_downtime_estimate_seconds{} 3.0",
            "pachyderm_backup_next_due_timestamp_seconds{} 1767319230.0",
            "pachyderm_backup_cluster_paused{} 0.0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }

        // After a pause: its downtime. A failed resume leaves the pause's gauges alone.
        let paused = Timings { downtime: Some(2.5), ..timings() };
        let text = RunReport::failure(ended(), &paused, Phase::Capture, "signal", true).sample().encode();
        assert!(text.contains("pachyderm_backup_downtime_seconds{} 2.5"), "{text}");
        let text = RunReport::failure(ended(), &timings(), Phase::Resume, "resume", false).sample().encode();
        assert!(!text.contains("cluster_paused") && !text.contains("paused_since"), "{text}");
    }

    #[test]
    fn a_committed_backup_reports_its_sizes_and_its_retention() {
        let kept = retention::Outcome { retained: 7, pruned: 2, bytes_freed: 4096, damaged: vec![("old".into(), "bad listing".into())], ..Default::default() };
        let shard = crate::shards::ShardSummary {
            task: crate::shards::ShardTask { backup_id: "b".into(), index: 3, count: 4, reference: None, full: false },
            objects: crate::catalog::ObjectCounts { count: 5, bytes: 500, copied: 2, copied_bytes: 200, reused: 3, reused_bytes: 300, pending: 0 },
            listing_sha256: String::new(),
            seconds: 1.5,
        };
        let paused = Timings { downtime: Some(2.5), shards: vec![shard], ..timings() };
        let ok = RunReport::success(ended(), &paused, &manifest(), 1234, Ok(&kept));
        let text = ok.sample().encode();
        for line in [
            "pachyderm_backup_shard_objects{shard=\"3\"} 5.0",
            "pachyderm_backup_shard_copied_bytes{shard=\"3\"} 200.0",
            "pachyderm_backup_shard_duration_seconds{shard=\"3\"} 1.5",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let expected = RunReport {
            finished_at: 1767232830.0,
            success: true,
            committed: true,
            failure: None,
            duration: 30.5,
            downtime: Some(2.5),
            downtime_estimate: Some(3.0),
            phases: timings().phases,
            databases: vec![("pachyderm".into(), 10)],
            objects_bytes: Some(500),
            transferred: Some(1234),
            copied: Some(3),
            reused: Some(4),
            retained: Some(7),
            pruned: Some(2),
            freed: Some(4096),
            damaged: Some(1),
            next_due: Some(1767319230.0),
            resumed: true,
            shards: vec![(3, 5, 200, 1.5)],
        };
        assert_eq!(ok, expected);

        // The backup is committed whatever the retention after it did.
        let failed = RunReport::success(ended(), &paused, &manifest(), 1234, Err("the bucket went away"));
        assert_eq!(
            failed,
            RunReport { success: false, failure: Some((Phase::Retention, "retention")), retained: None, pruned: None, freed: None, damaged: None, ..expected }
        );
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

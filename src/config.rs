//! The environment, typed and validated.
//!
//! Every variable is first read as a raw string with `envy` (so a bad value can never
//! abort the read half-way), then validated as a whole: every problem is collected and
//! reported at once, by variable name, with what was expected. Nothing outside this
//! module reads the process environment, except the prefixed object-store families
//! (`AWS_*`, `SOURCE_AWS_*`…) which are gathered here too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::retention::Policy;

/// A value that must never reach a log line or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One documented variable: the reference table of the README and the chart's drift
/// test are both checked against this list.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

const fn var(name: &'static str, default: &'static str, description: &'static str) -> Variable {
    Variable { name, default, description }
}

/// Every variable the program reads. Names ending in `*` are families.
pub const VARIABLES: &[Variable] = &[
    var("PACHYDERM_NAMESPACE", "the pod's own namespace", "Namespace where Pachyderm runs."),
    var("PACHD_DEPLOYMENT", "pachd", "The pachd Deployment: stopped first, resumed first."),
    var("PACHW_DEPLOYMENT", "pachw", "The pachw Deployment (Pachyderm 2.5+); a missing one is fine."),
    var("WORKER_SELECTOR", "suite=pachyderm,component=worker", "Label selector of the pipeline worker ReplicationControllers."),
    var("PACHD_CONFIGMAP", "pachd-config", "ConfigMap holding MODE, used by PAUSE_MODE=pachyderm."),
    var("PAUSE_MODE", "scale", "`scale` (replicas to zero), `pachyderm` (Pachyderm's own paused mode) or `none` (no cluster)."),
    var("PAUSE_TIMEOUT", "5m", "How long to wait for the paused pods to terminate."),
    var("RESUME_TIMEOUT", "10m", "How long to wait for pachd to be ready again."),
    var("MAX_DOWNTIME", "2h", "Longest pause: past it the capture is aborted and the cluster resumed."),
    var(
        "HELM_RELEASE",
        "unset: not captured",
        "Pachyderm's Helm release: its user-supplied values are saved with each backup (needs `list` on Secrets; sensitive).",
    ),
    var("LEASE_NAME", "pachyderm-backup", "The coordination.k8s.io Lease that keeps runs exclusive."),
    var("LEASE_DURATION", "60s", "How long the Lease stays valid without renewal (renewed every third of it)."),
    var("PGHOST", "required", "PostgreSQL host of Pachyderm (the server itself, not pg-bouncer)."),
    var("PGPORT", "5432", "PostgreSQL port."),
    var("PGUSER", "libpq's default", "PostgreSQL user (needs to read every table)."),
    var("PGPASSWORD", "unset", "PostgreSQL password."),
    var("PGSSLMODE", "prefer", "libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full."),
    var("PGSSLROOTCERT", "unset", "CA certificate file for verify-ca / verify-full."),
    var("DATABASES", "pachyderm,dex", "Databases to dump, comma separated."),
    var("PG_BIN_DIR", "PATH", "Directory holding pg_dump and pg_restore (they must be as new as the server)."),
    var("SOURCE_URL", "required", "Pachyderm's bucket: s3://bucket[/prefix], gs://…, az://container[/prefix], file:///dir."),
    var("TARGET_URL", "required", "The backup bucket and prefix, same schemes."),
    var("AWS_*", "unset", "object_store's S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP…) for every bucket."),
    var("GOOGLE_*", "unset", "object_store's GCS keys (GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_SERVICE_ACCOUNT…) for every bucket."),
    var("AZURE_*", "unset", "object_store's Azure keys (AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY…) for every bucket."),
    var("SOURCE_AWS_*", "unset", "S3 keys for the source bucket only (override AWS_*)."),
    var("SOURCE_GOOGLE_*", "unset", "GCS keys for the source bucket only."),
    var("SOURCE_AZURE_*", "unset", "Azure keys for the source bucket only."),
    var("TARGET_AWS_*", "unset", "S3 keys for the backup bucket only."),
    var("TARGET_GOOGLE_*", "unset", "GCS keys for the backup bucket only."),
    var("TARGET_AZURE_*", "unset", "Azure keys for the backup bucket only."),
    var(
        "WORKLOAD_IDENTITY",
        "false",
        "Buckets without keys use the platform's identity (IRSA, GKE or Azure workload identity). Also SOURCE_/TARGET_/RESTORE_ prefixed.",
    ),
    var("SOURCE_WORKLOAD_IDENTITY", "WORKLOAD_IDENTITY", "Workload identity for the source bucket only."),
    var("TARGET_WORKLOAD_IDENTITY", "WORKLOAD_IDENTITY", "Workload identity for the backup bucket only."),
    var("OBJECTS", "copy", "`copy` the bucket, or `skip` it (metadata only, like `pachctl extract --no-objects`)."),
    var("PRECOPY", "true", "Copy the objects once before the pause too, so only the delta is copied while paused."),
    var("COPY_CONCURRENCY", "32", "Parallel object transfers (1–1024)."),
    var("KEEP_LAST", "0", "Keep the N newest backups."),
    var("KEEP_HOURLY", "0", "Keep the newest backup of each of the last N hours that have one."),
    var("KEEP_DAILY", "7", "Keep the newest backup of each of the last N days that have one."),
    var("KEEP_WEEKLY", "4", "Keep the newest backup of each of the last N ISO weeks that have one."),
    var("KEEP_MONTHLY", "6", "Keep the newest backup of each of the last N months that have one."),
    var("KEEP_YEARLY", "0", "Keep the newest backup of each of the last N years that have one."),
    var("KEEP_WITHIN", "unset", "Keep every backup younger than this duration (e.g. 3d)."),
    var("MIN_KEEP", "3", "Never keep fewer complete backups than this."),
    var("GC_GRACE", "24h", "Blobs and unfinished backup folders younger than this are never swept."),
    var("PUSHGATEWAY_URL", "unset: no push", "Prometheus Pushgateway, e.g. http://pushgateway.monitoring:9091."),
    var("PUSHGATEWAY_USERNAME", "unset", "Basic-auth user for the Pushgateway."),
    var("PUSHGATEWAY_PASSWORD", "unset", "Basic-auth password for the Pushgateway."),
    var("PUSHGATEWAY_TIMEOUT", "10s", "Timeout of each push; a failed push is a warning, never a failed backup."),
    var("CLUSTER_NAME", "the namespace", "The `cluster` label of every metric, recorded in the manifest."),
    var("SCHEDULE", "unset", "The CronJob's cron expression (5 fields, UTC), to publish when the next backup is due."),
    var("PROGRESS_INTERVAL", "30s", "Interval of the progress line during long phases."),
    var("LOG_FORMAT", "json", "`json` or `text`."),
    var("RUST_LOG", "info", "Log filter (tracing's EnvFilter syntax)."),
    var("RESTORE_PGHOST", "required for restore/drill", "PostgreSQL host to restore (or drill) into."),
    var("RESTORE_PGPORT", "5432", "Its port."),
    var("RESTORE_PGUSER", "libpq's default", "Its user (must be able to create databases)."),
    var("RESTORE_PGPASSWORD", "unset", "Its password."),
    var("RESTORE_PGSSLMODE", "prefer", "Its sslmode."),
    var("RESTORE_PGSSLROOTCERT", "unset", "Its CA certificate file."),
    var("RESTORE_URL", "required for restore", "The bucket (and prefix) to restore the objects into."),
    var("RESTORE_AWS_*", "unset", "S3 keys for the restore bucket only."),
    var("RESTORE_GOOGLE_*", "unset", "GCS keys for the restore bucket only."),
    var("RESTORE_AZURE_*", "unset", "Azure keys for the restore bucket only."),
    var("RESTORE_WORKLOAD_IDENTITY", "WORKLOAD_IDENTITY", "Workload identity for the restore bucket only."),
];

/// The raw environment, every value still a string. Field names are the variables'
/// names in lower case (envy's convention); the prefixed families are read apart.
#[derive(Debug, Default, Deserialize)]
pub struct RawEnv {
    pub pachyderm_namespace: Option<String>,
    pub pachd_deployment: Option<String>,
    pub pachw_deployment: Option<String>,
    pub worker_selector: Option<String>,
    pub pachd_configmap: Option<String>,
    pub helm_release: Option<String>,
    pub pause_mode: Option<String>,
    pub pause_timeout: Option<String>,
    pub resume_timeout: Option<String>,
    pub max_downtime: Option<String>,
    pub lease_name: Option<String>,
    pub lease_duration: Option<String>,
    pub pghost: Option<String>,
    pub pgport: Option<String>,
    pub pguser: Option<String>,
    pub pgpassword: Option<Secret>,
    pub pgsslmode: Option<String>,
    pub pgsslrootcert: Option<String>,
    pub databases: Option<String>,
    pub pg_bin_dir: Option<String>,
    pub source_url: Option<String>,
    pub target_url: Option<String>,
    pub workload_identity: Option<String>,
    pub source_workload_identity: Option<String>,
    pub target_workload_identity: Option<String>,
    pub objects: Option<String>,
    pub precopy: Option<String>,
    pub copy_concurrency: Option<String>,
    pub keep_last: Option<String>,
    pub keep_hourly: Option<String>,
    pub keep_daily: Option<String>,
    pub keep_weekly: Option<String>,
    pub keep_monthly: Option<String>,
    pub keep_yearly: Option<String>,
    pub keep_within: Option<String>,
    pub min_keep: Option<String>,
    pub gc_grace: Option<String>,
    pub pushgateway_url: Option<String>,
    pub pushgateway_username: Option<String>,
    pub pushgateway_password: Option<Secret>,
    pub pushgateway_timeout: Option<String>,
    pub cluster_name: Option<String>,
    pub schedule: Option<String>,
    pub progress_interval: Option<String>,
    pub log_format: Option<String>,
    pub rust_log: Option<String>,
    pub restore_pghost: Option<String>,
    pub restore_pgport: Option<String>,
    pub restore_pguser: Option<String>,
    pub restore_pgpassword: Option<Secret>,
    pub restore_pgsslmode: Option<String>,
    pub restore_pgsslrootcert: Option<String>,
    pub restore_url: Option<String>,
    pub restore_workload_identity: Option<String>,
    /// Object-store keys: `AWS_*`, `GOOGLE_*`, `AZURE_*` and their side-prefixed forms.
    #[serde(skip)]
    pub store_keys: BTreeMap<String, Secret>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

const STORE_FAMILIES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];
const SIDES: [&str; 3] = ["SOURCE_", "TARGET_", "RESTORE_"];

impl RawEnv {
    /// Reads the variables from an iterator of pairs (the process environment in
    /// production, a fixed list in tests).
    pub fn from_iter(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        // Kubernetes sets variables from optional Secret keys as empty strings: an empty
        // variable means unset, as it does for libpq.
        let vars: Vec<(String, String)> = vars.into_iter().filter(|(_, v)| !v.trim().is_empty()).collect();
        let mut raw: RawEnv =
            envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError(vec![Problem::new("environment", e.to_string(), "readable UTF-8 variables")]))?;
        for (name, value) in vars {
            let unprefixed = SIDES.iter().find_map(|s| name.strip_prefix(s)).unwrap_or(&name);
            if STORE_FAMILIES.iter().any(|f| unprefixed.starts_with(f)) {
                raw.store_keys.insert(name, Secret(value));
            }
        }
        Ok(raw)
    }

    pub fn from_process() -> Result<Self, ConfigError> {
        Self::from_iter(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }
}

/// One invalid variable: its name, what is wrong, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub problem: String,
    pub expected: String,
}

impl Problem {
    fn new(variable: impl Into<String>, problem: impl Into<String>, expected: impl Into<String>) -> Self {
        Problem { variable: variable.into(), problem: problem.into(), expected: expected.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (expected {})", self.variable, self.problem, self.expected)
    }
}

/// Every problem found in the environment, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
pub struct ConfigError(pub Vec<Problem>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseMode {
    Scale,
    Pachyderm,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectsMode {
    Copy,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Which Kubernetes objects to pause and how.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `None`: the client's default namespace (the pod's own, or the kubeconfig's).
    pub namespace: Option<String>,
    pub pachd: String,
    pub pachw: String,
    pub worker_selector: String,
    pub pachd_configmap: String,
    /// Pachyderm's Helm release, whose values are captured when set.
    pub helm_release: Option<String>,
    pub pause_mode: PauseMode,
    pub pause_timeout: Duration,
    pub resume_timeout: Duration,
    pub lease_name: String,
    pub lease_duration: Duration,
}

/// A PostgreSQL server, as libpq's variables describe it.
#[derive(Debug, Clone)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub sslmode: String,
    pub sslrootcert: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub server: PgServer,
    pub databases: Vec<String>,
    pub bin_dir: Option<PathBuf>,
}

/// A bucket: its URL and the object_store options for it (credentials included).
#[derive(Clone)]
pub struct StoreSettings {
    pub variable: &'static str,
    pub url: Url,
    pub options: BTreeMap<String, Secret>,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("variable", &self.variable)
            .field("url", &self.url.as_str())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct CopySettings {
    pub objects: ObjectsMode,
    pub precopy: bool,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct PushSettings {
    pub url: Option<Url>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

/// What every command shares: logs, metrics labels, progress.
#[derive(Debug, Clone)]
pub struct Common {
    pub cluster_name: Option<String>,
    pub push: PushSettings,
    pub schedule: Option<cron::Schedule>,
    pub progress_interval: Duration,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub common: Common,
    pub cluster: ClusterSettings,
    pub database: DatabaseSettings,
    pub source: StoreSettings,
    pub target: StoreSettings,
    pub copy: CopySettings,
    pub max_downtime: Duration,
    pub retention: Policy,
    pub gc_grace: Duration,
}

/// Everything `restore` and `verify --drill` need beside the backup bucket.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub common: Common,
    pub target: StoreSettings,
    pub server: Option<PgServer>,
    pub destination: Option<StoreSettings>,
    pub bin_dir: Option<PathBuf>,
    pub concurrency: usize,
}

/// Collects problems while parsing, so that all of them are reported at once.
struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn new() -> Self {
        Check { problems: Vec::new() }
    }

    fn fail(&mut self, variable: &str, problem: impl Into<String>, expected: impl Into<String>) {
        self.problems.push(Problem::new(variable, problem, expected));
    }

    fn text(&mut self, variable: &str, value: &Option<String>, default: &str) -> String {
        match value {
            Some(v) if v.trim().is_empty() => {
                self.fail(variable, "is empty", "a non-empty value, or the variable unset for the default");
                default.to_string()
            }
            Some(v) => v.trim().to_string(),
            None => default.to_string(),
        }
    }

    fn name(&mut self, variable: &str, value: &Option<String>, default: &str) -> String {
        let v = self.text(variable, value, default);
        if !is_dns_label(&v) && !is_dns_subdomain(&v) {
            self.fail(variable, format!("{v:?} is not a Kubernetes object name"), "lower-case letters, digits, '-' and '.', at most 253 characters");
        }
        v
    }

    fn duration(&mut self, variable: &str, value: &Option<String>, default: &str) -> Duration {
        let v = self.text(variable, value, default);
        match humantime::parse_duration(&v) {
            Ok(d) if d.is_zero() => {
                self.fail(variable, format!("{v:?} is zero"), "a positive duration such as 90s, 10m or 2h");
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(variable, format!("{v:?} is not a duration ({e})"), "a duration such as 90s, 10m or 2h");
                Duration::from_secs(1)
            }
        }
    }

    fn number(&mut self, variable: &str, value: &Option<String>, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        let Some(v) = value else { return default };
        match v.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            Ok(n) => {
                self.fail(variable, format!("{n} is out of range"), format!("a whole number from {} to {}", range.start(), range.end()));
                default
            }
            Err(_) => {
                self.fail(variable, format!("{v:?} is not a whole number"), format!("a whole number from {} to {}", range.start(), range.end()));
                default
            }
        }
    }

    fn boolean(&mut self, variable: &str, value: &Option<String>, default: bool) -> bool {
        let Some(v) = value else { return default };
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.fail(variable, format!("{v:?} is not a boolean"), "true or false");
                default
            }
        }
    }

    fn choice<T: Copy>(&mut self, variable: &str, value: &Option<String>, default: T, choices: &[(&str, T)]) -> T {
        let Some(v) = value else { return default };
        let wanted = v.trim().to_ascii_lowercase();
        match choices.iter().find(|(name, _)| *name == wanted) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.fail(variable, format!("{v:?} is not a known value"), format!("one of {}", names.join(", ")));
                default
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() { Ok(value) } else { Err(ConfigError(self.problems)) }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks a label selector of the equality form Kubernetes accepts (`k=v,k2!=v2,k3`),
/// so a typo fails here rather than selecting nothing at pause time.
fn valid_selector(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("is empty".into());
    }
    for term in s.split(',') {
        let term = term.trim();
        let (key, value) = if let Some((k, v)) = term.split_once("!=") {
            (k, Some(v))
        } else if let Some((k, v)) = term.split_once("==") {
            (k, Some(v))
        } else if let Some((k, v)) = term.split_once('=') {
            (k, Some(v))
        } else {
            (term.strip_prefix('!').unwrap_or(term), None)
        };
        let key_ok = {
            let name = key.rsplit('/').next().unwrap_or(key);
            !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && key.matches('/').count() <= 1
        };
        if !key_ok {
            return Err(format!("term {term:?} has an invalid key"));
        }
        if let Some(v) = value {
            let ok = v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(format!("term {term:?} has an invalid value"));
            }
        }
    }
    Ok(())
}

fn pg_server(
    check: &mut Check,
    prefix: &str,
    host: &Option<String>,
    port: &Option<String>,
    user: &Option<String>,
    password: &Option<Secret>,
    sslmode: &Option<String>,
    sslrootcert: &Option<String>,
) -> Option<PgServer> {
    let host_var = format!("{prefix}PGHOST");
    let host = match host {
        Some(h) if !h.trim().is_empty() => h.trim().to_string(),
        Some(_) => {
            check.fail(&host_var, "is empty", "the PostgreSQL host name or address");
            return None;
        }
        None => {
            check.fail(&host_var, "is not set", "the PostgreSQL host name or address (the server itself, not pg-bouncer)");
            return None;
        }
    };
    let port = check.number(&format!("{prefix}PGPORT"), port, 5432, 1..=65535) as u16;
    let sslmode_var = format!("{prefix}PGSSLMODE");
    const MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];
    let sslmode = match sslmode {
        Some(m) if MODES.contains(&m.trim()) => m.trim().to_string(),
        Some(m) => {
            check.fail(&sslmode_var, format!("{m:?} is not an sslmode"), format!("one of {}", MODES.join(", ")));
            "prefer".into()
        }
        None => "prefer".into(),
    };
    Some(PgServer {
        host,
        port,
        user: user.as_ref().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()),
        password: password.clone(),
        sslmode,
        sslrootcert: sslrootcert.clone(),
    })
}

/// Builds one side's bucket settings: URL, then the object_store options from the
/// unprefixed families overridden by the side's prefixed ones.
fn store(
    check: &mut Check,
    variable: &'static str,
    side: &str,
    url: &Option<String>,
    raw: &RawEnv,
    workload_identity: bool,
    required: bool,
) -> Option<StoreSettings> {
    let Some(text) = url.as_ref().map(|u| u.trim()).filter(|u| !u.is_empty()) else {
        if required {
            check.fail(variable, "is not set", "a bucket URL: s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix] or file:///dir");
        }
        return None;
    };
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            check.fail(variable, format!("{text:?} is not a URL ({e})"), "a bucket URL such as s3://bucket/prefix or file:///dir");
            return None;
        }
    };
    let mut options = BTreeMap::new();
    for (name, value) in &raw.store_keys {
        if STORE_FAMILIES.iter().any(|f| name.starts_with(f)) {
            options.insert(name.to_ascii_lowercase(), value.clone());
        }
    }
    for (name, value) in &raw.store_keys {
        if let Some(rest) = name.strip_prefix(side) {
            options.insert(rest.to_ascii_lowercase(), value.clone());
        }
    }
    // object_store's timeout covers a whole request, body included: its 30 s default
    // fails a large object on a slow link, or a slow listing page. 5 minutes, unless set.
    let timeout_keys = ["aws_timeout", "google_timeout", "azure_timeout", "timeout"];
    if !timeout_keys.iter().any(|k| options.contains_key(*k)) {
        options.insert("timeout".to_string(), Secret::new("300s"));
    }
    let has = |keys: &[&str]| keys.iter().any(|k| options.contains_key(*k));
    let no_credentials = |check: &mut Check, what: &str| {
        check.fail(
            variable,
            format!("{} has no credentials", url.scheme()),
            format!("{what} (shared, or {side}-prefixed for this bucket only), or {side}WORKLOAD_IDENTITY=true / WORKLOAD_IDENTITY=true to use the platform's identity"),
        )
    };
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) || !url.path().starts_with('/') {
                check.fail(variable, format!("{text:?} is not an absolute local path"), "file:///absolute/dir");
            }
        }
        "s3" | "s3a" => {
            if url.host_str().unwrap_or("").is_empty() {
                check.fail(variable, format!("{text:?} names no bucket"), "s3://bucket[/prefix]");
            }
            let key = has(&["aws_access_key_id"]);
            let secret = has(&["aws_secret_access_key"]);
            if key != secret {
                check.fail(variable, "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set", "both, or neither");
            } else if !key
                && !workload_identity
                && !has(&["aws_web_identity_token_file", "aws_container_credentials_full_uri", "aws_container_credentials_relative_uri", "aws_skip_signature"])
            {
                no_credentials(check, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
            }
        }
        "gs" => {
            if url.host_str().unwrap_or("").is_empty() {
                check.fail(variable, format!("{text:?} names no bucket"), "gs://bucket[/prefix]");
            }
            if !workload_identity
                && !has(&[
                    "google_service_account",
                    "google_service_account_path",
                    "google_service_account_key",
                    "google_application_credentials",
                    "google_skip_signature",
                ])
            {
                no_credentials(check, "GOOGLE_SERVICE_ACCOUNT_KEY or GOOGLE_SERVICE_ACCOUNT (a key file)");
            }
        }
        "az" | "azure" | "abfs" | "abfss" => {
            if url.host_str().unwrap_or("").is_empty() {
                check.fail(variable, format!("{text:?} names no container"), "az://container[/prefix]");
            }
            let emulator = options.get("azure_storage_use_emulator").is_some_and(|v| v.expose() == "true");
            if !emulator && !has(&["azure_storage_account_name", "azure_storage_account"]) {
                check.fail(variable, "az has no storage account", "AZURE_STORAGE_ACCOUNT_NAME");
            }
            if !workload_identity
                && !emulator
                && !has(&[
                    "azure_storage_account_key",
                    "azure_storage_access_key",
                    "azure_storage_sas_key",
                    "azure_storage_sas_token",
                    "azure_client_secret",
                    "azure_federated_token_file",
                    "azure_storage_token",
                    "azure_skip_signature",
                ])
            {
                no_credentials(check, "AZURE_STORAGE_ACCOUNT_KEY or a SAS token");
            }
        }
        other => {
            check.fail(variable, format!("scheme {other:?} is not supported"), "s3://, gs://, az:// or file://");
        }
    }
    Some(StoreSettings { variable, url, options })
}

fn common(check: &mut Check, raw: &RawEnv) -> Common {
    let push_url = raw.pushgateway_url.as_ref().map(|u| u.trim()).filter(|u| !u.is_empty()).and_then(|u| match Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Some(url),
        _ => {
            check.fail("PUSHGATEWAY_URL", format!("{u:?} is not an http(s) URL"), "http://host:9091 or https://host");
            None
        }
    });
    if raw.pushgateway_password.is_some() && raw.pushgateway_username.is_none() {
        check.fail("PUSHGATEWAY_USERNAME", "is not set but PUSHGATEWAY_PASSWORD is", "both basic-auth variables, or neither");
    }
    let timeout = check.duration("PUSHGATEWAY_TIMEOUT", &raw.pushgateway_timeout, "10s");
    let schedule = raw.schedule.as_ref().map(|s| s.trim()).filter(|s| !s.is_empty()).and_then(|s| match parse_schedule(s) {
        Ok(sched) => Some(sched),
        Err(e) => {
            check.fail("SCHEDULE", format!("{s:?} is not a cron expression ({e})"), "5 fields like the CronJob's, e.g. \"0 2 * * *\"");
            None
        }
    });
    if let Some(name) = &raw.cluster_name {
        let ok = !name.trim().is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            check.fail("CLUSTER_NAME", format!("{name:?} is not usable as a label value"), "letters, digits, '-', '_' or '.', at most 128 characters");
        }
    }
    let _ = check.choice("LOG_FORMAT", &raw.log_format, LogFormat::Json, &[("json", LogFormat::Json), ("text", LogFormat::Text)]);
    Common {
        cluster_name: raw.cluster_name.as_ref().map(|n| n.trim().to_string()),
        push: PushSettings { url: push_url, username: raw.pushgateway_username.clone(), password: raw.pushgateway_password.clone(), timeout },
        schedule,
        progress_interval: check.duration("PROGRESS_INTERVAL", &raw.progress_interval, "30s"),
    }
}

/// Parses a Kubernetes CronJob schedule (5 fields, or a macro such as `@daily`); the
/// `cron` crate wants seconds first, so a 0 is prepended.
pub fn parse_schedule(s: &str) -> Result<cron::Schedule, String> {
    use std::str::FromStr;
    let fields = s.split_whitespace().count();
    let expression = if s.starts_with('@') {
        s.to_string()
    } else if fields == 5 {
        format!("0 {s}")
    } else {
        return Err(format!("{fields} fields"));
    };
    cron::Schedule::from_str(&expression).map_err(|e| e.to_string())
}

fn workload_identity(check: &mut Check, raw: &RawEnv, side: &Option<String>, side_var: &str) -> bool {
    let all = check.boolean("WORKLOAD_IDENTITY", &raw.workload_identity, false);
    check.boolean(side_var, side, all)
}

fn bin_dir(check: &mut Check, raw: &RawEnv) -> Option<PathBuf> {
    let dir = raw.pg_bin_dir.as_ref().map(|d| PathBuf::from(d.trim())).filter(|d| !d.as_os_str().is_empty())?;
    if !dir.is_dir() {
        check.fail("PG_BIN_DIR", format!("{} is not a directory", dir.display()), "a directory holding pg_dump and pg_restore");
    }
    Some(dir)
}

fn database_names(check: &mut Check, raw: &RawEnv) -> Vec<String> {
    let text = check.text("DATABASES", &raw.databases, "pachyderm,dex");
    let names: Vec<String> = text.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
    let valid = |d: &String| d.len() <= 63 && d.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-$".contains(&b));
    if names.is_empty() || !names.iter().all(valid) {
        check.fail("DATABASES", format!("{text:?} is not a list of database names"), "comma-separated names such as pachyderm,dex");
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &names {
        if !seen.insert(n) {
            check.fail("DATABASES", format!("{n:?} is listed twice"), "each database once");
        }
    }
    names
}

fn retention(check: &mut Check, raw: &RawEnv) -> Policy {
    let n = |check: &mut Check, var: &str, v: &Option<String>, d: u64| check.number(var, v, d, 0..=100_000) as usize;
    Policy {
        last: n(check, "KEEP_LAST", &raw.keep_last, 0),
        hourly: n(check, "KEEP_HOURLY", &raw.keep_hourly, 0),
        daily: n(check, "KEEP_DAILY", &raw.keep_daily, 7),
        weekly: n(check, "KEEP_WEEKLY", &raw.keep_weekly, 4),
        monthly: n(check, "KEEP_MONTHLY", &raw.keep_monthly, 6),
        yearly: n(check, "KEEP_YEARLY", &raw.keep_yearly, 0),
        within: raw.keep_within.as_ref().map(|_| check.duration("KEEP_WITHIN", &raw.keep_within, "0s")),
        min_keep: n(check, "MIN_KEEP", &raw.min_keep, 3),
    }
}

impl RunConfig {
    pub fn from_env(raw: &RawEnv) -> Result<Self, ConfigError> {
        let mut check = Check::new();
        let common = common(&mut check, raw);
        let cluster = ClusterSettings::from_env_checked(&mut check, raw);
        let server = pg_server(&mut check, "", &raw.pghost, &raw.pgport, &raw.pguser, &raw.pgpassword, &raw.pgsslmode, &raw.pgsslrootcert);
        let databases = database_names(&mut check, raw);
        let bin_dir = bin_dir(&mut check, raw);
        let source_wi = workload_identity(&mut check, raw, &raw.source_workload_identity, "SOURCE_WORKLOAD_IDENTITY");
        let target_wi = workload_identity(&mut check, raw, &raw.target_workload_identity, "TARGET_WORKLOAD_IDENTITY");
        let objects = check.choice("OBJECTS", &raw.objects, ObjectsMode::Copy, &[("copy", ObjectsMode::Copy), ("skip", ObjectsMode::Skip)]);
        let source = store(&mut check, "SOURCE_URL", "SOURCE_", &raw.source_url, raw, source_wi, objects == ObjectsMode::Copy);
        let target = store(&mut check, "TARGET_URL", "TARGET_", &raw.target_url, raw, target_wi, true);
        let copy = CopySettings {
            objects,
            precopy: check.boolean("PRECOPY", &raw.precopy, true),
            concurrency: check.number("COPY_CONCURRENCY", &raw.copy_concurrency, 32, 1..=1024) as usize,
        };
        let max_downtime = check.duration("MAX_DOWNTIME", &raw.max_downtime, "2h");
        let retention = retention(&mut check, raw);
        let gc_grace = check.duration("GC_GRACE", &raw.gc_grace, "24h");
        if let (Some(s), Some(t)) = (&source, &target) {
            if s.url == t.url {
                check.fail("TARGET_URL", "is the same as SOURCE_URL", "a different bucket or prefix for the backups");
            }
        }
        // An unset SOURCE_URL is fine with OBJECTS=skip; then nothing is read from it.
        let source = source.unwrap_or_else(|| StoreSettings {
            variable: "SOURCE_URL",
            url: Url::parse("file:///nonexistent").expect("static URL"),
            options: BTreeMap::new(),
        });
        match (server, target) {
            (Some(server), Some(target)) => check.finish(RunConfig {
                common,
                cluster,
                database: DatabaseSettings { server, databases, bin_dir },
                source,
                target,
                copy,
                max_downtime,
                retention,
                gc_grace,
            }),
            _ => Err(ConfigError(check.problems)),
        }
    }
}

impl ClusterSettings {
    fn from_env_checked(check: &mut Check, raw: &RawEnv) -> Self {
        let worker_selector = check.text("WORKER_SELECTOR", &raw.worker_selector, "suite=pachyderm,component=worker");
        if let Err(e) = valid_selector(&worker_selector) {
            check.fail("WORKER_SELECTOR", format!("{worker_selector:?}: {e}"), "a label selector such as suite=pachyderm,component=worker");
        }
        ClusterSettings {
            namespace: raw.pachyderm_namespace.as_ref().map(|_| check.name("PACHYDERM_NAMESPACE", &raw.pachyderm_namespace, "")),
            pachd: check.name("PACHD_DEPLOYMENT", &raw.pachd_deployment, "pachd"),
            pachw: check.name("PACHW_DEPLOYMENT", &raw.pachw_deployment, "pachw"),
            worker_selector,
            pachd_configmap: check.name("PACHD_CONFIGMAP", &raw.pachd_configmap, "pachd-config"),
            helm_release: raw.helm_release.as_ref().map(|_| check.name("HELM_RELEASE", &raw.helm_release, "")),
            pause_mode: check.choice(
                "PAUSE_MODE",
                &raw.pause_mode,
                PauseMode::Scale,
                &[("scale", PauseMode::Scale), ("pachyderm", PauseMode::Pachyderm), ("none", PauseMode::None)],
            ),
            pause_timeout: check.duration("PAUSE_TIMEOUT", &raw.pause_timeout, "5m"),
            resume_timeout: check.duration("RESUME_TIMEOUT", &raw.resume_timeout, "10m"),
            lease_name: check.name("LEASE_NAME", &raw.lease_name, "pachyderm-backup"),
            lease_duration: check.duration("LEASE_DURATION", &raw.lease_duration, "60s"),
        }
    }

    /// The settings `resume` needs, without requiring the backup's variables.
    pub fn from_env(raw: &RawEnv) -> Result<(Common, Self), ConfigError> {
        let mut check = Check::new();
        let common = common(&mut check, raw);
        let cluster = Self::from_env_checked(&mut check, raw);
        check.finish((common, cluster))
    }
}

/// The settings of the commands that only read the backup bucket (`list`, `verify`,
/// `retention`), with the policy and grace for `retention`.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub common: Common,
    pub target: StoreSettings,
    pub retention: Policy,
    pub gc_grace: Duration,
    pub cluster: ClusterSettings,
}

impl CatalogConfig {
    pub fn from_env(raw: &RawEnv) -> Result<Self, ConfigError> {
        let mut check = Check::new();
        let common = common(&mut check, raw);
        let target_wi = workload_identity(&mut check, raw, &raw.target_workload_identity, "TARGET_WORKLOAD_IDENTITY");
        let target = store(&mut check, "TARGET_URL", "TARGET_", &raw.target_url, raw, target_wi, true);
        let retention = retention(&mut check, raw);
        let gc_grace = check.duration("GC_GRACE", &raw.gc_grace, "24h");
        let cluster = ClusterSettings::from_env_checked(&mut check, raw);
        match target {
            Some(target) => check.finish(CatalogConfig { common, target, retention, gc_grace, cluster }),
            None => Err(ConfigError(check.problems)),
        }
    }
}

impl RestoreConfig {
    /// `need_bucket`: restore writes objects; a drill only needs the server.
    pub fn from_env(raw: &RawEnv, need_server: bool, need_bucket: bool) -> Result<Self, ConfigError> {
        let mut check = Check::new();
        let common = common(&mut check, raw);
        let target_wi = workload_identity(&mut check, raw, &raw.target_workload_identity, "TARGET_WORKLOAD_IDENTITY");
        let restore_wi = workload_identity(&mut check, raw, &raw.restore_workload_identity, "RESTORE_WORKLOAD_IDENTITY");
        let target = store(&mut check, "TARGET_URL", "TARGET_", &raw.target_url, raw, target_wi, true);
        let destination = store(&mut check, "RESTORE_URL", "RESTORE_", &raw.restore_url, raw, restore_wi, need_bucket);
        let server = if need_server || raw.restore_pghost.is_some() {
            pg_server(
                &mut check,
                "RESTORE_",
                &raw.restore_pghost,
                &raw.restore_pgport,
                &raw.restore_pguser,
                &raw.restore_pgpassword,
                &raw.restore_pgsslmode,
                &raw.restore_pgsslrootcert,
            )
        } else {
            None
        };
        let bin_dir = bin_dir(&mut check, raw);
        let concurrency = check.number("COPY_CONCURRENCY", &raw.copy_concurrency, 32, 1..=1024) as usize;
        match target {
            Some(target) => check.finish(RestoreConfig { common, target, server, destination, bin_dir, concurrency }),
            None => Err(ConfigError(check.problems)),
        }
    }
}

/// The log settings, read before anything else so that even a configuration error is
/// logged in the configured format.
pub fn log_settings(raw: &RawEnv) -> (LogFormat, String) {
    let format = match raw.log_format.as_deref().map(|f| f.trim().to_ascii_lowercase()) {
        Some(f) if f == "text" => LogFormat::Text,
        _ => LogFormat::Json,
    };
    (format, raw.rust_log.clone().unwrap_or_else(|| "info".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> RawEnv {
        RawEnv::from_iter(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("readable")
    }

    const GOOD: &[(&str, &str)] = &[
        ("PGHOST", "db"),
        ("SOURCE_URL", "s3://pach-data"),
        ("TARGET_URL", "s3://backups/nightly"),
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "very-secret"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = GOOD.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).copied().collect();
        v.extend(extra.iter().copied().filter(|(_, val)| *val != "<unset>"));
        v
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = RunConfig::from_env(&env(GOOD)).expect("valid");
        assert_eq!(c.cluster.pachd, "pachd");
        assert_eq!(c.cluster.pachw, "pachw");
        assert_eq!(c.cluster.pause_mode, PauseMode::Scale);
        assert_eq!(c.cluster.pause_timeout, Duration::from_secs(300));
        assert_eq!(c.cluster.resume_timeout, Duration::from_secs(600));
        assert_eq!(c.max_downtime, Duration::from_secs(7200));
        assert_eq!(c.database.databases, vec!["pachyderm", "dex"]);
        assert_eq!(c.copy.concurrency, 32);
        assert_eq!((c.retention.daily, c.retention.weekly, c.retention.monthly, c.retention.min_keep), (7, 4, 6, 3));
        for v in VARIABLES {
            let documented_default = v.default;
            assert!(!documented_default.is_empty(), "{} has no documented default", v.name);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_by_name() {
        let e = RunConfig::from_env(&env(&with(&[("PAUSE_MODE", "sleep"), ("COPY_CONCURRENCY", "many"), ("MAX_DOWNTIME", "forever")]))).unwrap_err();
        let vars: Vec<&str> = e.0.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(vars, vec!["PAUSE_MODE", "COPY_CONCURRENCY", "MAX_DOWNTIME"]);
        assert!(e.to_string().contains("one of scale, pachyderm, none"), "{e}");
    }

    #[test]
    fn table_of_bad_values() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            (&[("SOURCE_URL", "<unset>")], "SOURCE_URL", "is not set"),
            (&[("TARGET_URL", "<unset>")], "TARGET_URL", "is not set"),
            (&[("TARGET_URL", "ftp://x/y")], "TARGET_URL", "not supported"),
            (&[("TARGET_URL", "not a url")], "TARGET_URL", "not a URL"),
            (&[("SOURCE_URL", "s3://")], "SOURCE_URL", "names no bucket"),
            (&[("SOURCE_URL", "gs://b")], "SOURCE_URL", "no credentials"),
            (&[("TARGET_URL", "file://relative/x")], "TARGET_URL", "absolute"),
            (&[("AWS_SECRET_ACCESS_KEY", "<unset>")], "SOURCE_URL", "only one of"),
            (&[("PGHOST", "<unset>")], "PGHOST", "is not set"),
            (&[("PGPORT", "70000")], "PGPORT", "out of range"),
            (&[("PGSSLMODE", "sometimes")], "PGSSLMODE", "not an sslmode"),
            (&[("PAUSE_TIMEOUT", "5 parsecs")], "PAUSE_TIMEOUT", "not a duration"),
            (&[("RESUME_TIMEOUT", "0s")], "RESUME_TIMEOUT", "zero"),
            (&[("WORKER_SELECTOR", "suite=pach yderm")], "WORKER_SELECTOR", "invalid"),
            (&[("WORKER_SELECTOR", "suite=,")], "WORKER_SELECTOR", "invalid"),
            (&[("PACHD_DEPLOYMENT", "Pachd_Main")], "PACHD_DEPLOYMENT", "not a Kubernetes object name"),
            (&[("OBJECTS", "some")], "OBJECTS", "not a known value"),
            (&[("PRECOPY", "maybe")], "PRECOPY", "not a boolean"),
            (&[("COPY_CONCURRENCY", "0")], "COPY_CONCURRENCY", "out of range"),
            (&[("KEEP_DAILY", "-1")], "KEEP_DAILY", "not a whole number"),
            (&[("DATABASES", "pachyderm,pachyderm")], "DATABASES", "twice"),
            (&[("DATABASES", "pach;drop")], "DATABASES", "not a list"),
            (&[("SCHEDULE", "every night")], "SCHEDULE", "not a cron expression"),
            (&[("PUSHGATEWAY_URL", "pushgateway:9091")], "PUSHGATEWAY_URL", "not an http(s) URL"),
            (&[("CLUSTER_NAME", "prod cluster")], "CLUSTER_NAME", "label value"),
            (&[("TARGET_URL", "s3://pach-data")], "TARGET_URL", "same as SOURCE_URL"),
        ];
        for (overrides, variable, fragment) in cases {
            let e = RunConfig::from_env(&env(&with(overrides))).expect_err(&format!("{overrides:?} must be rejected"));
            let p = e.0.iter().find(|p| p.variable == *variable).unwrap_or_else(|| panic!("{overrides:?}: no problem names {variable}: {e}"));
            assert!(p.to_string().contains(fragment), "{overrides:?}: {p} does not say {fragment:?}");
            assert!(!p.expected.is_empty());
        }
    }

    #[test]
    fn side_prefixed_keys_override_shared_ones() {
        let c =
            RunConfig::from_env(&env(&with(&[("TARGET_AWS_ACCESS_KEY_ID", "TARGETKEY"), ("TARGET_AWS_ENDPOINT", "http://127.0.0.1:9000")]))).expect("valid");
        assert_eq!(c.target.options["aws_access_key_id"].expose(), "TARGETKEY");
        assert_eq!(c.source.options["aws_access_key_id"].expose(), "AKIA");
        assert!(!c.source.options.contains_key("aws_endpoint"));
        assert_eq!(c.source.options["timeout"].expose(), "300s", "a whole-request timeout longer than object_store's 30 s");
        let c = RunConfig::from_env(&env(&with(&[("AWS_TIMEOUT", "20m")]))).expect("valid");
        assert!(!c.target.options.contains_key("timeout"), "the user's own timeout wins");
    }

    #[test]
    fn workload_identity_replaces_keys() {
        let c = RunConfig::from_env(&env(&[("PGHOST", "db"), ("SOURCE_URL", "gs://a"), ("TARGET_URL", "s3://b"), ("WORKLOAD_IDENTITY", "true")]));
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn secrets_never_appear_in_debug() {
        let c = RunConfig::from_env(&env(&with(&[("PGPASSWORD", "pg-secret-pw"), ("PUSHGATEWAY_USERNAME", "u"), ("PUSHGATEWAY_PASSWORD", "push-secret-pw")])))
            .expect("valid");
        let shown = format!("{c:?}");
        for secret in ["pg-secret-pw", "push-secret-pw", "very-secret", "AKIA"] {
            assert!(!shown.contains(secret), "{secret} leaked into Debug output");
        }
    }

    #[test]
    fn schedules_parse_like_the_cronjob() {
        assert!(parse_schedule("0 2 * * *").is_ok());
        assert!(parse_schedule("*/10 * * * *").is_ok());
        assert!(parse_schedule("@daily").is_ok());
        assert!(parse_schedule("0 2 * *").is_err());
        assert!(parse_schedule("61 2 * * *").is_err());
    }

    /// Lists the fields of a struct through serde, to compare what the code reads with
    /// what is documented.
    fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Probe(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Probe {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Stop> {
                self.0 = Some(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! { bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any }
        }
        let mut probe = Probe(None);
        let _ = T::deserialize(&mut probe);
        probe.0.expect("a struct")
    }

    #[test]
    fn every_variable_read_is_documented_and_every_documented_one_is_read() {
        let read: Vec<String> = struct_fields::<RawEnv>().iter().map(|f| f.to_ascii_uppercase()).collect();
        let documented: Vec<&str> = VARIABLES.iter().map(|v| v.name).filter(|n| !n.ends_with('*')).collect();
        for name in &read {
            assert!(documented.contains(&name.as_str()), "{name} is read but not in VARIABLES");
        }
        for name in &documented {
            assert!(read.iter().any(|r| r == name), "{name} is documented but never read");
        }
        for family in VARIABLES.iter().map(|v| v.name).filter(|n| n.ends_with('*')) {
            let stem = family.trim_end_matches('*');
            let unprefixed = SIDES.iter().find_map(|s| stem.strip_prefix(s)).unwrap_or(stem);
            assert!(STORE_FAMILIES.contains(&unprefixed), "{family} is not a family the code reads");
        }
    }
}
